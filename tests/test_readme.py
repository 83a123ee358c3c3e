"""Every example in the README works: each `tagstack` command parses, the tagging ones run, the Python block runs.

The README is what a user copies from, so its commands are read out of the file itself (not restated here).
"""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tagstack.cli import main
from tagstack.cli.parser import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()


def code_lines() -> list[str]:
    """The lines of the README's indented and fenced code blocks."""
    lines, fenced = [], False
    for line in TEXT.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            lines.append(line.strip())
    return lines


def commands() -> list[list[str]]:
    """Every `tagstack ...` invocation in a code block (also after `&&` and as `torchrun ... -m tagstack`), as argv."""
    out = []
    for line in code_lines():
        line = re.split(r"\s{2,}#", line)[0]  # a trailing comment
        for part in line.split("&&"):
            if not part.strip().startswith(("tagstack ", "torchrun ")):
                continue
            argv = shlex.split(part.strip())
            if argv[:1] == ["tagstack"]:
                out.append(argv[1:])
            elif argv[:1] == ["torchrun"] and "-m" in argv:
                i = argv.index("-m")
                if argv[i + 1] == "tagstack":
                    out.append(argv[i + 2 :])
    return out


PYTHON = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def test_the_readme_has_examples_and_no_dated_measurements():
    assert len(commands()) >= 15 and PYTHON
    assert not re.search(r"20\d\d-\d\d-\d\d", TEXT), "dated measurements belong in docs/"
    assert len(TEXT.splitlines()) <= 250 and "@@" not in TEXT


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    build_parser().parse_args(argv)  # argparse exits (failing the test) on an unknown flag or a bad value


def test_every_local_link_in_the_readme_exists():
    for target in re.findall(r"\]\(([^)#]+)[^)]*\)", TEXT):
        if not target.startswith("http"):
            assert (README.parent / target).exists(), target


@pytest.fixture
def music_folder(tmp_path, monkeypatch):
    """song.mp3 and music/ with a.flac and b.wav, as the README's examples name them, in the working folder."""
    sr = 44100
    t = np.arange(sr * 12) / sr
    y = 0.2 * sum(np.sin(2 * np.pi * f * t) * np.exp(-((t % 0.5) * 4)) for f in (220, 277, 330))
    stereo = np.stack([y, y], axis=1).astype(np.float32)
    sf.write(tmp_path / "song.mp3", stereo, sr, format="MP3")
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "a.flac", stereo, sr)
    sf.write(tmp_path / "music" / "b.wav", stereo[: sr * 7], sr)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_readme_tagging_commands_and_python_run(music_folder, capsys):
    ran = set()
    for argv in commands():
        if argv[0] in ("tag", "embed", "info") and "--engine" not in argv and "/music" not in argv:
            assert main(argv) == 0, argv
            ran.add(argv[0])
    assert ran == {"tag", "embed", "info"}
    assert (music_folder / "tags.jsonl").read_text().count("\n") == 2
    assert sorted(p.suffix for p in (music_folder / "grams").iterdir()) == [".csv", ".npy", ".png"]
    with np.load(music_folder / "embeddings.npz") as f:
        assert f["embeddings"].shape[0] == 2 and np.isfinite(f["embeddings"]).all()
    for block in PYTHON:
        exec(compile(block, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "song.mp3" in out and "music/a.flac" in out
