"""pipeline/core/config.py: params.yaml loads into typed sections; every bad value fails with a one-line message that
starts with the dotted key."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.core.config import (
    PLAIN_SWITCHES,
    SECTIONS,
    FitPCAConfig,
    ModelConfig,
    ParamsError,
    TrainConfig,
    TuneConfig,
    check_params,
    from_dict,
    load_section,
    params_dict,
    params_keys,
    parse_yaml,
)
from tests.conftest import OUT_OF_RANGE

PARAMS = Path(__file__).parents[1] / "params.yaml"


def _raw() -> dict[str, Any]:
    return yaml.safe_load(PARAMS.read_text())


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _with(tmp_path: Path, section: str, key: str, value: Any) -> Path:
    data = _raw()
    data[section][key] = value
    return _write(tmp_path, data)


def _error(path: Path, section: str) -> str:
    with pytest.raises(ParamsError) as info:
        load_section(path, section, SECTIONS[section])
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("section", SECTIONS)
def test_repo_params_load_with_the_file_values(section: str) -> None:
    cfg = load_section(PARAMS, section, SECTIONS[section])
    raw = _raw()[section]
    # params.yaml states every field explicitly (the dataclass defaults only document the meaning)
    assert set(raw) == set(params_keys(SECTIONS[section]))
    values = params_dict(cfg)
    for key, value in raw.items():
        got = values[key]
        expected = tuple(value) if isinstance(value, list) else value
        assert got == expected, key
        assert type(got) is type(expected) or (isinstance(got, float) and isinstance(expected, int)), key


def test_int_given_for_float_becomes_float(tmp_path: Path) -> None:
    cfg = load_section(_with(tmp_path, "train", "learning_rate", 1), "train", TrainConfig)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_sections_are_frozen() -> None:
    cfg = load_section(PARAMS, "fit_pca", FitPCAConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_is_named(tmp_path: Path, section: str) -> None:
    message = _error(_with(tmp_path, section, "no_such_key", 1), section)
    assert message.startswith(f"{section}.no_such_key: unknown key")
    first_field = next(iter(params_keys(SECTIONS[section])))
    assert first_field in message  # the allowed keys are listed


WRONG_TYPES = [
    ("build_sequences", "max_len", "50"),  # string for int
    ("build_sequences", "max_len", True),  # bool for int
    ("build_sequences", "max_len", 50.0),  # float for int
    ("make_synthetic", "n_items", None),
    ("train", "learning_rate", "fast"),  # string for float
    ("train", "learning_rate", False),  # bool for float
    ("train", "amp", 1),  # int for bool
    ("train", "amp", "yes"),
    ("extract_text", "model", 3),  # int for str
    ("train", "dnn_hidden_units", 256),  # non-list for a tuple
    ("train", "dnn_hidden_units", "256,128"),
    ("fit_pca", "normalize", "l3"),  # outside the Literal
    ("train", "device", "gpu"),
    ("train", "optimizer", "sgd"),
    ("train", "lr_schedule", "step"),
    ("train", "eval_steps", 100.0),  # float for int
    ("train", "embedding_regularizer", "l2(1e-5)"),  # FuxiCTR's string form: a number here
    ("extract_text", "pooling", "max"),
]


@pytest.mark.parametrize(("section", "key", "value"), WRONG_TYPES)
def test_wrong_type_names_the_key(tmp_path: Path, section: str, key: str, value: Any) -> None:
    message = _error(_with(tmp_path, section, key, value), section)
    assert message.startswith(f"{section}.{key}: ")
    assert repr(value) in message


def test_wrong_tuple_element_names_its_index(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, "train", "dnn_hidden_units", [256, "x", 64]), "train")
    assert message.startswith("train.dnn_hidden_units[1]: must be an integer")


def test_literal_message_lists_the_allowed_values(tmp_path: Path) -> None:
    message = _error(_with(tmp_path, "fit_pca", "normalize", "l3"), "fit_pca")
    assert all(repr(v) in message for v in ("l2", "standard", "none"))


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; `dvc exp run -S` writes small floats that way (1e-05), and DVC's
    # own parser reads them as numbers, so the params loader does too. The pattern takes train's scalar
    # learning_rate, not a list of candidates in another section.
    text, n = re.subn(r"(?m)^  learning_rate: [0-9.e+-]+$", "  learning_rate: 1e-3", PARAMS.read_text())
    assert n == 1
    path = tmp_path / "params.yaml"
    text, n = re.subn(r"(?m)^  net_regularizer: [0-9.e+-]+ ", "  net_regularizer: 2E+1 ", text)
    assert n == 1
    path.write_text(text)
    cfg = load_section(path, "train", TrainConfig)
    assert cfg.learning_rate == 0.001 and cfg.net_regularizer == 20.0
    assert parse_yaml("a: 1e-05\nb: 1_000\nc: '1e-3'\nd: 1.5e-2\ne: e5") == {
        "a": 1e-05, "b": 1000, "c": "1e-3", "d": 0.015, "e": "e5"}


@pytest.mark.parametrize(("written", "message"), [
    ('"0.01"', "must be a number, got '0.01' (a quoted number is text: remove the quotes)"),
    ("'1_0'", "must be a number, got '1_0' (a quoted number is text: remove the quotes)"),
    ('"1.0e-3"', "must be a number, got '1.0e-3' (a quoted number is text: remove the quotes)"),
    ("'1e-3'", "must be a number, got '1e-3' (YAML 1.1 reads it as text: write 0.001)"),
    ("'1e-05'", "must be a number, got '1e-05' (YAML 1.1 reads it as text: write 1.0e-05)"),
    ('".5e3"', "must be a number, got '.5e3' (YAML 1.1 reads it as text: write 500.0)"),
    ("inf", "must be a finite number, got 'inf'"),
    ("nan", "must be a finite number, got 'nan'"),
    ('"-Infinity"', "must be a finite number, got '-Infinity'"),
    (".nan", "must be a finite number, got nan"),
    ("fast", "must be a number, got 'fast'"),
])
def test_a_float_written_as_text_gets_the_fix_that_applies(tmp_path: Path, written: str, message: str) -> None:
    """A quoted plain number is told to lose its quotes; scientific notation YAML 1.1 reads as text (the
    benchmarks' --set, safe_dump's quoting) is told a spelling both readers take as that number; inf and nan are
    told the value must be finite; other text gets no hint."""
    text, n = re.subn(r"(?m)^  learning_rate: [0-9.e+-]+$", f"  learning_rate: {written}", PARAMS.read_text())
    assert n == 1
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert _error(path, "train") == f"train.learning_rate: {message}"
    hinted = re.search(r"write (\S+)\)$", message)
    if hinted:  # the spelling suggested reads as the same number under YAML 1.1 and the params loader
        assert yaml.safe_load(hinted[1]) == parse_yaml(hinted[1]) == float(written.strip("'\""))


@pytest.mark.parametrize(("section", "values", "key"), OUT_OF_RANGE)
def test_out_of_range_names_the_key(tmp_path: Path, section: str, values: dict[str, Any], key: str) -> None:
    data = _raw()
    data[section].update(values)
    assert _error(_write(tmp_path, data), section).startswith(f"{key}: ")


@pytest.mark.parametrize(("section", "values"), [
    ("train", {"net_dropout": 0.0, "cross_layers": 0, "lr_decay": 1.0}),
    ("train", {"embedding_dropout": 0.0, "embedding_regularizer": 0.0, "net_regularizer": 0.0, "warmup_steps": 0,
               "eval_steps": 0, "optimizer": "adamw", "weight_decay": 0.0, "learning_rate": 0.001, "min_lr": 0.001}),
    ("build_sequences", {"valid_frac": 0.49, "test_frac": 0.5, "min_history": 0, "n_levels": 2}),
    ("make_synthetic", {"n_items": 3000, "max_clicks_per_user": 2999, "cover_size": 32}),
    ("fit_pca", {"dim": 1}),
])
def test_range_boundaries_are_accepted(tmp_path: Path, section: str, values: dict[str, Any]) -> None:
    data = _raw()
    data[section].update(values)
    cfg = load_section(_write(tmp_path, data), section, SECTIONS[section])
    assert all(params_dict(cfg)[k] == v for k, v in values.items())


def test_missing_section(tmp_path: Path) -> None:
    data = _raw()
    del data["fit_pca"]
    path = _write(tmp_path, data)
    message = _error(path, "fit_pca")
    assert message.startswith("fit_pca: missing section") and str(path) in message


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    data = _raw()
    data["fit_pca"] = [64]
    assert _error(_write(tmp_path, data), "fit_pca").startswith("fit_pca: must be a mapping")


def test_missing_params_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = _error(path, "train")
    assert message == f"{path}: params file not found"


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("fit_pca:\n  dim: 64\n  normalize: [l2\n  seed: 0\ntrain: {\n")
    message = _error(path, "fit_pca")
    assert message.startswith(f"{path} line ")
    line = int(message.split(" line ")[1].split(":")[0])
    assert 3 <= line <= 6  # the unclosed flow sequence opened on line 3
    assert "not valid YAML" in message


def test_invalid_yaml_line_is_exact_for_a_bad_indent(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("fit_pca:\n  dim: 64\n normalize: l2\n")
    assert _error(path, "fit_pca").startswith(f"{path} line 3: not valid YAML")


@pytest.mark.parametrize("content, message", [
    (b"fit_pca:\n  dim: 64\n  normalize: \xff\xfel2\n", "{path} line 3: not UTF-8 text (byte 0xff)"),
    (b"fit_pca: " + b"[" * 5000 + b"]" * 5000 + b"\n", "{path}: nested too deeply to be a params file"),
])
def test_hostile_params_bytes_are_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    assert _error(path, "fit_pca") == message.format(path=path)


@pytest.mark.parametrize("value, why", [
    ("010", "an octal or leading-zero number"), ("-007", "an octal or leading-zero number"),
    ("0o17", "an octal number in YAML 1.2"), ("1:20", "a base-60 number"), ("-1:30.5", "a base-60 number"),
    ("yes", "a boolean in YAML 1.1 but text"), ("Off", "a boolean in YAML 1.1 but text"),
])
def test_values_yaml_1_1_and_dvc_read_differently_are_refused(tmp_path: Path, value: str, why: str) -> None:
    """DVC tracks params.yaml through YAML 1.2 (ruamel), the loader is YAML 1.1 (PyYAML): `patience: 010` ran 8 while
    dvc.lock said 10, and editing it to `10` reran nothing. Such plain values name their line; quoted they are text
    to both, and the forms both read alike still load."""
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  patience: 2\n  model: {value}\n")
    assert _error(path, "train").startswith(f"{path}: not valid YAML (line 3: {value} is {why}")
    path.write_text(f"train:\n  model: '{value}'\n")
    assert _error(path, "train").startswith("train.model: must be one of")  # text now, to both loaders
    assert parse_yaml("a: [0, 10, 0.5, -0.001, 0x1f, 1e-05, true, False, ~, '010']") == {
        "a": [0, 10, 0.5, -0.001, 31, 1e-05, True, False, None, "010"]}


@pytest.mark.parametrize("text, shown", [("train:\n  1: x\n", "int '1'"), ("train:\n  null: x\n", "NoneType 'None'"),
                                         ("? [a]\n: 1\n", "list")])
def test_a_key_that_is_not_text_is_one_line(tmp_path: Path, text: str, shown: str) -> None:
    """A key YAML reads as a number, null or a list gave a TypeError traceback (sorting it among text keys, or
    hashing it)."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert _error(path, "train").endswith(f"a key must be text, got {shown})")


