"""Throughput of batch tagging on Ray with 1 and 2 (or more) workers, beside the single-machine path, in one run.

Generates ``--files`` 30 s MP3s (44.1 kHz stereo), starts one local Ray with
all usable CPUs (or joins ``--address``), and tags the folder once per worker
count into a fresh output folder; the single-process ``predict_many`` path on
the same files is the reference. Ray's start-up is reported apart: it is paid
once per job, not per file. ``--decode`` measures the workers decoding their
own files (``worker``, the CPU default), the files decoded in CPU tasks that
feed the workers (``tasks``, the GPU default), or both in turn.

    python bench/bench_ray.py --files 120 --workers 1,2
    python bench/bench_ray.py --files 2000 --workers 1 --device cuda --decode both   # one GPU
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import tagstack  # noqa: F401  (OpenMP wait policy before torch)
from tagstack.distributed.ray_batch import run_on_ray
from tagstack.inference.tagger import Tagger


def make_files(folder: Path, n: int, seconds: float = 30.0, sr: int = 44100) -> list[Path]:
    """``n`` MP3 files: eight distinct pieces, encoded once (encoding is slow), then copied under new names."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    files = []
    for i in range(n):
        path = folder / f"track{i:04d}.mp3"
        if i < 8:
            f = 110 * 2 ** (rng.integers(0, 36, 3) / 12)
            base = sum(np.sin(2 * np.pi * x * t) for x in f) / 3 * np.exp(-(t % 0.5) * 3)
            y = np.stack([base, np.roll(base, 100)], 1) * (0.3 + 0.05 * i) + 0.01 * rng.standard_normal((len(t), 2))
            sf.write(path, y.astype(np.float32), sr, format="MP3")
        else:
            shutil.copyfile(files[i % 8], path)
        files.append(path)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=120, help="30 s MP3 files to tag (default: 120)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated (default: 1,2)")
    p.add_argument("--model", help="model file (default: the shipped one)")
    p.add_argument("--address", help="an existing Ray cluster (default: start one here)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for GPU workers (default: cpu)")
    p.add_argument(
        "--decode",
        choices=("worker", "tasks", "both"),
        default="worker",
        help="where Ray decodes: in the workers, in CPU tasks feeding them, or both in turn (default: worker)",
    )
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        files = make_files(tmp / "in", a.files)
        tagger = Tagger(a.model, device=a.device)
        started = time.perf_counter()
        n = sum(1 for _ in tagger.predict_many(files))
        single = n / (time.perf_counter() - started)
        print(f"single machine, predict_many (all cores, one process, {tagger.device}): {single:.1f} files/s")
        del tagger
        started = time.perf_counter()
        ray.init(address=a.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        print(
            f"Ray start-up: {time.perf_counter() - started:.1f} s; cluster CPUs: {ray.cluster_resources().get('CPU')}, "
            f"GPUs: {ray.cluster_resources().get('GPU', 0)}"
        )
        modes = ("worker", "tasks") if a.decode == "both" else (a.decode,)
        for w in (int(x) for x in a.workers.split(",")):
            for mode in modes:
                started = time.perf_counter()
                report = run_on_ray(files, tmp / f"out{w}-{mode}", model=a.model, workers=w, device=a.device, decode_tasks=mode == "tasks")
                took = time.perf_counter() - started
                print(
                    f"Ray, {w} worker(s), decoding in {'CPU tasks' if mode == 'tasks' else 'the workers'}: "
                    f"{report.done / took:.1f} files/s ({report.done} files in {took:.1f} s, worker start-up and model "
                    f"loading included); {report.done / took / single:.2f}x the single-machine path"
                )
        ray.shutdown()


if __name__ == "__main__":
    main()
