"""Contracts every dataset adapter and every shipped model keeps (scikit-learn checks every estimator; timm every model),
and the layer rule of CONTRIBUTING.md on the source itself.

A new adapter registered in ``DATASETS`` or a new model in ``ZOO`` is checked here without a line of test code: an
adapter needs only a small generated dataset in its own format in ``BUILDERS``.
"""

import ast
import graphlib
import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tagstack.datasets import DATASETS, SPLITS, load_dataset
from tagstack.errors import DatasetError
from tagstack.inference.tagger import Tagger
from tagstack.models.file import read_metadata, save_model
from tagstack.models.zoo import ZOO, zoo_path


def _dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _manifest(root):
    rows = [f"clips/{i}.wav,{'rock;loud' if i % 2 else 'calm'},{['train', 'valid', 'test'][i % 3]}" for i in range(12)]
    (root / "manifest.csv").write_text("path,tags,split\n" + "\n".join(rows) + "\n")
    return {}


def _folders(root):
    for label in ("jazz", "rock"):
        (root / label).mkdir()
        for i in range(10):
            (root / label / f"{i}.wav").write_bytes(b"x")
    return {}


def _gtzan(root):
    from tagstack.datasets.gtzan import GENRES

    for g in GENRES:
        (root / "genres" / g).mkdir(parents=True)
        for i in range(5):
            (root / "genres" / g / f"{g}.{i:05d}.au").write_bytes(b"x")
    return {"split": "kfold-0-5"}


def _jamendo(root):
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    for name in ("train", "validation", "test"):
        rows = [f"track_{name}{i}\tartist\talbum\t{i:02d}/{name}{i}.mp3\t200.0\tgenre---rock\tmood/theme---happy" for i in range(3)]
        (root / f"autotagging_top50tags-{name}.tsv").write_text("\n".join([header, *rows]))
    return {}


def _mtat(root):
    tags = [f"tag{i}" for i in range(55)]
    rng = np.random.default_rng(0)
    lines = ["\t".join(f'"{h}"' for h in ["clip_id", *tags, "mp3_path"])]
    for i in range(64):
        row = (rng.random(len(tags)) < 0.3).astype(int)
        lines.append("\t".join(f'"{v}"' for v in [i + 1, *row, f"{'0123456789abcdef'[i % 16]}/a-b-{i:02d}-t-0-29.mp3"]))
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return {"split": "full"}


def _msd_common(root, ids):
    _dump({t: 1000 + i for i, t in enumerate(ids)}, root / "MSD_id_to_7D_id.pkl")
    _dump({1000 + i: f"{i % 10}/{i}/{1000 + i}.clip.mp3" for i in range(len(ids))}, root / "7D_id_to_path.pkl")


def _msd(root):
    ids = [f"TR{i:016d}" for i in range(12)]
    (root / "50tagList.txt").write_text("\n".join(f"t{i}" for i in range(50)))
    _dump(ids[:8], root / "filtered_list_train.cP")
    _dump(ids[8:], root / "filtered_list_test.cP")
    _dump({t: np.arange(50) % (i + 2) == 0 for i, t in enumerate(ids)}, root / "msd_id_to_tag_vector.cP")
    _msd_common(root, ids)
    return {}


def _tagtraum(root):
    ids = [f"TR{i:016d}" for i in range(10)]
    (root / "msd_tagtraum_cd2c.cls").write_text("\n".join(f"{t}\t{['Rock', 'Jazz'][i % 2]}" for i, t in enumerate(ids)))
    _dump(ids[:7], root / "train_list.cP")
    _dump(ids[7:], root / "test_list.cP")
    _msd_common(root, ids)
    return {}


def _corpus(root):
    _manifest(root)
    return {}


#: adapter -> a function writing a small dataset in its published format under a folder, returning load options
BUILDERS = {
    "manifest": _manifest,
    "folders": _folders,
    "gtzan": _gtzan,
    "jamendo": _jamendo,
    "mtat": _mtat,
    "msd": _msd,
    "tagtraum": _tagtraum,
    "corpus": _corpus,
}