def test_a_params_file_past_a_megabyte_is_refused_before_parsing(tmp_path: Path) -> None:
    """check_params parses the file once per section, at ~1-2 MB a second: a 50 MB file took minutes."""
    path = tmp_path / "params.yaml"
    path.write_text("# padding\n" * 120_000)
    size = path.stat().st_size
    assert _error(path, "train") == f"{path}: {size} bytes, more than a params file needs (1024 KB at most)"


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_params_file_without_end_is_refused_after_a_megabyte() -> None:
    """A file with no size (a device, a pipe) passed the size check and was read without end."""
    assert _error(Path("/dev/zero"), "train") == ("/dev/zero: over 1048576 bytes read, more than a params file "
                                                  "needs (1024 KB at most)")


def test_a_long_tune_list_checks_repeats_in_linear_time() -> None:
    """Repeats were found by scanning the earlier candidates: a list of 60,000 took 25 s. The repeat is still named."""
    TuneConfig(learning_rate=tuple(float(i + 1) for i in range(200_000)))
    with pytest.raises(ParamsError, match=r"tune.learning_rate: lists 0\.5 more than once"):
        TuneConfig(learning_rate=(0.5, 0.25, 0.5))


def test_unreadable_params_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.mkdir()
    assert _error(path, "fit_pca") == f"{path}: cannot read the params file (Is a directory)"


