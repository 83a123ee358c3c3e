"""scripts/build_real_data.py: a rebuild leaves files that did not change untouched."""

import importlib.util
import os
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_real_data.py"
spec = importlib.util.spec_from_file_location("build_real_data", SCRIPT)
build = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = build  # its dataclasses look their module up
spec.loader.exec_module(build)


def test_rewriting_the_same_bytes_keeps_the_file_and_its_time(tmp_path):
    path = tmp_path / "a" / "clip.mp3"
    build.write_bytes(path, b"same bytes")
    os.utime(path, ns=(10**9, 10**9))  # an old time, so that any rewrite would show
    build.write_bytes(path, b"same bytes")
    assert path.stat().st_mtime_ns == 10**9  # untouched: caches keyed on it stay valid
    build.write_bytes(path, b"other byte")  # same length, other content
    assert path.read_bytes() == b"other byte" and path.stat().st_mtime_ns != 10**9
    assert not list(tmp_path.rglob("*.part"))
