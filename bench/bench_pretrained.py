"""Speed of the shipped models against musicnn's own TensorFlow code, on the same files, in one run.

    python bench/bench_pretrained.py --files DIR_OR_LIST --tf-python /work/venv-musicnn/bin/python \\
        [--models pretrained,pretrained-large,musicnn-mtt,real] [--n 20] [--threads 2] [--rounds 3]

Every file is tagged one at a time (a user tagging their music), each model
loaded once:

- tagstack: ``Tagger(model).predict(file)`` per file (decoding, resampling,
  front ends, networks, classifier);
- musicnn as its users call it: ``musicnn.extractor.extractor(file,
  'MTT_musicnn', extract_features=False)`` per file (its public API, which
  builds its TensorFlow graph and restores the weights on every call);
- musicnn's network alone: its graph built and restored once, then per file
  ``librosa.load(sr=16000)``, its mel spectrogram and one ``Session.run``
  (the TensorFlow work a port can be compared with).

The musicnn rows run in their own virtual environment (``--tf-python``, see
``bench/reference_pretrained.py`` for its set-up), with TensorFlow, BLAS and
OpenMP limited to ``--threads`` like torch. Inputs: 30 s excerpts, written as
44.1 kHz stereo MP3 files, of the audio files given (real recordings: the
Debian game soundtracks of ``scripts/build_real_data.py``), or of generated
notes when none are given. Prints files per second and the ratios; with
``--rounds N`` every row is measured N times in turn (tagstack's models, then
musicnn's) and the median and range of each ratio close the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

TF_CODE = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import numpy as np, tensorflow as tf, librosa
threads = int(sys.argv[1]); files = sys.argv[2:]
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
from musicnn import extractor, models, configuration as config
out = {}
extractor.extractor(files[0], model="MTT_musicnn", extract_features=False)  # warm up (imports, caches)
t = time.perf_counter()
for f in files:
    extractor.extractor(f, model="MTT_musicnn", extract_features=False)
out["api"] = time.perf_counter() - t
tf.compat.v1.reset_default_graph()
with tf.name_scope("model"):
    x = tf.compat.v1.placeholder(tf.float32, [None, 187, 96])
    is_training = tf.compat.v1.placeholder(tf.bool)
    y = tf.nn.sigmoid(models.define_model(x, is_training, "MTT_musicnn", 50)[0])
sess = tf.compat.v1.Session(config=tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1))
sess.run(tf.compat.v1.global_variables_initializer())
tf.compat.v1.train.Saver().restore(sess, os.path.dirname(extractor.__file__) + "/MTT_musicnn/")
def tags(f):
    audio, sr = librosa.load(f, sr=16000)
    mel = librosa.feature.melspectrogram(y=audio, sr=sr, hop_length=256, n_fft=512, n_mels=96).T.astype(np.float32)
    mel = np.log10(10000 * mel + 1)
    n = len(mel) // 187
    return sess.run(y, feed_dict={x: mel[: n * 187].reshape(n, 187, 96), is_training: False}).mean(0)
tags(files[0])
t = time.perf_counter()
for f in files:
    tags(f)
out["session"] = time.perf_counter() - t
print(json.dumps(out))
"""


def excerpts(sources: list[Path], n: int, out: Path) -> list[Path]:
    """``n`` 30 s excerpts (from the middle of each source, cycling) as 44.1 kHz stereo MP3 files."""
    from tagstack.audio.io import load

    files = []
    for i in range(n):
        if sources:
            src = sources[i % len(sources)]
            y = load(src, sr=44100)
            start = max(0, (len(y) - 30 * 44100) // 2 + (i // len(sources)) * 44100)
            clip = y[start : start + 30 * 44100]
            stereo = np.stack([clip, clip * 0.9], axis=1)
        else:
            rng = np.random.default_rng(i)
            t = np.arange(30 * 44100) / 44100
            mono = sum(np.sin(2 * np.pi * 110 * 2 ** (rng.integers(0, 24) / 12) * h * t) / h for h in range(1, 5)) * 0.1
            stereo = np.stack([mono, mono * 0.9], axis=1)
        f = out / f"clip{i:03d}.mp3"
        sf.write(f, stereo.astype(np.float32), 44100, format="MP3")
        files.append(f)
    return files


def tagstack_rate(model: str, files: list[Path]) -> float:
    from tagstack import Tagger

    tagger = Tagger(model, device="cpu")
    tagger.predict(files[0])
    t = time.perf_counter()
    for f in files:
        tagger.predict(f)
    return len(files) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--files", type=Path, help="a folder of audio files (or a text file listing them) to cut excerpts from")
    p.add_argument("--models", default="pretrained,pretrained-large,musicnn-mtt,real", help="tagstack models, comma-separated")
    p.add_argument("--tf-python", type=Path, help="python of musicnn's virtual environment (no musicnn rows without it)")
    p.add_argument("--n", type=int, default=20, help="files (default: 20)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and TensorFlow (default: 2)")
    p.add_argument("--rounds", type=int, default=1, help="times to measure every row, for a shared machine's noise (default: 1)")
    a = p.parse_args()
    import torch

    from tagstack.audio.io import find_audio

    torch.set_num_threads(a.threads)
    sources = []
    if a.files:
        sources = [Path(x) for x in a.files.read_text().split()] if a.files.is_file() else find_audio([a.files])
    with tempfile.TemporaryDirectory() as tmp:
        files = excerpts(sources, a.n, Path(tmp))
        print(
            f"{len(files)} x 30 s MP3 (44.1 kHz stereo) {'from ' + str(a.files) if sources else 'of generated notes'}, "
            f"{a.threads} threads, one file at a time"
        )
        ratios: dict[str, list[tuple[float, float]]] = {}
        for r in range(a.rounds):
            if a.rounds > 1:
                print(f"round {r + 1} of {a.rounds}")
            rates = {}
            for model in a.models.split(","):
                rates[model] = tagstack_rate(model, files)
                print(f"  tagstack {model:<18} {rates[model]:6.2f} files/s", flush=True)
            if a.tf_python:
                api, session = tensorflow_rates(a.tf_python, a.threads, files)
                print(f"  musicnn (TensorFlow), extractor() per file  {api:6.2f} files/s")
                print(f"  musicnn (TensorFlow), network only          {session:6.2f} files/s")
                for model, rate in rates.items():
                    print(f"  {model}: {rate / api:.1f}x musicnn's extractor(), {rate / session:.1f}x its network alone", flush=True)
                    ratios.setdefault(model, []).append((rate / api, rate / session))
        if a.rounds > 1 and ratios:
            print(f"over {a.rounds} rounds (median, lowest-highest):")
            for model, rs in ratios.items():
                ext, net = np.array(rs).T
                print(
                    f"  {model}: {np.median(ext):.1f}x ({ext.min():.1f}-{ext.max():.1f}) musicnn's extractor(), "
                    f"{np.median(net):.1f}x ({net.min():.1f}-{net.max():.1f}) its network alone"
                )


def tensorflow_rates(python: Path, threads: int, files: list[Path]) -> tuple[float, float]:
    """Files per second of musicnn's ``extractor()`` and of its network alone, in musicnn's own environment."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([str(python), "-c", TF_CODE, str(threads), *map(str, files)], capture_output=True, text=True, env=env, check=True)
    tf = json.loads(run.stdout.strip().splitlines()[-1])
    return len(files) / tf["api"], len(files) / tf["session"]


if __name__ == "__main__":
    main()
