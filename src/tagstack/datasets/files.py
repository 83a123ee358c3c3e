"""Finding and reading the split and label files that datasets publish."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import DatasetError


def find_file(name: str, *folders: Path | str) -> Path:
    """``name`` in the first of ``folders`` (or one level below) that has it; a clear error otherwise."""
    tried = []
    for folder in folders:
        if not folder:
            continue
        folder = Path(folder)
        for candidate in [folder / name, *sorted(folder.glob(f"*/{name}"))]:
            if candidate.is_file():
                return candidate
        tried.append(str(folder))
    raise DatasetError(f"{name} not found (looked in {', '.join(tried) or 'no folder'}); pass its folder with --split-dir")


#: The only globals a published split or label pickle needs: numpy arrays, their dtypes and scalars, sets
#: (and ``_codecs.encode``, which protocol-2 pickles use to store bytes).
_ALLOWED_GLOBALS = {
    (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds lists, dicts, strings, numbers, sets and numpy arrays, and nothing else.

    A plain ``pickle.load`` would call any function a crafted file names, so
    a split file from a stranger could run code as the user; this one refuses
    every global outside :data:`_ALLOWED_GLOBALS`.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class("numpy" if module == "numpy" else module.replace("__builtin__", "builtins"), name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a split or label file never holds (refused: it could run code)")


def read_pickle(path: Path, expect: type | None = None):
    """A (Python 2) pickle of plain data: the published split and label files. Names the file on failure, and when
    it holds something else than ``expect`` (a list of ids, a dict of labels)."""
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DatasetError(f"{path}: cannot read pickle ({type(e).__name__}: {e})") from None
    if expect is not None and not isinstance(obj, expect):
        raise DatasetError(f"{path}: expected a {expect.__name__}, found a {type(obj).__name__}")
    return obj


def read_npy(path: Path) -> np.ndarray:
    """A published label array (``.npy``); never unpickles. Names the file on failure."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read this array ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_lines(path: Path) -> list[str]:
    """The file's non-blank lines, stripped."""
    return [line for _, line in numbered_lines(path)]


def numbered_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of the file's non-blank lines, stripped, numbered as an editor shows them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
