#!/usr/bin/env python3
"""Reference outputs of two pretrained networks, computed ONCE with their ORIGINAL frameworks.

The PyTorch ports in tagstack are tested against the two fixtures written here.  This script needs
TensorFlow / tf_keras / musicnn (the venv below), not the project's environment; the tests never run it.
Inputs: ``synthetic`` (``tests/reference_signal.reference_music(sr, 8.0)``, generated at each network's
rate, no resampling), ``msd-preview`` (msd-TRWJAZW128F42760DD.mp3) and ``mtat-clip``
(mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3), decoded with ``librosa.load(path, sr=...)``.

``tests/fixtures/pretrained/musicnn_reference.npz`` -- musicnn 0.1.0 (ISC), MTT_musicnn and MSD_musicnn:
musicnn's own graph (``musicnn.models.define_model`` in ``tf.name_scope('model')``, graph mode, the wheel's
checkpoint restored with ``tf.compat.v1.train.Saver``, ``is_training`` False).  Front end as
``musicnn.extractor.batch_data``: ``melspectrogram(sr=16000, n_fft=512, hop=256, n_mels=96)`` (power,
Slaney mel, centred zero-padded frames), ``log10(10000 mel + 1)`` in float32 (musicnn's float16 cast
overflows under numpy 2 and is left out), 187-frame patches without overlap from frame 0, last partial
one dropped.  Keys ``{mtt,msd}_{input}_{what}`` per patch: ``logits``/``taggram`` (sigmoid) (P, 50),
``penultimate`` (P, 200), and the max over time of ``timbral`` (P, 408), ``temporal`` (P, 153),
``cnn1``/``cnn2``/``cnn3`` (P, 64); ``synthetic_mel`` (P, 187, 96) is the exact network input for the
synthetic signal; ``{mtt,msd}_tags`` name the 50 columns.

``tests/fixtures/pretrained/artist_reference.npz`` -- the MSD artist-label CNN of Park, Lee et al.,
ISMIR 2018 (MIT, github.com/jongpillee/ismir2018-artist): one branch of the siamese model, built with
tf_keras as ``encoding_cnn.py`` does, weights ``models/model_siamese_10000_4_0.40/model_siamese_10000.h5``.
Front end as ``mp3s_to_mel.py``: ``|stft(n_fft=1024, hop=512)|`` (magnitude; librosa's default
center=True, pad_mode='constant'), Slaney mel (128), ``log10(1 + 10 mel)`` float32, standardised with
encoding_cnn.py's mean/std, 129-frame segments without overlap, last partial dropped.  Keys
``{input}_layer1..5``: per segment, max over time of each BN+ReLU activation before pooling
(S, 128/128/128/128/256); ``{input}_embedding`` (S, 256) = layer5, ``{input}_embedding_mean`` its mean
over segments (encoding_cnn.py's feature); ``synthetic_mel`` (S, 129, 128) BEFORE standardisation.

Both hold ``{input}_n_samples`` (decoded length) and ``meta`` (JSON: versions, sha256 of inputs and
weights, settings).  The real recordings' audio and mels are NOT stored (not ours to redistribute).

Set-up (CPU only, PyPI only)::

    python3 -m venv /work/venv-musicnn
    /work/venv-musicnn/bin/pip install tensorflow-cpu h5py
    /work/venv-musicnn/bin/pip install --no-deps tf_keras musicnn==0.1.0 librosa lazy_loader scipy \\
        numba llvmlite joblib cloudpickle decorator msgpack pooch platformdirs soundfile cffi soxr audioread
    git --git-dir=/work/.mirror/jongpillee+ismir2018-artist/repo/.git show \\
        HEAD:models/model_siamese_10000_4_0.40/model_siamese_10000.h5 > /work/ext/model_siamese_10000.h5

Run from the repository root (about 30 s on 2 CPU cores)::

    TF_USE_LEGACY_KERAS=1 /work/venv-musicnn/bin/python bench/reference_pretrained.py

Versions of the committed fixtures: tensorflow-cpu 2.21.0, tf_keras 2.21.0, librosa 0.11.0, numpy 2.4.6,
scipy 1.17.1, soundfile 0.14.0 (libsndfile 1.2.2 decodes the mp3s), soxr 1.1.0, h5py 3.14.0,
musicnn 0.1.0, Python 3.11.7.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

for _var, _value in (
    ("TF_USE_LEGACY_KERAS", "1"),
    ("TF_CPP_MIN_LOG_LEVEL", "2"),
    ("OMP_NUM_THREADS", "1"),
    ("OPENBLAS_NUM_THREADS", "1"),
    ("MKL_NUM_THREADS", "1"),
    ("NUMBA_NUM_THREADS", "1"),
):
    os.environ.setdefault(_var, _value)  # TF itself gets 2 intra-op threads (TF_CONFIG)

import h5py
import librosa
import numpy as np
import scipy
import soundfile
import soxr
import tensorflow as tf
import tf_keras

tf.compat.v1.disable_eager_execution()
warnings.filterwarnings("ignore", message=r".*(is deprecated|aifc|audioop|sunau)")
import musicnn
from musicnn import configuration as musicnn_config
from musicnn import models as musicnn_models

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_signal import reference_music

AUDIO = {"msd-preview": "msd-TRWJAZW128F42760DD.mp3", "mtat-clip": "mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3"}
ARTIST_H5_SHA256 = "3b3ad09c321786c8ea388269ee3c35ab540734ce5209f40a430f1c9b0a25f753"
ARTIST_MEAN, ARTIST_STD = 0.22620339, 0.25794547  # encoding_cnn.py
MUSICNN_FRAMES, ARTIST_FRAMES = 187, 129
TF_CONFIG = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path, sr: int) -> np.ndarray:
    """librosa.load as the originals do; fail rather than fall back to another decoder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="PySoundFile failed")
        y, _ = librosa.load(str(path), sr=sr)
    return y


