#!/usr/bin/env python3
"""Convert pretrained music CNNs from their original files into tagstack model files, once, with provenance.

    pip download musicnn==0.1.0 --no-deps -d /tmp/musicnn          # the wheel holds musicnn's TF1 checkpoints
    # the artist CNN's Keras file, from GitHub jongpillee/ismir2018-artist (a clone, or the search tool's fetch):
    #   models/model_siamese_10000_4_0.40/model_siamese_10000.h5
    # Won et al.'s MSD FCN and CRNN, from GitHub Un-bias/sota-music-tagging-models (a fork of
    #   minzwon/sota-music-tagging-models holding the weights): models/msd/{fcn,crnn}/best_model.pth
    python scripts/convert_pretrained.py --musicnn-wheel /tmp/musicnn/musicnn-0.1.0-py3-none-any.whl \\
        --artist-h5 model_siamese_10000.h5 --won sota-music-tagging-models [--out src/tagstack/pretrained]

writes ``tagstack-musicnn-msd``, ``tagstack-musicnn-mtt``, ``tagstack-artist``, ``tagstack-won-msd-fcn`` and
``tagstack-won-msd-crnn`` (``.safetensors`` and a ``.md`` card each), those of the sources given. Neither
TensorFlow nor Keras is needed: a TF1 checkpoint's ``.index`` is a small sorted table (a LevelDB-style SSTable)
of tensor names, each with its dtype, shape and byte range in the ``.data`` shard, read here directly; the Keras
file is HDF5, read with h5py; Won et al.'s files are PyTorch state dicts, read with ``torch.load(weights_only=True)``
(tensors only, no code). Every source file's sha256 is checked against the one recorded below before anything is
converted, and recorded again in the model file's header (``info.source``) with the licence text and the
citation, so a converted file says where every weight came from.

The models are networks without a global classifier: they embed (the paper's aggregation of their layers),
musicnn also tags with its own 50 outputs, and all serve as local networks for a global classifier trained on
other data (``tagstack run --local-from musicnn-msd --scales musicnn-msd/187``). Their exactness against the
original code is checked by ``tests/test_pretrained.py`` against the outputs of ``bench/reference_pretrained.py``
(TensorFlow, Keras) and ``bench/reference_won.py`` (the authors' PyTorch classes, torchaudio).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from tagstack.audio.frontend import mel_filterbank
from tagstack.fileio import atomic_write_text
from tagstack.models.backbones.artist import ArtistCNN
from tagstack.models.backbones.musicnn import MUSICNN_FRONTEND, Musicnn
from tagstack.models.backbones.won import CRNN, FCN, SEGMENT_FRAMES, Won2d
from tagstack.models.file import save_model
from tagstack.models.tagging_model import Branch, TaggingModel
from tagstack.report import backbone_card

from tagstack.models.zoo import PRETRAINED_DIR as PRETRAINED

#: The sha256 of every file read, as published (checked before converting).
SOURCES = {
    "musicnn-0.1.0-py3-none-any.whl": "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa",
    "musicnn/MSD_musicnn/.index": "87f3e0f3550c8d3bafc840374003e5c8af5eeb5ecf6add61af09a7822d3282c8",
    "musicnn/MTT_musicnn/.index": "da2d7bb670b2b31e9bc441bb1bd75eca31b5b061f963cc1f9630c1aff3238f57",
    "model_siamese_10000.h5": "3b3ad09c321786c8ea388269ee3c35ab540734ce5209f40a430f1c9b0a25f753",
    "models/msd/fcn/best_model.pth": "6012aa7eecf864a8081faedca56af054521e8dfb9c5c98659a3dd5d3e1e66f21",
    "models/msd/crnn/best_model.pth": "ebb99855ed0c83f38845db9cfb383dd6fc70938bc58701dcb66e18af9ee7fbea",
}

MUSICNN_TAGS = {
    "MSD": [
        "rock",
        "pop",
        "alternative",
        "indie",
        "electronic",
        "female vocalists",
        "dance",
        "00s",
        "alternative rock",
        "jazz",
        "beautiful",
        "metal",
        "chillout",
        "male vocalists",
        "classic rock",
        "soul",
        "indie rock",
        "Mellow",
        "electronica",
        "80s",
        "folk",
        "90s",
        "chill",
        "instrumental",
        "punk",
        "oldies",
        "blues",
        "hard rock",
        "ambient",
        "acoustic",
        "experimental",
        "female vocalist",
        "guitar",
        "Hip-Hop",
        "70s",
        "party",
        "country",
        "easy listening",
        "sexy",
        "catchy",
        "funk",
        "electro",
        "heavy metal",
        "Progressive rock",
        "60s",
        "rnb",
        "indie pop",
        "sad",
        "House",
        "happy",
    ],
    "MTT": [
        "guitar",
        "classical",
        "slow",
        "techno",
        "strings",
        "drums",
        "electronic",
        "rock",
        "fast",
        "piano",
        "ambient",
        "beat",
        "violin",
        "vocal",
        "synth",
        "female",
        "indian",
        "opera",
        "male",
        "singing",
        "vocals",
        "no vocals",
        "harpsichord",
        "loud",
        "quiet",
        "flute",
        "woman",
        "male vocal",
        "no vocal",
        "pop",
        "soft",
        "sitar",
        "solo",
        "man",
        "classic",
        "choir",
        "voice",
        "new age",
        "dance",
        "male voice",
        "female vocal",
        "beats",
        "harp",
        "cello",
        "no voice",
        "weird",
        "country",
        "metal",
        "female voice",
        "choral",
    ],
}

MUSICNN_CITATION = (
    'Jordi Pons and Xavier Serra, "musicnn: pre-trained convolutional neural networks for music audio '
    'tagging", Late-breaking/demo session of ISMIR 2019; Jordi Pons, Oriol Nieto, Matthew Prockup, Erik M. '
    'Schmidt, Andreas F. Ehmann and Xavier Serra, "End-to-end learning for music audio tagging at scale", '
    "ISMIR 2018."
)
ARTIST_CITATION = (
    'Jiyoung Park, Jongpil Lee, Jangyeon Park, Jung-Woo Ha and Juhan Nam, "Representation Learning of Music '
    'Using Artist Labels", ISMIR 2018.'
)
WON_CITATION = (
    'Minz Won, Andres Ferraro, Dmitry Bogdanov and Xavier Serra, "Evaluation of CNN-based Automatic Music Tagging '
    'Models", Sound and Music Computing (SMC) 2020; the FCN of Keunwoo Choi, George Fazekas and Mark Sandler, '
    '"Automatic tagging using deep convolutional neural networks", ISMIR 2016, and the CRNN of Keunwoo Choi, '
    'George Fazekas, Mark Sandler and Kyunghyun Cho, "Convolutional recurrent neural networks for music '
    'classification", ICASSP 2017.'
)
WON_REPOSITORY = "https://github.com/Un-bias/sota-music-tagging-models (commit b4331b07fe45902af96830f2821926ab86e17d42)"
TRAINED_ON = {
    "MSD": (
        "the Million Song Dataset's 7digital audio previews (about 200,000 tracks for training) with the Last.fm "
        "top-50 tags, musicnn's split; copyrighted commercial music, not redistributable"
    ),
    "MTT": (
        "MagnaTagATune (about 19,000 29-second clips of Magnatune's catalogue for training) with its top-50 tags; "
        "the audio is Magnatune's, under its own licence"
    ),
    "won-msd": (
        "the Million Song Dataset's 7digital audio previews with the Last.fm top-50 tags (Won et al.'s split of "
        "about 200,000 tracks for training); copyrighted commercial music, not redistributable"
    ),
    "artist": (
        "the Million Song Dataset's 7digital audio previews of 10,000 artists (about 17 tracks each), labelled by "
        "artist only; copyrighted commercial music, not redistributable"
    ),
}


# ------------------------------------------------------------ reading a TF1 checkpoint without TensorFlow

_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}


def _varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """The (key, value) entries of one uncompressed SSTable block (keys prefix-compressed against the previous one)."""
    if data[offset + size] != 0:
        raise SystemExit("a compressed checkpoint index block: not a plain TF1 checkpoint")
    b = data[offset : offset + size]
    restarts = struct.unpack_from("<I", b, len(b) - 4)[0]
    end, i, key, out = len(b) - 4 - 4 * restarts, 0, b"", []
    while i < end:
        shared, i = _varint(b, i)
        fresh, i = _varint(b, i)
        length, i = _varint(b, i)
        key = key[:shared] + b[i : i + fresh]
        i += fresh
        out.append((key, b[i : i + length]))
        i += length
    return out


def _fields(msg: bytes) -> dict[int, list]:
    """A protobuf message as {field number: [values]} (varints as ints, length-delimited as bytes, fixed32 as ints)."""
    out: dict[int, list] = {}
    i = 0
    while i < len(msg):
        tag, i = _varint(msg, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            v, i = _varint(msg, i)
        elif wire == 2:
            n, i = _varint(msg, i)
            v, i = msg[i : i + n], i + n
        elif wire == 5:
            v, i = struct.unpack_from("<I", msg, i)[0], i + 4
        elif wire == 1:
            v, i = struct.unpack_from("<Q", msg, i)[0], i + 8
        else:
            raise SystemExit(f"unexpected protobuf wire type {wire} in the checkpoint index")
        out.setdefault(number, []).append(v)
    return out


def read_tf_checkpoint(index: bytes, shard: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a single-shard TF1 checkpoint, from the bytes of its ``.index`` and ``.data-00000-of-00001``."""
    footer = index[-48:]
    if struct.unpack("<Q", footer[-8:])[0] != 0xDB4775248B80FB57:
        raise SystemExit("not a TF1 checkpoint index (bad table magic)")
    _, i = _varint(footer, 0)
    _, i = _varint(footer, i)
    index_offset, i = _varint(footer, i)
    index_size, _ = _varint(footer, i)
    tensors = {}
    for _, handle in _block(index, index_offset, index_size):
        offset, j = _varint(handle, 0)
        size, _ = _varint(handle, j)
        for key, value in _block(index, offset, size):
            if not key:  # the bundle header
                continue
            entry = _fields(value)  # BundleEntryProto: dtype 1, shape 2, shard 3, offset 4, size 5
            dtype = _DTYPES[entry[1][0]]
            dims = [_fields(d).get(1, [0])[0] for d in _fields(entry.get(2, [b""])[0]).get(2, [])]
            start, nbytes = entry.get(4, [0])[0], entry.get(5, [0])[0]
            if entry.get(3, [0])[0] != 0:
                raise SystemExit(f"{key.decode()}: in another shard; only single-shard checkpoints are read")
            tensors[key.decode()] = np.frombuffer(shard[start : start + nbytes], dtype=dtype).reshape(dims).copy()
    return tensors


