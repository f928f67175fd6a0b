"""Peak memory of a process, measured so that its parent's does not count.

Linux keeps getrusage's ru_maxrss across exec (and wait4 reports a child's that way), so a process started from a
large one (subprocess's vfork + exec, multiprocessing's spawn) reports at least its parent's peak at that moment:
a stage started by a driver that holds 1.4 GiB reads 1.4 GiB however little it touches itself. VmHWM in
/proc/<pid>/status is the high-water mark of the process's own address space, which exec starts afresh.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def own_peak_rss() -> int:
    """Bytes: this process's peak resident set since its exec (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def module_command(module: str, args: list[str], peak_file: Path) -> list[str]:
    """argv that runs `python -m <module> <args...>` and, as it exits (an error or click's sys.exit included),
    writes its own_peak_rss() in bytes to peak_file. The paths reach the code as Python literals (repr), so any
    characters in them are safe."""
    code = "\n".join([
        "import atexit, runpy, sys",
        f"sys.path.append({str(HERE)!r})",  # appended: this folder's modules never shadow the project's
        "from rss import own_peak_rss",
        f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write(str(own_peak_rss())))",
        f"sys.argv = [{module!r}, *sys.argv[1:]]",
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    ])
    return [sys.executable, "-c", code, *args]
