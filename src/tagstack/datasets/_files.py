"""Finding and reading the split and label files that datasets publish."""
from __future__ import annotations

import pickle
from pathlib import Path

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


def read_pickle(path: Path):
    """A Python 2 pickle of plain lists/dicts (the published split files); names the file on failure."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DatasetError(f"{path}: cannot read pickle ({type(e).__name__}: {e})") from e


def read_lines(path: Path) -> list[str]:
    try:
        return [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