# ------------------------------------------------------------ musicnn


def musicnn_state(ckpt: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """musicnn's variables (named in the order ``musicnn.models`` creates them) as :class:`Musicnn`'s state dict."""

    def bn(name: str, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.weight": ckpt[f"{name}/gamma"],
            f"{prefix}.bias": ckpt[f"{name}/beta"],
            f"{prefix}.running_mean": ckpt[f"{name}/moving_mean"],
            f"{prefix}.running_var": ckpt[f"{name}/moving_variance"],
            f"{prefix}.num_batches_tracked": np.array(0, np.int64),
        }

    def k2d(name: str) -> np.ndarray:  # [time, freq, in, out] -> [out, in, time, freq]
        return ckpt[f"{name}/kernel"].transpose(3, 2, 0, 1)

    def k1d(name: str) -> np.ndarray:  # [time, channels, 1, out] -> [out, channels, time]
        return ckpt[f"{name}/kernel"][:, :, 0, :].transpose(2, 1, 0)

    s = bn("batch_normalization", "input_bn")
    for i, (conv, norm) in enumerate([("conv2d", "batch_normalization_1"), ("conv2d_1", "batch_normalization_2")]):
        s.update({f"timbral.{i}.weight": k2d(conv), f"timbral.{i}.bias": ckpt[f"{conv}/bias"], **bn(norm, f"timbral.{i}.bn")})
    for i, n in enumerate((2, 3, 4)):
        s.update(
            {
                f"temporal.{i}.weight": k2d(f"conv2d_{n}"),
                f"temporal.{i}.bias": ckpt[f"conv2d_{n}/bias"],
                **bn(f"batch_normalization_{n + 1}", f"temporal.{i}.bn"),
            }
        )
    for i, n in enumerate((5, 6, 7)):
        s.update(
            {
                f"midend.{i}.conv.weight": k1d(f"conv2d_{n}"),
                f"midend.{i}.conv.bias": ckpt[f"conv2d_{n}/bias"],
                **bn(f"batch_normalization_{n + 1}", f"midend.{i}.bn"),
            }
        )
    s.update(bn("batch_normalization_9", "pool_bn"))
    s.update(
        {
            "dense.weight": ckpt["dense/kernel"].T,
            "dense.bias": ckpt["dense/bias"],
            **bn("batch_normalization_10", "dense_bn"),
            "output.weight": ckpt["dense_1/kernel"].T,
            "output.bias": ckpt["dense_1/bias"],
        }
    )
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in s.items()}


