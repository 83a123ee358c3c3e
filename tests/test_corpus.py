"""The score-rendered corpus: tags, determinism, resumability, split by piece."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("music21")
pytest.importorskip("midirenderer")

from tagstack.errors import ParameterError  # noqa: E402
from tagstack.corpus.render import GROUPS, STYLES, build_corpus, list_pieces, metre_of, mode_of  # noqa: E402
from tagstack.datasets.corpus import corpus_clips  # noqa: E402


def test_metre_and_mode_rules():
    assert [metre_of(*ts) for ts in ((4, 4), (2, 2), (3, 4), (3, 8), (6, 8), (12, 8), (5, 4), (None, None))] == [
        "duple",
        "duple",
        "triple",
        "triple",
        "compound",
        "compound",
        None,
        None,
    ]
    c_major = [(0, 1, p) for p in (60, 64, 67, 72, 65, 62, 71)]
    a_minor = [(0, 1, p) for p in (57, 60, 64, 69, 57, 64, 68, 59, 62)]
    assert mode_of(c_major) == ("major", 0)
    assert mode_of(a_minor) == ("minor", 9)


def test_tag_vocabulary_spans_levels():
    tags = [t for ts in GROUPS.values() for t in ts]
    assert 30 <= len(tags) <= 50 and len(set(tags)) == len(tags)
    assert all(list_pieces(s) for s in STYLES)


@pytest.mark.slow
def test_build_is_deterministic_resumable_and_split_by_piece(tmp_path):
    a = build_corpus(tmp_path / "a", size=1, seed=3, workers=2)
    assert len(a) == len(STYLES)
    clips = corpus_clips(tmp_path / "a")
    assert set(clips.tags) <= set(clips.groups)
    files = sorted((tmp_path / "a" / "audio").rglob("*.ogg"))
    assert len(files) == len(STYLES)
    import soundfile as sf

    info = sf.info(files[0])
    assert info.samplerate == 22050 and info.channels == 1 and abs(info.duration - 29.1) < 0.01
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    half = files[0].parent / ".tagstack-tmp-x.ogg.abc.ogg"  # what a build killed mid-write leaves
    half.write_bytes(b"OggS")
    build_corpus(tmp_path / "a", size=1, seed=3, workers=2)  # resume: nothing rendered again
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes and not half.exists()
    build_corpus(tmp_path / "b", size=1, seed=3, workers=1)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    split_of_piece = {}
    for r in rows:
        assert split_of_piece.setdefault(r["piece"], r["split"]) == r["split"]
        assert r["style"] in r["tags"].split(";")
    assert np.all(clips.labels.sum(axis=1) >= 5)  # style, tempo, mode, texture, dynamics, instrument(s)

    # a production chain changes the sound only: same clips, voicing and tags; another folder, never mixed
    build_corpus(tmp_path / "c", size=1, seed=3, workers=2, production=("lossy", "reverb"))
    assert (tmp_path / "c" / "manifest.csv").read_bytes() == (tmp_path / "a" / "manifest.csv").read_bytes()
    produced = sf.read(tmp_path / "c" / files[0].relative_to(tmp_path / "a"))[0]
    plain = sf.read(files[0])[0]
    assert produced.shape == plain.shape and np.abs(produced - plain).max() > 0.1 * np.abs(plain).max()
    with pytest.raises(ParameterError, match="other settings.*production"):
        build_corpus(tmp_path / "a", size=1, seed=3, workers=2, production=("reverb",))
    # so does a performance (drums where the style has them, humanised timing and dynamics)
    build_corpus(tmp_path / "p", size=1, seed=3, workers=2, performance="all")
    assert (tmp_path / "p" / "manifest.csv").read_bytes() == (tmp_path / "a" / "manifest.csv").read_bytes()
    performed = sf.read(tmp_path / "p" / files[0].relative_to(tmp_path / "a"))[0]
    assert performed.shape == plain.shape and not np.allclose(performed, plain, atol=1e-3)
    with pytest.raises(ParameterError, match="other settings.*performance"):
        build_corpus(tmp_path / "p", size=1, seed=3, workers=2)
    # another soundfont renders with it, also in a process that already rendered with the default one:
    # TimGM6mb with every sample at half amplitude gives the same clips, quieter
    import pretty_midi

    font = bytearray((Path(pretty_midi.__file__).parent / "TimGM6mb.sf2").read_bytes())
    at = font.index(b"smpl") + 8
    size = int.from_bytes(font[at - 4 : at], "little") // 2 * 2
    font[at : at + size] = (np.frombuffer(bytes(font[at : at + size]), "<i2") // 2).astype("<i2").tobytes()
    (tmp_path / "half.sf2").write_bytes(bytes(font))
    build_corpus(tmp_path / "d", size=1, seed=3, workers=1, soundfont=tmp_path / "half.sf2")
    half = sf.read(tmp_path / "d" / files[0].relative_to(tmp_path / "a"))[0]
    assert half.shape == plain.shape and np.abs(half).max() < 0.75 * np.abs(plain).max()
    with pytest.raises(ParameterError, match="nowhere.sf2: soundfont not found"):
        build_corpus(tmp_path / "e", size=1, soundfont=tmp_path / "nowhere.sf2")
    with pytest.raises(ParameterError, match="manifest.csv: not a SoundFont"):
        build_corpus(tmp_path / "e", size=1, soundfont=tmp_path / "a" / "manifest.csv")


def test_ogg_checksum_matches_a_bitwise_reference():
    from tagstack.corpus.render import ogg_crc

    def reference(data: bytes) -> int:  # straight from the definition, bit by bit
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
        return crc

    data = bytes(range(256)) * 3 + b"OggS"
    assert ogg_crc(data) == reference(data)
    assert ogg_crc(b"") == 0


def test_each_kind_of_corpus_has_its_own_default_folder(tmp_path, monkeypatch):
    from tagstack.corpus import default_folder
    from tagstack.corpus.performance import PERFORMANCE

    monkeypatch.setenv("TAGSTACK_HOME", str(tmp_path))
    assert default_folder() == tmp_path / "corpus" / "default"
    assert default_folder("small", performance=PERFORMANCE) == tmp_path / "corpus" / "small-performed-all"
    kinds = {
        default_folder("small", production=("eq", "reverb"), soundfont="/x/FluidR3.sf2"),
        default_folder("small", production=("eq",)),
        default_folder("small"),
    }
    assert len(kinds) == 3 and tmp_path / "corpus" / "small-produced-eq+reverb-FluidR3" in kinds


def test_a_full_disk_stops_the_build_with_one_line_instead_of_skipping_pieces(tmp_path, full_disk):
    """A clip that cannot be written is the disk's fault, not its score's: the build must not go on and return a
    corpus without it (it did: a 2-clip "tiny" corpus, exit status 0)."""
    import os

    from tagstack.errors import OutputError

    mount, _ = full_disk
    room = os.statvfs(mount)
    with open(mount / "filler", "wb") as f:  # room for build.json, not for a clip
        f.write(b"\0" * (room.f_bavail * room.f_frsize - 8192))
    with pytest.raises(OutputError, match=r"/c/audio/.*\.ogg: cannot write this file \(No space left on device\)"):
        build_corpus(mount / "c", size=1, seed=3, workers=2)
    assert not (mount / "c" / "manifest.csv").exists()
