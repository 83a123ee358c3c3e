"""The embedded default data: a tagged corpus rendered offline from real scores.

Compositions come from the corpus that ships inside the ``music21`` wheel
(Bach chorales, Palestrina, Monteverdi madrigals, Trecento pieces, Haydn,
Mozart and Beethoven string quartets, Schumann, the Essen folk-song
collection with its Chinese tunes, Ryan's Mammoth Collection of Irish and
Scottish dance tunes ...). Each clip is an excerpt of one piece, re-voiced
with General-MIDI instruments, rendered with the TimGM6mb soundfont shipped in
``pretty_midi`` through ``midirenderer`` (both from PyPI), resampled to
22,050 Hz mono with soxr, cut or looped to 29.1 s, optionally put through
a production chain (:mod:`.production`: EQ, compression, room reverb, noise,
level, MP3 round trip), and stored as Ogg Vorbis.

The tags sit at several levels of abstraction, so multi-level and
multi-scale effects can be measured on the corpus:

========== =============================================================
group      tags
========== =============================================================
instrument piano, organ, harpsichord, strings, violin, cello, choir,
           flute, clarinet, oboe, bassoon, trumpet, horn, guitar, harp,
           accordion, vibraphone (local, objective)
texture    solo, duet, ensemble
tempo      slow, fast (chosen at rendering)
metre      duple, triple, compound (from the score's time signature)
style      chorale, renaissance, madrigal, medieval, string-quartet,
           romantic, folk-song, chinese-folk, jig, reel, hornpipe (global)
mode       major, minor (Krumhansl-Kessler key finding on the excerpt)
dynamics   soft, loud (MIDI velocity)
========== =============================================================

Instrument pools overlap across styles so that an instrument does not give
away the style. The build is deterministic (same seed and package versions:
same manifest and the same bytes), parallel over pieces, resumable (a piece
whose clips and tag file exist is not rendered again) and atomic (every file
is written to a temporary name and renamed).
"""

from __future__ import annotations

import logging

import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..datasets.base import ClipSet, stratified_split
from ..datasets.corpus import corpus_clips
from ..datasets.manifest import write_manifest
from .performance import PERFORMANCE, drum_hits, humanise, parse_performance
from .production import EFFECTS, check_support, parse_effects, produce
from ..errors import DatasetError, OutputError, ParameterError
from ..fileio import atomic_write, atomic_write_json, remove_leftovers
from ..progress import progress

log = logging.getLogger(__name__)

SR = 22050
CLIP_SECONDS = 29.1

#: General-MIDI programs (0-based) of the instrument tags.
PROGRAMS = {
    "piano": 0,
    "harpsichord": 6,
    "vibraphone": 11,
    "organ": 19,
    "accordion": 21,
    "guitar": 24,
    "violin": 40,
    "cello": 42,
    "harp": 46,
    "strings": 48,
    "choir": 52,
    "trumpet": 56,
    "horn": 60,
    "oboe": 68,
    "bassoon": 70,
    "clarinet": 71,
    "flute": 73,
}


@dataclass(frozen=True)
class Style:
    """A style: where its pieces come from and which instruments may play them."""

    name: str
    sources: tuple[str, ...]  # corpus folders, files ("dir/file"), or "dir/*Suffix.abc" patterns
    pool: tuple[str, ...]
    split_abc: bool = False  # one file holds many tunes ("X:" records)


