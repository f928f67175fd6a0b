"""Reliability and security: files that try to run code, every params key given a wrong type, corrupt inputs and a
read-only or full output location. Each case must end in a one-line error naming the file or key (or a refusal),
never in a deep traceback, executed code or a half-written artifact."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import typing
from pathlib import Path

import click
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.core import config as config_module
from pipeline.core.config import PLAIN_SWITCHES, SECTIONS, ParamsError, load_section, params_keys
from pipeline.core.distributed import SINGLE
from pipeline.core.feature_map import FeatureMap
from pipeline.core.io import DataError, atomic_dir, write_json, write_parquet
from pipeline.core.stage import stage_lock
from pipeline.extract.image import load_image_encoder
from pipeline.extract.text import load_text_encoder
from pipeline.itememb.pca import FittedPCA, fit_pca
from pipeline.sources.microlens import read_pairs
from pipeline.training.checkpoint import FitState, load_checkpoint
from pipeline.training.data import check_item_tables, load_item_tables, load_split
from tests.conftest import OUT_OF_RANGE, feature_map, small_model, toy_split, train_cfg

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


# ------------------------------------------------------------------------------- nothing executes from a file


class _RunsCode:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile(path: Path, marker: Path, payload: dict | None = None) -> Path:
    torch.save({"model": _RunsCode(marker), **(payload or {})}, path)
    return path


def test_a_checkpoint_that_runs_code_on_load_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(DataError, match=r"model\.pt: not a valid mmctr checkpoint"):
        load_checkpoint(_hostile(tmp_path / "model.pt", marker), torch.device("cpu"))
    assert not marker.exists()


def test_a_load_error_without_text_is_still_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception with an empty message has no first line: the error names its type instead of failing."""

    def fail(*args, **kwargs):
        raise ValueError()

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(DataError, match=r"model\.pt: not a valid mmctr checkpoint \(ValueError\)$"):
        load_checkpoint(tmp_path / "model.pt", torch.device("cpu"))


def test_a_resume_state_that_runs_code_is_ignored_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = _hostile(tmp_path / "state.pt", marker)
    model = small_model()
    opt = torch.optim.Adam(model.parameters())
    assert FitState.load(state, "fp", model, opt, torch.Generator()) is None
    assert not marker.exists()


def test_fitted_transform_and_image_checkpoint_are_loaded_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "pca.npz", components=np.array([_RunsCode(marker)], dtype=object))
    with pytest.raises(DataError, match="pca.npz"):
        FittedPCA.load(tmp_path / "pca.npz")
    with pytest.raises(ParamsError, match="extract_image.pretrained: cannot load"):
        load_image_encoder("mmctr-tiny-vit", str(_hostile(tmp_path / "clip.pt", marker)), torch.device("cpu"))
    assert not marker.exists()


# ----------------------------------------------------------------------------------- the params matrix


