"""One entry point from a ModelConfig to the CTR model it names (`train.model`)."""

from __future__ import annotations

from torch import Tensor, nn

from model.din import DIN
from model.ensemble import SeedEnsemble
from model.layers import CTRBase
from model.meanpool import MeanPool
from model.transformer_dcn import TransformerDCN
from pipeline.core.config import ModelConfig
from pipeline.core.feature_map import FeatureMap

MODELS: dict[str, type[CTRBase]] = {"transformer_dcn": TransformerDCN, "din": DIN, "meanpool": MeanPool}


def build_model(cfg: ModelConfig, feature_map: FeatureMap, item_tags: Tensor, item_mm: Tensor,
                item_codes: Tensor | None = None, item_exposure: Tensor | None = None,
                user_keys: Tensor | None = None, item_new: Tensor | None = None) -> nn.Module:
    """The model `cfg.model` over the item tables (item_tags (N+1, T) int64, item_mm (N+1, M) float32, item_codes
    (N+1, L) int64 semantic ids or None, item_exposure (N+1,) int64 train-exposure levels or None, row i = item i;
    user_keys (U,) int64, the sorted train user ids of `user_bias` and `user_interest`, or None; item_new (N+1,)
    bool, the items the train split never had as a target, for `new_item_offset`, or None). Every model returns
    logits (B,) from the same batch dict, keeps `cfg` as `.cfg` and holds the tables as buffers `item_tags`,
    `item_mm` (and `item_codes`, `item_exposure`, `user_keys`, `item_new` when cfg uses them). `cfg.model` is one
    of MODELS (ModelConfig checks it). With cfg.ensemble > 1 it is a SeedEnsemble of that many such models (each
    holding the tables), freshly initialised one after another: fit_ensemble trains members, load_checkpoint fills
    one."""
    if cfg.ensemble > 1:
        return SeedEnsemble(cfg, [build_model(cfg.member(k), feature_map, item_tags, item_mm, item_codes, item_exposure,
                                              user_keys, item_new) for k in range(cfg.ensemble)])
    return MODELS[cfg.model](cfg, feature_map, item_tags, item_mm, item_codes, item_exposure, user_keys, item_new)