def cut(feat: np.ndarray, n: int) -> np.ndarray:
    """(T, F) -> (T // n, n, F): windows of n frames without overlap from frame 0, remainder dropped."""
    count = feat.shape[0] // n
    assert count > 0, f"only {feat.shape[0]} frames, need {n}"
    return np.ascontiguousarray(feat[: count * n].reshape(count, n, feat.shape[1]))


def musicnn_patches(y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=16000, hop_length=256, n_fft=512, n_mels=96).T
    return cut(np.log10(10000 * mel.astype(np.float32) + 1).astype(np.float32), MUSICNN_FRAMES)


def artist_segments(y: np.ndarray) -> np.ndarray:
    spec = np.abs(librosa.stft(y, n_fft=1024, hop_length=512, win_length=1024))
    mel = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=128) @ spec
    return cut(np.log10(1 + 10 * mel).astype(np.float32).T, ARTIST_FRAMES)


def graph_bn_epsilons(graph: tf.Graph) -> dict[str, float]:
    """Epsilon of every batch norm: 4-D ones are FusedBatchNormV3 inside tf.cond branch functions
    (is_training is a placeholder), the 2-D ones add a constant ('.../batchnorm/add')."""
    eps = {}
    for func in graph.as_graph_def().library.function:
        for node in func.node_def:
            if node.op.startswith("FusedBatchNorm"):
                eps[func.signature.name.split("_cond")[0].removeprefix("model_")] = round(node.attr["epsilon"].f, 9)
    for op in graph.get_operations():
        if op.name.endswith("batchnorm/add") and op.inputs[1].op.type == "Const":
            eps[op.name.split("/")[1]] = round(float(tf.make_ndarray(op.inputs[1].op.get_attr("value"))), 9)
    assert len(eps) == 11, eps  # input BN, 2 timbral, 3 temporal, 3 mid-end, 2 back-end
    return dict(sorted(eps.items()))


def run_musicnn(model: str, inputs: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    prefix = model.split("_")[0].lower()
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, MUSICNN_FRAMES, 96])
        is_training = tf.compat.v1.placeholder(tf.bool)
        logits, timbral, temporal, cnn1, cnn2, cnn3, _, _, penultimate = musicnn_models.define_model(x, is_training, model, num_classes=50)
        taggram = tf.nn.sigmoid(logits)
    saver = tf.compat.v1.train.Saver()
    out = {}
    with tf.compat.v1.Session(config=TF_CONFIG) as sess:
        saver.restore(sess, str(Path(musicnn.__file__).parent / model) + "/")  # raises on any mismatch
        info[f"{prefix}_graph_bn_epsilons"] = graph_bn_epsilons(sess.graph)
        timed = {"timbral": timbral, "temporal": temporal, "cnn1": cnn1, "cnn2": cnn2, "cnn3": cnn3}
        for name, batch in inputs.items():
            got = sess.run(
                {"logits": logits, "taggram": taggram, "penultimate": penultimate, **timed}, feed_dict={x: batch, is_training: False}
            )
            for what in ("logits", "taggram", "penultimate", *timed):
                value = got[what]
                if what in timed:  # (P, T, C[, 1]) -> max over time -> (P, C)
                    value = value.max(axis=1).reshape(len(batch), -1)
                assert np.isfinite(value).all(), (model, name, what)
                out[f"{prefix}_{name}_{what}"] = value.astype(np.float32)
    return out


