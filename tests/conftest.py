"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set before transformers is imported."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from model.transformer_dcn import TransformerDCN  # noqa: E402
from pipeline.core.config import ModelConfig, TrainConfig
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
                    transformer_dropout=0.2, first_k=4, mean_interest=False, cross_layers=2, cross_rank=0,
                    dnn_hidden_units=(32, 16), mlp_hidden_units=(8,), net_dropout=0.2)


def small_model(cfg: ModelConfig = SMALL) -> TransformerDCN:
    torch.manual_seed(0)
    return TransformerDCN(cfg, feature_map(), *item_tables()).eval()


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
                mean_interest=False, cross_layers=2, cross_rank=0, dnn_hidden_units=(32, 16), mlp_hidden_units=(8,),
                transformer_dropout=0.0, net_dropout=0.0, learning_rate=3e-3, batch_size=64, eval_batch_size=256,
                epochs=12, max_steps=0, patience=3, seed=1, device="cpu")
    return TrainConfig(**(base | kw))


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
