"""An attack pass over the pipeline's inputs, as a hostile user would make it (issue 15): raw files, covers, params,
splits and item tables, checkpoints and model folders, the CLI, and faults (full and read-only disks, FIFOs).

Every attack runs the real entry point in-process (a stage's click command, the `mmctr` CLI, or the loader a stage
calls) on a small MicroLens-layout folder made from the tiny profile, and must end in one of three expected
results: a one-line error naming the file, row or key (exit status 1, no traceback), a counted status, or output
identical to a clean run. Nothing an attack leaves may be half-written: each error case also checks that its
output path was not created. Kills, concurrent runs and orphaned stages are in tests/test_pipeline.py and
tests/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from click.testing import CliRunner, Result

from pipeline.cli.main import main as mmctr
from pipeline.core.config import MakeSyntheticConfig, from_dict
from pipeline.extract.image import CoverDataset
from pipeline.sources.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "tests" / "tiny_params.yaml").read_text())
SEQ_OUTPUTS = ("train.parquet", "valid.parquet", "test.parquet")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The tiny profile's raw folder (MicroLens layout), its sequences and a d8 item table, made once."""
    root = tmp_path_factory.mktemp("pristine")
    generate(from_dict(MakeSyntheticConfig, TINY["make_synthetic"], "make_synthetic"), root / "raw")
    lab = Lab(root)
    lab.write_params()
    result = lab.build()
    assert result.exit_code == 0, result.output
    items = pl.read_parquet(root / "seq" / "items.parquet")
    emb = np.random.default_rng(0).standard_normal((items.height, 8)).astype(np.float32)
    emb[0] = 0
    items.select("item_id", "item_tags").with_columns(
        item_emb_d8=pl.Series(emb, dtype=pl.Array(pl.Float32, 8))).write_parquet(root / "item_info.parquet")
    return root


