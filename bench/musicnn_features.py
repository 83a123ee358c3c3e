#!/usr/bin/env python3
"""musicnn teacher labels and baseline embeddings for a list of audio files.

Runs inside a separate virtual environment that has TensorFlow (CPU), tf_keras
and musicnn (see ``--help`` for the set-up).  For every input file it writes,
in input order, to one ``.npz``:

``paths``            the path as written in the list / manifest (join key)
``resolved_paths``   the absolute path that was read
``mtt_probs``        (N, 50) float32: MTT_musicnn sigmoid outputs, mean over the
                     file's patches (musicnn's taggram averaged, as
                     ``musicnn.tagger.top_tags`` does)
``mtt_tags``         (50,) the MagnaTagATune tag names, in column order
``mtt_penultimate``  (N, 200) float32: MTT_musicnn 'penultimate' features
                     (dense + ReLU + batch norm), mean over patches
``msd_probs``        (N, 50) float32, ``msd_tags`` (50,), ``msd_penultimate``
                     (N, 200): the same for MSD_musicnn
``duration_s``       (N,) decoded length in seconds (after ``--max-seconds``)
``n_patches``        (N,) number of 3 s patches averaged
``short``            (N,) True where the file was shorter than one patch and
                     was filled up to one (see ``--short``)
``failed``           (K, 2) strings: (path as written, reason) for files that
                     could not be decoded or analysed; they have no row above
``file_size``, ``file_mtime_ns``, ``failed_resolved``, ``failed_size``,
``failed_mtime_ns``  what the cache checks: a file whose size or mtime changed
                     is analysed again
``config``           a JSON string with the analysis settings

Preprocessing mirrors musicnn 0.1.0 (``musicnn/extractor.py`` and
``musicnn/configuration.py``): mono audio at 16 kHz, STFT with n_fft 512
(periodic Hann window), hop 256, centred frames with zero padding (the default
of the installed librosa), power spectrogram, 96 Slaney mel bands
(``librosa.filters.mel`` defaults), then ``log10(10000 * mel + 1)``.  Patches
are 187 frames (``librosa.time_to_frames(3 s) + 1``), cut without overlap
(musicnn's default ``input_overlap=False``), and the last partial patch is
dropped, as musicnn does.  One deliberate difference: musicnn casts the mel
spectrogram to float16 before ``10000 * x``, which overflows to inf under
NumPy 2 for loud bins (mel power above ~6.55) and turns the outputs into NaN;
here everything is computed in float32.

The networks are musicnn's own graphs (``musicnn.models.define_model``) with
the weights shipped in the musicnn wheel, except that by default the three
temporal (k x 1) convolutions are computed as a framed matrix product, which
is about 1.5-2x faster on CPU and gives the same outputs (``--exact-graph``
turns this off).  Also unlike ``musicnn.extractor.extractor``, whose
'penultimate' features repeat the first batch's values for every later patch
(a stale variable in its batch loop), every patch's own features are averaged.

The audio is decoded once, in blocks, and streamed through the resampler,
the STFT and the networks, so memory stays bounded whatever the file length.
Results are cached: every ``--save-every`` files the results so far are
written to ``OUT.partial.npz`` (via a temporary file and an atomic rename), and
a rerun with the same ``--out`` skips the files already done (and those that
already failed, unless ``--retry-failed``), as long as their size and mtime are
unchanged; the cache is keyed by resolved path, so another list naming the same
files reuses it.

Example::

    TF_USE_LEGACY_KERAS=1 /work/venv-musicnn/bin/python bench/musicnn_features.py \\
        /work/realdata/emotify/manifest.csv --out /work/realdata/musicnn/emotify.npz
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

SR = 16000  # musicnn configuration.SR
N_FFT = 512  # configuration.FFT_SIZE
HOP = 256  # configuration.FFT_HOP
N_MELS = 96  # configuration.N_MELS
PATCH_SECONDS = 3.0  # extractor(input_length=3)
PATCH_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
MODELS = ("MTT_musicnn", "MSD_musicnn")
PREFIX = {"MTT_musicnn": "mtt", "MSD_musicnn": "msd"}
FORMAT_VERSION = 1
LIST_SUFFIXES = {".txt", ".lst", ".list", ".csv", ".tsv"}

SETUP = """\
set-up of the environment (CPU only, no network beyond PyPI):
  python3 -m venv /work/venv-musicnn
  /work/venv-musicnn/bin/pip install tensorflow-cpu
  /work/venv-musicnn/bin/pip install --no-deps tf_keras musicnn librosa \\
      lazy_loader scipy numba llvmlite joblib cloudpickle decorator msgpack \\
      pooch platformdirs soundfile cffi soxr audioread