def _wrong_type(annotation: typing.Any) -> typing.Any:
    """A value of the wrong type for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "no_such_choice"
    if annotation is bool:
        return "yes"
    if annotation in (int, float):
        return "ten"
    if annotation is str:
        return 5
    if origin is tuple:
        return "not a list"
    raise AssertionError(f"no wrong value for {annotation}")


# Out-of-range values and combinations that only the whole section can judge, as (section, values, key named).
RANGE_CASES = [*OUT_OF_RANGE,
               ("train", {"dice": True}, "train.dice"),
               # the default's transformer_dcn-only parts off, so use_transformer is the one at fault
               ("train", {**PLAIN_SWITCHES, "model": "din", "use_transformer": False}, "train.use_transformer"),
               ("train", {"din_attention_units": [64, 0]}, "train.din_attention_units"),
               ("train", {"batch_size": -5}, "train.batch_size"),
               ("embedding_report", {"k": 0}, "embedding_report.k")]


def _matrix() -> list[tuple[str, dict[str, typing.Any], str]]:
    """Every key of every section with a wrong-type value, an unknown key per section, and RANGE_CASES."""
    cases = []
    for section, cls in SECTIONS.items():
        for key, annotation in params_keys(cls).items():
            cases.append((section, {key: _wrong_type(annotation)}, f"{section}.{key}"))
        cases.append((section, {"no_such_key": 1}, f"{section}.no_such_key"))
    return cases + RANGE_CASES


MATRIX = _matrix()


@pytest.mark.parametrize(("section", "values", "key"), MATRIX,
                         ids=[f"{k}={list(v.values())[-1]!r}" for _, v, k in MATRIX])
def test_every_params_key_with_a_bad_value_is_one_line_naming_it(tmp_path: Path, section: str,
                                                                 values: dict[str, typing.Any], key: str) -> None:
    params = yaml.safe_load(PARAMS.read_text())
    params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as err:
        load_section(tmp_path / "params.yaml", section, SECTIONS[section])
    message = str(err.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_pca_dim_beyond_the_items_or_input_features_names_the_key() -> None:
    """fit_pca.dim is checked against the data as soon as the embeddings are read, before the PCA is fitted."""
    rng = np.random.default_rng(0)
    with pytest.raises(ParamsError, match=r"fit_pca\.dim: 9 exceeds min\(items, input features\) = min\(8, 12\)"):
        fit_pca(rng.normal(size=(8, 6)), rng.normal(size=(8, 6)), dim=9, normalize="l2", seed=0)
    with pytest.raises(ParamsError, match=r"= min\(50, 5\)"):
        fit_pca(rng.normal(size=(50, 3)), rng.normal(size=(50, 2)), dim=6, normalize="l2", seed=0)


def test_hub_models_load_without_remote_code_unless_the_key_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """trust_remote_code reaches transformers as False by default (ExtractTextConfig and params.yaml), and True only
    when extract_text.trust_remote_code is set."""
    import transformers

    seen = []

    def fake(source, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake)
    assert load_section(PARAMS, "extract_text", config_module.ExtractTextConfig).trust_remote_code is False
    for flag in (False, True):
        with pytest.raises(ParamsError, match="extract_text.model"):
            load_text_encoder("someone/custom-bert", trust_remote_code=flag)
    assert seen == [False, True]


def test_the_matrix_covers_every_key() -> None:
    keys = {tuple(key.split(".", 1)) for _, _, key in MATRIX}
    params = yaml.safe_load(PARAMS.read_text())
    assert {(s, k) for s in SECTIONS for k in params[s]} <= keys
    assert len(MATRIX) > 100


# ----------------------------------------------------------------------------------------- corrupt inputs


def _split_file(tmp_path: Path, n: int = 6, label: float | None = None) -> tuple[Path, FeatureMap]:
    split = toy_split(n, seed=0)
    fmap = feature_map()
    df = pl.DataFrame({
        "user_id": pl.Series(split.user_id.numpy(), dtype=pl.Int32),
        "item_seq": pl.Series(split.item_seq.numpy().tolist(), dtype=pl.List(pl.Int32)),
        "item_id": pl.Series(split.item_id.numpy(), dtype=pl.Int32),
        "label": pl.Series(split.label.numpy() if label is None else np.full(n, label), dtype=pl.Float32),
        **{k: pl.Series(v.numpy(), dtype=pl.Int8) for k, v in split.context.items()},
    })
    path = tmp_path / "split.parquet"
    write_parquet(df, path)
    return path, fmap


def test_histories_are_held_as_int32_and_batched_as_int64(tmp_path: Path) -> None:
    """load_split keeps the history matrix as int32 (half the memory); make_batch widens a batch to the int64 the
    model takes, with the same values as the file's."""
    from pipeline.training.data import make_batch

    path, fmap = _split_file(tmp_path)
    split = load_split(path, fmap)
    assert split.item_seq.dtype == torch.int32
    batch = make_batch(split, torch.arange(len(split)), first_k=fmap["item_seq"].max_len, device=torch.device("cpu"))
    assert batch["item_seq"].dtype == torch.int64
    np.testing.assert_array_equal(batch["item_seq"].numpy(),
                                  pl.read_parquet(path)["item_seq"].list.to_array(fmap["item_seq"].max_len).to_numpy())


def test_truncated_random_and_mistyped_split_files_are_one_line_errors(tmp_path: Path) -> None:
    path, fmap = _split_file(tmp_path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"split\.parquet: not a readable parquet file"):
        load_split(path, fmap)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"split\.parquet: not a readable parquet file"):
        load_split(path, fmap)
    path.write_bytes(good)
    pl.read_parquet(path).with_columns(pl.col("item_id").cast(pl.Utf8)).write_parquet(path)
    with pytest.raises(DataError, match=r"split\.parquet: column 'item_id' has dtype String, expected Int32"):
        load_split(path, fmap)