def convert_musicnn(wheel: Path, which: str) -> TaggingModel:
    """``which`` ("MSD" or "MTT") of the musicnn wheel as a tagstack model: musicnn on 3 s segments, tagging with its own outputs."""
    with zipfile.ZipFile(wheel) as z:
        index = z.read(f"musicnn/{which}_musicnn/.index")
        shard = z.read(f"musicnn/{which}_musicnn/.data-00000-of-00001")
        licence = z.read("musicnn-0.1.0.dist-info/LICENSE.md").decode()
    _check(index, f"musicnn/{which}_musicnn/.index")
    net = Musicnn()
    net.load_state_dict(musicnn_state(read_tf_checkpoint(index, shard)))
    name = f"musicnn-{which.lower()}"
    info = {
        "name": f"tagstack-{name}",
        "dataset": f"{which} (pretrained by musicnn's authors)",
        "data": f"musicnn's {which}_musicnn, trained by its authors on {TRAINED_ON[which]}.",
        "source": {
            "file": f"{wheel.name}: musicnn/{which}_musicnn/.index and .data-00000-of-00001",
            "sha256": {wheel.name: _sha256(wheel.read_bytes()), ".index": _sha256(index), ".data-00000-of-00001": _sha256(shard)},
            "where": "https://pypi.org/project/musicnn/0.1.0/ (pip download musicnn==0.1.0 --no-deps)",
        },
        "licence": "ISC. " + licence.strip(),
        "citation": MUSICNN_CITATION,
        "converted_by": "scripts/convert_pretrained.py",
    }
    return TaggingModel(
        {name: net},
        None,
        tags=MUSICNN_TAGS[which],
        frontend=MUSICNN_FRONTEND,
        branches=[Branch(name, 187)],
        info=info,
        tags_from=f"{name}/187",
    )


