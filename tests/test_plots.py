"""`mmctr plots`: the self-contained plots page (pipeline/cli/plots.py). The page itself is opened in a headless
browser on real pipeline output in test_pipeline.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli.main import main
from pipeline.cli.plots import PLACEHOLDERS, page_template, plots_command, vega_bundle, write_page


def test_the_bundle_is_inlined_once_in_a_template_dvc_can_fill() -> None:
    page = page_template("window.vegaEmbed = 1;")
    assert page.count("window.vegaEmbed = 1;") == 1
    assert all(page.count(p) == 1 for p in PLACEHOLDERS)
    assert "{scripts}" not in page and "<script src" not in page  # DVC's CDN tags have nowhere to go


@pytest.mark.parametrize("bundle", ["s = '</script>';", "s = '</SCRIPT >';", "x = '{plot_divs}';",
                                    "x = '{scripts}';"])
def test_a_bundle_that_would_break_the_page_is_refused(bundle: str) -> None:
    with pytest.raises(ValueError, match="Vega bundle contains"):
        page_template(bundle)


def test_the_real_bundle_defines_vega_embed_and_fits_the_template() -> None:
    bundle = vega_bundle()
    assert "window.vegaEmbed=" in bundle.replace(" ", "")
    page_template(bundle)  # no '</script', no placeholder inside the code


def test_paths_and_revisions_are_never_read_as_options(tmp_path: Path) -> None:
    template = tmp_path / "-t.html"
    assert plots_command(template, "-o", ()) == ["dvc", "plots", "show", f"--html-template={template}", "--out=-o"]
    assert plots_command(template, "out", ("--force", "main")) == [
        "dvc", "plots", "diff", f"--html-template={template}", "--out=out", "--", "--force", "main"]


def test_dvc_reads_the_command_as_meant(tmp_path: Path) -> None:
    """DVC's own parser takes the `--opt=value` form and the `--` separator: a revision named like an option is a
    revision (as the option, --json would print JSON)."""
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    (tmp_path / "p.html").write_text(page_template("var x = 1;"))
    proc = subprocess.run(plots_command(tmp_path / "p.html", "-out dir", ("--json",)), cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "" and "No plots were loaded" in proc.stderr
    control = subprocess.run(["dvc", "plots", "diff", "--json"], cwd=tmp_path, capture_output=True, text=True)
    assert control.stdout.strip().startswith("{")


def test_no_plots_is_an_error_naming_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside a DVC project: that is the error, not "no plots" (DVC shows none, exit 0)
    result = CliRunner().invoke(main, ["plots", "--out", "page"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: `dvc root` failed: ERROR: you are not inside of a DVC repository")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["plots", "--out", "page"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "no plots to draw" in result.output and "dvc repro" in result.output
    assert not (tmp_path / "page").exists()


def test_an_empty_run_leaves_the_earlier_page(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/index.html").write_text("earlier")
    with pytest.raises(ValueError, match="no plots to draw in v1: run `dvc repro` first"):
        write_page(str(tmp_path / "out"), ("v1",), run=lambda cmd: "")  # DVC found nothing: wrote nothing
    assert (tmp_path / "out/index.html").read_text() == "earlier"

    def fake_dvc(cmd: list[str]) -> str:
        if cmd == ["dvc", "root"]:
            return "."
        staged = Path(next(a for a in cmd if a.startswith("--out=")).removeprefix("--out="))
        staged.mkdir()
        (staged / "index.html").write_text("new page")
        return ""

    assert write_page(str(tmp_path / "out"), (), run=fake_dvc) == tmp_path / "out/index.html"
    assert (tmp_path / "out/index.html").read_text() == "new page"
