"""The `mmctr` command: tools around the pipeline's outputs (the stages themselves run through `dvc repro`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import polars as pl

from pipeline.cli.compare import (
    VARIANTS,
    comparison_table,
    experiment_names,
    experiment_records,
    headline_rows,
    headline_table,
    queue_commands,
    unreproduced_params,
)
from pipeline.cli.plots import write_page
from pipeline.cli.terminal import printable
from pipeline.cli.tune import (
    TuneError,
    apply_trial,
    best_trial,
    load_trials,
    results_table,
    run_dvc,
    run_trials,
    session_number,
    stale_stages,
    trial_command,
    trial_names,
)
from pipeline.core.config import PARAMS_FILE, DataConfig, check_params, load_section
from pipeline.core.io import DataError, read_parquet
from pipeline.core.items import item_info_table, nonzero_rows, read_semantic_ids, unit_rows
from pipeline.core.stage import PathArg, one_line_errors
from pipeline.itememb.gallery import GALLERY_MAX_NEIGHBOURS, check_gallery_path, draw_gallery
from pipeline.itememb.neighbours import check_query, item_neighbours
from pipeline.itememb.quantize import code_neighbours
from pipeline.sources.items import item_cover_paths, item_titles
from pipeline.sources.microlens import read_titles


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmctr", prog_name="mmctr")
def main() -> None:
    """mmctr: multimodal CTR pipeline tools (the stages themselves run through `dvc repro`)."""


@main.command()
@click.option("--item", "item_id", required=True, type=int, help="query item id")
@click.option("-k", default=10, show_default=True, type=click.IntRange(min=1),
              help="how many neighbours (at most the other items in the table)")
@click.option("--item-info", default="data/features/item_info.parquet", show_default=True,
              type=PathArg(dir_okay=False), help="PCA item table written by fit_pca")
@click.option("--gallery", default=None, type=PathArg(dir_okay=False),
              help="also draw the query's and the neighbours' covers, ids, titles and scores into this .png")
@click.option("--params", "params_path", default=PARAMS_FILE, show_default=True, type=PathArg(dir_okay=False),
              help="its data section (source, raw_dir) says where titles and covers are; defaults if params.yaml is "
                   "absent")
@click.option("--raw-dir", default=None, type=PathArg(file_okay=False), help="overrides data.raw_dir")
@click.option("--titles", default=None, type=PathArg(dir_okay=False),
              help="a MicroLens titles file, instead of the titles of data.source in the raw folder")
@click.option("--by", type=click.Choice(["cosine", "codes"]), default="cosine", show_default=True,
              help="cosine: nearest by the PCA embedding (faiss); codes: longest shared semantic id prefix")
@click.option("--semantic-ids", default="data/features/semantic_ids.parquet", show_default=True,
              type=PathArg(dir_okay=False), help="with --by codes: the codes written by the quantize stage")
def neighbours(item_id: int, k: int, item_info: str, gallery: str | None, params_path: str, raw_dir: str | None,
               titles: str | None, by: str, semantic_ids: str) -> None:
    """Print ITEM's k nearest items (cosine over the PCA embedding, via faiss) with their titles; with
    --by codes, the items sharing the longest prefix of its semantic id (the quantize stage's codes; equal
    prefixes ordered by cosine). With --gallery, also draw their covers in a PNG grid (query first; missing covers
    are drawn grey)."""
    with one_line_errors(ValueError):
        if gallery is not None:
            check_gallery_path(gallery)
            if k > GALLERY_MAX_NEIGHBOURS:
                raise click.UsageError(f"--gallery draws at most {GALLERY_MAX_NEIGHBOURS} neighbours, got -k {k}")
        if not Path(params_path).is_file() and params_path != PARAMS_FILE:  # only the default may be absent
            raise DataError(f"{params_path}: params file not found")
        data = load_section(params_path, "data", DataConfig) if Path(params_path).is_file() else DataConfig()
        raw_dir = raw_dir or data.raw_dir
        if not Path(item_info).exists():
            raise DataError(f"{item_info}: file not found (run `dvc repro` first, or pass --item-info)")
        table = item_info_table(read_parquet(item_info, {"item_id": pl.Int32}), item_info)  # (N+1, D) checked
        names = dict((read_titles(titles) if titles else item_titles(data.source, raw_dir)).iter_rows())
        prefix: dict[int, str] = {}  # --by codes: the shared prefix of each neighbour, as "n/L"
        if by == "codes":
            levels, hits = semantic_neighbours(semantic_ids, table, item_id, k)
            found = [(i, cos) for i, _, cos in hits]
            prefix = {i: f"  prefix {n}/{levels}" for i, n, _ in hits}
        else:
            found = item_neighbours(table, item_id, k)
        if gallery is not None:
            shown = [(item_id, None), *found]
            covers = item_cover_paths(data.source, raw_dir, np.array([i for i, _ in shown]))
            draw_gallery([(i, names.get(i, ""), score, cover) for (i, score), cover in zip(shown, covers)], gallery)
    click.echo(f"query {item_id}: {printable(names.get(item_id, ''))}")
    if len(found) < k:
        where = f"share a code with it in {semantic_ids}" if by == "codes" else f"in {item_info}"
        click.echo(f"(only {len(found)} other items {where}: showing all of them, not {k})")
    for rank, (other, score) in enumerate(found, start=1):
        click.echo(f"{rank:>3}  {other:>8}  {score:6.3f}{prefix.get(other, '')}  {printable(names.get(other, ''))}")
    if gallery is not None:
        click.echo(f"gallery: {gallery}")


def semantic_neighbours(path: str, table: np.ndarray, item_id: int, k: int) -> tuple[int, list[tuple[int, int, float]]]:
    """The quantize stage's codes at `path` (checked: row i = item i, as many items as the PCA `table` (N+1, D))
    -> (levels, code_neighbours of item_id, ties ordered by cosine over `table`)."""
    if not Path(path).exists():
        raise DataError(f"{path}: file not found (run `dvc repro` first, or pass --semantic-ids)")
    codes = read_semantic_ids(path, table.shape[0])  # (N+1, L)
    check_query(table, item_id)
    # items without content share the code of the zero vector: as in cosine search, they are never listed
    codes = np.where(nonzero_rows(table)[:, None], codes, -1)
    cosine = unit_rows(table) @ unit_rows(table[item_id:item_id + 1])[0]  # (N+1,)
    return codes.shape[1], code_neighbours(codes, item_id, k, cosine)


@main.command()
@click.option("--queue/--show", "queue", default=False,
              help=f"--queue: add the {2 * len(VARIANTS)} experiments to DVC's queue (then `dvc queue start`), but "
                   "those this commit already has, run or queued; --show (default): print the table from "
                   "`dvc exp show --json`")
@click.option("--dry-run", is_flag=True, help="with --queue: print the commands instead of running them")
def compare(queue: bool, dry_run: bool) -> None:
    """The paper's Table 2 on the current data: DIN, DIN+Dice, Transformer+DCNv2 and its two ablations, the mean-pool
    MLP and the mmctr default (with id, semantic-id and id + semantic-id item embeddings), each without and with the
    frozen multimodal embedding, as DVC experiments named cmp-<variant>-<id|mm>."""
    with one_line_errors(TuneError):
        if dry_run and not queue:
            raise click.UsageError("--dry-run goes with --queue (it prints the commands instead of queueing them)")
        if queue:
            # a second --queue would queue every run again, under the same names: hours of duplicate training
            have = experiment_names(json.loads(run_dvc(["dvc", "exp", "show", "--json"])))
            for cmd in queue_commands():
                if (name := cmd[cmd.index("-n") + 1]) in have:
                    click.echo(f"{name}: already run or queued on this commit, skipped (`dvc exp remove {name}` "
                               "to run it again)")
                    continue
                click.echo(" ".join(cmd))
                if not dry_run:
                    run_dvc(cmd)
            if not dry_run:
                click.echo("queued; run them with `dvc queue start` (one at a time) and watch `dvc queue status`")
            return
        out = run_dvc(["dvc", "exp", "show", "--json", "--all-commits"])
        records = experiment_records(json.loads(out))
        if not records:
            click.echo("no cmp-* experiments yet: `mmctr compare --queue`, then `dvc queue start`, then run this again")
            return
        click.echo(comparison_table(records))


@main.command("check-params")
@click.option("--params", "params_path", default=PARAMS_FILE, show_default=True, type=PathArg(dir_okay=False))
def check_params_file(params_path: str) -> None:
    """Load and check every section of the params file, as the check_params stage does, without DVC: DVC parses
    params.yaml itself before any stage runs, and a file of nested YAML aliases (a few hundred bytes) hangs it for
    minutes, where this refuses it at once. `make repro` runs this first."""
    with one_line_errors():
        sections = check_params(params_path)
    click.echo(f"{params_path}: {len(sections)} sections checked")


@main.command()
@click.option("--all-commits", is_flag=True, help="also the experiments of earlier commits")
def results(all_commits: bool) -> None:
    """The headline results: one row per revision (the workspace, the commit, each experiment) with the params that
    differ between them, valid and test AUC, logloss, gAUC and, on synthetic data, the gap to the history oracle.
    `dvc exp show` holds every metric and param; this is the part worth reading first."""
    with one_line_errors(TuneError):
        out = run_dvc(["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])])
        unreproduced = unreproduced_params(json.loads(run_dvc(["dvc", "status", "--json"]) or "{}"))
        click.echo(headline_table(headline_rows(json.loads(out), unreproduced)))


@main.command()
@click.argument("revisions", nargs=-1)
@click.option("--out", default="dvc_plots", show_default=True, type=PathArg(file_okay=False),
              help="folder for index.html")
def plots(revisions: tuple[str, ...], out: str) -> None:
    """DVC's plots page (ROC, calibration, PCA variance, training curves) with Vega inlined, so that it opens
    offline: `dvc plots show`, or with REVISIONS (commits, experiment names) `dvc plots diff REVISIONS`."""
    with one_line_errors(TuneError, ValueError):
        page = write_page(out, revisions, run_dvc)
    click.echo(f"wrote {page} (self-contained: it needs no network)")


@main.command()
@click.option("--trials", type=click.IntRange(min=1), default=None, help="overrides tune.trials")
@click.option("--dry-run", is_flag=True, help="print the plan and the dvc commands without running them")
@click.option("--no-apply", is_flag=True,
              help="leave the workspace as it is (`dvc exp apply NAME` then applies a trial when every output of "
                   "its commit is in the cache, as after a whole `dvc repro`)")
def tune(trials: int | None, dry_run: bool, no_apply: bool) -> None:
    """Search the train params listed in params.yaml's tune section: each trial is a DVC experiment of the train
    stage (`dvc exp run --temp -n tune-<s>-<k> -S ... train`), the first with the current values. Prints the trials
    by valid AUC (the test split is never scored) and applies the best: its values into params.yaml, its dvc.lock
    and train metrics from its experiment, its model from the cache (no training). Run it at the project's root: the
    params file is the project's own params.yaml, the one `dvc exp run` reads and writes (no other file could be
    searched), and its dvc commands name the stage `train` of the root's dvc.yaml."""
    with one_line_errors(TuneError, ValueError):
        root = run_dvc(["dvc", "root"]).strip()
        if Path(root).resolve() != Path.cwd().resolve():
            raise TuneError(f"run mmctr tune at the project's root ({Path(root).resolve()}), where DVC finds the "
                            "train stage and params.yaml")
        params_path = Path(PARAMS_FILE)
        plan = load_trials(params_path, trials)
        names = trial_names(session_number(run_dvc(["dvc", "exp", "list", "--name-only"]).split()), len(plan))
        commands = [(name, trial_command(name, trial, plan[0])) for name, trial in zip(names, plan)]
        status = json.loads(run_dvc(["dvc", "status", "--json", "train"]) or "{}")
        runs = len(plan) - (not status)  # DVC skips the first trial (no change) when train is up to date
        click.echo(f"{len(plan)} trials, run one after another; cost: {runs} run(s) of the train stage"
                   + (f" ({names[0]}, the current values, is already trained)" if not status else ""))
        if stale := stale_stages(status):
            click.echo(f"note: {', '.join(stale)} not up to date: trials run them too (`dvc repro train` first "
                       "keeps the search to training)")
        if dry_run:
            for _, cmd in commands:
                click.echo(" ".join(cmd))
            return
        records = run_trials(commands, first_is_free=not status, echo=click.echo)
        click.echo(results_table(records, current=names[0]))
        best = best_trial(records)
        click.echo(f"best by valid AUC: {best['name']} ({best['valid_auc']:.4f})")
        if best["name"] == names[0]:
            click.echo("the current train values scored best: nothing to apply")
        elif no_apply:
            click.echo(f"not applied; `dvc exp apply {best['name']}` applies it (it needs every output of the "
                       "trial's commit in the cache: run a whole `dvc repro` before the search)")
        else:
            apply_trial(best, params_path)
            click.echo(f"applied {best['name']} to the workspace (params.yaml, dvc.lock, its trained model and "
                       "train metrics, without training again); run `dvc repro` to evaluate it on the test split, "
                       "then commit")


if __name__ == "__main__":  # python -m pipeline.cli.main, where pip's mmctr launcher cannot start
    main()