def build_artist_cnn() -> tf_keras.Model:
    """One branch of model.py's siamese network, layer names as in the h5 (Keras 2.1 auto-names)."""
    layers = tf_keras.layers
    inp = layers.Input(shape=(ARTIST_FRAMES, 128))
    h, acts = inp, []
    for i, (filters, kernel, pool) in enumerate([(128, 4, 4), (128, 4, 4), (128, 4, 4), (128, 2, 2), (256, 1, 0)], 1):
        h = layers.Conv1D(filters, kernel, padding="same", use_bias=True, name=f"conv1d_{i}")(h)
        h = layers.BatchNormalization(name=f"batch_normalization_{i}")(h)
        h = layers.Activation("relu", name=f"activation_{i}")(h)
        acts.append(h)
        if pool:
            h = layers.MaxPool1D(pool_size=pool, name=f"max_pooling1d_{i}")(h)
    return tf_keras.Model(inp, acts)


def run_artist(h5: Path, inputs: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    tf.compat.v1.reset_default_graph()
    tf_keras.backend.clear_session()
    tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=TF_CONFIG))  # = tf_keras v1 API
    model = build_artist_cnn()
    model.load_weights(str(h5), by_name=True)  # silently skips unmatched layers, hence the check below
    with h5py.File(h5, "r") as f:
        group = f["model_weights"]
        for layer in model.layers:
            if not layer.weights:
                continue
            stored = [group[layer.name][n.decode()][()] for n in group[layer.name].attrs["weight_names"]]
            loaded = layer.get_weights()
            assert len(stored) == len(loaded) and all(np.array_equal(a, b) for a, b in zip(stored, loaded)), layer.name
            info.setdefault("artist_layers_checked_against_h5", []).append(layer.name)
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                info.setdefault("artist_bn_epsilons", []).append(float(layer.epsilon))
        assert len(info["artist_layers_checked_against_h5"]) == 10  # 5 conv + 5 batch norm
        info["artist_h5_keras_version"] = str(f.attrs["keras_version"])
        config = json.loads(f.attrs["model_config"])
        info["artist_h5_bn_epsilons"] = [
            l["config"]["epsilon"] for l in config["config"]["layers"] if l["class_name"] == "BatchNormalization"
        ]
    out = {}
    for name, mel in inputs.items():
        x = ((mel.astype(np.float64) - ARTIST_MEAN) / ARTIST_STD).astype(np.float32)
        acts = model.predict(x, batch_size=16, verbose=0)
        for i, act in enumerate(acts, 1):
            out[f"{name}_layer{i}"] = act.max(axis=1).astype(np.float32)
        out[f"{name}_embedding"] = out[f"{name}_layer5"].copy()
        out[f"{name}_embedding_mean"] = out[f"{name}_embedding"].mean(axis=0)
        assert np.isfinite(out[f"{name}_embedding"]).all() and out[f"{name}_embedding"].any(), name
    return out


