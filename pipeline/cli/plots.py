"""`mmctr plots`: DVC's plots page, self-contained.

`dvc plots show` writes a page whose scripts load Vega, Vega-Lite and Vega-Embed from a CDN, so offline (or behind
a firewall) it shows nothing. `page_template` is an HTML template for `dvc plots show/diff --html-template` with
one bundle of the three inlined (vl-convert-python ships them, so no download is needed): the page opens from disk
with no network request. It draws the charts as SVG (text a reader can select and a test can read) and keeps
each chart's rendering promise in `window.mmctrPlots`, so a headless browser can wait for all of them.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.core.io import atomic_path

# DVC's plot templates declare Vega-Lite v5 specs: render them with the newest v5 the bundler has.
VEGA_LITE_MAJOR = "5"

# DVC fills these placeholders by plain text replacement; `{scripts}` (its CDN tags) is left out on purpose.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}")

_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>mmctr plots</title>
<script>
(function () {
@BUNDLE@
})();
(function () {
  // DVC's plot divs call vegaEmbed(element, spec): draw SVG and keep every chart's promise for whoever waits.
  const embed = window.vegaEmbed;
  window.mmctrPlots = [];
  window.vegaEmbed = function (element, spec, options) {
    const done = embed(element, spec, Object.assign({renderer: "svg"}, options));
    window.mmctrPlots.push(done);
    return done;
  };
})();
</script>
<style>
  body { font-family: sans-serif; }
  table { border-spacing: 15px; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite (newest VEGA_LITE_MAJOR.x) and Vega-Embed as one classic script that sets window.vega,
    window.vegaLite and window.vegaEmbed; built locally by vl-convert-python (a few seconds, no network)."""
    import vl_convert

    versions = [v for v in vl_convert.get_vegalite_versions() if v.split(".")[0] == VEGA_LITE_MAJOR]
    newest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    return vl_convert.javascript_bundle(vl_version=newest)


def page_template(bundle: str) -> str:
    """The HTML template with `bundle` (JavaScript) inlined, wrapped in a function so that its top-level names
    cannot clash with the `var spec` of DVC's plot divs. ValueError if the bundle could end the script element
    early or holds one of DVC's placeholders (DVC would replace text inside the code)."""
    if "</script" in bundle.lower():
        raise ValueError("the Vega bundle contains '</script': it cannot be inlined in a <script> element")
    for placeholder in (*PLACEHOLDERS, "{scripts}"):
        if placeholder in bundle:
            raise ValueError(f"the Vega bundle contains DVC's placeholder {placeholder}")
    return _PAGE.replace("@BUNDLE@", bundle)


def plots_command(template: Path, out: str, revisions: tuple[str, ...]) -> list[str]:
    """The DVC command that writes the page to `out`/index.html: `dvc plots show`, or `dvc plots diff` of
    `revisions`. Values go as `--opt=value` and revisions after `--`, so no path or name is read as an option."""
    options = [f"--html-template={template}", f"--out={out}"]
    if revisions:
        return ["dvc", "plots", "diff", *options, "--", *revisions]
    return ["dvc", "plots", "show", *options]


def write_page(out: str, revisions: tuple[str, ...], run: Callable[[list[str]], str]) -> Path:
    """Write the self-contained plots page of the workspace (or of `revisions`) as `out`/index.html, running DVC
    with `run(cmd) -> stdout`; -> the page's path. DVC writes into a temp folder and the page is renamed into
    place, so a failed or empty run leaves an earlier page as it was. ValueError when DVC finds no plot data."""
    run(["dvc", "root"])  # outside a DVC project `dvc plots show` exits 0 with nothing, which would read as "no data"
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "page.html"
        template.write_text(page_template(vega_bundle()), encoding="utf-8")
        staged = Path(tmp) / "page"
        run(plots_command(template, str(staged), revisions))
        if not (staged / "index.html").is_file():  # DVC exits 0 when it finds no plot data
            where = f"in {', '.join(revisions)}" if revisions else "in the workspace"
            raise ValueError(f"no plots to draw {where}: run `dvc repro` first (or name revisions that have them)")
        page = Path(out) / "index.html"
        with atomic_path(page) as part:
            shutil.copyfile(staged / "index.html", part)
    return page
