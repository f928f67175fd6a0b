"""The feature map: the data's feature spec, written by `build_sequences`, completed by `train`.

It is JSON (`feature_map.json`), FuxiCTR-like but typed:

    {"label": "label",
     "features": [
       {"name": "item_id",     "type": "categorical", "source": "item",    "vocab_size": N + 1},
       {"name": "item_tags",   "type": "sequence",    "source": "item",    "vocab_size": T + 1, "max_len": 5},
       {"name": "item_seq",    "type": "sequence",    "source": "history", "vocab_size": N + 1, "max_len": 100,
        "share_embedding": "item_id"},
       {"name": "likes_level", "type": "categorical", "source": "context", "vocab_size": 11},
       {"name": "views_level", "type": "categorical", "source": "context", "vocab_size": 11},
       {"name": "item_emb_d64", "type": "embedding",  "source": "item",    "embedding_dim": 64}   # added by train
     ]}

Id 0 is padding in every vocabulary. The model derives all input widths from this map.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.core.io import DataError, write_json

FeatureType = Literal["categorical", "sequence", "embedding"]
FeatureSource = Literal["item", "history", "context"]


MM_PREFIX = "item_emb_d"  # the frozen item embedding's column, item_emb_d<dim>: in item_info and the feature map


def mm_column(dim: int) -> str:
    """The frozen item embedding's column name at width `dim`."""
    return f"{MM_PREFIX}{dim}"


def find_mm_column(columns: Sequence[str], where: str) -> str:
    """The one item_emb_d<dim> column among an item_info table's `columns`; none or several is a DataError naming
    `where`."""
    found = [c for c in columns if c.startswith(MM_PREFIX)]
    if len(found) != 1:
        raise DataError(f"{where}: expected one item_emb_d<dim> column, found {found}")
    return found[0]


@dataclass(frozen=True)
class Feature:
    """One input feature; `vocab_size` counts the padding id 0, `max_len` is for sequences only."""

    name: str
    type: FeatureType
    source: FeatureSource
    vocab_size: int = 0
    max_len: int = 0
    embedding_dim: int = 0
    share_embedding: str = ""


@dataclass(frozen=True)
class FeatureMap:
    """The ordered feature list plus the label column's name."""

    features: tuple[Feature, ...]
    label: str = "label"

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"feature map has no feature {name!r}")

    @property
    def context_features(self) -> tuple[Feature, ...]:
        """Per-row categorical side features (e.g. likes_level, views_level)."""
        return tuple(f for f in self.features if f.source == "context")

    @property
    def mm_feature(self) -> Feature | None:
        """The frozen multimodal item embedding, once `train` has added it (its width is the PCA's)."""
        found = [f for f in self.features if f.type == "embedding"]
        return found[0] if found else None

    def with_mm_embedding(self, dim: int) -> FeatureMap:
        """A copy with the frozen item embedding `item_emb_d<dim>` (replacing any earlier one)."""
        kept = tuple(f for f in self.features if f.type != "embedding")
        mm = Feature(name=mm_column(dim), type="embedding", source="item", embedding_dim=dim)
        return replace(self, features=kept + (mm,))

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "features": [
            {k: v for k, v in asdict(f).items() if v not in (0, "")} for f in self.features]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "feature map") -> FeatureMap:
        try:
            feats = tuple(Feature(**f) for f in data["features"])
            fmap = cls(features=feats, label=data.get("label", "label"))
            for name in ("item_id", "item_tags", "item_seq"):
                fmap[name]
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: invalid feature map ({e})") from None
        return fmap

    def save(self, path: str | Path) -> None:
        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureMap:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON (line {e.lineno})") from None
        return cls.from_dict(data, where=str(path))
