"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before transformers is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from model.transformer_dcn import TransformerDCN  # noqa: E402
from pipeline.core.config import ModelConfig, TrainConfig, from_dict
from pipeline.core.feature_map import Feature, FeatureMap
from pipeline.training.data import SplitTensors

WORDS = ["cat", "dog", "kitten", "puppy", "funny", "video", "cooking", "noodles", "spicy", "recipe", "travel",
         "beach", "football", "goal", "music", "guitar", "part", "new", "best", "my"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocab, saved as a local model folder (seeded)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", ",", *"abcdefghijklmnopqrstuvwxyz"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5: BertTokenizerFast(vocab_file=...) ignores the file; vocab= loads it.
    BertTokenizerFast(vocab=str(d / "vocab.txt"), do_lower_case=True).save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(d)
    return d


# ----------------------------------------------------------- small models and splits (test_model, test_training, ...)

N_ITEMS, N_TAGS, MM = 60, 12, 8


def feature_map(max_len: int = 20, mm: int = MM, n_items: int = N_ITEMS) -> FeatureMap:
    return FeatureMap((
        Feature("item_id", "categorical", "item", vocab_size=n_items + 1),
        Feature("item_tags", "sequence", "item", vocab_size=N_TAGS + 1, max_len=3),
        Feature("item_seq", "sequence", "history", vocab_size=n_items + 1, max_len=max_len,
                share_embedding="item_id"),
        Feature("likes_level", "categorical", "context", vocab_size=11),
        Feature("views_level", "categorical", "context", vocab_size=11),
    )).with_mm_embedding(mm)


def item_tables(n_items: int = N_ITEMS, mm: int = MM, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tags = torch.randint(0, N_TAGS + 1, (n_items + 1, 3), generator=g)
    emb = torch.randn(n_items + 1, mm, generator=g)
    tags[0], emb[0] = 0, 0.0
    return tags, emb


# The architecture is spelled out in full (no field left to the params.yaml defaults), so that changing a default
# never changes what these tests build.
SMALL = ModelConfig(embedding_dim=8, mm_dim=0, transformer_layers=2, num_heads=2, dim_feedforward=16,
                    transformer_dropout=0.2, first_k=4, mean_interest=False, recent_interest=0, cross_layers=2,
                    cross_rank=0, dnn_hidden_units=(32, 16), mlp_hidden_units=(8,), net_dropout=0.2, exposure_levels=0,
                    user_bias=False, user_interest=False, history_length=False, history_similarity=False,
                    similarity_count=False, repeat_count=False, new_item_offset=False, ensemble=1,
                    ensemble_mix="none")


def small_model(cfg: ModelConfig = SMALL) -> TransformerDCN:
    torch.manual_seed(0)
    return TransformerDCN(cfg, feature_map(), *item_tables()).eval()


def check_training_dropout(net: torch.nn.Module, rate: str, output, full: torch.Tensor,
                           dropped: torch.Tensor) -> None:
    """A training-only dropout option of the model (`net.<rate>`, now 0; `output()` its (..., D) output, `full`
    that output in eval, `dropped` each row's output when dropped): in training at 0 nothing changes and no random
    number is drawn; at 0.5 each row is whole either `full`'s or `dropped`'s, about half of them dropped; back in
    eval nothing changes."""
    net.train()
    state = torch.get_rng_state()
    torch.testing.assert_close(output(), full)
    assert torch.equal(torch.get_rng_state(), state)
    setattr(net, rate, 0.5)
    got = output()
    was_dropped, kept = torch.isclose(got, dropped).all(-1), torch.isclose(got, full).all(-1)
    assert bool((was_dropped | kept).all()) and 0.4 < float(was_dropped.float().mean()) < 0.6
    net.eval()
    torch.testing.assert_close(output(), full)


def random_histories(b: int, length: int, seed: int = 2) -> torch.Tensor:
    """Left-padded histories with real lengths 0..length."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, N_ITEMS + 1, (b, length), generator=g)
    real = torch.randint(0, length + 1, (b,), generator=g)
    pos = torch.arange(length).expand(b, -1)
    return torch.where(pos >= length - real.unsqueeze(1), seq, 0)


def toy_split(n: int, seed: int) -> SplitTensors:
    """Label = 1 when the target item's frozen embedding has the same sign in dimension 0 as the most recent
    history item's: learnable only by reading the history."""
    g = torch.Generator().manual_seed(seed)
    seq = random_histories(n, 20, seed=seed)
    seq[:, -1] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    target = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    group = item_tables()[1][:, 0] > 0  # (N+1,) the same tables the models below are built with
    label = (group[target] == group[seq[:, -1]]).float()
    ctx = {k: torch.randint(0, 11, (n,), generator=g) for k in ("likes_level", "views_level")}
    return SplitTensors(seq, target, ctx, label, torch.arange(n) % 7)


def train_cfg(**kw) -> TrainConfig:
    base = dict(embedding_dim=8, mm_dim=0, transformer_layers=2, num_heads=2, dim_feedforward=16, first_k=4,
                mean_interest=False, recent_interest=0, cross_layers=2, cross_rank=0, dnn_hidden_units=(32, 16),
                mlp_hidden_units=(8,),
                transformer_dropout=0.0, net_dropout=0.0, learning_rate=3e-3, batch_size=64, eval_batch_size=256,
                epochs=12, max_steps=0, patience=3, seed=1, device="cpu", ema_decay=0.0, exposure_levels=0,
                embedding_regularizer=0.0, user_bias=False, user_interest=False, history_length=False,
                history_similarity=False, similarity_count=False, repeat_count=False, new_item_offset=False,
                ensemble=1, ensemble_mix="none", parallel_members=False)
    return from_dict(TrainConfig, base | kw, "train")


# ------------------------------------------------------------------------------------ project copies (DVC tests)

REPO = Path(__file__).resolve().parents[1]


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a pipeline command: offline, this interpreter's bin first on PATH."""
    return dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                **extra)


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command in the project's environment; its stdout + stderr, asserting it succeeded."""
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def project_copy(root: Path, params: str) -> Path:
    """The tracked (and untracked, not ignored) project files outside tests/ copied to `root`, with `params` as
    params.yaml, committed as a git repository of their own (DVC needs one). -> root"""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file() and not rel.startswith("tests/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    (root / "params.yaml").write_text(params)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(cmd, root)
    return root


TINY_PARAMS = Path(__file__).with_name("tiny_params.yaml")
STAGES = ["check_params", "make_synthetic", "extract_text", "extract_image", "build_sequences", "fit_pca",
          "embedding_report", "quantize", "train", "evaluate"]


def ran_stages(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return {s for s in STAGES if f"Running stage '{s}'" in output}


@pytest.fixture(scope="session")
def tiny_reproduced(tmp_path_factory) -> Path:
    """The project on the tiny profile after one full `dvc repro`, made once per session. Tests never change it:
    each module works on its own copy (`reproduced_copy`)."""
    root = project_copy(tmp_path_factory.mktemp("tiny_reproduced"), TINY_PARAMS.read_text())
    assert ran_stages(run(["dvc", "repro"], root)) == set(STAGES)
    return root


def reproduced_copy(source: Path, root: Path) -> Path:
    """A copy of the reproduced project `source` (its git repo, DVC cache and outputs) at `root`; DVC and git find
    everything by relative path, so the copy is a project of its own. -> root"""
    shutil.copytree(source, root, symlinks=True)
    return root


# ------------------------------------------------------------------------ challenge-format files (tiny, valid)

CHALLENGE_ITEMS = 6
SEQ_LEN = 4
SPLIT_SCHEMA = pl.Schema({"user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32,
                          "likes_level": pl.Int8, "views_level": pl.Int8, "label": pl.Float32,
                          "event_ts": pl.Int64})


def challenge_split(**changes: list) -> pl.DataFrame:
    """A valid split as the challenge stores it (Int64 ids, List(Int64) histories, Float64 labels)."""
    data: dict[str, list] = {
        "user_id": [1, 1, 2, 3],
        "item_seq": [[0, 0, 0, 1], [0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]],
        "item_id": [2, 3, 1, 6],
        "likes_level": [0, 10, 3, 5],
        "views_level": [1, 2, 10, 0],
        "label": [1.0, 0.0, 1.0, 0.0],
    }
    data.update(changes)
    return pl.DataFrame(data)


def write_frame(df: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return path


def challenge_item_info(n: int = CHALLENGE_ITEMS, **changes: list) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((n + 1, 128)).astype(np.float32)
    emb[0] = 0
    data: dict[str, list] = {
        "item_id": list(range(n + 1)),
        "item_tags": [[0] * 5] + [[0] * (4 - i % 3) + list(range(1, 2 + i % 3)) for i in range(1, n + 1)],
        "item_emb_d128": emb.tolist(),
    }
    data.update(changes)
    return pl.DataFrame(data)


def challenge_item_feature(n: int = CHALLENGE_ITEMS, **changes: list) -> pl.DataFrame:
    rng = np.random.default_rng(1)
    data: dict[str, list] = {
        "item_id": list(range(1, n + 1)),
        "item_title": [f"title {i}, with a comma" for i in range(1, n + 1)],
        "item_tags": [[0, 0, 0, 0, i] for i in range(1, n + 1)],
        "likes_level": [i % 11 for i in range(1, n + 1)],
        "views_level": [(3 * i) % 11 for i in range(1, n + 1)],
        "txt_emb_BERT": rng.standard_normal((n, 768)).tolist(),
        "img_emb_CLIPRN50": rng.standard_normal((n, 1024)).tolist(),
    }
    data.update(changes)
    return pl.DataFrame(data)


def challenge_layout(root: Path, split_dir: Path, images: list[str] | None = None) -> None:
    for name in ("train", "valid", "test"):
        write_frame(challenge_split(), split_dir / f"{name}.parquet")
    write_frame(challenge_item_info(), split_dir / "item_info.parquet")
    write_frame(challenge_item_feature(), root / "item_feature.parquet")
    for name in images or []:
        (root / "item_images").mkdir(parents=True, exist_ok=True)
        (root / "item_images" / name).write_bytes(b"")


# ------------------------------------------------------------------------ params values out of range

# (section, values, the key the one-line error must name): test_config checks each at load time, test_reliability
# checks that a stage stops on each before it writes anything.
OUT_OF_RANGE = [
    ("fit_pca", {"dim": 0}, "fit_pca.dim"),
    ("train", {"net_dropout": 1.0}, "train.net_dropout"),
    ("train", {"transformer_dropout": -0.1}, "train.transformer_dropout"),
    ("train", {"embedding_dim": 0}, "train.embedding_dim"),
    ("train", {"dnn_hidden_units": [256, 0]}, "train.dnn_hidden_units"),
    ("train", {"lr_decay": 0.0}, "train.lr_decay"),
    ("train", {"learning_rate": 0.0}, "train.learning_rate"),
    ("train", {"cross_layers": -1}, "train.cross_layers"),
    ("train", {"embedding_dropout": 1.0}, "train.embedding_dropout"),
    ("train", {"embedding_dropout": -0.1}, "train.embedding_dropout"),
    ("train", {"embedding_regularizer": -1.0e-5}, "train.embedding_regularizer"),
    ("train", {"net_regularizer": -1.0e-5}, "train.net_regularizer"),
    ("train", {"optimizer": "adamw", "weight_decay": -0.01}, "train.weight_decay"),
    ("train", {"optimizer": "adam", "weight_decay": 0.01}, "train.weight_decay"),  # decoupled decay needs adamw
    ("train", {"warmup_steps": -1}, "train.warmup_steps"),
    ("train", {"warmup_steps": 101, "max_steps": 100}, "train.warmup_steps"),  # a warm-up that never ends
    ("train", {"bucket_batches": 1 << 62}, "train.bucket_batches"),  # a bucket past 2^40 rows
    ("train", {"eval_steps": -1}, "train.eval_steps"),
    ("train", {"max_steps": -1}, "train.max_steps"),
    ("train", {"ema_decay": 1.0}, "train.ema_decay"),
    ("train", {"ema_decay": -0.5}, "train.ema_decay"),
    ("quantize", {"codebook_size": 1}, "quantize.codebook_size"),
    ("quantize", {"codebook_size": 40000}, "quantize.codebook_size"),
    ("quantize", {"levels": 0}, "quantize.levels"),
    ("train", {"learning_rate": 0.001, "min_lr": 0.002}, "train.min_lr"),
    ("build_sequences", {"valid_frac": 0.5, "test_frac": 0.5}, "build_sequences.test_frac"),
    ("build_sequences", {"valid_frac": 0.0}, "build_sequences.valid_frac"),
    ("build_sequences", {"test_frac": 1.0}, "build_sequences.test_frac"),
    ("build_sequences", {"neg_ratio": 0}, "build_sequences.neg_ratio"),
    ("build_sequences", {"n_levels": 1}, "build_sequences.n_levels"),
    ("build_sequences", {"min_history": -1}, "build_sequences.min_history"),
    ("make_synthetic", {"n_items": 3000, "max_clicks_per_user": 3000}, "make_synthetic.max_clicks_per_user"),
    ("make_synthetic", {"n_items": 19}, "make_synthetic.n_items"),
    ("make_synthetic", {"cover_size": 31}, "make_synthetic.cover_size"),
    ("extract_text", {"max_length": 513}, "extract_text.max_length"),
    ("extract_text", {"model": "  "}, "extract_text.model"),
    ("extract_image", {"batch_size": 0}, "extract_image.batch_size"),
    ("evaluate", {"calibration_bins": 1}, "evaluate.calibration_bins"),
    # values that each stage's library refuses with a traceback, or that run for hours, caught at load instead
    ("evaluate", {"calibration_bins": 10**9}, "evaluate.calibration_bins"),
    ("make_synthetic", {"seed": -1}, "make_synthetic.seed"),
    ("fit_pca", {"seed": 1 << 32}, "fit_pca.seed"),
    ("quantize", {"seed": (1 << 31) - 1}, "quantize.seed"),  # level 1 would seed faiss with 2^31
    ("quantize", {"iterations": 1 << 40}, "quantize.iterations"),
    ("embedding_report", {"hnsw_m": (1 << 31) - 1}, "embedding_report.hnsw_m"),
    ("embedding_report", {"hnsw_ef_search": 1 << 40}, "embedding_report.hnsw_ef_search"),
    ("train", {"num_threads": 1 << 40}, "train.num_threads"),
    ("extract_image", {"pretrained": "seed:99999999999999999999999"}, "extract_image.pretrained"),
    ("build_sequences", {"max_tags": 10**12}, "build_sequences.max_tags"),
    ("make_synthetic", {"mean_clicks_per_user": 1e19}, "make_synthetic.mean_clicks_per_user"),
    ("make_synthetic", {"mean_requests_per_user": 1e300}, "make_synthetic.mean_requests_per_user"),
    ("extract_text", {"max_length": 2}, "extract_text.max_length"),  # [CLS] [SEP] only: every title alike
]
