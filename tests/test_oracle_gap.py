"""benchmarks/oracle_gap.py's item table: each item's planted latent and log-popularity, found by item_id."""

from __future__ import annotations

import numpy as np
import polars as pl

from benchmarks.oracle_gap import planted_item_info
from pipeline.sources.planted import PlantedModel


def test_planted_item_info_puts_each_items_planted_parameters_in_its_row(tmp_path) -> None:
    rng = np.random.default_rng(0)
    latent = np.vstack([np.zeros((1, 3)), rng.standard_normal((4, 3))])
    model = PlantedModel(item_latent=latent, item_log_pop=np.array([0.0, 0.5, -1.0, 2.0, 0.25]),
                         item_topic=np.array([-1, 0, 1, 0, 1]), user_pref=np.zeros((2, 3)), preference_weight=1.0,
                         popularity_weight=1.0, recency_weight=1.0, recency_window=2,
                         click_model="softmax", click_bias=0.0)
    model.save(tmp_path / "planted.npz")
    ids = np.array([0, 3, 1, 4, 2], dtype=np.int32)  # not in id order: rows must be found by item_id
    pl.DataFrame({"item_id": ids, "item_tags": [[0], [1], [2], [1], [2]],
                  "item_emb_d6": pl.Series(rng.standard_normal((5, 6)).astype(np.float32),
                                           dtype=pl.Array(pl.Float32, 6))}).write_parquet(tmp_path / "info.parquet")
    planted_item_info(tmp_path / "info.parquet", tmp_path / "planted.npz", tmp_path / "out.parquet")
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.schema["item_emb_d6"] == pl.Array(pl.Float32, 6)
    assert out["item_id"].to_list() == ids.tolist() and out["item_tags"].to_list() == [[0], [1], [2], [1], [2]]
    emb = out["item_emb_d6"].to_numpy()
    np.testing.assert_allclose(emb[:, :3], latent[ids], rtol=1e-6)
    np.testing.assert_allclose(emb[:, 3], model.item_log_pop[ids], rtol=1e-6)
    assert not emb[:, 4:].any() and not emb[0].any()