# ------------------------------------------------------------ the artist CNN


def convert_artist(h5: Path) -> TaggingModel:
    """The siamese MSD artist CNN's Keras 2 file as a tagstack model: the artist CNN on 3 s (129-frame) segments."""
    import h5py

    raw = h5.read_bytes()
    _check(raw, "model_siamese_10000.h5")
    net = ArtistCNN()
    state = {}
    with h5py.File(io.BytesIO(raw), "r") as f:
        weights = f["model_weights"]
        for i in range(5):
            conv, bn = (
                weights[f"conv1d_{i + 1}"][f"conv1d_{i + 1}"],
                weights[f"batch_normalization_{i + 1}"][f"batch_normalization_{i + 1}"],
            )
            state[f"convs.{i}.weight"] = np.asarray(conv["kernel:0"]).transpose(2, 1, 0)  # [k, in, out] -> [out, in, k]
            state[f"convs.{i}.bias"] = np.asarray(conv["bias:0"])
            state.update(
                {
                    f"bns.{i}.weight": np.asarray(bn["gamma:0"]),
                    f"bns.{i}.bias": np.asarray(bn["beta:0"]),
                    f"bns.{i}.running_mean": np.asarray(bn["moving_mean:0"]),
                    f"bns.{i}.running_var": np.asarray(bn["moving_variance:0"]),
                    f"bns.{i}.num_batches_tracked": np.array(0, np.int64),
                }
            )
    state.update({k: v for k, v in net.state_dict().items() if k.startswith("input_")})
    net.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in state.items()})
    info = {
        "name": "tagstack-artist",
        "dataset": "MSD artists (pretrained by the authors)",
        "data": f"Park et al.'s siamese artist CNN (10,000 artists, 4 negatives, margin 0.4), trained on {TRAINED_ON['artist']}.",
        "source": {
            "file": "models/model_siamese_10000_4_0.40/model_siamese_10000.h5",
            "sha256": {h5.name: _sha256(raw)},
            "where": "https://github.com/jongpillee/ismir2018-artist (commit 68841d227fef71ac76b44e704007e50452042a38)",
        },
        "licence": "MIT. Copyright (c) 2018 Jongpil Lee.",
        "citation": ARTIST_CITATION,
        "converted_by": "scripts/convert_pretrained.py",
    }
    return TaggingModel({"artist": net}, None, tags=[], frontend=net.frontend, branches=[Branch("artist", 129)], info=info)