run it with TF_USE_LEGACY_KERAS=1 (the script sets it if unset).
"""


# --------------------------------------------------------------------------
# command line and inputs
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        description="Average musicnn (MTT_musicnn and MSD_musicnn) tag probabilities and "
        "penultimate-layer features over whole audio files, into one .npz.",
        epilog=SETUP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="a manifest CSV with a 'path' column (paths relative to the CSV's folder), "
        "a text file with one path per line (relative to the text file's folder; "
        "blank lines and lines starting with # are skipped), or audio files themselves; "
        "several may be given and are concatenated in order",
    )
    p.add_argument("--out", required=True, type=Path, help="output .npz")
    p.add_argument("--batch", type=int, default=8, help="patches per TensorFlow call (default 8)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for TensorFlow (intra- and inter-op), BLAS and FFT (default 1)",
    )
    p.add_argument("--save-every", type=int, default=20, help="write the partial cache every N files (default 20)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="analyse at most this many seconds from the start of each file; 0 = the whole file (default)",
    )
    p.add_argument(
        "--short",
        choices=("repeat", "pad", "fail"),
        default="repeat",
        help="files shorter than one 3 s patch (musicnn itself crashes on them): repeat the "
        "log-mel frames until one patch is full (default), pad with zeros (= digital silence "
        "after log10(10000x+1)), or list them as failed",
    )
    p.add_argument(
        "--exact-graph",
        action="store_true",
        help="build musicnn's graph unchanged (slower) instead of computing its temporal filters as a matrix product (same numbers)",
    )
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated musicnn models to run (default: {','.join(MODELS)}); one model takes about half the time",
    )
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed in an earlier run")
    p.add_argument("--fresh", action="store_true", help="ignore any cached results for --out")
    p.add_argument("--limit", type=int, default=0, help="only the first N inputs (for trials)")
    p.add_argument("--progress-every", type=float, default=15.0, help="seconds between progress lines (default 15)")
    p.add_argument("--top", type=int, default=0, help="also print the top-N MTT tags of every file")
    return p.parse_args(argv)


def read_inputs(specs: list[str]) -> list[tuple[str, Path]]:
    """Expand the command-line inputs into (path as written, resolved path) pairs, in order."""
    items: list[tuple[str, Path]] = []
    for spec in specs:
        src = Path(spec)
        suffix = src.suffix.lower()
        if suffix not in LIST_SUFFIXES:
            items.append((spec, src.resolve()))
            continue
        base = src.resolve().parent
        if suffix in (".csv", ".tsv"):
            with open(src, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                if reader.fieldnames is None or "path" not in reader.fieldnames:
                    raise SystemExit(f"{src}: no 'path' column (columns: {reader.fieldnames})")
                for row in reader:
                    written = (row["path"] or "").strip()
                    if written:
                        items.append((written, (base / written).resolve()))
        else:
            with open(src, encoding="utf-8") as fh:
                for line in fh:
                    written = line.strip()
                    if written and not written.startswith("#"):
                        items.append((written, (base / written).resolve()))
    return items


def models_of(args: argparse.Namespace) -> list[str]:
    """The musicnn models chosen with --models, in a fixed order; unknown names stop the run."""
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown or not chosen:
        raise SystemExit(f"--models: choose from {', '.join(MODELS)} (got {args.models!r})")
    return [m for m in MODELS if m in chosen]


def limit_threads(n: int) -> None:
    """Cap the thread pools of BLAS/OpenMP/TensorFlow; must run before numpy or TF is imported."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------
# audio: decode once, in blocks, to 16 kHz mono
# --------------------------------------------------------------------------