@pytest.mark.parametrize("corrupt, message", [
    (lambda df, n: df.with_columns(item_id=pl.lit(n, dtype=pl.Int32)), r"row 0: item_id {n} is outside 1\.\.{m}"),
    (lambda df, n: df.with_columns(item_id=pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise("item_id")),
     r"row 2: item_id is null"),
    (lambda df, n: df.with_columns(item_seq=pl.concat_list(pl.col("item_seq").list.slice(1), pl.lit(n + 7))),
     r"row 0: item_seq holds an item id outside 0\.\.{m}"),
    (lambda df, n: df.with_columns(pl.col("item_seq").list.head(1)), r"row 0: item_seq has length 1, expected"),
    # a history with a gap (3, 0, 5): trim_history would keep the 5 only, and first_k pool the wrong positions
    (lambda df, n: df.with_columns(item_seq=pl.when(pl.int_range(pl.len()) == 4).then(pl.concat_list(
        pl.col("item_seq").list.slice(3), pl.lit([3, 0, 5]))).otherwise("item_seq")),
     r"row 4: item_seq is not left-padded \(a 0 follows an item id\)"),
    (lambda df, n: df.with_columns(likes_level=pl.lit(-1, dtype=pl.Int8)), r"row 0: likes_level -1 is outside"),
    (lambda df, n: df.with_columns(label=pl.when(pl.int_range(pl.len()) == 3).then(float("nan")).otherwise(
        "label")), r"row 3: label nan is not 0 or 1"),
    (lambda df, n: df.with_columns(label=pl.lit(0.5, dtype=pl.Float32)), r"row 0: label 0.5 is not 0 or 1"),
])
def test_values_that_would_index_past_a_table_or_are_no_label_name_the_row(tmp_path: Path, corrupt, message
                                                                             ) -> None:
    """Every column that indexes an embedding table, and the label, is checked when the split is read: the
    first bad row and the column are named, before any training step."""
    path, fmap = _split_file(tmp_path)
    n = fmap["item_id"].vocab_size
    df = corrupt(pl.read_parquet(path), n)
    df.with_columns(pl.col(c).cast(t) for c, t in pl.read_parquet(path).schema.items()).write_parquet(path)
    with pytest.raises(DataError, match=r"split\.parquet: " + message.format(n=n, m=n - 1)):
        load_split(path, fmap)


def test_empty_split_and_one_class_split(tmp_path: Path) -> None:
    path, fmap = _split_file(tmp_path)
    pl.read_parquet(path).head(0).write_parquet(path)
    with pytest.raises(DataError, match=r"split\.parquet: split has no rows"):
        load_split(path, fmap)
    train, valid = toy_split(64, seed=1), toy_split(32, seed=2)
    one_class = dataclasses.replace(valid, label=torch.ones(32))
    with pytest.raises(DataError, match="AUC is undefined: the labels hold one class only"):
        from pipeline.training.loop import fit
        fit(small_model(), train, one_class, train_cfg(epochs=1), torch.device("cpu"), dist=SINGLE)


def test_random_bytes_as_clicks_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(DataError, match=r"pairs\.csv: line 1: expected header"):
        read_pairs(path)


def test_nan_or_inf_in_frozen_embeddings_is_a_one_line_error(tmp_path: Path) -> None:
    emb = np.ones((4, 3), dtype=np.float32)
    emb[2, 1] = np.inf
    info = pl.DataFrame({"item_id": pl.Series(range(4), dtype=pl.Int32),
                         "item_tags": pl.Series([[0], [1], [1], [2]], dtype=pl.List(pl.Int32)),
                         "item_emb_d3": pl.Series(emb, dtype=pl.Array(pl.Float32, 3))})
    write_parquet(info, tmp_path / "item_info.parquet")
    with pytest.raises(DataError, match=r"item_info\.parquet: row 2: item_emb_d3 holds a non-finite value"):
        load_item_tables(tmp_path / "item_info.parquet")


