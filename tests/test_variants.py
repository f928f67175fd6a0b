"""benchmarks/variants.py: every train profile is a valid train section over the repository's params.yaml (a
baseline that kept the default's transformer_dcn-only switches would stop at load time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.variants import PROFILES, params_for
from pipeline.core.config import TrainConfig, load_section


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_loads_as_a_train_section(tmp_path: Path, profile: str) -> None:
    params = params_for(tmp_path / "variant", PROFILES[profile])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_section(tmp_path / "params.yaml", "train", TrainConfig)
    assert cfg.arch.model == {"default": "transformer_dcn", "winner": "transformer_dcn",
                              "meanpool-recipe": "meanpool", "din-recipe": "din"}.get(profile, profile)
    assert (cfg.arch.exposure_levels > 0) == (profile == "default")  # the baselines are the plain architectures
    assert params["data"]["source"] == "mmctr" and params["build_sequences"]["max_len"] == 50