STYLES: tuple[Style, ...] = (
    Style("chorale", ("bach",), ("choir", "organ", "strings", "piano", "horn", "clarinet", "bassoon")),
    Style("renaissance", ("palestrina", "josquin", "lusitano"), ("choir", "organ", "strings", "flute", "oboe", "bassoon", "harp")),
    Style("madrigal", ("monteverdi",), ("choir", "harpsichord", "flute", "guitar", "violin", "cello", "strings")),
    Style("medieval", ("trecento", "ciconia", "luca"), ("flute", "harp", "guitar", "choir", "oboe", "organ", "vibraphone")),
    Style("string-quartet", ("haydn", "mozart", "beethoven"), ("violin", "cello", "strings", "piano", "clarinet", "flute", "horn")),
    Style(
        "romantic",
        ("schumann_robert", "schumann_clara", "chopin", "schubert", "weber", "verdi", "beach", "liliuokalani"),
        ("piano", "violin", "cello", "harp", "clarinet", "horn", "strings", "oboe"),
    ),
    Style(
        "folk-song",
        (
            "essenFolksong/altdeu",
            "essenFolksong/ballad",
            "essenFolksong/boehme",
            "essenFolksong/erk",
            "essenFolksong/fink",
            "essenFolksong/kinder",
            "essenFolksong/lot",
            "essenFolksong/lux",
            "essenFolksong/zuccal",
            "essenFolksong/dva",
        ),
        ("accordion", "guitar", "violin", "flute", "piano", "clarinet", "trumpet"),
        split_abc=True,
    ),
    Style("chinese-folk", ("essenFolksong/han",), ("flute", "harp", "vibraphone", "guitar", "violin", "oboe", "piano"), split_abc=True),
    Style("jig", ("ryansMammoth/*Jig.abc",), ("violin", "flute", "accordion", "guitar", "harp", "piano", "trumpet")),
    Style("reel", ("ryansMammoth/*Reel.abc",), ("violin", "flute", "accordion", "guitar", "harp", "piano", "vibraphone")),
    Style("hornpipe", ("ryansMammoth/*Hornpipe.abc",), ("violin", "flute", "accordion", "guitar", "harpsichord", "piano", "oboe")),
)

GROUPS: dict[str, tuple[str, ...]] = {
    "instrument": tuple(PROGRAMS),
    "texture": ("solo", "duet", "ensemble"),
    "tempo": ("slow", "fast"),
    "metre": ("duple", "triple", "compound"),
    "style": tuple(s.name for s in STYLES),
    "mode": ("major", "minor"),
    "dynamics": ("soft", "loud"),
}

#: Clips per style for each corpus size.
SIZES = {"tiny": 3, "default": 100, "large": 400}

# Krumhansl & Kessler (1982) probe-tone profiles, C major and C minor.
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


@dataclass(frozen=True)
class Piece:
    """One composition: a corpus file, or one tune (record ``index``) of a multi-tune ABC file."""

    style: str
    path: str  # relative to music21's corpus folder
    index: int = -1

    @property
    def id(self) -> str:
        """A name unique in the corpus (``path#index`` for a tune of a multi-tune file): it seeds the piece's clips."""
        return self.path if self.index < 0 else f"{self.path}#{self.index}"


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def _abc_records(text: str) -> list[str]:
    parts = re.split(r"(?m)^(?=X:)", text)
    return [p for p in parts if p.startswith("X:") and "K:" in p]


def list_pieces(style: Style) -> list[Piece]:
    """Every candidate piece of a style, in a stable order."""
    root = _corpus_root()
    suffixes = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
    files: list[Path] = []
    for src in style.sources:
        if "*" in src:
            files += sorted((root / src).parent.glob(Path(src).name))
        elif (root / src).is_dir():
            files += sorted(p for p in (root / src).rglob("*") if p.suffix in suffixes)
        else:
            files += sorted(p for p in (root / src).parent.glob(Path(src).name + "*") if p.suffix in suffixes)
    if style.name == "chorale":
        files = [f for f in files if re.match(r"bwv\d", f.name)]
    # one version per work: prefer .mxl over .xml/.krn of the same stem
    seen: dict[str, Path] = {}
    for f in files:
        stem = str(f.with_suffix("").relative_to(root))
        if stem not in seen or f.suffix == ".mxl":
            seen[stem] = f
    pieces = []
    for stem in sorted(seen):
        f = seen[stem]
        rel = str(f.relative_to(root))
        if style.split_abc:
            n = len(_abc_records(f.read_text(encoding="latin-1")))
            pieces += [Piece(style.name, rel, i) for i in range(n)]
        else:
            pieces.append(Piece(style.name, rel))
    return pieces