@pytest.mark.parametrize("column, message", [
    (pl.Series([0.0, 1.0, 2.0, 3.0], dtype=pl.Float32), r"column 'item_emb_d3' has dtype Float32, expected a list"),
    (pl.Series(["a", "b", "c", "d"]), r"column 'item_emb_d3' has dtype String, expected a list of numbers"),
    (pl.Series([[0.0] * 3, [1.0] * 3, [1.0] * 2, [1.0] * 3], dtype=pl.List(pl.Float32)),
     r"row 2: item_emb_d3 has length 2, expected length 3"),
    (pl.Series([[0.0] * 3, [1.0] * 3, [1.0, None, 1.0], [1.0] * 3], dtype=pl.List(pl.Float32)),
     r"row 2: item_emb_d3 holds a null"),
])
def test_an_item_embedding_column_that_is_not_a_matrix_is_a_one_line_error(tmp_path: Path, column, message
                                                                              ) -> None:
    info = pl.DataFrame({"item_id": pl.Series(range(4), dtype=pl.Int32),
                         "item_tags": pl.Series([[0], [1], [1], [2]], dtype=pl.List(pl.Int32)),
                         "item_emb_d3": column})
    write_parquet(info, tmp_path / "item_info.parquet")
    with pytest.raises(DataError, match=r"item_info\.parquet: " + message):
        load_item_tables(tmp_path / "item_info.parquet")


def test_an_item_table_that_does_not_fit_the_feature_map_is_named(tmp_path: Path) -> None:
    fmap = feature_map()
    n, t = fmap["item_id"].vocab_size, fmap["item_tags"].vocab_size
    with pytest.raises(DataError, match=rf"info\.parquet: {n} items, but the feature map has item ids 1\.\.{n - 1}"):
        check_item_tables("info.parquet", torch.zeros((n + 1, 2), dtype=torch.int64), fmap)
    tags = torch.zeros((n, 2), dtype=torch.int64)
    tags[3, 1] = t
    with pytest.raises(DataError, match=rf"info\.parquet: row 3: item_tags holds a tag id outside 0\.\.{t - 1}"):
        check_item_tables("info.parquet", tags, fmap)


# ------------------------------------------------------------------------ concurrent runs, orphaned stages

CHILD = """
import os, sys, time, click
from pipeline.core.stage import stage_main

@click.command()
@stage_main
def main():
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(300)

main([])
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def _wait_for(predicate, what: str, tries: int = 600) -> None:
    for _ in range(tries):  # a liveness bound (60 s), not a speed target
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_second_run_of_a_stage_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    """A stage holds a lock for its working folder while it runs: a second run (a trainer orphaned by a killed dvc,
    then `dvc repro`) is a one-line error naming the holder's pid, and writes nothing."""
    pidfile, env = tmp_path / "first.pid", dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "child.py").write_text(CHILD)
    first = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(pidfile)], cwd=tmp_path, env=env)
    try:
        _wait_for(pidfile.exists, "the first run to start")
        again = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "second.pid")],
                               cwd=tmp_path, env=env, capture_output=True, text=True)
        assert again.returncode == 1
        assert again.stderr.strip().splitlines() == [
            f"Error: __main__: another run of this stage (pid {first.pid}) is writing its outputs in {tmp_path}; "
            "wait for it to finish or stop it"]
        assert not (tmp_path / "second.pid").exists()
    finally:
        first.kill()
        first.wait()
    with stage_lock("__main__", tmp_path):  # the OS dropped the killed holder's lock
        pass