def test_every_registered_adapter_has_a_builder_here():
    assert set(BUILDERS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_signature_and_docstring(name):
    """``loader(root, split, *, options...)``: the options it declares are keyword-only parameters, any other has a default."""
    adapter = DATASETS[name]
    params = inspect.signature(adapter.loader).parameters.values()
    assert [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD] == ["root", "split"]
    keyword = {p.name: p for p in params if p.kind == p.KEYWORD_ONLY}
    assert adapter.options <= set(keyword)
    assert all(p.default is not p.empty for n, p in keyword.items() if n not in adapter.options)
    assert (adapter.loader.__doc__ or "").strip() and adapter.description


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_on_an_empty_folder_is_one_line_naming_it(name, tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(name, empty)
    assert "nothing-here" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_returns_a_clip_set_that_keeps_the_contract(name, tmp_path):
    options = BUILDERS[name](tmp_path)
    clips = load_dataset(name, tmp_path, **options)
    n, k = len(clips), len(clips.tags)
    assert n > 0 and clips.labels.shape == (n, k) and clips.labels.dtype == np.float32
    assert len(set(clips.tags)) == k and all(isinstance(t, str) and t for t in clips.tags)
    assert set(clips.splits) <= set(SPLITS) | {""} and len(clips.indices("train")) > 0
    known = clips.labels[~np.isnan(clips.labels)]
    assert ((known >= 0) & (known <= 1)).all()
    if clips.task == "multiclass":
        assert (clips.labels.sum(axis=1) == 1).all()
    assert set(clips.groups) <= set(clips.tags)
    assert all(clips.audio_path(i).is_absolute() or str(clips.audio_path(i)).startswith(str(tmp_path)) for i in range(n))
    again = load_dataset(name, tmp_path, **options)  # deterministic: the same clips, labels and split every time
    assert again.paths == clips.paths and np.array_equal(again.splits, clips.splits)
    assert np.array_equal(again.labels, clips.labels, equal_nan=True)


SHIPPED = [name for name in ZOO if zoo_path(name).exists()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_describes_itself_and_round_trips(name, tmp_path):
    """Every shipped file: a card beside it, a header that names it and its sources, outputs finite and of the
    declared sizes on real-length audio, and the same outputs after a save and a load."""
    path = zoo_path(name)
    assert path.with_suffix(".md").is_file()
    meta = read_metadata(path)
    json.dumps(meta, allow_nan=False)  # strict JSON
    assert meta["info"]["name"] == f"tagstack-{name}"
    tagger = Tagger(path, device="cpu")
    y = (0.1 * np.random.default_rng(0).standard_normal(22050 * 6)).astype(np.float32)  # 6 s of noise at 22.05 kHz
    vector = tagger.embed(y, sr=22050)
    assert vector.shape == (meta["feature_layout"][-1]["stop"],) and np.isfinite(vector).all()
    if tagger.tags:  # a global classifier, or the network's own outputs
        probs = tagger.predict(y, sr=22050).probs
        assert probs.shape == (len(tagger.tags),) and ((probs >= 0) & (probs <= 1)).all()
    save_model(tagger.model, tmp_path / "again.safetensors")
    assert np.array_equal(Tagger(tmp_path / "again.safetensors", device="cpu").embed(y, sr=22050), vector)
    if name.startswith(("musicnn", "artist")):  # converted networks carry their provenance
        info = meta["info"]
        assert info["source"]["sha256"] and info["licence"] and info["citation"] and info["converted_by"]


# The layer rule (CONTRIBUTING.md): a module imports from its own layer or those below, never from one above, and no
# import cycles. The source is parsed, not imported, so every import counts, also those inside functions.

SRC = Path(__file__).resolve().parents[1] / "src" / "tagstack"

#: each top-level package or module of tagstack -> its layer, highest first; a new one must be placed here
LAYERS = {
    **dict.fromkeys(["cli", "__main__"], 8),
    **dict.fromkeys(["service", "distributed"], 7),
    "experiments": 6,
    "train": 5,
    "evaluation": 4,  # training validates with its metrics; scoring a model file tags with inference's Tagger
    "inference": 3,
    **dict.fromkeys(["models", "datasets", "corpus", "report"], 2),
    "audio": 1,
    # the foundations, imported by every layer; the package root holds __version__ and the errors (its public API is
    # reached through importlib on first use, not by an import statement)
    **dict.fromkeys(["config", "errors", "checks", "tags", "provenance", "runtime", "fileio", "progress", "__init__"], 0),
}

MODULES = {".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p for p in SRC.rglob("*.py")}


def _unit(module):
    """``tagstack.models.zoo`` -> ``models``; the package root ``tagstack`` -> ``__init__``."""
    return module.split(".")[1] if "." in module else "__init__"


def _imports(module, node, at_import_time=True):
    """(tagstack module imported, whether it runs when ``module`` is imported) for every import under ``node``.

    Imports in a function body run later, on a call; those under ``if TYPE_CHECKING:`` never run.
    """
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            yield from ((a.name, at_import_time) for a in child.names if a.name.split(".")[0] == "tagstack")
        elif isinstance(child, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - child.level + 1] if child.level else []
            base = ".".join([*parts, child.module or ""]).strip(".")
            if base.split(".")[0] == "tagstack":  # ``from .x import name``: the module x.name if there is one, else x
                yield from ((f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, at_import_time) for a in child.names)
        later = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        typing_only = isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING")
        yield from _imports(module, child, at_import_time and not later and not typing_only)


IMPORTS = {m: sorted(set(_imports(m, ast.parse(p.read_text())))) for m, p in MODULES.items()}


def test_every_module_is_placed_in_a_layer():
    assert {_unit(m) for m in MODULES} == set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    """Lazy (in-function) and type-checking imports count too: they are dependencies all the same."""
    upward = [f"{m} imports {target}" for m, found in IMPORTS.items() for target, _ in found if LAYERS[_unit(target)] > LAYERS[_unit(m)]]
    assert upward == []


def test_no_import_cycle_among_the_imports_that_run_at_import_time():
    """An import in a function body runs once every module is loaded, so it may close a cycle within a layer (the
    rule above already rules out one across layers); one at module level may not: it meets a half-initialised module."""
    graph = {m: {target for target, now in found if now and target != m} for m, found in IMPORTS.items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle
