"""The whole DAG on the tiny profile, in a temporary git+DVC copy of the repository.

Checks every artifact's contract, that a second `dvc repro` does nothing, that changing fit_pca.dim reruns only
fit_pca/train/evaluate, that the model beats chance clearly and that the oracle is reported beside it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from click.testing import CliRunner

from model.ensemble import SeedEnsemble
from pipeline.cli.main import main as mmctr
from pipeline.core.feature_map import FeatureMap
from pipeline.sources.microlens import read_titles
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.data import load_split
from pipeline.training.predict import evaluate_split
from tests.conftest import STAGES, ran_stages, reproduced_copy, run, stage_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_reproduced) -> Path:
    """The project on the tiny profile after one `dvc repro` (a copy of the session's), for this module to change."""
    return reproduced_copy(tiny_reproduced, tmp_path_factory.mktemp("pipeline") / "project")


def test_raw_layout(project):
    raw = project / "data/raw"
    assert (raw / "pairs.csv").read_text().splitlines()[0] == "user,item,timestamp"
    n_items = len((raw / "title_en.csv").read_text().splitlines())
    assert len(list((raw / "covers").glob("*.jpg"))) == n_items == 150


def test_embedding_contracts(project):
    for name, dim in (("text_emb", 384), ("image_emb", 128)):
        df = pl.read_parquet(project / f"data/features/{name}.parquet")
        assert df.schema == {"item_id": pl.Int32, "emb": pl.Array(pl.Float32, dim), "status": pl.Utf8}
        assert sorted(df["item_id"].to_list()) == list(range(1, 151))
        assert np.isfinite(df["emb"].to_numpy()).all()


def test_sequence_contracts(project):
    fmap = FeatureMap.load(project / "data/sequences/feature_map.json")
    assert fmap["item_seq"].max_len == 20 and fmap["item_id"].vocab_size == 151
    last_ts = {}
    for split in ("train", "valid", "test"):
        df = pl.read_parquet(project / f"data/sequences/{split}.parquet")
        assert df.schema == {"user_id": pl.Int32, "item_seq": pl.List(pl.Int32), "item_id": pl.Int32,
                             "likes_level": pl.Int8, "views_level": pl.Int8, "label": pl.Float32,
                             "event_ts": pl.Int64}
        assert (df["item_seq"].list.len() == 20).all()
        assert df["label"].mean() == pytest.approx(1 / 3)  # neg_ratio 2
        last_ts[split] = (df["event_ts"].min(), df["event_ts"].max())
    assert last_ts["train"][1] < last_ts["valid"][0] <= last_ts["valid"][1] < last_ts["test"][0]


def test_item_info_contract(project):
    info = pl.read_parquet(project / "data/features/item_info.parquet")
    assert info.columns == ["item_id", "item_tags", "item_emb_d16"]
    assert info["item_id"].to_list() == list(range(151))
    emb = info["item_emb_d16"].to_numpy()
    assert not emb[0].any() and np.abs(emb[1:]).sum(axis=1).min() > 0
    metrics = json.loads((project / "data/metrics/fit_pca.json").read_text())
    assert metrics["dim"] == 16 and 0 < metrics["explained_variance"] <= 1


def test_model_beats_chance_and_oracle_is_reported(project):
    metrics = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert metrics["auc"] > 0.7
    assert metrics["oracle_auc"] > metrics["auc"] - 0.02  # the Bayes-optimal score is the ceiling
    assert metrics["history_oracle_auc"] <= metrics["oracle_auc"] + 0.01  # it lacks the hidden preference
    for key in ("logloss", "gauc", "oracle_logloss", "history_oracle_logloss"):
        assert np.isfinite(metrics[key])
    roc = json.loads((project / "data/plots/roc.json").read_text())
    assert len(roc) == 201 and roc[0]["fpr"] == 0 and roc[-1] == {"fpr": 1.0, "tpr": 1.0, "chance": 1.0}
    calibration = json.loads((project / "data/plots/calibration.json").read_text())
    assert sum(b["count"] for b in calibration) == metrics["rows"]
    slices = metrics["by_train_exposures"]  # every test row in exactly one slice of its item's train exposures
    assert list(slices) == ["0", "1-9", "10+"] and sum(s["rows"] for s in slices.values()) == metrics["rows"]
    preds = pl.read_parquet(project / "data/eval/predictions.parquet")
    assert preds.height == metrics["rows"] and preds["score"].is_between(0, 1).all()
    train_metrics = json.loads((project / "data/metrics/train/metrics.json").read_text())
    assert "valid_auc" in train_metrics


def test_neighbours_cli_on_pipeline_output(project):
    result = CliRunner().invoke(mmctr, ["neighbours", "--item", "1", "-k", "5", "--item-info",
                                        str(project / "data/features/item_info.parquet"), "--titles",
                                        str(project / "data/raw/title_en.csv")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("query 1:") and len(lines) == 6


# Every plot of dvc.yaml's top-level `plots:`: its title and its axis titles.
PLOTS = {"ROC (test split)": ["false positive rate", "true positive rate"],
         "Calibration (test split)": ["mean predicted click probability (bin)", "observed click rate (bin)"],
         "PCA explained variance": ["PCA components", "cumulative explained variance ratio"],
         "Logloss per validation (train vs valid)": ["validation", "logloss"],
         "Valid AUC per validation": ["validation", "valid AUC"],
         "Learning rate per validation": ["validation", "learning rate"]}


def open_in_chromium(page: Path) -> tuple[list[dict], list[str]]:
    """Load `page` in a headless Chromium (the system's, driven by Selenium) and wait for every Vega chart
    (`window.mmctrPlots`, when the page has it). -> (per plot div: id, rendering error, title and axis title texts,
    number of drawn marks; every URL the page requested, itself included)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver_path):
        pytest.fail("needs Chromium and its driver (Debian: apt-get install chromium chromium-driver); "
                    "`make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every network event, for the URLs
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_script_timeout(60)
        driver.get(page.as_uri())
        # Waits for the load event itself (chromedriver can hand back control before a page with a large inline
        # script has finished parsing), then for every chart's promise, and reads the drawn SVG in the same script.
        charts = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const loaded = new Promise(resolve => document.readyState === "complete"
                ? resolve() : window.addEventListener("load", resolve));
            loaded.then(() => Promise.allSettled(window.mmctrPlots || [])).then(rs => {
                const divs = Array.from(document.querySelectorAll("body div[id]"));
                done(divs.map((d, i) => ({
                    id: d.id,
                    error: i >= rs.length ? "no rendering promise"
                        : rs[i].status === "fulfilled" ? null : String(rs[i].reason),
                    title: Array.from(d.querySelectorAll("g.role-title-text text"), t => t.textContent),
                    axes: Array.from(d.querySelectorAll("g.role-axis-title text"), t => t.textContent),
                    marks: d.querySelectorAll("svg.marks path, svg.marks line").length})));
            });""")
        events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    finally:
        driver.quit()
    urls = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    return charts, urls


def test_plots_page_draws_every_plot_offline(project, tmp_path):
    """`mmctr plots` writes DVC's page with Vega inlined: in a headless Chromium every plot of dvc.yaml draws, with
    its title and both axis labels, and the page requests nothing but itself. DVC's own page (the control) asks a
    CDN for its scripts and draws nothing offline."""
    out = tmp_path / "page dir"
    assert f"wrote {out}/index.html" in run(["mmctr", "plots", "--out", str(out)], project)
    charts, urls = open_in_chromium(out / "index.html")
    assert urls == [(out / "index.html").as_uri()]
    assert {c["title"][0] if c["title"] else c["id"]: c["axes"] for c in charts} == PLOTS
    assert all(c["error"] is None and c["marks"] > 0 for c in charts), charts

    run(["dvc", "plots", "show", "-o", str(tmp_path / "dvc")], project)
    charts, urls = open_in_chromium(tmp_path / "dvc/index.html")
    assert any(u.startswith("https://cdn.jsdelivr.net/") for u in urls)
    assert not any(c["marks"] for c in charts)


def _artifact_bytes(project: Path) -> dict[str, bytes]:
    """Every file the pipeline wrote under data/, and dvc.lock, by relative path."""
    files = [p for p in (project / "data").rglob("*") if p.is_file()] + [project / "dvc.lock"]
    return {str(p.relative_to(project)): p.read_bytes() for p in files}


def test_forced_rerun_is_byte_identical_on_cpu(project):
    """`dvc repro --force` with the same params rewrites every artifact with the same bytes: raw files, embeddings,
    PCA, splits, the checkpoint, predictions, the submission zip, metrics and plots (CPU; see README on GPU)."""
    before = _artifact_bytes(project)
    assert ran_stages(run(["dvc", "repro", "--force"], project)) == set(STAGES)
    after = _artifact_bytes(project)
    assert sorted(after) == sorted(before)
    assert [name for name in before if before[name] != after[name]] == []
    assert any(name.endswith("model.pt") for name in before) and len(before) > 150


def stage_command(project: Path, stage: str, params: Path) -> list[str]:
    """The stage's command line from dvc.yaml, run with `params`."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]
    return [*shlex.split(spec["cmd"]), "--params", str(params)]


@pytest.mark.parametrize(("stage", "out"), [
    ("make_synthetic", "data/raw"), ("build_sequences", "data/sequences/train.parquet"),
    ("fit_pca", "data/features/item_info.parquet"), ("train", "data/model/model.pt"),
    ("evaluate", "data/metrics/evaluate.json")])
def test_stage_killed_before_its_output_is_in_place_leaves_none_and_reruns_to_the_same_bytes(
        project, stage, out):
    """SIGKILL (MMCTR_FAULT_BEFORE_RENAME) at the worst moment, the output finished in its temp file: the output
    path stays absent, as DVC leaves it before running a stage, and the stage's other outputs are still the old ones
    (train's dvclive folder was emptied at its start); a rerun writes the same bytes as the DVC run. train is rerun
    with train.resume: true and resumes from the state of its last finished epoch."""
    target = project / out
    reference = _artifact_bytes(project)
    params = project / "kill_params.yaml"
    values = yaml.safe_load((project / "params.yaml").read_text())
    values["train"]["resume"] = stage == "train"
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    killed = subprocess.run(stage_command(project, stage, params), cwd=project, capture_output=True,
                            env=stage_env(MMCTR_FAULT_BEFORE_RENAME=target.name))
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()
    now = _artifact_bytes(project)
    old = {k: v for k, v in reference.items() if k != out and not k.startswith(f"{out}/")}
    assert {k: now.get(k) for k in old} == old  # every other file is still there as it was (new temps aside)
    if stage == "train":
        assert (target.parent / f".{target.name}.resume.pt").is_file()
    run(stage_command(project, stage, params), project)
    assert _artifact_bytes(project) == reference
    if stage == "train":
        assert not (target.parent / f".{target.name}.resume.pt").exists()


def test_a_killed_train_leaves_the_old_model_and_its_old_curves(project, tmp_path):
    """train's dvclive folder is written beside --live-dir and put in place after the checkpoint: a run killed
    before its checkpoint is in place leaves the old folder whole (it used to be emptied at the run's start and
    rewritten in place, so the old model sat beside new or no curves)."""
    model, live = tmp_path / "model.pt", tmp_path / "live"
    (live / "plots").mkdir(parents=True)
    (live / "metrics.json").write_text('{"valid_auc": 0.5}\n')
    model.write_bytes(b"the old model")
    cmd = stage_command(project, "train", project / "params.yaml")
    cmd[cmd.index("--model") + 1], cmd[cmd.index("--live-dir") + 1] = str(model), str(live)
    killed = subprocess.run(cmd, cwd=project, capture_output=True, env=stage_env(MMCTR_FAULT_BEFORE_RENAME="model.pt"))
    assert killed.returncode == -signal.SIGKILL
    assert model.read_bytes() == b"the old model" and (live / "metrics.json").read_text() == '{"valid_auc": 0.5}\n'
    assert sorted(p.name for p in live.rglob("*")) == ["metrics.json", "plots"]


def train_with(project: Path, tmp_path: Path, **train) -> tuple[Path, Path]:
    """Run the train stage with these train params over the project's, its checkpoint and dvclive folder in
    tmp_path; return (checkpoint, dvclive folder)."""
    params = tmp_path / "params.yaml"
    values = yaml.safe_load((project / "params.yaml").read_text())
    values["train"].update(train)
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    model, live = tmp_path / "model.pt", tmp_path / "live"
    cmd = stage_command(project, "train", params)
    cmd[cmd.index("--model") + 1], cmd[cmd.index("--live-dir") + 1] = str(model), str(live)
    run(cmd, project)
    return model, live


def test_train_with_a_seed_ensemble_writes_the_ensemble_and_its_valid_auc(project, tmp_path):
    """train.ensemble: 2 through the stage: a checkpoint of two members, the ensemble's own valid AUC in the
    dvclive summary (not a member's), and no resume state left behind."""
    model, live = train_with(project, tmp_path, ensemble=2)
    loaded, fmap = load_checkpoint(model, torch.device("cpu"))
    assert isinstance(loaded, SeedEnsemble) and len(loaded.members) == 2
    valid = load_split(project / "data/sequences/valid.parquet", fmap)
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["valid_auc"] == pytest.approx(evaluate_split(loaded, valid, 4096, torch.device("cpu"))["auc"])
    assert not list(tmp_path.glob(".model.pt.resume*"))


def test_train_with_user_bias_keeps_the_train_users_index_in_the_checkpoint(project, tmp_path):
    """train.user_bias through the stage: every member's checkpointed user_keys are the train split's distinct user
    ids, sorted, and the loaded model scores the valid split (its users found through that index)."""
    model, live = train_with(project, tmp_path, user_bias=True, ensemble=2)
    loaded, fmap = load_checkpoint(model, torch.device("cpu"))
    train = load_split(project / "data/sequences/train.parquet", fmap)
    for member in loaded.members:
        assert member.user_keys.tolist() == sorted(set(train.user_id.tolist()))
    valid = load_split(project / "data/sequences/valid.parquet", fmap)
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["valid_auc"] == pytest.approx(evaluate_split(loaded, valid, 4096, torch.device("cpu"))["auc"])


def test_a_failing_evaluate_leaves_no_submission_behind(project):
    """evaluate writes its outputs only once everything is computed: a planted model it cannot read (a one-line
    error) leaves no submission, roc or metrics; restored, the rerun writes the bytes the DVC run did."""
    reference = _artifact_bytes(project)
    planted, outputs = project / "data/raw/planted.npz", [project / "data/eval/submission.zip",
                                                          project / "data/plots/roc.json",
                                                          project / "data/metrics/evaluate.json"]
    good = planted.read_bytes()
    planted.write_bytes(b"not an npz")
    for out in outputs:
        out.unlink()
    try:
        proc = subprocess.run(stage_command(project, "evaluate", project / "params.yaml"), cwd=project,
                              env=stage_env(), capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("Error: ")
        assert "planted.npz" in proc.stderr.strip().splitlines()[-1]
        assert not any(out.exists() for out in outputs)
    finally:
        planted.write_bytes(good)
    run(stage_command(project, "evaluate", project / "params.yaml"), project)
    assert _artifact_bytes(project) == reference


def test_second_repro_does_nothing_and_pca_dim_reruns_only_downstream(project):
    assert ran_stages(run(["dvc", "repro"], project)) == set()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["fit_pca"]["dim"] = 8
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(run(["dvc", "repro"], project)) == {"check_params", "fit_pca", "embedding_report", "quantize",
                                                          "train", "evaluate"}
    assert "item_emb_d8" in pl.read_parquet(project / "data/features/item_info.parquet").columns


def test_a_bad_params_key_stops_repro_before_any_output_is_deleted(project):
    """DVC deletes a stage's outputs just before running it: check_params runs first on any params change, so a
    bad key (here fit_pca.dimm) ends `dvc repro` with its one-line error while fit_pca's earlier outputs, cached
    or not, stay in place; fixed, the next repro reruns only check_params."""
    reference = _artifact_bytes(project)
    stamp = "data/params_checked.json"
    params = project / "params.yaml"
    good = params.read_text()
    values = yaml.safe_load(good)
    values["fit_pca"]["dimm"] = 3
    params.write_text(yaml.safe_dump(values, sort_keys=False))
    try:
        proc = subprocess.run(["dvc", "repro", "fit_pca"], cwd=project, env=stage_env(), capture_output=True,
                              text=True)
        assert proc.returncode != 0
        assert "Error: fit_pca.dimm: unknown key" in proc.stdout + proc.stderr
        assert ran_stages(proc.stdout + proc.stderr) == {"check_params"}
        kept = _artifact_bytes(project)
        assert {k: v for k, v in kept.items() if k != stamp} == {k: v for k, v in reference.items() if k != stamp}
    finally:
        params.write_text(good)
    assert ran_stages(run(["dvc", "repro"], project)) <= {"check_params"}
    assert _artifact_bytes(project) == reference


def test_bad_params_key_is_one_line_error(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["fit_pca"]["dimm"] = 8
    bad = project / "bad_params.yaml"
    bad.write_text(yaml.safe_dump(params))
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "stages.fit_pca", "--params", str(bad), "--text", "x", "--image",
                           "y", "--items", "z", "--raw-dir", "r", "--out", "o", "--transform", "t", "--metrics", "m",
                           "--plot", "p"],
                          cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: fit_pca.dimm: unknown key")


def set_data(project: Path, **data) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] = {**params["data"], **data}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("name", ["x;cd ..;touch PWNED;#", "raw dir with 'quotes' and $(touch PWNED2)"])
def test_hostile_raw_folder_name_is_only_a_path(project, name):
    """A MicroLens folder whose name is shell code, or holds spaces and quotes, is read as a folder: the stage runs
    and nothing in the name is executed."""
    before = _artifact_bytes(project)
    shutil.copytree(project / "data/raw", project / "data" / name)
    set_data(project, source="microlens", raw_dir=f"data/{name}")
    try:
        out = run(["dvc", "repro", "--single-item", "build_sequences"], project)
        assert ran_stages(out) == {"build_sequences"}
        assert not list(project.parent.rglob("PWNED*")) and not list(project.rglob("PWNED*"))
        assert pl.read_parquet(project / "data/sequences/train.parquet").height > 0
    finally:
        set_data(project, source="synthetic", raw_dir="data/raw")
        shutil.rmtree(project / "data" / name)
    # the same raw bytes give the same sequences: back on data/raw, at most build_sequences reruns (or comes from
    # DVC's run cache), to the bytes it had
    assert ran_stages(run(["dvc", "repro"], project)) <= {"check_params", "build_sequences"}
    assert _artifact_bytes(project) == before


def test_microlens_release_source(project):
    """The synthetic raw files renamed as a MicroLens-100k release (covers as image<id>.jpg) run end to end."""
    raw, release = project / "data/raw", project / "data/microlens"
    release.mkdir()
    for src, dst in (("pairs.csv", "MicroLens-100k_pairs.csv"), ("title_en.csv", "MicroLens-100k_title_en.csv"),
                     ("likes_and_views.txt", "MicroLens-100k_likes_and_views.txt"),
                     ("tags.csv", "tags_to_summary.csv")):
        shutil.copy(raw / src, release / dst)
    (release / "covers").mkdir()
    for cover in (raw / "covers").glob("*.jpg"):
        shutil.copy(cover, release / "covers" / f"image{cover.name}")
    set_data(project, source="microlens", raw_dir="data/microlens")
    out = run(["dvc", "repro"], project)
    # The same data in the release layout gives byte-identical embeddings, sequences and item table, so DVC keeps
    # train cached: the release readers see exactly what the synthetic layout holds.
    assert ran_stages(out) == {"check_params", "extract_text", "extract_image", "build_sequences", "fit_pca",
                               "embedding_report",
                               "evaluate"}
    metrics = json.loads((project / "data/metrics/evaluate.json").read_text())
    assert metrics["auc"] > 0.7 and "oracle_auc" not in metrics  # no planted model behind a real release
    assert json.loads((project / "data/metrics/extract_image.json").read_text())["status"]["ok"] == 150


@pytest.fixture(scope="module")
def challenge_files(project) -> Path:
    """A folder in the WWW2025 MMCTR challenge layout (splits with hidden test labels, item_info, item_feature),
    written once from the project's synthetic data (data/raw's titles; data/sequences, which every earlier test
    leaves on the synthetic items: the release-layout and hostile-name runs give the same bytes)."""
    rng = np.random.default_rng(0)
    root = project / "data/mmctr"
    if not root.exists():
        (root / "MicroLens_1M_x1").mkdir(parents=True)
        seq = project / "data/sequences"
        for name in ("train", "valid", "test"):
            df = pl.read_parquet(seq / f"{name}.parquet").drop("event_ts")
            if name == "test":
                df = df.drop("label")  # the challenge hides test labels
            df.write_parquet(root / "MicroLens_1M_x1" / f"{name}.parquet")
        items = pl.read_parquet(seq / "items.parquet")
        emb = rng.standard_normal((items.height, 128)).astype(np.float32)
        emb[0] = 0
        items.select("item_id", "item_tags").with_columns(item_emb_d128=pl.Series(emb.tolist())).write_parquet(
            root / "MicroLens_1M_x1" / "item_info.parquet")
        titles = dict(read_titles(project / "data/raw/title_en.csv").iter_rows())
        real = items.filter(pl.col("item_id") > 0)
        real.with_columns(item_title=pl.Series([titles[i] for i in real["item_id"]]),
                          txt_emb_BERT=pl.Series(rng.standard_normal((real.height, 768)).tolist()),
                          img_emb_CLIPRN50=pl.Series(rng.standard_normal((real.height, 1024)).tolist())
                          ).write_parquet(root / "item_feature.parquet")
    return root


@pytest.fixture
def challenge(project, challenge_files) -> Path:
    """The challenge folder with its item_images/ (put back if a test removed it). Each challenge test sets the
    data params it needs itself, so none depends on another having run first."""
    shutil.rmtree(challenge_files / "item_images", ignore_errors=True)
    shutil.copytree(project / "data/raw/covers", challenge_files / "item_images")
    return challenge_files


def test_challenge_source(project, challenge):
    """The challenge folder runs end to end: its splits pass through, and evaluate writes the submission zip."""
    set_data(project, source="mmctr", raw_dir="data/mmctr", item_embeddings="extracted")
    out = run(["dvc", "repro"], project)
    assert "make_synthetic" not in ran_stages(out)
    test_rows = pl.read_parquet(project / "data/sequences/test.parquet")
    assert test_rows.height == pl.read_parquet(challenge / "MicroLens_1M_x1/test.parquet").height
    assert json.loads((project / "data/metrics/evaluate.json").read_text()) == {"rows": test_rows.height}
    with zipfile.ZipFile(project / "data/eval/submission.zip") as z:
        lines = z.read("prediction.csv").decode().splitlines()
    assert lines[0] == "ID,Task1" and len(lines) == test_rows.height + 1
    assert json.loads((project / "data/metrics/train/metrics.json").read_text())["valid_auc"] > 0.7


def test_challenge_embeddings_replace_extraction(project, challenge):
    """data.item_embeddings swaps our extracted embeddings for the organisers' (their PCA'd d128 table, divided by
    its rows' mean norm, or their BERT and CLIP vectors through our PCA): each switch reruns only fit_pca and what
    follows it."""
    after_fit_pca = {"check_params", "fit_pca", "embedding_report", "quantize", "train", "evaluate"}
    set_data(project, source="mmctr", raw_dir="data/mmctr", item_embeddings="extracted")
    run(["dvc", "repro"], project)

    set_data(project, item_embeddings="challenge_d128")
    assert ran_stages(run(["dvc", "repro"], project)) == after_fit_pca
    info = pl.read_parquet(project / "data/features/item_info.parquet")
    given = pl.read_parquet(project / "data/mmctr/MicroLens_1M_x1/item_info.parquet")["item_emb_d128"]
    assert info.columns[-1] == "item_emb_d128"
    given = np.array(given.to_list(), dtype=np.float64)
    norms = np.linalg.norm(given, axis=1)
    scale = json.loads((project / "data/metrics/fit_pca.json").read_text())["scale"]
    assert scale == pytest.approx(norms[norms > 0].mean()) and scale != pytest.approx(1.0)
    np.testing.assert_allclose(info["item_emb_d128"].to_numpy(), given / scale, rtol=1e-6, atol=1e-7)

    set_data(project, item_embeddings="challenge_bert_clip")
    assert ran_stages(run(["dvc", "repro"], project)) == after_fit_pca
    dim = yaml.safe_load((project / "params.yaml").read_text())["fit_pca"]["dim"]
    assert pl.read_parquet(project / "data/features/item_info.parquet").columns[-1] == f"item_emb_d{dim}"
    assert json.loads((project / "data/metrics/fit_pca.json").read_text())["input_dims"] == {"text": 768,
                                                                                            "image": 1024}


@pytest.mark.parametrize("embeddings, images", [("challenge_d128", "absent"), ("extracted", "empty")])
def test_challenge_download_without_its_images_runs_end_to_end(project, challenge, embeddings, images):
    """item_images/ is a separate, large download: absent or empty, every cover counts as `missing` and the
    pipeline still runs to the submission, on the organisers' embeddings or on extracted ones (text only, then)."""
    folder = challenge / "item_images"
    shutil.rmtree(folder, ignore_errors=True)
    if images == "empty":
        folder.mkdir()
    set_data(project, source="mmctr", raw_dir="data/mmctr", item_embeddings=embeddings)
    run(["dvc", "repro"], project)
    n_items = pl.read_parquet(project / "data/sequences/items.parquet").height - 1
    status = json.loads((project / "data/metrics/extract_image.json").read_text())["status"]
    assert status.get("missing") == n_items and not status.get("ok")
    assert (project / "data/eval/submission.zip").is_file()
    assert 0 <= json.loads((project / "data/metrics/train/metrics.json").read_text())["valid_auc"] <= 1
