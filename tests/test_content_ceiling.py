"""benchmarks/content_ceiling.py on a small cold variant written by benchmarks/variants.py: its history oracle is
the one make_variant wrote, the new items are scored from content alone, and the estimates are what they claim."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.core.metrics import auc

ROOT = Path(__file__).resolve().parents[1]


def test_content_ceiling_of_a_small_cold_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports its sibling as `variants`
    import content_ceiling
    import variants

    variant = variants.Variant("small-cold", "test", {
        **variants.BASE, "n_items": 300, "n_users": 600, "mean_requests_per_user": 4.0, "max_requests_per_user": 20,
        "click_bias": -2.0, "new_item_share": 0.2, "seed": 7}, split="leave_last")
    variants.make_variant(variant, tmp_path)
    records = {r["slice"]: r for r in content_ceiling.ceiling(variant, tmp_path / variant.name)}
    truth = pl.read_parquet(tmp_path / variant.name / "truth.parquet")
    labels = truth["label"].to_numpy()
    assert records["all"]["rows"] == len(labels)
    assert records["all"]["history oracle"] == pytest.approx(auc(labels, truth["history_oracle"].to_numpy()))
    new = records["0"]  # the held-out items have no train rows: they are the ones estimated
    assert new["items"] == 60 and new["rows"] >= content_ceiling.MIN_SLICE_ROWS
    assert new["r2_latent"] > 0.5  # the default views show the latent
    # Old items keep their planted parameters, so their slices score exactly as the history oracle.
    for name in ("1-9", "10+"):
        if name in records:
            assert records[name]["content oracle"] == pytest.approx(records[name]["history oracle"], abs=2e-3)
    assert new["content oracle"] != new["history oracle"]