# ------------------------------------------------------------ Won et al.'s FCN and CRNN


def convert_won(repo: Path, which: str) -> TaggingModel:
    """Won et al.'s MSD ``which`` ("fcn" or "crnn") as a tagstack model: its convolutions on 6 s (FCN) or 3 s segments."""
    rel = f"models/msd/{which}/best_model.pth"
    raw = (repo / rel).read_bytes()
    _check(raw, rel)
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    arch = {"fcn": FCN, "crnn": CRNN}[which]
    net = Won2d(arch)
    # Their front end's filterbank is stored with the weights: it must be the one tagstack computes.
    fe = net.frontend
    fb = mel_filterbank(sample_rate=fe.sample_rate, n_fft=fe.n_fft, n_mels=fe.n_mels, f_max=fe.f_max, scale=fe.mel_scale)
    if not np.allclose(fb.T, state["spec.mel_scale.fb"].numpy(), atol=1e-4):
        raise SystemExit(f"{rel}: its mel filterbank is not torchaudio's HTK one that tagstack computes")
    ours = {"input_bn." + k[len("spec_bn.") :]: v for k, v in state.items() if k.startswith("spec_bn.")}
    for i in range(len(arch.blocks)):
        for part, mine in (("conv", "convs"), ("bn", "bns")):
            prefix = f"layer{i + 1}.{part}."
            ours.update({f"{mine}.{i}.{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)})
    net.load_state_dict(ours)
    licence = (repo / "LICENSE").read_text()
    name = f"won-msd-{which}"
    info = {
        "name": f"tagstack-{name}",
        "dataset": "MSD (pretrained by Won et al.)",
        "data": f"Won et al.'s {which.upper()}, trained by its authors on {TRAINED_ON['won-msd']}.",
        "source": {"file": rel, "sha256": {rel: _sha256(raw)}, "where": WON_REPOSITORY},
        "licence": "MIT. " + licence.strip(),
        "citation": WON_CITATION,
        "converted_by": "scripts/convert_pretrained.py",
        "reference": "`bench/reference_won.py`, run once with the authors' own PyTorch classes and torchaudio",
    }
    return TaggingModel({name: net}, None, tags=[], frontend=net.frontend, branches=[Branch(name, SEGMENT_FRAMES[which])], info=info)


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _check(raw: bytes, what: str) -> None:
    if _sha256(raw) != SOURCES[what]:
        raise SystemExit(f"{what}: sha256 {_sha256(raw)} is not the published file's {SOURCES[what]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__[__doc__.index("\n\n") + 2 :],
    )
    p.add_argument("--musicnn-wheel", type=Path, help="musicnn-0.1.0-py3-none-any.whl")
    p.add_argument("--artist-h5", type=Path, help="model_siamese_10000.h5 of jongpillee/ismir2018-artist")
    p.add_argument("--won", type=Path, help="a checkout of Un-bias/sota-music-tagging-models (models/msd/{fcn,crnn})")
    p.add_argument("--out", type=Path, default=PRETRAINED, help=f"folder for the model files (default: {PRETRAINED})")
    a = p.parse_args(argv)
    if not (a.musicnn_wheel or a.artist_h5 or a.won):
        p.error("give at least one of --musicnn-wheel, --artist-h5, --won")
    models = {}
    if a.musicnn_wheel:
        _check(a.musicnn_wheel.read_bytes(), "musicnn-0.1.0-py3-none-any.whl")
        models.update({f"musicnn-{w.lower()}": convert_musicnn(a.musicnn_wheel, w) for w in ("MSD", "MTT")})
    if a.artist_h5:
        models["artist"] = convert_artist(a.artist_h5)
    if a.won:
        models.update({f"won-msd-{w}": convert_won(a.won, w) for w in ("fcn", "crnn")})
    a.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        path = a.out / f"tagstack-{name}.safetensors"
        save_model(model, path)
        atomic_write_text(path.with_suffix(".md"), backbone_card(name, model))
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB) and its card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
