#!/usr/bin/env python3
"""Reference outputs of Won et al.'s MSD FCN and CRNN, computed ONCE with their ORIGINAL code.

The PyTorch port (``tagstack.models.backbones.won``) is tested against the fixture written here,
``tests/fixtures/pretrained/won_reference.npz``. This script runs the original model classes
(``src/model.py`` and ``src/modules.py`` of a checkout of Un-bias/sota-music-tagging-models, commit
b4331b07fe45902af96830f2821926ab86e17d42, MIT) with torchaudio, in an environment of its own; the tests
never run it. Inputs: ``synthetic`` (``tests/reference_signal.reference_music(16000, 8.0)``),
``msd-preview`` and ``mtat-clip`` (the real recordings of ``../shared/data/fixtures/audio``), decoded
with ``librosa.load(path, sr=16000)`` as the authors' preprocessing does.

The network's own modules compute everything: ``spec`` (torchaudio ``MelSpectrogram``), ``to_db``
(``AmplitudeToDB``) over the whole input, then segments of 376 (FCN) or 188 (CRNN) frames without overlap
from frame 0 (the last partial one dropped) through ``spec_bn`` and ``layer1``..; forward hooks read
every block's ReLU. Keys: ``synthetic_db`` (frames, 96), the network input before ``spec_bn`` for the
synthetic signal; ``{fcn,crnn}_{input}_layerN`` (segments, channels), the max over frequency and time of
block N's activation after its ReLU, before pooling; ``{input}_n_samples``; ``meta`` (JSON: versions,
sha256 of inputs and weights). The real recordings' audio is NOT stored.

Set-up (CPU, PyPI only; torchaudio has no wheel for this project's torch, hence a venv of its own)::

    python3 -m venv /work/venv-won
    /work/venv-won/bin/pip install torch==2.11.0 torchaudio==2.11.0 librosa
    git clone https://github.com/Un-bias/sota-music-tagging-models /work/ext/won

Run from the repository root (a few seconds)::

    /work/venv-won/bin/python bench/reference_won.py --won /work/ext/won
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import librosa
import numpy as np
import torch
import torchaudio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_signal import reference_music  # noqa: E402

AUDIO = {"msd-preview": "msd-TRWJAZW128F42760DD.mp3", "mtat-clip": "mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3"}
SEGMENT = {"fcn": 376, "crnn": 188}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def levels(net: torch.nn.Module, y: np.ndarray, which: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The dB mel of ``y`` and, per segment, each block's ReLU output max over frequency and time."""
    blocks = [m for name, m in net.named_children() if name.startswith("layer") and hasattr(m, "relu")]
    seen: list[torch.Tensor] = []
    hooks = [b.relu.register_forward_hook(lambda _m, _i, out: seen.append(out.amax(dim=(2, 3)))) for b in blocks]
    with torch.no_grad():
        db = net.to_db(net.spec(torch.from_numpy(y)[None]))[0]  # (96, frames)
        n = db.shape[1] // SEGMENT[which]
        segs = db[:, : n * SEGMENT[which]].reshape(96, n, SEGMENT[which]).permute(1, 0, 2).unsqueeze(1)
        h = net.spec_bn(segs)
        for b in blocks:
            if b is blocks[-1]:  # the last block's pool needs more frames than a segment leaves it; its ReLU is read first
                b.relu(b.bn(b.conv(h)))
            else:
                h = b(h)
    for hook in hooks:
        hook.remove()
    return db.T.numpy(), {f"layer{i}": s.numpy() for i, s in enumerate(seen, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--won", type=Path, required=True, help="a checkout of Un-bias/sota-music-tagging-models")
    p.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "data" / "fixtures" / "audio")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "pretrained" / "won_reference.npz")
    args = p.parse_args()
    sys.path.insert(0, str(args.won / "src"))
    import model as won_models  # the authors' classes

    waves = {"synthetic": reference_music(16000, 8.0), **{k: librosa.load(str(args.audio_dir / v), sr=16000)[0] for k, v in AUDIO.items()}}
    arrays: dict[str, np.ndarray] = {f"{k}_n_samples": np.int64(len(y)) for k, y in waves.items()}
    weights = {}
    for which, cls in (("fcn", won_models.FCN), ("crnn", won_models.CRNN)):
        path = args.won / "models" / "msd" / which / "best_model.pth"
        weights[which] = {"file": f"models/msd/{which}/best_model.pth", "sha256": sha256(path)}
        net = cls(n_class=50) if which == "fcn" else cls()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if which == "crnn":  # the class hard-codes 56 outputs; the MSD file has 50
            net.dense = torch.nn.Linear(32, state["dense.weight"].shape[0])
        net.load_state_dict(state)
        net.eval()
        for name, y in waves.items():
            db, outs = levels(net, y, which)
            if name == "synthetic" and which == "fcn":
                arrays["synthetic_db"] = db.astype(np.float32)
            arrays.update({f"{which}_{name}_{k}": v.astype(np.float32) for k, v in outs.items()})
    meta = {
        "command": "/work/venv-won/bin/python bench/reference_won.py --won /work/ext/won",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "librosa": librosa.__version__,
            "numpy": np.__version__,
        },
        "repository": "https://github.com/Un-bias/sota-music-tagging-models (commit b4331b07fe45902af96830f2821926ab86e17d42)",
        "weights": weights,
        "inputs": {
            "synthetic": "tests/reference_signal.reference_music(16000, seconds=8.0)",
            **{k: {"file": v, "sha256": sha256(args.audio_dir / v)} for k, v in AUDIO.items()},
        },
        "segment_frames": SEGMENT,
    }
    arrays = dict(sorted(arrays.items()), meta=np.array([json.dumps(meta, indent=1, sort_keys=True)]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k != "meta"))


if __name__ == "__main__":
    main()