@dataclass
class Score:
    """What rendering needs from a piece: notes per part, metre, beat and length in quarters."""

    parts: list[list[tuple[float, float, int]]]  # (onset, duration, midi pitch) in quarter notes
    numerator: int | None
    denominator: int | None
    length: float
    pickup: float = 0.0  # where the first full bar starts (0 without a pickup bar)


def _parse(piece: Piece) -> Score:
    import music21

    path = _corpus_root() / piece.path
    if piece.index >= 0:
        record = _abc_records(path.read_text(encoding="latin-1"))[piece.index]
        s = music21.converter.parse(record, format="abc")
    else:
        s = music21.converter.parse(str(path))
    if isinstance(s, music21.stream.Opus):
        s = s.scores[0]
    parts = []
    streams = list(s.parts) if s.parts else [s]
    for p in streams:
        notes = []
        for n in p.flatten().notes:
            dur = float(n.quarterLength)
            if dur <= 0:
                continue
            for pitch in n.pitches:
                notes.append((float(n.offset), dur, int(pitch.midi)))
        if notes:
            parts.append(sorted(notes))
    if not parts:
        raise DatasetError(f"{piece.id}: no notes")
    ts = next(iter(s.recurse().getElementsByClass("TimeSignature")), None)
    length = max(o + d for part in parts for o, d, _ in part)
    measures = list(streams[0].getElementsByClass("Measure"))
    pickup = float(measures[1].offset) if len(measures) >= 2 and measures[0].paddingLeft > 0 else 0.0
    return Score(parts, ts.numerator if ts else None, ts.denominator if ts else None, length, pickup)


def metre_of(numerator: int | None, denominator: int | None) -> str | None:
    """duple (2/4, 4/4, 2/2, 4/2 ...), triple (3/4, 3/8, 3/2), compound (6/8, 9/8, 12/8), else None."""
    if numerator is None:
        return None
    if denominator in (8, 16) and numerator in (6, 9, 12):
        return "compound"
    if numerator in (3,):
        return "triple"
    if numerator in (2, 4, 8):
        return "duple"
    return None


