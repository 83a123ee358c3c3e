"""Torch threads on a busy machine: spinning against passive OpenMP waiting, side by side.

tagstack sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before
torch starts. This measures why: one local CNN's training steps and the
front end plus the five CNNs on a clip, with 1 thread and with all usable
CPUs, each in a fresh process, on an idle machine and while ``--load``
processes keep every core busy, with OpenMP's default waiting and with
passive waiting.

    python bench/bench_threads.py [--load 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time

WORK = r"""
import os, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from tagstack.models.local import build_local_cnn
m = build_local_cnn(18, n_tags=50)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True)
x, y = torch.randn(64, 18, 128), torch.rand(64, 50)
loss = torch.nn.BCEWithLogitsLoss()
for _ in range(3):
    opt.zero_grad(); loss(m(x), y).backward(); opt.step()
t = time.perf_counter()
for _ in range(15):
    opt.zero_grad(); loss(m(x), y).backward(); opt.step()
train = (time.perf_counter() - t) / 15
from tagstack.audio.frontend import ClipMel
from tagstack.models.tagging_model import TaggingModel
from tagstack.config import FrontEndConfig
local = {s: build_local_cnn(s, n_tags=50).eval() for s in (18, 27, 54, 108, 216)}
tm = TaggingModel(local, None, tags=[str(i) for i in range(50)], frontend=FrontEndConfig()).eval()
fe = ClipMel(FrontEndConfig())
clip = torch.randn(1, FrontEndConfig().clip_samples) * 0.1
with torch.inference_mode():
    tm.forward_features(fe(clip))
    t = time.perf_counter()
    for _ in range(3):
        tm.forward_features(fe(clip))
    tag = (time.perf_counter() - t) / 3
print(f"{train * 1000:.0f} {tag * 1000:.0f}")
"""


def spin(stop: float) -> None:
    while time.time() < stop:
        pass


def measure(threads: int, policy: str | None) -> tuple[int, int]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    # WORK imports torch before tagstack, so tagstack's own default does not apply: the environment decides
    out = subprocess.run([sys.executable, "-c", WORK, str(threads)], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        sys.exit(out.stderr[-2000:])
    a, b = out.stdout.split()
    return int(a), int(b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument(
        "--load", type=int, default=len(os.sched_getaffinity(0)), help="busy processes for the loaded runs (default: one per usable CPU)"
    )
    a = p.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{cpus} usable CPUs; times per training step of the 18-frame CNN (batch 64) and per 29.1 s clip through the front end and five CNNs"
    )
    print(f"{'machine':<22} {'OpenMP waiting':<16} {'threads':>7} {'train step':>11} {'tag a clip':>11}")
    for loaded in (False, True):
        procs = []
        if loaded:
            stop = time.time() + 600
            procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.load)]
            for q in procs:
                q.start()
        try:
            for policy in (None, "PASSIVE"):
                for threads in sorted({1, cpus}):
                    tr, tg = measure(threads, policy)
                    where = f"busy ({a.load} spinning)" if loaded else "idle"
                    print(f"{where:<22} {policy or 'default (spin)':<16} {threads:>7} {tr:>9} ms {tg:>9} ms", flush=True)
        finally:
            for q in procs:
                q.terminate()


if __name__ == "__main__":
    main()
