"""Stage check_params: every section of params.yaml loaded and checked before any other stage can run.

DVC deletes a stage's outputs just before it runs the stage's command, so a params mistake found by the stage
itself (`dvc exp run -S +fit_pca.dimm=3`) would cost its earlier outputs. This stage runs first whenever any params
value changes, and every other stage depends on its output: a bad key stops `dvc repro` here, with the stage's own
one-line error, and nothing downstream is touched.

In:  --params (every section)
Out: --out  JSON: {"sections": [the checked section names, sorted]}; the same bytes for any valid params file
            with the same sections, so a valid change reruns only the stages whose own params changed.
Params: all sections (pipeline.core.config.SECTIONS)
"""

import click

from pipeline.core.config import check_params
from pipeline.core.io import write_json
from pipeline.core.stage import file_options, params_option, stage_main, summary


@click.command(help=summary(__doc__))
@file_options("--out")
@params_option
@stage_main
def main(out: str, params_path: str) -> None:
    write_json({"sections": check_params(params_path)}, out)


if __name__ == "__main__":
    main()