def test_params_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- 1\n- 2\n")
    assert _error(path, "fit_pca") == f"{path}: must be a mapping of sections"


def test_from_dict_requires_fields_without_default() -> None:
    @dataclass(frozen=True)
    class Needs:
        size: int
        name: str = "x"

    assert from_dict(Needs, {"size": 3}, "sec") == Needs(3, "x")
    with pytest.raises(ParamsError, match=r"^sec\.size: missing key$"):
        from_dict(Needs, {"name": "y"}, "sec")


def test_check_params_loads_every_section_and_names_the_first_bad_key(tmp_path: Path) -> None:
    assert check_params(PARAMS) == sorted(SECTIONS)
    data = _raw()
    data["fit_pca"]["dimm"] = 3
    with pytest.raises(ParamsError, match=r"^fit_pca\.dimm: unknown key"):
        check_params(_write(tmp_path, data))
    data = _raw()
    data["fit_pcaa"] = {"dim": 3}
    with pytest.raises(ParamsError, match=r"^fit_pcaa: unknown section in .*params\.yaml \(known: data, "):
        check_params(_write(tmp_path, data))


def test_check_params_needs_an_exposure_log_for_exposure_rows(tmp_path: Path) -> None:
    """build_sequences.negatives: exposures on the synthetic source needs make_synthetic to write the exposure log;
    checked across the two sections before any stage runs (build_sequences would stop later, its outputs gone)."""
    data = _raw()
    data["build_sequences"]["negatives"] = "exposures"
    with pytest.raises(ParamsError, match=r"^build_sequences\.negatives: exposures reads an exposure log: with "
                                          r"data\.source synthetic, set make_synthetic\.negatives: exposures too"):
        check_params(_write(tmp_path, data))
    data["make_synthetic"]["negatives"] = "exposures"
    assert check_params(_write(tmp_path, data)) == sorted(SECTIONS)
    data = _raw()
    data["build_sequences"]["negatives"] = "exposures"
    data["data"].update(source="microlens", raw_dir="data/microlens")  # a real exposure log: impressions.csv
    assert check_params(_write(tmp_path, data)) == sorted(SECTIONS)


