"""The models that ship inside the package, by name: the model zoo (``tagstack info --list``).

Each is one self-describing safetensors file in ``tagstack/pretrained/`` with a
Markdown card beside it. Some are taggers (a global classifier trained on real
tags), some pretrained backbones converted from their original files
(``scripts/convert_pretrained.py``), which embed, tag with their own outputs
where they have them, and serve as local networks of new models
(``tagstack run --local-from musicnn-msd``).
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"

#: name -> one line on what it is (the card says the rest)
ZOO = {
    "pretrained": "musicnn MTT's every layer aggregated over 3 s segments, a global MLP trained here on real tags",
    "pretrained-large": "musicnn MTT and MSD aggregated together, a global MLP on real tags: more accurate, three quarters of the speed",
    "pretrained-xl": "musicnn MTT and MSD with Won et al.'s MSD FCN and CRNN, a global MLP on real tags: the most accurate, slowest",
    "real": "the paper's five CNNs trained here on real recordings (4Q moods, genres, quadrants; musicnn MTT tags as a teacher)",
    "real-4q": "the paper's five CNNs trained here on 4Q's human tags alone (a baseline)",
    "corpus": "the paper's five CNNs trained on the score-rendered default corpus (an example, not for recordings)",
    "musicnn-msd": "musicnn pretrained on the Million Song Dataset (Pons & Serra 2019): its 50 Last.fm tags, embeddings",
    "musicnn-mtt": "musicnn pretrained on MagnaTagATune (Pons & Serra 2019): its 50 MTT tags, embeddings",
    "artist": "the MSD artist CNN (Park, Lee et al., ISMIR 2018): embeddings of the paper's front end",
    "won-msd-fcn": "the FCN of Choi et al. pretrained on the Million Song Dataset by Won et al. (SMC 2020): embeddings",
    "won-msd-crnn": "the CRNN's convolutions of Choi et al. pretrained on the Million Song Dataset by Won et al. (SMC 2020): embeddings",
}
#: What ``Tagger()`` and ``tagstack tag`` use.
DEFAULT = "pretrained"


def zoo_path(name: str) -> Path:
    """Where the shipped model ``name`` lives in the package (whether or not it exists)."""
    return PRETRAINED_DIR / f"tagstack-{name}.safetensors"


def resolve_model(model: str | Path | None) -> Path:
    """A model file from a path, a shipped model's name (see :data:`ZOO`) or None (the default)."""
    if model is None:
        return zoo_path(DEFAULT)
    if str(model) in ZOO and not Path(model).is_file():  # a folder named "corpus" does not hide the shipped model
        return zoo_path(str(model))
    return Path(model)
