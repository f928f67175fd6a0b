"""benchmarks/rss.py: a stage's peak memory is its own, not its parent's."""

from __future__ import annotations

import os
import subprocess

from benchmarks.rss import module_command

MB = 2**20


def test_a_module_reports_its_own_peak_not_its_larger_parents(tmp_path):
    (tmp_path / "allocate.py").write_text("import sys\nheld = b'x' * (int(sys.argv[1]) * 2**20)\nsys.exit(0)\n")
    held_here = b"y" * (600 * MB)  # this process is far larger than the child will be
    peak_file = tmp_path / "it's a \"peak\" $(file)"  # quotes and shell syntax reach the child as a literal
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    assert subprocess.call(module_command("allocate", ["150"], peak_file), env=env) == 0
    peak = int(peak_file.read_text())
    assert 150 * MB <= peak < 400 * MB, peak / MB  # getrusage's ru_maxrss in the child would be >= 600 MB
    assert len(held_here) == 600 * MB


def test_the_peak_is_written_when_the_module_fails(tmp_path):
    (tmp_path / "fails.py").write_text("raise SystemExit('bad input')\n")
    peak_file = tmp_path / "peak"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    assert subprocess.call(module_command("fails", [], peak_file), env=env, stderr=subprocess.DEVNULL) == 1
    assert int(peak_file.read_text()) > 0
