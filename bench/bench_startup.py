"""How long the command line takes to answer what needs no computation, beside the interpreter and torch.

Each command runs in a fresh process, ``--repeat`` times, alternating with
the others so that a busy moment of a shared machine hits them alike; the
median wall time of each is printed. ``python -c pass`` is the floor any
command pays, ``import torch`` what a command pays that imports it;
``tagstack --help``, a subcommand's ``--help`` and ``tagstack info --list``
should sit near the floor, and ``tagstack info pretrained`` (which validates
the file by building its networks on torch's meta device) near torch.

The tagstack timed is the one ``python -m tagstack`` finds (printed first):
``PYTHONPATH=src python bench/bench_startup.py`` for this checkout.

    python bench/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "tagstack --help": ["-m", "tagstack", "--help"],
    "tagstack tag --help": ["-m", "tagstack", "tag", "--help"],
    "tagstack info --list": ["-m", "tagstack", "info", "--list"],
    "tagstack info pretrained": ["-m", "tagstack", "info", "pretrained"],
}


def once(args: list[str]) -> float:
    """Seconds from starting ``python args`` to its exit."""
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repeat", type=int, default=7, help="runs of each command (default: 7)")
    a = p.parse_args()
    where = subprocess.run(
        [sys.executable, "-c", "import tagstack; print(tagstack.__file__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"tagstack from {where}; {len(os.sched_getaffinity(0))} usable CPUs; median of {a.repeat} runs, each a fresh process")
    for args in COMMANDS.values():  # warm the file cache, unmeasured
        once(args)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(a.repeat):
        for name, args in COMMANDS.items():
            times[name].append(once(args))
    for name, t in times.items():
        print(f"{name:<28} {statistics.median(t):6.2f} s  (min {min(t):.2f}, max {max(t):.2f})")


if __name__ == "__main__":
    main()