def metre_grid(score: Score) -> tuple[str | None, float, float]:
    """The score's metre, its beat and its bar in quarter notes (a compound metre's beat is dotted: 1.5)."""
    metre = metre_of(score.numerator, score.denominator)
    beat = 1.5 if metre == "compound" else (4.0 / score.denominator if score.denominator else 1.0)
    bar = beat * ((score.numerator // 3) if metre == "compound" else (score.numerator or 4))
    return metre, beat, bar


def mode_of(notes: list[tuple[float, float, int]]) -> tuple[str, int]:
    """Major or minor, and the tonic pitch class, by Krumhansl-Kessler key finding."""
    hist = np.zeros(12)
    for _, d, p in notes:
        hist[p % 12] += d
    best = (-2.0, "major", 0)
    for tonic in range(12):
        for name, prof in (("major", _MAJOR), ("minor", _MINOR)):
            r = np.corrcoef(hist, np.roll(prof, tonic))[0, 1]
            if r > best[0]:
                best = (r, name, tonic)
    return best[1], best[2]


def _excerpt(part: list[tuple[float, float, int]], start: float, span: float, period: float) -> list[tuple[float, float, int]]:
    """Notes sounding in ``[start, start + span)`` quarters, looping the piece every ``period`` quarters."""
    out = []
    k = 0
    while k * period < start + span:
        shift = k * period
        for o, d, p in part:
            t = o + shift - start
            if -d < t < span:
                out.append((max(t, 0.0), min(d, span - max(t, 0.0)), p))
        k += 1
    return out


def _accompaniment(tonic: int, mode: str, span: float, bar: float, *, chords: bool) -> list[list[tuple[float, float, int]]]:
    """A bass line (tonic and fifth, one note a bar) and optionally a sustained triad per bar."""
    bass, pad = [], []
    third = 4 if mode == "major" else 3
    t, k = 0.0, 0
    while t < span:
        root = 36 + tonic + (7 if k % 2 else 0)
        bass.append((t, bar * 0.95, root))
        if chords:
            for iv in (0, third, 7):
                pad.append((t, bar * 0.95, 55 + tonic + iv))
        t += bar
        k += 1
    return [bass, pad] if chords else [bass]


def render_clip(
    score: Score,
    *,
    rng: np.random.Generator,
    style: Style,
    soundfont: bytes,
    performance: tuple[str, ...] = (),
    performer: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Render one 29.1 s clip of ``score`` with random (seeded) voicing; returns audio and tags.

    ``performance`` (parts of :mod:`.performance`) draws from ``performer``,
    never from ``rng``: the voicing and tags are those of the plain clip.
    """
    if performance and performer is None:
        raise ParameterError("a performance needs its own random stream (performer)")
    import midirenderer
    import pretty_midi

    tags = {style.name}
    metre, beat, bar = metre_grid(score)
    if metre:
        tags.add(metre)
    fast = bool(rng.random() < 0.5)
    beats_per_min = rng.uniform(104, 140) if fast else rng.uniform(48, 68)
    tags.add("fast" if fast else "slow")
    sec_per_quarter = 60.0 / (beats_per_min * (1.0 / beat))
    span = CLIP_SECONDS / sec_per_quarter + beat
    period = math.ceil(score.length / bar) * bar if bar > 0 else score.length
    start = 0.0
    if score.length > span + bar:
        start = float(rng.integers(0, int((score.length - span) // bar) + 1)) * bar
    parts = [_excerpt(p, start, span, period) for p in score.parts]
    parts = [p for p in parts if p] or [_excerpt(score.parts[0], 0.0, span, period)]
    mode, tonic = mode_of([n for p in parts for n in p])
    tags.add(mode)
    order = sorted(range(len(parts)), key=lambda i: -np.mean([n[2] for n in parts[i]]))
    if len(parts) >= 2:
        texture = (
            rng.choice(["solo", "duet", "ensemble"], p=[0.2, 0.3, 0.5]) if len(parts) >= 3 else rng.choice(["solo", "duet"], p=[0.3, 0.7])
        )
        voices = {"solo": [order[0]], "duet": [order[0], order[-1]], "ensemble": order}[texture]
        voiced = [parts[i] for i in voices]
    else:
        texture = rng.choice(["solo", "duet", "ensemble"], p=[0.45, 0.3, 0.25])
        voiced = parts[:1] + ([] if texture == "solo" else _accompaniment(tonic, mode, span, bar or 4.0, chords=texture == "ensemble"))
    tags.add(str(texture))
    if len(voiced) > 1 and rng.random() < 0.4:
        instruments = [str(rng.choice(style.pool))] * len(voiced)
    else:
        instruments = [str(rng.choice(style.pool)) for _ in voiced]
    tags.update(instruments)
    loud = bool(rng.random() < 0.5)
    tags.add("loud" if loud else "soft")
    velocity_range = (96, 120) if loud else (34, 52)

    pm = pretty_midi.PrettyMIDI(initial_tempo=60.0 / sec_per_quarter)
    for notes, name in zip(voiced, instruments):
        inst = pretty_midi.Instrument(program=PROGRAMS[name])
        for o, d, p in notes:
            t0 = o * sec_per_quarter
            if t0 >= CLIP_SECONDS:
                continue
            vel = int(rng.integers(*velocity_range))
            inst.notes.append(
                pretty_midi.Note(
                    velocity=vel,
                    pitch=int(np.clip(p, 21, 108)),
                    start=t0,
                    end=min(t0 + max(d * sec_per_quarter * 0.97, 0.05), CLIP_SECONDS + 1.0),
                )
            )
        pm.instruments.append(inst)
    if "drums" in performance:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        for o, key, vel in drum_hits(style.name, metre=metre, bar=bar, beat=beat, span=span, loud=loud, rng=performer, offset=score.pickup):
            if o * sec_per_quarter < CLIP_SECONDS:
                kit.notes.append(pretty_midi.Note(velocity=vel, pitch=key, start=o * sec_per_quarter, end=o * sec_per_quarter + 0.1))
        if kit.notes:
            pm.instruments.append(kit)
    if "humanise" in performance:
        humanise(
            [n for inst in pm.instruments for n in inst.notes],
            performer,
            sec_per_quarter=sec_per_quarter,
            bar=bar,
            beat=beat,
            loud=loud,
            offset=score.pickup,
        )
    buf = io.BytesIO()
    pm.write(buf)
    wav = midirenderer.render_wave_from(soundfont, buf.getvalue())
    y, sr = sf.read(io.BytesIO(bytes(wav)), dtype="float32", always_2d=True)
    y = soxr.resample(y.mean(axis=1), sr, SR, quality="HQ")
    n = int(round(CLIP_SECONDS * SR))
    y = np.pad(y[:n], (0, max(0, n - y.size)))
    peak = float(np.abs(y).max())
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32), sorted(tags)


_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes) -> int:
    """Ogg's page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, initial value 0.

    zlib computes the reflected variant; on bit-reversed bytes, with zlib's
    initial and final inversions undone and the result bit-reversed, it gives
    Ogg's.
    """
    r = ~zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{r:032b}"[::-1], 2)


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """Give every page of an Ogg stream the same fixed serial number (and fix the page checksums).

    libsndfile draws the serial at random, which would make otherwise
    identical corpus builds differ in four bytes per page.
    """
    out = bytearray(data)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS":
            raise DatasetError(f"not an Ogg page at byte {pos}")
        n_segments = out[pos + 26]
        size = 27 + n_segments + sum(out[pos + 27 : pos + 27 + n_segments])
        out[pos + 14 : pos + 18] = serial.to_bytes(4, "little")
        out[pos + 22 : pos + 26] = b"\0\0\0\0"
        out[pos + 22 : pos + 26] = ogg_crc(bytes(out[pos : pos + size])).to_bytes(4, "little")
        pos += size
    return bytes(out)


def _encode_ogg(y: np.ndarray, serial: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="OGG", subtype="VORBIS")
    return set_ogg_serial(buf.getvalue(), serial)


def _soundfont(path: str | None = None) -> bytes:
    """The bytes of the General-MIDI soundfont: ``path``, or TimGM6mb (6 MB, shipped in ``pretty_midi``), read once per process."""
    if path not in _SOUNDFONTS:
        if path:
            _SOUNDFONTS[path] = Path(path).read_bytes()
        else:
            import pretty_midi

            _SOUNDFONTS[path] = (Path(pretty_midi.__file__).parent / "TimGM6mb.sf2").read_bytes()
    return _SOUNDFONTS[path]


_SOUNDFONTS: dict[str | None, bytes] = {}


def _piece_seed(seed: int, piece: Piece) -> list[int]:
    digest = hashlib.sha256(piece.id.encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]


def _render_piece(job: tuple[Piece, int, int, str, tuple[str, ...], str | None, tuple[str, ...]]) -> tuple[str, list[dict] | None, str]:
    """Worker: render the clips of one piece into ``out``; returns (piece id, clip records, error)."""
    piece, n_clips, seed, out, production, soundfont, performance = job
    out_dir = Path(out)
    record = out_dir / "pieces" / (hashlib.sha1(piece.id.encode()).hexdigest()[:16] + ".json")
    if record.exists():
        return piece.id, json.loads(record.read_text()), ""
    try:
        score = _parse(piece)
        style = next(s for s in STYLES if s.name == piece.style)
        piece_seed = _piece_seed(seed, piece)
        rng = np.random.default_rng(piece_seed)
        clips = []
        for k in range(n_clips):
            # performance and production draw from streams of their own: the same voicing and tags as the plain corpus
            performer = np.random.default_rng([*piece_seed, k, 2]) if performance else None
            y, tags = render_clip(
                score, rng=rng, style=style, soundfont=_soundfont(soundfont), performance=performance, performer=performer
            )
            if production:
                y = produce(y, SR, seed=[*piece_seed, k, 1], effects=production)
            name = f"audio/{piece.style}/{hashlib.sha1(piece.id.encode()).hexdigest()[:12]}-{k}.ogg"

            data = _encode_ogg(y, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))
            atomic_write(out_dir / name, lambda tmp, data=data: Path(tmp).write_bytes(data), suffix=".ogg")
            clips.append({"path": name, "tags": tags, "piece": piece.id, "style": piece.style})
    except OutputError:
        raise  # the disk, not the score: the build stops with that one line (and resumes from the pieces done)
    except Exception as e:  # one bad score must not stop the build
        return piece.id, None, f"{piece.id}: {type(e).__name__}: {e}"
    atomic_write_json(record, clips)
    return piece.id, clips, ""


def plan(size: str | int, *, seed: int = 0) -> list[tuple[Piece, int]]:
    """Pieces to render and clips per piece: ``size`` clips per style (or a named size)."""
    per_style = SIZES[size] if isinstance(size, str) else int(size)
    if isinstance(size, str) and size not in SIZES:
        raise ParameterError(f"corpus size must be one of {sorted(SIZES)} or a number, got {size!r}")
    jobs = []
    for style in STYLES:
        pieces = list_pieces(style)
        if not pieces:
            raise DatasetError(f"no pieces found for style {style.name} in {_corpus_root()}")
        rng = np.random.default_rng([seed, int.from_bytes(style.name.encode()[:8], "little")])
        order = rng.permutation(len(pieces))
        n_pieces = min(len(pieces), per_style)
        per_piece = math.ceil(per_style / n_pieces)
        left = per_style
        for i in order[:n_pieces]:
            k = min(per_piece, left)
            if k <= 0:
                break
            jobs.append((pieces[i], k))
            left -= k
    return jobs


def default_folder(
    size: str = "default", *, performance: tuple[str, ...] = (), production: tuple[str, ...] = (), soundfont: str | Path | None = None
) -> Path:
    """Where ``tagstack corpus build`` puts a corpus when no folder is given: one folder per kind under
    ``$TAGSTACK_HOME/corpus`` (``default``, ``small-performed-all-produced-eq+reverb``, ...), so kinds never mix."""
    from ..config import tagstack_home

    def part(label: str, chosen: tuple[str, ...], every: tuple[str, ...]) -> str:
        return f"-{label}-" + ("all" if tuple(chosen) == every else "+".join(chosen)) if chosen else ""

    played, chain = part("performed", performance, PERFORMANCE), part("produced", production, EFFECTS)
    return tagstack_home() / "corpus" / (str(size) + played + chain + (f"-{Path(soundfont).stem}" if soundfont else ""))


def build_corpus(
    out: str | Path,
    *,
    size: str | int = "default",
    seed: int = 0,
    workers: int = 0,
    production: tuple[str, ...] | str = (),
    soundfont: str | Path | None = None,
    performance: tuple[str, ...] | str = (),
) -> ClipSet:
    """Build (or finish building) the corpus in ``out`` and return it.

    Writes ``out/audio/<style>/*.ogg``, ``out/manifest.csv`` (path, tags,
    split, piece, style), ``out/tag_groups.csv`` and ``out/build.json`` (the
    seed, production effects, soundfont and performance), prints the tag counts per split, and
    returns the :class:`ClipSet`. Already rendered pieces are kept; a folder
    built with another seed, other effects or another soundfont (as its
    ``build.json`` says) is refused rather than mixed; a folder from before
    ``build.json`` existed is taken to have the default sound.
    ``production`` names effects of :mod:`.production` (a tuple, or a string
    such as ``"all"`` or ``"reverb,eq"``) that every clip goes through after
    rendering (the same voicing and tags as without them).
    ``soundfont`` is another General-MIDI ``.sf2``/``.sf3`` file to render
    with (e.g. Debian's ``fluid-soundfont-gm``, FluidR3_GM, MIT licence).
    ``performance`` names parts of :mod:`.performance` (``humanise``,
    ``drums``; a tuple or a string such as ``"all"``) played into the MIDI
    before it is rendered (the same voicing and tags as without them).
    """
    out = Path(out)
    production = parse_effects(production if isinstance(production, str) else ",".join(production))  # chain order
    check_support(production)
    performance = parse_performance(performance if isinstance(performance, str) else ",".join(performance))
    jobs = plan(size, seed=seed)
    if soundfont is not None:
        _check_soundfont(Path(soundfont))
    font = None if soundfont is None else f"{Path(soundfont).name} sha256:{hashlib.sha256(Path(soundfont).read_bytes()).hexdigest()[:16]}"
    _same_build(out, {"seed": seed, "production": list(production), "soundfont": font, "performance": list(performance)})
    remove_leftovers(out)  # what a build killed mid-write (or stopped by a full disk) left half-written
    workers = workers or os.cpu_count() or 1
    args = [(p, k, seed, str(out), production, str(soundfont) if soundfont else None, performance) for p, k in jobs]
    # longest pieces first keeps the workers busy to the end
    args.sort(key=lambda a: a[0].style in ("string-quartet", "romantic", "madrigal"), reverse=True)
    results: dict[str, list[dict]] = {}
    failures = []
    bar = progress(total=sum(k for _, k in jobs), desc=f"render corpus ({size})", unit="clip")
    try:
        if workers > 1:
            ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
            with ctx.Pool(workers) as pool:
                for pid, clips, err in pool.imap_unordered(_render_piece, args):
                    _collect(pid, clips, err, results, failures, bar)
        else:
            for a in args:
                _collect(*_render_piece(a), results, failures, bar)
    finally:
        bar.close()  # before an error's line, not after it
    if failures:
        log.warning(f"skipped {len(failures)} pieces that could not be rendered:")
        for f in failures:
            log.warning(f"  {f}")
    records = [c for p, _ in jobs if p.id in results for c in results[p.id]]
    if not records:
        raise DatasetError(f"{out}: no clip could be rendered")
    split_of = stratified_split([r["piece"] for r in records], [r["style"] for r in records], seed=seed)
    tags = [t for ts in GROUPS.values() for t in ts]
    tags += sorted({t for r in records for t in r["tags"]} - set(tags))
    rendered = ClipSet(
        name=out.name,
        root=out,
        paths=[r["path"] for r in records],
        labels=np.array([[t in r["tags"] for t in tags] for r in records], np.float32),
        tags=tags,
        splits=np.array([split_of[r["piece"]] for r in records], dtype=object),
        groups={t: g for g, ts in GROUPS.items() for t in ts},
    )
    columns = {"piece": [r["piece"] for r in records], "style": [r["style"] for r in records]}
    write_manifest(rendered, out / "manifest.csv", columns=columns)
    clips = corpus_clips(out)
    log.info(clips.summary())
    return clips


def _check_soundfont(path: Path) -> None:
    """One clear line for a soundfont that is missing or not a SoundFont (RIFF ... sfbk), before any rendering."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise ParameterError(f"{path}: soundfont not found or unreadable ({e.strerror})") from None
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise ParameterError(f"{path}: not a SoundFont file (.sf2/.sf3 start with RIFF ... sfbk)")


def _same_build(out: Path, settings: dict) -> None:
    """Record the build's settings in ``out/build.json``; refuse to add to a folder built with others."""
    path = out / "build.json"
    plain = {"production": [], "soundfont": None, "performance": []}  # a setting a build.json lacks had this value
    if path.exists():
        before = {**plain, **json.loads(path.read_text())}
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            what = ", ".join(f"{k} {before.get(k)!r} -> {settings[k]!r}" for k in changed)
            raise ParameterError(f"{out}: a corpus built with other settings ({what}); use another folder")
    elif (out / "pieces").is_dir() and any(settings[k] != v for k, v in plain.items()):
        raise ParameterError(f"{out}: a corpus built with the default sound (no production or performance, TimGM6mb); use another folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def _collect(pid, clips, err, results, failures, bar) -> None:
    if clips is None:
        failures.append(err)
    else:
        results[pid] = clips
        bar.update(len(clips))