def test_check_params_new_items_need_the_leave_last_split(tmp_path: Path) -> None:
    """Held-out new items appear in each user's last two requests: under split: time the test split would have none
    (0 cold rows, not an error), so check_params refuses the combination."""
    data = _raw()
    data["make_synthetic"].update(negatives="exposures", new_item_share=0.2)
    data["build_sequences"].update(negatives="exposures", split="time")
    with pytest.raises(ParamsError, match=r"^make_synthetic\.new_item_share: new items are shown in each user's "
                                          r"last two requests"):
        check_params(_write(tmp_path, data))
    data["build_sequences"]["split"] = "leave_last"
    assert check_params(_write(tmp_path, data)) == sorted(SECTIONS)


def test_check_params_checks_the_widths_the_frozen_embedding_decides(tmp_path: Path) -> None:
    """Heads that do not divide the encoder's token width, and a model of many GiB, depend on the frozen embedding's
    width (fit_pca.dim, or 128 for challenge_d128, with mm_dim 0): train would find them after DVC deleted its
    outputs, so check_params refuses them first, naming the key."""
    data = _raw()
    data["train"].update(mm_dim=0, embedding_dim=16, num_heads=3)  # token width 2 x (32 + fit_pca.dim)
    data["fit_pca"]["dim"] = 30
    with pytest.raises(ParamsError, match=r"^train\.num_heads: 3 heads do not divide the encoder's token width 124"):
        check_params(_write(tmp_path, data))
    data["fit_pca"]["dim"] = 31
    assert check_params(_write(tmp_path, data)) == sorted(SECTIONS)
    data["data"].update(source="mmctr", raw_dir="data/mmctr", item_embeddings="challenge_d128")  # width 2 x 160
    with pytest.raises(ParamsError, match=r"^train\.num_heads: .* width 320 "):
        check_params(_write(tmp_path, data))
    data = _raw()
    data["train"].update(embedding_dim=4096, cross_rank=0)
    with pytest.raises(ParamsError, match=r"^train\.cross_rank: the model's layers would hold [\d,]+ weights "
                                          r"\([\d,.]+ GiB in float32\)"):
        check_params(_write(tmp_path, data))
    data["train"]["embedding_dim"] = 64
    assert check_params(_write(tmp_path, data)) == sorted(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_field_defaults_are_the_params_yaml_values(section: str) -> None:
    """params.yaml owns every value: a section built in code without params is the run params.yaml describes."""
    cls = SECTIONS[section]
    assert load_section(PARAMS, section, cls) == cls()


def test_train_holds_its_architecture_as_one_model_config() -> None:
    """The train section is flat in params.yaml (train.embedding_dim), but TrainConfig holds the architecture as
    one ModelConfig field, checked by ModelConfig itself: the very object a checkpoint stores."""
    cfg = load_section(PARAMS, "train", TrainConfig)
    assert type(cfg.arch) is ModelConfig and not isinstance(cfg, ModelConfig)
    # arch's keys stand in its place among train's own fields
    assert list(params_keys(TrainConfig)) == [*params_keys(ModelConfig),
                                              *(f.name for f in dataclasses.fields(TrainConfig) if f.name != "arch")]
    assert from_dict(TrainConfig, params_dict(cfg), "train") == cfg  # the flat mapping round-trips
    with pytest.raises(ParamsError, match=r"^train\.embedding_dim: must be >= 1"):
        from_dict(TrainConfig, {**params_dict(cfg), "embedding_dim": 0}, "train")
    with pytest.raises(ParamsError, match=r"^train\.arch: unknown key"):  # the nesting is not a params key
        from_dict(TrainConfig, {"arch": {"embedding_dim": 8}}, "train")


@pytest.mark.parametrize("model", ["transformer_dcn", "din", "meanpool"])
def test_plain_switches_make_the_default_a_valid_config_of_every_model(model: str) -> None:
    """A switch added with an 'on' default that another model rejects must join PLAIN_SWITCHES, or every baseline
    (compare, variants, the FuxiCTR benchmark) fails at load."""
    cfg = ModelConfig(**{**PLAIN_SWITCHES, "model": model})
    assert {k: getattr(cfg, k) for k in PLAIN_SWITCHES} == PLAIN_SWITCHES
    assert set(PLAIN_SWITCHES) <= {f.name for f in dataclasses.fields(ModelConfig)}