def decode_16k_mono(path: Path, max_seconds: float, block_seconds: float = 10.0):
    """Yield float32 mono blocks at 16 kHz, reading the file once.

    Channels are averaged (as ``librosa.to_mono``) and then resampled with
    soxr's high-quality mode (librosa's default ``soxr_hq``), streamed so
    that only one block is held at a time.
    """
    import numpy as np
    import soundfile as sf
    import soxr

    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with sf.SoundFile(str(path)) as f:
        sr_in = f.samplerate
        block = max(1, int(block_seconds * sr_in))
        budget = int(round(max_seconds * sr_in)) if max_seconds > 0 else None
        stream = None if sr_in == SR else soxr.ResampleStream(sr_in, SR, 1, dtype="float32", quality="HQ")
        while True:
            want = block if budget is None else min(block, budget)
            data = f.read(want, dtype="float32", always_2d=True) if want > 0 else np.zeros((0, 1), np.float32)
            if budget is not None:
                budget -= len(data)
            last = len(data) < want or want == 0 or (budget is not None and budget <= 0)
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            mono = np.ascontiguousarray(mono, dtype=np.float32)
            if stream is not None:
                mono = stream.resample_chunk(mono, last=last)
            if len(mono):
                yield mono
            if last:
                return


class LogMelStream:
    """Streaming log-mel frames identical to musicnn's input, but in float32.

    Frames are centred on multiples of ``HOP`` with ``N_FFT // 2`` zeros of
    padding on both ends, as ``librosa.feature.melspectrogram`` does (centre
    padding, ``pad_mode='constant'``), so a signal of n samples yields
    ``1 + n // HOP`` frames.  ``push`` returns the frames that became complete.
    """

    def __init__(self) -> None:
        import librosa
        import numpy as np
        import scipy.signal

        self._np = np
        self.window = scipy.signal.get_window("hann", N_FFT, fftbins=True).astype(np.float32)
        self.mel_t = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS).T.astype(np.float32)  # (257, 96)
        self.buf = np.zeros(N_FFT // 2, np.float32)
        self.n_samples = 0

    def _drain(self):
        np = self._np
        from scipy import fft as sfft

        n = 0 if len(self.buf) < N_FFT else 1 + (len(self.buf) - N_FFT) // HOP
        if n == 0:
            return np.zeros((0, N_MELS), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(self.buf[: (n - 1) * HOP + N_FFT], N_FFT)[::HOP]
        spec = sfft.rfft(frames * self.window, axis=1, workers=1)
        power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)
        mel = power @ self.mel_t
        self.buf = self.buf[n * HOP :].copy()
        return np.log10(np.float32(10000.0) * mel + np.float32(1.0)).astype(np.float32)

    def push(self, y):
        """Add samples; return the (k, 96) log-mel frames completed by them."""
        self.n_samples += len(y)
        self.buf = self._np.concatenate([self.buf, y.astype(self._np.float32, copy=False)])
        return self._drain()

    def finish(self):
        """Add the final centre padding; return the remaining frames."""
        self.buf = self._np.concatenate([self.buf, self._np.zeros(N_FFT // 2, self._np.float32)])
        return self._drain()


# --------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------


def matmul_tempo_block(inputs, filters, kernel_size, is_training, padding="same", activation=None):
    """Drop-in for ``musicnn.models.tempo_block`` that computes the same thing faster on CPU.

    musicnn's temporal filters are (k, 1) convolutions over a one-channel
    (batch, time, mel, 1) input with 'same' padding, then ReLU, batch norm and
    a max over the mel axis.  TensorFlow's Conv2D is slow for that shape (one
    input channel, tall kernel); here the input is framed along time and the
    filters applied as one matrix product.  The layer is still created with
    ``tf.compat.v1.layers.conv2d`` so that its variables get musicnn's names
    and are restored from the checkpoint; its own output is left unused (and
    so never computed).  On the fixtures the outputs equal those of musicnn's
    graph exactly; ``--exact-graph`` uses musicnn's graph unchanged.
    """
    import tensorflow as tf

    activation = activation or tf.nn.relu
    if padding != "same" or kernel_size[1] != 1 or inputs.shape[-1] != 1:
        raise ValueError(f"unexpected temporal block: {kernel_size} {padding} {inputs.shape}")
    known = {v.name for v in tf.compat.v1.global_variables()}
    tf.compat.v1.layers.conv2d(inputs=inputs, filters=filters, kernel_size=kernel_size, padding=padding, activation=activation)
    created = [v for v in tf.compat.v1.global_variables() if v.name not in known]
    kernel = next(v for v in created if v.name.endswith("/kernel:0"))  # (k, 1, 1, filters)
    bias = next(v for v in created if v.name.endswith("/bias:0"))
    k = kernel_size[0]
    x = tf.transpose(tf.squeeze(inputs, 3), [0, 2, 1])  # (batch, mel, time)
    x = tf.pad(x, [[0, 0], [0, 0], [(k - 1) // 2, k - 1 - (k - 1) // 2]])  # TensorFlow's 'same' split
    frames = tf.signal.frame(x, k, 1, axis=2)  # (batch, mel, time, k)
    conv = activation(tf.tensordot(frames, tf.reshape(kernel, [k, filters]), axes=1) + bias)
    bn_conv = tf.compat.v1.layers.batch_normalization(conv, training=is_training)
    return tf.reduce_max(bn_conv, axis=1)  # (batch, time, filters)


class Musicnn:
    """One musicnn model (graph + session) restored from the weights in the musicnn package."""

    def __init__(self, name: str, threads: int, exact_graph: bool = False) -> None:
        import musicnn
        import tensorflow as tf
        from musicnn import configuration, models

        tf.compat.v1.disable_eager_execution()
        self.name = name
        self.tags = list(configuration.MTT_LABELS if name.startswith("MTT") else configuration.MSD_LABELS)
        self.graph = tf.Graph()
        original_tempo_block = models.tempo_block
        if not exact_graph:
            models.tempo_block = matmul_tempo_block
        try:
            with self.graph.as_default():
                with tf.name_scope("model"):
                    self.x = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, N_MELS])
                    self.is_training = tf.compat.v1.placeholder(tf.bool)
                    outputs = models.define_model(self.x, self.is_training, name, len(self.tags))
                    logits, penultimate = outputs[0], outputs[-1]
                    self.probs = tf.nn.sigmoid(logits)
                    self.penultimate = penultimate
                saver = tf.compat.v1.train.Saver()
        finally:
            models.tempo_block = original_tempo_block
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=threads,
            inter_op_parallelism_threads=threads,
            device_count={"GPU": 0},
        )
        self.sess = tf.compat.v1.Session(graph=self.graph, config=config)
        # musicnn stores its checkpoints with an empty file prefix inside the model folder
        saver.restore(self.sess, os.path.join(os.path.dirname(musicnn.__file__), name) + os.sep)

    def __call__(self, patches):
        """(B, 187, 96) float32 -> (probs (B, n_tags), penultimate (B, 200))."""
        return self.sess.run([self.probs, self.penultimate], {self.x: patches, self.is_training: False})


# --------------------------------------------------------------------------
# one file
# --------------------------------------------------------------------------


def analyse(path: Path, nets: list[Musicnn], args: argparse.Namespace) -> dict:
    """Decode ``path`` once and return the patch-averaged outputs of every model.

    Raises ``ValueError`` for empty audio or (with ``--short fail``) audio
    shorter than one patch; decoding errors propagate.
    """
    import numpy as np

    mel = LogMelStream()
    sums = {net.name: [None, None] for net in nets}
    pending: list = []  # frames not yet in a patch
    pending_n = 0
    queue: list = []  # full patches waiting for a batch
    n_patches = 0
    short_frames = None

    def run(batch_list):
        batch = np.stack(batch_list).astype(np.float32, copy=False)
        for net in nets:
            probs, pen = net(batch)
            acc = sums[net.name]
            ps, qs = probs.sum(axis=0, dtype=np.float64), pen.sum(axis=0, dtype=np.float64)
            acc[0] = ps if acc[0] is None else acc[0] + ps
            acc[1] = qs if acc[1] is None else acc[1] + qs

    def take(frames):
        nonlocal pending, pending_n, n_patches
        if len(frames):
            pending.append(frames)
            pending_n += len(frames)
        if pending_n < PATCH_FRAMES:
            return
        allf = np.concatenate(pending) if len(pending) > 1 else pending[0]
        k = len(allf) // PATCH_FRAMES
        for i in range(k):
            queue.append(allf[i * PATCH_FRAMES : (i + 1) * PATCH_FRAMES])
        n_patches += k
        rest = allf[k * PATCH_FRAMES :]
        pending, pending_n = ([rest], len(rest)) if len(rest) else ([], 0)
        while len(queue) >= args.batch:
            run(queue[: args.batch])
            del queue[: args.batch]

    for block in decode_16k_mono(path, args.max_seconds):
        take(mel.push(block))
    take(mel.finish())

    short = False
    if n_patches == 0:
        if mel.n_samples == 0:
            raise ValueError("no audio samples decoded")
        if args.short == "fail":
            raise ValueError(f"shorter than one patch ({mel.n_samples / SR:.2f} s < {PATCH_SECONDS} s)")
        frames = np.concatenate(pending)
        short = True
        short_frames = len(frames)
        if args.short == "repeat":
            reps = -(-PATCH_FRAMES // len(frames))
            patch = np.tile(frames, (reps, 1))[:PATCH_FRAMES]
        else:
            patch = np.zeros((PATCH_FRAMES, N_MELS), np.float32)
            patch[: len(frames)] = frames
        queue.append(patch)
        n_patches = 1
    if queue:
        run(queue)

    out = {
        "duration_s": mel.n_samples / SR,
        "n_patches": n_patches,
        "short": short,
    }
    for net in nets:
        p = PREFIX[net.name]
        out[f"{p}_probs"] = (sums[net.name][0] / n_patches).astype(np.float32)
        out[f"{p}_penultimate"] = (sums[net.name][1] / n_patches).astype(np.float32)
    if short_frames is not None:
        out["short_frames"] = short_frames
    return out


# --------------------------------------------------------------------------
# results, cache and output
# --------------------------------------------------------------------------


def check_against_musicnn() -> None:
    """Fail loudly if the installed musicnn's settings differ from the constants mirrored here."""
    import librosa
    from musicnn import configuration as c

    theirs = (c.SR, c.FFT_SIZE, c.FFT_HOP, c.N_MELS, len(c.MTT_LABELS), len(c.MSD_LABELS))
    ours = (SR, N_FFT, HOP, N_MELS, 50, 50)
    if theirs != ours:
        raise SystemExit(f"musicnn configuration {theirs} differs from this script's {ours}")
    # musicnn.extractor: n_frames = time_to_frames(input_length, ...) + 1, hop = n_frames without overlap
    frames = int(librosa.time_to_frames(PATCH_SECONDS, sr=SR, n_fft=N_FFT, hop_length=HOP)) + 1
    if frames != PATCH_FRAMES:
        raise SystemExit(f"musicnn would use {frames}-frame patches, this script {PATCH_FRAMES}")


def config_signature(args: argparse.Namespace) -> dict:
    """Everything that changes the numbers; a cache made with other settings is refused."""
    import librosa
    import musicnn

    return {
        "format": FORMAT_VERSION,
        "models": models_of(args),
        "musicnn": getattr(musicnn, "__version__", "0.1.0"),
        "librosa": librosa.__version__,
        "sr": SR,
        "n_fft": N_FFT,
        "hop": HOP,
        "n_mels": N_MELS,
        "patch_frames": PATCH_FRAMES,
        "patch_hop_frames": PATCH_FRAMES,
        "input": "float32 log10(10000*mel+1), centred STFT with zero padding, periodic hann, slaney mel",
        "resample": "soundfile decode, channel mean, soxr HQ stream",
        "short": args.short,
        "max_seconds": args.max_seconds,
    }


def file_signature(path: Path) -> tuple[int, int]:
    """(size, mtime in ns) of a file, or (-1, -1) if it cannot be stat'ed; a changed file is redone."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


class Store:
    """Cached results and failures, keyed by resolved path and checked against the file's size and mtime.

    Keying on the resolved path (not the string in the list) lets any list
    that names the same files reuse the cache; the output's ``paths`` are the
    strings of the current list.
    """

    def __init__(self, out: Path, config: dict, tags: dict[str, list[str]]) -> None:
        self.out = out
        self.partial = out.with_name(out.name[: -len(".npz")] + ".partial.npz")
        self.config = config
        self.tags = tags
        self.done: dict[str, dict] = {}  # resolved path -> record
        self.failed: dict[str, dict] = {}  # resolved path -> {"written", "reason", "sig"}

    def load(self, fresh: bool) -> None:
        """Seed from the final output and then the partial cache (newer wins), if their settings match."""
        import numpy as np

        if fresh:
            return
        for src in (self.out, self.partial):
            if not src.exists():
                continue
            with np.load(src, allow_pickle=False) as z:
                cfg = json.loads(str(z["config"]))
                if cfg != self.config:
                    raise SystemExit(f"{src} was made with other settings ({cfg}); use --fresh or another --out")
                for i, resolved in enumerate(z["resolved_paths"].tolist()):
                    rec = {
                        "written": str(z["paths"][i]),
                        "sig": (int(z["file_size"][i]), int(z["file_mtime_ns"][i])),
                        "duration_s": float(z["duration_s"][i]),
                        "n_patches": int(z["n_patches"][i]),
                        "short": bool(z["short"][i]),
                    }
                    for p in (PREFIX[n] for n in self.tags):
                        rec[f"{p}_probs"] = z[f"{p}_probs"][i]
                        rec[f"{p}_penultimate"] = z[f"{p}_penultimate"][i]
                    self.done[resolved] = rec
                    self.failed.pop(resolved, None)
                failed = z["failed"].tolist()
                for (written, reason), resolved, size, mtime in zip(
                    failed, z["failed_resolved"].tolist(), z["failed_size"].tolist(), z["failed_mtime_ns"].tolist()
                ):
                    self.failed[resolved] = {"written": written, "reason": reason, "sig": (int(size), int(mtime))}
                    self.done.pop(resolved, None)

    def status(self, path: Path) -> str:
        """'done', 'failed' or 'todo' for a file, given its current size and mtime."""
        key = str(path)
        sig = file_signature(path)
        if key in self.done and self.done[key]["sig"] == sig:
            return "done"
        if key in self.failed and self.failed[key]["sig"] == sig:
            return "failed"
        return "todo"

    def add(self, written: str, path: Path, sig: tuple[int, int], rec: dict) -> None:
        """Record a finished file."""
        self.done[str(path)] = dict(rec, written=written, sig=sig)
        self.failed.pop(str(path), None)

    def add_failure(self, written: str, path: Path, sig: tuple[int, int], reason: str) -> None:
        """Record a file that could not be analysed."""
        self.failed[str(path)] = {"written": written, "reason": reason, "sig": sig}
        self.done.pop(str(path), None)

    def save(self, order: list[tuple[str, Path]] | None, final: bool) -> None:
        """Write the final output (rows in ``order``) or the partial cache (everything), atomically."""
        import numpy as np

        if order is None:
            rows = [(rec["written"], key) for key, rec in self.done.items()]
            fails = [(f["written"], key) for key, f in self.failed.items()]
        else:
            rows = [(w, str(p)) for w, p in order if str(p) in self.done]
            fails = [(w, str(p)) for w, p in order if str(p) in self.failed]
        recs = [self.done[k] for _, k in rows]
        frecs = [self.failed[k] for _, k in fails]
        arrays = {
            "paths": np.array([w for w, _ in rows], dtype=str),
            "resolved_paths": np.array([k for _, k in rows], dtype=str),
            "duration_s": np.array([r["duration_s"] for r in recs], dtype=np.float64),
            "n_patches": np.array([r["n_patches"] for r in recs], dtype=np.int64),
            "short": np.array([r["short"] for r in recs], dtype=bool),
            "file_size": np.array([r["sig"][0] for r in recs], dtype=np.int64),
            "file_mtime_ns": np.array([r["sig"][1] for r in recs], dtype=np.int64),
            "failed": np.array([(w, f["reason"]) for (w, _), f in zip(fails, frecs)], dtype=str).reshape(len(fails), 2),
            "failed_resolved": np.array([k for _, k in fails], dtype=str),
            "failed_size": np.array([f["sig"][0] for f in frecs], dtype=np.int64),
            "failed_mtime_ns": np.array([f["sig"][1] for f in frecs], dtype=np.int64),
            "config": np.array(json.dumps(self.config, sort_keys=True)),
        }
        for name in self.tags:
            p = PREFIX[name]
            n_tags = len(self.tags[name])
            arrays[f"{p}_tags"] = np.array(self.tags[name], dtype=str)
            for what, width in (("probs", n_tags), ("penultimate", 200)):
                col = f"{p}_{what}"
                vals = [r[col] for r in recs]
                arrays[col] = np.stack(vals).astype(np.float32) if vals else np.zeros((0, width), np.float32)
        target = self.out if final else self.partial
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        if final and self.partial.exists():
            self.partial.unlink()


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def log(msg: str) -> None:
    """Progress and errors go to stderr, flushed, with a clock time."""
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.save_every < 1:
        raise SystemExit("--batch, --threads and --save-every must be >= 1")
    if args.out.suffix != ".npz":
        raise SystemExit("--out must end in .npz")
    limit_threads(args.threads)

    items = read_inputs(args.inputs)
    if args.limit:
        items = items[: args.limit]

    import warnings

    import numpy as np  # noqa: F401  (after the thread caps)
    import tensorflow as tf

    # musicnn builds its graph with tf.compat.v1.layers, which warns once per layer
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in a future version.*")

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    check_against_musicnn()
    t0 = time.perf_counter()
    nets = [Musicnn(name, args.threads, args.exact_graph) for name in models_of(args)]
    store = Store(args.out, config_signature(args), {n.name: n.tags for n in nets})
    store.load(args.fresh)
    if args.retry_failed:
        store.failed.clear()
    seen: set[str] = set()
    todo: list[tuple[str, Path]] = []
    for written, path in items:
        if str(path) not in seen and store.status(path) == "todo":
            todo.append((written, path))
        seen.add(str(path))
    log(
        f"{len(items)} inputs, {len(items) - len(todo)} already cached or duplicate, {len(todo)} to do; "
        f"models loaded in {time.perf_counter() - t0:.1f} s; threads={args.threads}"
    )

    stop = {"flag": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    start = time.perf_counter()
    last_report = start
    audio_s = 0.0
    n_ok = n_fail = 0
    since_save = 0
    interrupted = False
    try:
        for i, (written, path) in enumerate(todo, 1):
            t = time.perf_counter()
            sig = file_signature(path)
            try:
                rec = analyse(path, nets, args)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # undecodable or otherwise unusable file
                reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
                store.add_failure(written, path, sig, reason)
                n_fail += 1
                log(f"FAILED {written}: {reason}")
            else:
                store.add(written, path, sig, rec)
                n_ok += 1
                audio_s += rec["duration_s"]
                if args.top:
                    probs = rec["mtt_probs"]
                    top = ", ".join(f"{nets[0].tags[j]} {probs[j]:.2f}" for j in np.argsort(probs)[::-1][: args.top])
                    log(f"{written} ({rec['duration_s']:.1f} s, {rec['n_patches']} patches, {time.perf_counter() - t:.2f} s): {top}")
            since_save += 1
            if since_save >= args.save_every:
                store.save(None, final=False)
                since_save = 0
            now = time.perf_counter()
            if now - last_report >= args.progress_every or i == len(todo):
                elapsed = now - start
                eta = elapsed / i * (len(todo) - i)
                speed = audio_s / elapsed if elapsed > 0 else 0.0
                log(
                    f"[{i}/{len(todo)}] ok {n_ok} failed {n_fail} | {i / elapsed:.2f} files/s, "
                    f"{speed:.1f}x real time | elapsed {hms(elapsed)} ETA {hms(eta)}"
                )
                last_report = now
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: saving the partial cache")
    if interrupted:
        store.save(None, final=False)
        return 130 if not stop["flag"] else 143
    store.save(items, final=True)
    n_rows = sum(1 for _, p in items if str(p) in store.done)
    n_failed = sum(1 for _, p in items if str(p) in store.failed)
    elapsed = time.perf_counter() - start
    log(
        f"wrote {args.out}: {n_rows} files, {n_failed} failed; this run {n_ok + n_fail} files, "
        f"{audio_s:.0f} s of audio in {hms(elapsed)}" + (f" ({elapsed / audio_s * 30:.2f} s per 30 s of audio)" if audio_s else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