@dataclass
class Lab:
    """A working copy: root/raw (MicroLens layout), root/params.yaml (tiny profile, source microlens), outputs
    under root/out."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    def write_params(self, **sections: dict) -> None:
        values = {**TINY, "data": {**TINY["data"], "source": "microlens", "raw_dir": str(self.raw)}}
        for name, changes in sections.items():
            values[name] = {**values[name], **changes}
        self.params.write_text(yaml.safe_dump(values, sort_keys=False))

    def stage(self, name: str, *args: str) -> Result:
        module = __import__(f"stages.{name}", fromlist=["main"])
        return CliRunner().invoke(module.main, [*args, "--params", str(self.params)])

    def build(self, out: str = "seq") -> Result:
        d = self.root / out
        return self.stage("build_sequences", "--out-dir", str(d), "--items", str(d / "items.parquet"),
                          "--feature-map", str(d / "feature_map.json"), "--metrics", str(d / "metrics.json"))

    def train(self) -> Result:
        seq = self.root / "seq"
        return self.stage("train", "--train", str(seq / "train.parquet"), "--valid",
                          str(seq / "valid.parquet"), "--item-info", str(self.root / "item_info.parquet"),
                          "--feature-map", str(seq / "feature_map.json"), "--semantic-ids",
                          str(self.root / "semantic_ids.parquet"), "--model", str(self.root / "out/model.pt"),
                          "--live-dir", str(self.root / "out/live"))

    def evaluate(self, model: Path) -> Result:
        out = self.root / "out"
        return self.stage("evaluate", "--model", str(model), "--test", str(self.root / "seq/test.parquet"),
                          "--train", str(self.root / "seq/train.parquet"), "--metrics", str(out / "m.json"),
                          "--roc", str(out / "roc.json"), "--calibration", str(out / "cal.json"), "--predictions",
                          str(out / "p.parquet"), "--submission", str(out / "s.zip"))


@pytest.fixture
def lab(pristine: Path, tmp_path: Path) -> Lab:
    for name in ("raw", "seq"):
        shutil.copytree(pristine / name, tmp_path / name)
    shutil.copy(pristine / "item_info.parquet", tmp_path / "item_info.parquet")
    lab = Lab(tmp_path)
    lab.write_params()
    return lab


def one_line_error(result: Result, pattern: str, status: int = 1) -> None:
    """Exit `status` (1; click's usage errors: 2), no traceback, and stderr's last line is `Error: ...` matching
    `pattern` (a regex)."""
    assert result.exit_code == status, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: "), last
    assert re.search(pattern, last), f"{pattern!r} not in {last!r}"


def nothing_written(lab: Lab, out: str = "seq2") -> None:
    assert not (lab.root / out).exists() or not any((lab.root / out).iterdir())


def splits(lab: Lab, out: str) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(lab.root / out / name) for name in SEQ_OUTPUTS}


# ------------------------------------------------------------------------------------------------ raw files
# Each mutates the raw folder, runs build_sequences into seq2 and checks the result.


def pairs_text(lab: Lab) -> str:
    return (lab.raw / "pairs.csv").read_text()


def _raw_error(mutate: Callable[[Lab], None], pattern: str) -> Callable[[Lab], None]:
    def attack(lab: Lab) -> None:
        mutate(lab)
        one_line_error(lab.build("seq2"), pattern)
        nothing_written(lab)

    return attack


def _raw_same(mutate: Callable[[Lab], None], counted: dict[str, int] | None = None) -> Callable[[Lab], None]:
    """The mutation leaves the splits identical to the clean run's; `counted` metrics must hold those values."""

    def attack(lab: Lab) -> None:
        clean = splits(lab, "seq")
        mutate(lab)
        result = lab.build("seq2")
        assert result.exit_code == 0, result.output
        for name, frame in splits(lab, "seq2").items():
            assert frame.equals(clean[name]), name
        metrics = json.loads((lab.root / "seq2/metrics.json").read_text())
        for key, value in (counted or {}).items():
            assert metrics[key] == value, (key, metrics[key])

    return attack


def _write(name: str, content: str | bytes) -> Callable[[Lab], None]:
    def mutate(lab: Lab) -> None:
        path = lab.raw / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return mutate


def _append(name: str, line: str) -> Callable[[Lab], None]:
    return lambda lab: (lab.raw / name).write_text((lab.raw / name).read_text() + line)


def _double_pairs(lab: Lab) -> None:
    text = pairs_text(lab)
    (lab.raw / "pairs.csv").write_text(text + text.split("\n", 1)[1])


def _fifo_pairs(lab: Lab) -> None:
    (lab.raw / "pairs.csv").unlink()
    os.mkfifo(lab.raw / "pairs.csv")  # opening it to read would block forever


def _symlink_pairs(lab: Lab) -> None:
    (lab.raw / "pairs.csv").unlink()
    (lab.raw / "pairs.csv").symlink_to("/etc/passwd")


def _second_pairs_file(lab: Lab) -> None:
    shutil.copy(lab.raw / "pairs.csv", lab.raw / "MicroLens-100k_pairs.csv")


def _same_timestamp(lab: Lab) -> None:
    pairs = pl.read_csv(lab.raw / "pairs.csv").with_columns(timestamp=pl.lit(1000, dtype=pl.Int64))
    pairs.write_csv(lab.raw / "pairs.csv")


def _crlf_and_bom(lab: Lab) -> None:
    text = pairs_text(lab)
    (lab.raw / "pairs.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())


def _reordered_pairs(lab: Lab) -> None:
    lines = pairs_text(lab).splitlines()
    (lab.raw / "pairs.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")


RAW_ATTACKS: dict[str, Callable[[Lab], None]] = {
    "pairs rows in reverse order": _raw_same(_reordered_pairs, {"repeated_events": 0}),
    "pairs with CRLF line ends and a BOM": _raw_same(_crlf_and_bom),
    "title id of 2e9": _raw_error(_append("title_en.csv", "2000000000,huge\n"),
                                  r"title_en\.csv: item_id 2000000000 is beyond the \d+ titles"),
    "pairs without header": _raw_error(lambda lab: (lab.raw / "pairs.csv").write_text(
        pairs_text(lab).split("\n", 1)[1]), r"pairs\.csv: line 1: expected header"),
    "pairs field that is not a number": _raw_error(_append("pairs.csv", "5,abc,10\n"), r"pairs\.csv: line \d+"),
    "pairs with a negative user": _raw_error(_append("pairs.csv", "-5,3,10\n"), r"pairs\.csv: line \d+"),
    "pairs timestamp past int64": _raw_error(_append("pairs.csv", "5,3,99999999999999999999\n"),
                                             r"pairs\.csv: line \d+"),
    "pairs on an unknown item": _raw_error(_append("pairs.csv", "5,149999,10\n"),
                                           r"pairs\.csv: 1 clicks reference unknown items"),
    "pairs as random bytes": _raw_error(_write("pairs.csv", np.random.default_rng(0).bytes(4000)),
                                        r"pairs\.csv: line 1: expected header"),
    "pairs empty file": _raw_error(_write("pairs.csv", b""), r"pairs\.csv: line 1: expected header"),
    "pairs is a FIFO": _raw_error(_fifo_pairs, r"raw: no pairs file"),
    "pairs symlinked to /etc/passwd": _raw_error(_symlink_pairs, r"pairs\.csv: line 1: expected header"),
    "two pairs files": _raw_error(_second_pairs_file, r"raw: .*pairs"),
    "titles with a repeated id": _raw_error(_append("title_en.csv", "3,again\n"), r"title_en\.csv: line \d+"),
    "likes_and_views empty": _raw_error(_write("likes_and_views.txt", ""),
                                        r"likes_and_views\.txt: no counts for any of the \d+ items of title_en\.csv"),
    "likes_and_views of other items only": _raw_error(_write("likes_and_views.txt", "900000\t3\t4\n"),
                                                      r"likes_and_views\.txt: no counts for any of the \d+ items"),
    "tags with a quote left open": _raw_error(
        lambda lab: (lab.raw / "tags.csv").write_text(re.sub(r"\n(\d+),", r'\n\1,"', (lab.raw / "tags.csv").read_text(),
                                                            count=1)),
        r"tags\.csv: line \d+: (unexpected end of data|a quoted field runs on over a line that begins like a row)"),
    "likes that are not a number": _raw_error(_append("likes_and_views.txt", "3\tmany\t4\n"),
                                              r"likes_and_views\.txt: line \d+: likes 'many'"),
    "every click at one timestamp": _raw_error(_same_timestamp, r"pairs\.csv: no train row has an earlier click"),
    "impressions with one exposure both clicked and not": _raw_error(
        lambda lab: (_write("impressions.csv", "user,item,timestamp,click\n1,2,30,0\n1,2,30,1\n")(lab),
                     lab.write_params(build_sequences={"negatives": "exposures"})),
        r"impressions\.csv: lines 2 and 3: user 1 shown item 2 at timestamp 30 with different click flags"),
    "raw folder missing": _raw_error(lambda lab: shutil.rmtree(lab.raw),
                                         r"(data\.raw_dir|--raw-dir): .*raw: no such folder"),
}


@pytest.mark.parametrize("name", RAW_ATTACKS)
def test_raw_file_attack(lab: Lab, name: str) -> None:
    RAW_ATTACKS[name](lab)


def test_pairs_appended_to_itself_counts_every_repeat(lab: Lab) -> None:
    n = len(pairs_text(lab).strip().splitlines()) - 1
    _raw_same(_double_pairs, {"repeated_events": n})(lab)


# --------------------------------------------------------------------------------------------------- covers
# The loader extraction runs on every cover: each hostile cover ends as a counted status, never a crash or hang.


def _cover(kind: str, path: Path) -> None:
    from PIL import Image

    if kind == "text named .jpg":
        path.write_text("<html>not an image</html>")
    elif kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "truncated jpeg":
        Image.new("RGB", (64, 64), (200, 10, 10)).save(path, format="JPEG")
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "decompression bomb":
        Image.new("1", (20_000, 20_000)).save(path, format="PNG")  # 400 Mpx in a small file
    elif kind == "over max_pixels":
        Image.new("1", (3_000, 3_000)).save(path, format="PNG")
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "png named .jpg":
        Image.new("RGB", (40, 40), (0, 200, 0)).save(path, format="PNG")
    elif kind == "palette image with transparency":
        Image.new("P", (40, 40)).save(path, format="PNG", transparency=0)
    elif kind == "16-bit grey":
        Image.new("I;16", (40, 40)).save(path, format="PNG")


COVER_ATTACKS = {
    "text named .jpg": "corrupt", "zero bytes": "empty", "truncated jpeg": "corrupt",
    "decompression bomb": "too_large", "over max_pixels": "too_large", "a folder": "missing", "a FIFO": "missing",
    "symlink to /dev/zero": "missing", "png named .jpg": "ok", "palette image with transparency": "ok",
    "16-bit grey": "ok",
}


@pytest.mark.parametrize("kind", COVER_ATTACKS)
def test_cover_attack(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "7.jpg"
    _cover(kind, path)
    data = CoverDataset([path], lambda img: torch.ones(3, 4, 4), (4, 4), max_pixels=5_000_000)
    image, status = data[0]
    assert status == COVER_ATTACKS[kind]
    assert image.shape == (3, 4, 4)


# --------------------------------------------------------------------------------------------------- params
# Each writes a hostile params file and runs check_params, the stage every other stage waits for.


def _params_error(text: str | bytes, pattern: str) -> Callable[[Lab], None]:
    def attack(lab: Lab) -> None:
        lab.params.write_bytes(text if isinstance(text, bytes) else text.encode())
        one_line_error(lab.stage("check_params", "--out", str(lab.root / "out/checked.json")), pattern)
        assert not (lab.root / "out/checked.json").exists()
        # `mmctr check-params` (make repro's first step, before DVC parses the file) refuses it the same way
        one_line_error(CliRunner().invoke(mmctr, ["check-params", "--params", str(lab.params)]), pattern)

    return attack


def _tiny_with(section: str, key: str, value: object) -> str:
    values = {**TINY, section: {**TINY[section], key: value}}
    return yaml.safe_dump(values, sort_keys=False)


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
PARAMS_ATTACKS = {
    "unknown key": _params_error(_tiny_with("fit_pca", "dimm", 3), r"fit_pca\.dimm: unknown key"),
    "unknown section": _params_error(yaml.safe_dump({**TINY, "fit_pcaa": {"dim": 3}}),
                                     r"fit_pcaa: unknown section"),
    "key given twice": _params_error(yaml.safe_dump(TINY, sort_keys=False).replace("  dim: ", "  dim: 3\n  dim: ", 1),
                                     r"key 'dim' given twice in one mapping"),
    "billion laughs aliases": _params_error(BOMB, r"aliases \(\*name\) are not allowed"),
    "python object tag": _params_error("fit_pca: !!python/object/apply:os.system ['touch PWNED']\n",
                                       r"not valid YAML"),
    "not UTF-8": _params_error(b"fit_pca:\n  dim: \xff\n", r"line 2: not UTF-8 text"),
    "nested 5000 deep": _params_error("fit_pca: " + "[" * 5000 + "]" * 5000 + "\n", r"nested too deeply"),
    "a list, not a mapping": _params_error("- 1\n- 2\n", r"must be a mapping of sections"),
    "empty file": _params_error("", r"must be a mapping of sections"),
    "negative PCA dim": _params_error(_tiny_with("fit_pca", "dim", -3), r"fit_pca\.dim"),
    "boolean for an integer": _params_error(_tiny_with("fit_pca", "dim", True), r"fit_pca\.dim: must be an integer"),
    "nan learning rate": _params_error(_tiny_with("train", "learning_rate", float("nan")),
                                       r"train\.learning_rate: must be a finite number"),
    "infinite learning rate": _params_error(_tiny_with("train", "learning_rate", float("inf")),
                                            r"train\.learning_rate: must be a finite number"),
    "batch of 1e30 rows": _params_error(_tiny_with("train", "batch_size", 10**30),
                                        r"train\.batch_size: must fit in 64 bits"),
    "embedding of 1e9 wide": _params_error(_tiny_with("train", "embedding_dim", 10**9),
                                           r"train\.embedding_dim: must be <= 65536"),
    "a billion synthetic items": _params_error(_tiny_with("make_synthetic", "n_items", 10**9),
                                               r"make_synthetic\.n_items: must be in \[20, 10000000\]"),
    "raw_dir with a NUL byte": _params_error(_tiny_with("data", "raw_dir", "data/x\0y"),
                                             r"data\.raw_dir: must be a folder path"),
    "string for a list": _params_error(_tiny_with("train", "dnn_hidden_units", "256,128"),
                                       r"train\.dnn_hidden_units: must be a list"),
}


@pytest.mark.parametrize("name", PARAMS_ATTACKS)
def test_params_attack(lab: Lab, name: str) -> None:
    PARAMS_ATTACKS[name](lab)
    assert not (lab.root / "PWNED").exists() and not Path("PWNED").exists()


def test_check_params_command_passes_a_valid_file(lab: Lab) -> None:
    result = CliRunner().invoke(mmctr, ["check-params", "--params", str(lab.params)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{lab.params}: {len(TINY)} sections checked\n"


def test_params_file_that_is_a_folder(lab: Lab) -> None:
    lab.params.unlink()
    lab.params.mkdir()
    one_line_error(lab.stage("check_params", "--out", str(lab.root / "out.json")),
                   r"Invalid value for '--params': File '.*params\.yaml' is a directory", status=2)


# --------------------------------------------------------------------------------------- splits and tables
# Each corrupts an input of train (a split or the item table) and runs the train stage: it must stop with the
# file, row and column before any training step, and write no model.


def _train_input_error(rel: str, corrupt: Callable[[pl.DataFrame], pl.DataFrame], pattern: str, *,
                       same_dtypes: bool) -> Callable[[Lab], None]:
    """Corrupt lab.root/`rel` (cast back to its dtypes when `same_dtypes`: the attack is the values), run train."""
    def attack(lab: Lab) -> None:
        path = lab.root / rel
        frame = pl.read_parquet(path)
        bad = corrupt(frame)
        if same_dtypes:
            bad = bad.with_columns(pl.col(c).cast(t) for c, t in frame.schema.items())
        bad.write_parquet(path)
        one_line_error(lab.train(), re.escape(Path(rel).name) + ": " + pattern)
        assert not (lab.root / "out/model.pt").exists()

    return attack


def _split_error(corrupt: Callable[[pl.DataFrame], pl.DataFrame], pattern: str) -> Callable[[Lab], None]:
    return _train_input_error("seq/train.parquet", corrupt, pattern, same_dtypes=True)


def _table_error(corrupt: Callable[[pl.DataFrame], pl.DataFrame], pattern: str) -> Callable[[Lab], None]:
    return _train_input_error("item_info.parquet", corrupt, pattern, same_dtypes=False)


def _at(row: int, column: str, value: object) -> Callable[[pl.DataFrame], pl.DataFrame]:
    return lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value))
                                      .otherwise(pl.col(column)).alias(column))


SPLIT_ATTACKS = {
    "item id past the table": _split_error(_at(4, "item_id", 10**6), r"row 4: item_id 1000000 is outside"),
    "item id 0 (padding) as a target": _split_error(_at(2, "item_id", 0), r"row 2: item_id 0 is outside"),
    "negative level": _split_error(_at(3, "likes_level", -1), r"row 3: likes_level -1 is outside"),
    "NaN label": _split_error(_at(5, "label", float("nan")), r"row 5: label nan is not 0 or 1"),
    "label 2": _split_error(_at(1, "label", 2.0), r"row 1: label 2\.0 is not 0 or 1"),
    "history id past the table": _split_error(
        lambda df: df.with_columns(item_seq=pl.concat_list(pl.col("item_seq").list.slice(1), pl.lit(10**6))),
        r"row 0: item_seq holds an item id outside"),
    "ragged history": _split_error(lambda df: df.with_columns(pl.col("item_seq").list.slice(1)),
                                   r"row 0: item_seq has length"),
    "null user": _split_error(_at(0, "user_id", None), r"row 0: user_id is null"),
    "valid split without a click": _train_input_error(
        "seq/valid.parquet", lambda df: df.with_columns(label=pl.lit(0.0)),
        r"every label is 0; early stopping on valid AUC needs clicks and non-clicks", same_dtypes=True),
    "train split of clicks only": _split_error(lambda df: df.with_columns(label=pl.lit(1.0)),
                                               r"every label is 1; training a click model needs"),
    "item table with a 1-D embedding": _table_error(
        lambda df: df.with_columns(item_emb_d8=pl.lit(1.0, dtype=pl.Float32)),
        r"column 'item_emb_d8' has dtype Float32"),
    "item table with text embeddings": _table_error(
        lambda df: df.with_columns(item_emb_d8=pl.lit("x")), r"column 'item_emb_d8' has dtype String"),
    "item table with a ragged embedding": _table_error(
        lambda df: df.with_columns(item_emb_d8=pl.col("item_emb_d8").cast(pl.List(pl.Float32)).list.slice(
            0, pl.when(pl.int_range(pl.len()) == 6).then(3).otherwise(8))), r"row 6: item_emb_d8 has length 3"),
    "item table rows shuffled": _table_error(lambda df: df.sample(fraction=1.0, shuffle=True, seed=1),
                                             r"row \d+ holds item_id \d+"),
    "item table with a tag id past the vocabulary": _table_error(
        lambda df: df.with_columns(item_tags=pl.when(pl.int_range(pl.len()) == 9).then(pl.lit([0, 0, 0, 0, 10**6]))
                                   .otherwise(pl.col("item_tags"))), r"row 9: item_tags holds a tag id outside"),
    "item table missing items": _table_error(lambda df: df.head(20), r"20 items|\d+ items, but the feature map"),
}


@pytest.mark.parametrize("name", SPLIT_ATTACKS)
def test_split_and_table_attack(lab: Lab, name: str) -> None:
    SPLIT_ATTACKS[name](lab)


def test_test_split_of_one_class_is_named_before_anything_is_written(lab: Lab) -> None:
    """A labelled (non-challenge) test split whose labels are all 0: AUC is undefined, so evaluate names the file
    in one line and writes no metrics or submission."""
    assert lab.train().exit_code == 0
    test = lab.root / "seq/test.parquet"
    pl.read_parquet(test).with_columns(pl.lit(0.0, dtype=pl.Float32).alias("label")).write_parquet(test)
    one_line_error(lab.evaluate(lab.root / "out/model.pt"),
                   r"test\.parquet: every label is 0; scoring the test split \(AUC\) needs clicks and non-clicks")
    assert not (lab.root / "out/m.json").exists() and not (lab.root / "out/s.zip").exists()


def test_feature_map_that_is_not_json(lab: Lab) -> None:
    (lab.root / "seq/feature_map.json").write_text("{ not json")
    one_line_error(lab.train(), r"feature_map\.json")


# --------------------------------------------------------------------------------- checkpoints, model folders


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_attacks(lab: Lab) -> None:
    """Random bytes, a truncated file and a pickle that runs a command: each a one-line error, nothing runs."""
    bad = lab.root / "bad.pt"
    marker = lab.root / "PWNED"
    for content in (np.random.default_rng(0).bytes(3000), b"PK\x03\x04" + b"\0" * 100,
                    pickle.dumps({"config": _Payload(marker)}, protocol=2)):
        bad.write_bytes(content)
        one_line_error(lab.evaluate(bad), r"bad\.pt: not a valid mmctr checkpoint")
        assert not marker.exists()
        assert not (lab.root / "out/s.zip").exists()


def test_checkpoint_with_damaged_weights(lab: Lab) -> None:
    """A trained checkpoint with one NaN weight is refused at load, naming the weight; one whose weights are finite
    but so large that the scores overflow to NaN is refused naming the model and the test row. Neither writes
    metrics or a submission (write_submission would refuse NaN with a traceback)."""
    assert lab.train().exit_code == 0
    good = torch.load(lab.root / "out/model.pt", weights_only=True)
    floats = [name for name, t in good["model"].items() if t.is_floating_point()]
    bad = lab.root / "bad.pt"
    nan = {**good, "model": {**good["model"], floats[0]: good["model"][floats[0]].clone().fill_(float("nan"))}}
    huge = {**good, "model": {k: t.clone().fill_(3e38) if k in floats else t for k, t in good["model"].items()}}
    for ckpt, pattern in ((nan, rf"bad\.pt: not a valid mmctr checkpoint \(weight {re.escape(floats[0])} holds a "
                                r"non-finite value\)"),
                          (huge, r"bad\.pt: the model scores row \d+ of .*test\.parquet as NaN")):
        torch.save(ckpt, bad)
        one_line_error(lab.evaluate(bad), pattern)
        assert not (lab.root / "out/m.json").exists() and not (lab.root / "out/s.zip").exists()


def test_outputs_under_a_file_and_a_missing_train_split_fail_before_any_work(lab: Lab) -> None:
    """An output whose folder is a file is named when the stage starts: train says so before any step (it used to
    train a whole pass, then name its hidden resume state), evaluate before it scores or writes anything (it used
    to leave a new submission behind). A missing --train split of evaluate is one line, not a traceback."""
    out = lab.root / "out"
    out.write_text("a file where the outputs' folder goes")
    one_line_error(lab.train(), rf"{re.escape(str(out / 'model.pt'))}: cannot write the output "
                                rf"\({re.escape(str(out))} is a file, not a folder\)")
    out.unlink()
    assert lab.train().exit_code == 0
    model = shutil.move(out / "model.pt", lab.root / "model.pt")
    shutil.rmtree(out)
    out.write_text("a file again")
    one_line_error(lab.evaluate(model), rf"{re.escape(str(out / 'm.json'))}: cannot write the output "
                                        rf"\({re.escape(str(out))} is a file, not a folder\)")
    out.unlink()
    out.symlink_to(lab.root / "unmounted")
    one_line_error(lab.evaluate(model), rf"{re.escape(str(out / 'm.json'))}: cannot write the output "
                                        rf"\({re.escape(str(out))} is a broken link to "
                                        rf"{re.escape(str(lab.root / 'unmounted'))}\)")
    out.unlink()
    (lab.root / "seq/train.parquet").rename(lab.root / "train.parquet")
    one_line_error(lab.evaluate(model), r"seq/train\.parquet: file not found")
    assert not (out / "s.zip").exists() and not (out / "m.json").exists()


def test_text_model_folder_with_a_crafted_weights_file(lab: Lab, tiny_bert_dir: Path) -> None:
    """A local text-model folder whose pytorch_model.bin is a pickle that runs a command: refused by
    torch.load(weights_only=True), reported in one line, and the command never runs."""
    folder = lab.root / "model"
    shutil.copytree(tiny_bert_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = lab.root / "PWNED"
    torch.save({"x": _Payload(marker)}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=True)
    lab.write_params(extract_text={"model": str(folder)})
    out = lab.root / "out/text.parquet"
    result = lab.stage("extract_text", "--out", str(out), "--metrics", str(lab.root / "out/m.json"))
    one_line_error(result, r"extract_text\.model: cannot load")
    assert not marker.exists() and not out.exists()


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_attacks(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = str(lab.root / "item_info.parquet")
    for item, pattern in ((0, r"item 0 is not in the item table"), (10**12, r"item 1000000000000 is not in"),
                          (-4, r"item -4 is not in")):
        result = CliRunner().invoke(mmctr, ["neighbours", "--item", str(item), "--item-info", info, "--params",
                                            str(lab.params)])
        one_line_error(result, pattern)
    garbage = lab.root / "garbage.parquet"
    garbage.write_bytes(np.random.default_rng(2).bytes(500))
    one_line_error(CliRunner().invoke(mmctr, ["neighbours", "--item", "3", "--item-info", str(garbage)]),
                   r"garbage\.parquet: not a readable parquet file")
    for option in ("--item-info", "--params", "--titles", "--raw-dir", "--gallery", "--semantic-ids"):
        # "" is "." to pathlib: the error must name the option, not a file "."
        one_line_error(CliRunner().invoke(mmctr, ["neighbours", "--item", "3", "--item-info", info, f"{option}="]),
                       rf"Invalid value for .{option}.: an empty path", status=2)
    monkeypatch.chdir(tmp_path)  # no DVC repository here
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    one_line_error(CliRunner().invoke(mmctr, ["compare"]), r"`dvc exp show` failed")
    one_line_error(CliRunner().invoke(mmctr, ["tune", "--dry-run"]), r"`dvc root` failed")


# ------------------------------------------------------------------------------------------ disk faults


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 1 MiB tmpfs at tmp_path/fs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_and_keeps_the_earlier_output(lab: Lab, small_fs: Path) -> None:
    """build_sequences writing into a full filesystem: one line naming the output, the earlier file unchanged, no
    temporary left behind."""
    out = small_fs / "seq"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"earlier")
    with (small_fs / "filler").open("wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    result = lab.stage("build_sequences", "--out-dir", str(out), "--items", str(out / "items.parquet"),
                       "--feature-map", str(out / "fm.json"), "--metrics", str(out / "m.json"))
    one_line_error(result, r"cannot write the output \(No space left on device\)")
    assert (out / "train.parquet").read_bytes() == b"earlier"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_read_only_disk_is_one_line(lab: Lab, small_fs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = lab.stage("check_params", "--out", str(small_fs / "checked.json"))
    one_line_error(result, r"checked\.json: .*Read-only file system")
