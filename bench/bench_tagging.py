"""Speed and memory of tagging, on this machine (prints numbers; no pass/fail).

    python bench/bench_tagging.py [--clips 60] [--model PATH] [--device cpu]

1. End to end: tag 30 s MP3 files (44.1 kHz stereo) with the model loaded once:
   decode, resample, front end, all five CNNs, classifier. Clips per second
   and times real time.
2. Front end alone: tagstack's torch log-mel against librosa's
   melspectrogram (+ the same compression) on 29.1 s clips, next to the
   time of the clip's FFTs alone (the floor for any STFT front end); with
   ``--device cuda`` also on the GPU.
3. Peak memory (max RSS of a fresh process) while tagging a one-hour file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR_FILE = 44100


def music(seconds: float, seed: int) -> np.ndarray:
    """Stereo harmonic notes with decays, a stand-in for music."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR_FILE)
    t = np.arange(n) / SR_FILE
    y = 0.01 * rng.standard_normal(n)
    for start in np.arange(0, seconds, 0.5):
        f0 = 110 * 2 ** (rng.integers(0, 30) / 12)
        i0 = int(start * SR_FILE)
        seg = t[i0 : i0 + SR_FILE] - start
        env = np.exp(-seg * 3)
        y[i0 : i0 + seg.size] += sum(np.sin(2 * np.pi * f0 * h * seg) / h for h in range(1, 5)) * env * 0.1
    return np.stack([y, y * 0.9], axis=1).astype(np.float32)


def bench_end_to_end(files: list[Path], model, device: str) -> None:
    from tagstack import Tagger

    tagger = Tagger(model, device=device)
    tagger.predict(files[0])  # warm up
    t = time.perf_counter()
    for f in files:
        tagger.predict(f)
    dt = time.perf_counter() - t
    rate = len(files) / dt
    print(f"end to end, one file at a time: {rate:.1f} clips/s, {rate * 30:.0f}x real time ({len(files)} x 30 s MP3, 44.1 kHz stereo)")
    for batched, how in ((False, "each thread decodes and runs its own files"), (True, "threads decode, passes shared by files")):
        t = time.perf_counter()
        results = list(tagger.predict_many(files, batched=batched))
        dt = time.perf_counter() - t
        assert len(results) == len(files)
        rate = len(files) / dt
        default = " (the default here)" if batched == (tagger.device.type == "cuda") else ""
        print(f"end to end, predict_many, {how}{default}: {rate:.1f} clips/s, {rate * 30:.0f}x real time")


def bench_frontend(device: str, n: int = 16) -> None:
    try:
        import librosa  # the reference; a bare GPU image may lack it
    except ImportError:
        print("front end: skipped (librosa, its reference, is not installed)")
        return
    import torch

    from tagstack.audio.frontend import ClipMel

    ys = np.stack([music(29.1, s)[:, 0] for s in range(n)])
    ys = np.stack([librosa.resample(y, orig_sr=SR_FILE, target_sr=22050)[:641655] for y in ys])

    def best_of(fn, repeats: int = 5) -> float:
        """Seconds of the fastest of several runs: this VM's neighbours make single runs noisy."""
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_lib = best_of(
        lambda: [
            np.log1p(10 * librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1024, hop_length=512, n_mels=128, power=1.0)) for y in ys
        ]
    )
    print(f"front end, {n} clips of 29.1 s: librosa {t_lib / n * 1000:.1f} ms/clip (numpy, one thread)")
    x = torch.from_numpy(ys)
    with torch.inference_mode():
        module = ClipMel()
        for batch in (1, n):
            t_ours = best_of(lambda: [module(x[i : i + batch]) for i in range(0, n, batch)])
            print(
                f"  tagstack on the CPU, batches of {batch}, {torch.get_num_threads()} threads: {t_ours / n * 1000:.2f} ms/clip, "
                f"{_ratio(t_lib, t_ours)} than librosa"
            )
        frames = [torch.nn.functional.pad(x[i], (512, 512)).unfold(-1, 1024, 512).contiguous() for i in range(n)]
        t_fft = best_of(lambda: [torch.fft.rfft(f) for f in frames])
        print(
            f"  (the clip's 1,254 real FFTs alone, torch.fft/MKL, take {t_fft / n * 1000:.2f} ms/clip = "
            f"{t_lib / t_fft:.1f}x librosa: no STFT front end on this CPU can be faster than that)"
        )
        if device.startswith("cuda"):
            module = ClipMel().to(device)

            def on_gpu(copy: bool) -> None:
                module(x.to(device) if copy else x_gpu)
                torch.cuda.synchronize()

            x_gpu = x.to(device)
            for copy in (False, True):
                t_gpu = best_of(lambda: on_gpu(copy), repeats=20)
                what = "host-to-device copy included" if copy else "audio already on the GPU"
                print(
                    f"  tagstack on {torch.cuda.get_device_name()}, batches of {n} ({what}): {t_gpu / n * 1000:.3f} ms/clip, "
                    f"{_ratio(t_lib, t_gpu)} than librosa"
                )


def bench_memory(path: Path, model, device: str) -> None:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
    code = (
        "import sys; from tagstack import Tagger; "
        f"r = Tagger({str(model)!r} if {model is not None} else None, device={device!r}).predict(sys.argv[1], taggram=True); "
        "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')); "
        "print(f'{r.seconds / 60:.1f} min, {r.taggram.shape[0]} windows,', hwm // 1024)"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    dt = time.perf_counter() - t
    what, peak_mb = out.stdout.strip().rsplit(",", 1)
    print(
        f"one-hour file ({what}): peak memory {int(peak_mb)} MB (max RSS of the tagging process), {dt:.0f} s (process start and model load included)"
    )


def _ratio(reference: float, ours: float) -> str:
    """'3.2x faster' or '9.0x slower': never a fraction of 'faster'."""
    return f"{reference / ours:.1f}x faster" if ours <= reference else f"{ours / reference:.1f}x slower"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=60, help="generated 30 s MP3 clips to tag end to end (default: 60)")
    p.add_argument("--model", default=None, help="model file or shipped model name (default: the shipped default)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--skip-hour", action="store_true", help="skip the one-hour file (peak memory) measurement")
    a = p.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for i in range(a.clips):
            f = tmp / f"clip{i:03d}.mp3"
            sf.write(f, music(30.0, i % 8), SR_FILE, format="MP3")
            files.append(f)
        bench_end_to_end(files, a.model, a.device)
        bench_frontend(a.device)
        if not a.skip_hour:
            hour = tmp / "hour.mp3"
            with sf.SoundFile(hour, "w", SR_FILE, 2, format="MP3") as f:
                block = music(60.0, 0)
                for _ in range(60):
                    f.write(block)
            bench_memory(hour, a.model, a.device)


if __name__ == "__main__":
    main()