def test_a_stage_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    """kill -9 of the parent (dvc) leaves no stage running: the stage sees it is re-parented and stops."""
    pidfile = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(CHILD)
    parent = subprocess.Popen([sys.executable, "-c", f"""
import os, signal, subprocess, sys, time
subprocess.Popen([sys.executable, {str(tmp_path / "child.py")!r}, {str(pidfile)!r}])
while not os.path.exists({str(pidfile)!r}):
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)
"""], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert parent.wait() == -signal.SIGKILL
    child = int(pidfile.read_text())
    _wait_for(lambda: not _alive(child), f"the orphaned stage (pid {child}) to stop")


# ---------------------------------------------------------------------------------------- output modes


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_modes_a_plain_open_would_give(tmp_path: Path, umask: int) -> None:
    """Temp files and folders are born 0600/0700 (mkstemp, mkdtemp ignore the umask); the finished outputs get
    0666/0777 less the umask, as open() and mkdir() give."""
    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "m.json")
        with atomic_dir(tmp_path / "raw") as d:
            (d / "f.csv").write_text("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "raw").stat().st_mode) == 0o777 & ~umask


def test_a_replaced_folder_stays_whole_until_the_new_one_is_in_place(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """make_synthetic's raw folder: the old one is renamed aside, not deleted file by file before the new one is
    in place, so a failure at the last step leaves it whole (and a kill there, at worst, briefly absent); a link
    in its place is replaced, its target left alone."""
    raw = tmp_path / "raw"
    with atomic_dir(raw) as d:
        (d / "pairs.csv").write_text("old\n")
        (d / "covers").mkdir()
        (d / "covers" / "1.jpg").write_bytes(b"x")
    real_rename, failed = os.rename, []

    def fail_onto_raw(src, dst, *args, **kwargs):  # the new folder's move into place fails (once)
        if Path(dst) == raw and not failed:
            failed.append(src)
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", fail_onto_raw)
    monkeypatch.setattr(os, "replace", fail_onto_raw)
    with pytest.raises(DataError, match="raw: cannot write the output"):
        with atomic_dir(raw) as d:
            (d / "pairs.csv").write_text("new\n")
    monkeypatch.undo()
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*")) == ["covers", "covers/1.jpg", "pairs.csv"]
    assert (raw / "pairs.csv").read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["raw"]

    elsewhere = tmp_path / "elsewhere"
    raw.rename(elsewhere)
    raw.symlink_to(elsewhere)
    with atomic_dir(raw) as d:
        (d / "pairs.csv").write_text("new\n")
    assert not raw.is_symlink() and (raw / "pairs.csv").read_text() == "new\n"
    assert (elsewhere / "pairs.csv").read_text() == "old\n"  # the link's target is not the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "raw"]


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """build_sequences' split files are built from --out-dir, so click's file check never sees them: a folder in
    the place of valid.parquet was found only after train.parquet had been replaced. It is refused at the start; a
    link in an output's place is fine (the rename replaces the link, not its target)."""
    from pipeline.core.io import prepare_outputs

    (tmp_path / "seq" / "valid.parquet").mkdir(parents=True)
    with pytest.raises(DataError, match=r"seq/valid\.parquet: cannot write the output \(a folder is in its place\)"):
        prepare_outputs(tmp_path / "seq" / "train.parquet", tmp_path / "seq" / "valid.parquet")
    (tmp_path / "seq" / "test.parquet").symlink_to(tmp_path / "seq" / "valid.parquet")
    prepare_outputs(tmp_path / "seq" / "test.parquet")


def test_an_output_group_puts_its_files_in_place_together_or_not_at_all(tmp_path: Path) -> None:
    """A stage's several outputs (build_sequences' splits and metrics, evaluate's submission and metrics): a
    failure after the first is written leaves every old file as it was, with no new one beside old siblings and no
    temp file; a group that finishes renames them all."""
    from pipeline.core.io import output_group

    first, second = tmp_path / "train.parquet", tmp_path / "m.json"
    write_json({"run": 1}, first)
    write_json({"run": 1}, second)
    with pytest.raises(DataError, match="the second output failed"), output_group():
        write_json({"run": 2}, first)
        raise DataError("the second output failed")
    assert json.loads(first.read_text()) == {"run": 1} and json.loads(second.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "train.parquet"]
    with output_group():
        write_json({"run": 3}, first)
        write_json({"run": 3}, second)
        assert json.loads(first.read_text()) == {"run": 1}  # not yet: at the group's end
    assert json.loads(first.read_text()) == {"run": 3} and json.loads(second.read_text()) == {"run": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "train.parquet"]
    # a nested group is part of the outer one: a failure after it still leaves every file as it was
    with pytest.raises(DataError, match="after the inner group"), output_group():
        with output_group():
            write_json({"run": 4}, first)
        assert json.loads(first.read_text()) == {"run": 3}
        write_json({"run": 4}, second)
        raise DataError("after the inner group")
    assert json.loads(first.read_text()) == {"run": 3} and json.loads(second.read_text()) == {"run": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "train.parquet"]


def test_sigterm_runs_the_clean_up_of_a_stage_then_exits_143(tmp_path: Path) -> None:
    """torchrun stops the surviving ranks, and stop_with_parent a stage whose dvc died, with SIGTERM, which ended
    the process at once: train's streamed split copies (full copies of the splits) stayed on disk for good. Within a
    stage, SIGTERM is SystemExit(143): context managers clean up. The old handler is back afterwards."""
    from pipeline.core.stage import sigterm_exits

    work = tmp_path / ".model.pt.train-arrays.0"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, sigterm_exits():
        work.mkdir()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread before the sleep ends
        finally:
            shutil.rmtree(work)
    assert stopped.value.code == 143 and not work.exists()
    assert signal.getsignal(signal.SIGTERM) == before


# --------------------------------------------------------------------- a read-only or full output location


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_unwritable_output_is_one_line_and_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   code: int) -> None:
    out = tmp_path / "metrics.json"
    write_json({"auc": 0.5}, out)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DataError, match=rf"metrics\.json: cannot write the output \({os.strerror(code)}\)"):
        write_json({"auc": 0.9}, out)
    monkeypatch.undo()
    assert out.read_text() == '{\n  "auc": 0.5\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_a_stage_reports_an_unwritable_output_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage wrapper turns it into `Error: <file>: cannot write the output (...)`, exit code 1."""
    from stages.make_synthetic import main

    params = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "raw"), "--params", str(tmp_path / "params.yaml")])
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]  # after the progress bars
    assert line.startswith("Error: ") and "cannot write the output (Read-only file system)" in line
    assert not (tmp_path / "raw").exists()