def save(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    arrays = dict(sorted(arrays.items()), meta=np.array([json.dumps(meta, indent=1, sort_keys=True)]))
    assert all(a.dtype.kind in "fiubU" for a in arrays.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def musicnn_fixture(waves: dict[str, np.ndarray], common: dict) -> tuple[dict, dict]:
    mels = {k: musicnn_patches(y) for k, y in waves.items()}
    arrays = {
        "synthetic_mel": mels["synthetic"],
        "mtt_tags": np.array(musicnn_config.MTT_LABELS),
        "msd_tags": np.array(musicnn_config.MSD_LABELS),
        **{f"{k}_n_samples": np.int64(len(y)) for k, y in waves.items()},
    }
    info: dict = {}
    for model in ("MTT_musicnn", "MSD_musicnn"):
        arrays.update(run_musicnn(model, mels, info))
    top = {}
    for key in (f"{p}_{name}" for p in ("mtt", "msd") for name in waves):
        mean = arrays[f"{key}_taggram"].mean(axis=0)
        top[key] = [(str(arrays[key[:3] + "_tags"][i]), round(float(mean[i]), 4)) for i in np.argsort(-mean)[:5]]
        print(f"{key:16s} top-5 (mean taggram):", top[key])
    return arrays, dict(
        common,
        network="musicnn 0.1.0 MTT_musicnn / MSD_musicnn (ISC licence), checkpoints from the wheel",
        sample_rate=16000,
        patch_frames=MUSICNN_FRAMES,
        patches_per_input={k: len(v) for k, v in mels.items()},
        frontend="librosa.feature.melspectrogram(y=y, sr=16000, hop_length=256, n_fft=512, n_mels=96).T (power, "
        "Slaney mel, librosa stft defaults); log10(10000*mel+1) in float32 (no float16 cast)",
        outputs="per patch; timbral/temporal/cnn1-3 are max over time; taggram = tf.nn.sigmoid(logits)",
        top5_mean_taggram=top,
        **info,
    )


def artist_fixture(waves: dict[str, np.ndarray], common: dict, h5: Path) -> tuple[dict, dict]:
    mels = {k: artist_segments(y) for k, y in waves.items()}
    arrays = {"synthetic_mel": mels["synthetic"], **{f"{k}_n_samples": np.int64(len(y)) for k, y in waves.items()}}
    info: dict = {}
    arrays.update(run_artist(h5, mels, info))
    return arrays, dict(
        common,
        network="ismir2018-artist siamese CNN, one branch (MIT licence), Park, Lee et al. ISMIR 2018",
        weights={
            "file": "models/model_siamese_10000_4_0.40/model_siamese_10000.h5",
            "sha256": ARTIST_H5_SHA256,
            "loaded": "tf_keras Model.load_weights(by_name=True); every conv/BN array checked equal to h5py's",
        },
        sample_rate=22050,
        segment_frames=ARTIST_FRAMES,
        segments_per_input={k: len(v) for k, v in mels.items()},
        frontend="abs(librosa.stft(y, n_fft=1024, hop_length=512, win_length=1024)) (magnitude, librosa stft "
        "defaults); librosa.filters.mel(sr=22050, n_fft=1024, n_mels=128) @ it; log10(1+10*mel) float32; "
        "(time, 128); network input = (mel - mean) / std (in float64, then float32)",
        standardisation={"mean": ARTIST_MEAN, "std": ARTIST_STD},
        note="mp3s_to_mel.py keeps the first 1291 frames and encoding_cnn.py always cuts 10 segments (it would "
        "fail on mtat-clip's 1255 frames); here floor(frames / 129) segments, the same for 30 s previews",
        outputs="per segment: layerN = max over time of BN+ReLU activation N (before pooling); "
        "embedding = layer5; embedding_mean = its mean over segments (encoding_cnn.py's feature)",
        **info,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio-dir", type=Path, default=Path("/work/shared/data/fixtures/audio"))
    p.add_argument("--artist-h5", type=Path, default=Path("/work/ext/model_siamese_10000.h5"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "tests" / "fixtures" / "pretrained")
    args = p.parse_args()
    assert sha256(args.artist_h5) == ARTIST_H5_SHA256, f"unexpected {args.artist_h5}"
    stft = inspect.signature(librosa.stft).parameters
    common = {
        "command": "TF_USE_LEGACY_KERAS=1 /work/venv-musicnn/bin/python bench/reference_pretrained.py",
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "tf_keras": tf_keras.__version__,
            "librosa": librosa.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "soundfile": soundfile.__version__,
            "libsndfile": soundfile.__libsndfile_version__,
            "soxr": soxr.__version__,
            "h5py": h5py.__version__,
            "musicnn": "0.1.0",
        },
        "inputs": {
            "synthetic": "tests/reference_signal.reference_music(sr, seconds=8.0) at the network's rate",
            **{k: {"file": v, "sha256": sha256(args.audio_dir / v)} for k, v in AUDIO.items()},
        },
        "decoder": "librosa.load(path, sr=sr): soundfile/libsndfile, mono mean, resampled with res_type='soxr_hq'",
        "librosa_stft_defaults": {k: str(stft[k].default) for k in ("window", "center", "pad_mode")},
        "mel_filters": "librosa.filters.mel defaults: htk=False (Slaney scale), norm='slaney', fmin=0, fmax=sr/2",
    }
    for sr, build in ((16000, musicnn_fixture), (22050, lambda w, c: artist_fixture(w, c, args.artist_h5))):
        waves = {"synthetic": reference_music(sr, 8.0), **{k: load(args.audio_dir / v, sr) for k, v in AUDIO.items()}}
        arrays, meta = build(waves, common)
        save(args.out_dir / f"{'musicnn' if sr == 16000 else 'artist'}_reference.npz", arrays, meta)


if __name__ == "__main__":
    main()