def test_json_outputs_are_valid_json_even_with_nan(tmp_path: Path) -> None:
    """A metric can be NaN (gAUC when no test user has both labels): Python's json writes `NaN`, which strict
    parsers and other tools refuse. write_json writes null for every non-finite float, at any depth."""
    import math

    out = tmp_path / "m.json"
    write_json({"gauc": math.nan, "curve": [1.0, math.inf, (2.0, -math.inf)], "n": 3, "by": {"0": {"auc": math.nan}}},
               out)
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"gauc": None, "curve": [1.0, None, [2.0, None]], "n": 3, "by": {"0": {"auc": None}}}


def test_the_next_write_removes_a_killed_writers_temp_but_not_a_live_ones(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "0"])  # its pid is free once it has exited
    proc.wait()
    stale = tmp_path / f".out.json.{proc.pid}.abc.tmp"
    live = tmp_path / f".out.json.{os.getppid()}.def.tmp"
    stale.write_text("half")
    live.write_text("being written")
    write_json({"a": 1}, tmp_path / "out.json")
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out.json"]


def test_a_nan_loss_reaches_the_user_as_one_line_naming_the_step() -> None:
    """fit raises FloatingPointError at a NaN/inf loss (tests/test_training.py); the stage wrapper prints it as one
    line, exit code 1, instead of a traceback."""
    import click

    from pipeline.core.stage import stage_main

    @click.command()
    @stage_main
    def failing() -> None:
        raise FloatingPointError("train: loss is nan at step 3 (epoch 0)")

    result = CliRunner().invoke(failing, [])
    assert result.exit_code == 1
    assert result.output == "Error: train: loss is nan at step 3 (epoch 0)\n"


def test_os_faults_are_one_line_and_bugs_keep_their_traceback() -> None:
    """An unreadable file (PermissionError: root can read anything, so the error is built here), a polars error that
    wraps an OS error, and a plain bug: the first two become one line naming the file or the reason, the bug is
    re-raised untouched."""
    from pipeline.core.stage import error_line, one_line_errors

    assert error_line(PermissionError(errno.EACCES, "Permission denied", "raw/pairs.csv")) == (
        "raw/pairs.csv: Permission denied")
    wrapped = pl.exceptions.ComputeError("failed to write: No space left on device (os error 28)")
    assert error_line(wrapped) == "No space left on device (failed to write: No space left on device (os error 28))"
    # A bare OSError without a file says its reason once, not "x (x)".
    assert error_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    assert error_line(OSError(0, "device went away")) == "[Errno 0] device went away"
    assert error_line(ValueError("a bug")) is None
    with pytest.raises(ValueError, match="a bug"), one_line_errors():
        raise ValueError("a bug")
    with pytest.raises(click.ClickException, match="raw/pairs.csv: Permission denied"), one_line_errors():
        raise PermissionError(errno.EACCES, "Permission denied", "raw/pairs.csv")
