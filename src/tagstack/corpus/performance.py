"""Performance for the rendered corpus: players who breathe, and a drummer where the style has one.

A score rendered note for note is metronomic (every onset on the grid),
flat (one random velocity per note, no accents, no phrasing) and, in the
dance and folk styles, without the percussion that real bands of those
styles play. Two opt-in parts, applied to the MIDI before it is rendered:

``humanise``
    onsets move by a slow tempo drift (rubato, up to ±60 ms) plus a small
    jitter per note (σ 12 ms, at most ±30 ms); velocities follow the metre
    (downbeat > beat > off-beat) and a slow phrase swell, kept on the side
    of the clip's dynamics (a soft clip's notes stay at or below 66, a loud
    clip's at or above 84, or above 80 % of what they were drawn at, for
    the drummer's light voice) so the soft/loud tag stays true; notes are
    played 85-100 % of their written length.
``drums``
    a kit that fits the style (a folk kit for folk songs, bodhrán-like
    frame drum and tambourine for jigs, reels and hornpipes, hand drums for
    medieval pieces, wood blocks and a cymbal for Chinese folk songs; none
    for chorales, polyphony, quartets and romantic pieces) playing a
    pattern that fits the metre, on its beats (dotted beats in compound
    metres): three beats a bar (3/4, 9/8) low then mid, mid; any other
    number alternates low and mid (4/4 and 12/8: low on 1 and 3, mid on 2
    and 4; 2/4 and 6/8: low, mid); a light high voice on every half beat
    (every eighth in compound metres); at the clip's dynamics. Bar lines
    follow the score's, after any pickup bar.

Each draws from the random stream it is given (seeded by the caller apart
from the voicing's), so the same clip gets the same notes, instruments and
tags with or without them. Whether they help is measured by
``bench/bench_production.py`` (docs/transfer/production/).
"""

from __future__ import annotations

import math

import numpy as np

from .production import parse_choice

#: Every part, in the order it is applied (drums first, so that humanise moves the drummer too).
PERFORMANCE = ("drums", "humanise")

#: GM percussion keys (low, mid, high) per style; styles not listed play without drums.
KITS: dict[str, tuple[int, int, int]] = {
    "folk-song": (36, 38, 42),  # bass drum, snare, closed hi-hat
    "jig": (41, 37, 54),  # low floor tom (frame drum), side stick, tambourine
    "reel": (41, 37, 54),
    "hornpipe": (41, 37, 54),
    "medieval": (61, 60, 54),  # low and high bongo (hand drum), tambourine
    "chinese-folk": (77, 76, 52),  # low and high wood block, Chinese cymbal
}

#: Velocity bands of the corpus's dynamics tags, and how far humanising may stretch them.
SOFT, LOUD = (34, 52), (96, 120)
_SOFT_LIMITS, _LOUD_LIMITS = (24, 66), (84, 127)


def parse_performance(text: str) -> tuple[str, ...]:
    """``"humanise,drums"`` -> the parts in order; ``"all"`` -> both; ``""`` or ``"none"`` -> none."""
    return parse_choice(text, PERFORMANCE, what="performance part(s)")


def drum_hits(
    style: str, *, metre: str | None, bar: float, beat: float, span: float, loud: bool, rng: np.random.Generator, offset: float = 0.0
) -> list[tuple[float, int, int]]:
    """(onset in quarter notes, GM key, velocity) of the style's kit over ``span`` quarters; [] for a style without drums.

    ``bar`` and ``beat`` are in quarter notes (a dotted beat is 1.5);
    ``offset`` is where the first full bar starts (the length of a pickup).
    """
    kit = KITS.get(style)
    if kit is None or bar <= 0 or beat <= 0:
        return []
    low, mid, high = kit
    beats = max(1, round(bar / beat))
    hits: list[tuple[float, int, int]] = []
    lo, hi = LOUD if loud else SOFT
    t = offset % bar - (bar if offset % bar > 0 else 0.0)  # the pickup is played as the end of a bar
    while t < span:
        for b in range(beats):
            at = t + b * beat
            key = (low if b == 0 else mid) if beats == 3 else (low if b % 2 == 0 else mid)
            hits.append((at, key, int(rng.integers(lo, hi + 1))))
            step = beat / 3 if metre == "compound" else beat / 2
            k = 0
            while k * step < beat - 1e-9:
                hits.append((at + k * step, high, int(rng.integers(lo, hi + 1) * 0.6)))
                k += 1
        t += bar
    return [h for h in hits if 0.0 <= h[0] < span]


def humanise(
    notes: list, rng: np.random.Generator, *, sec_per_quarter: float, bar: float, beat: float, loud: bool, offset: float = 0.0
) -> None:
    """Move and shade ``notes`` (``pretty_midi.Note``, times in seconds) in place, as described in the module docstring.

    ``offset`` is where the first full bar starts, in quarter notes (the length of a pickup).
    """
    drift, drift_period, drift_phase = rng.uniform(0.0, 0.06), rng.uniform(6.0, 14.0), rng.uniform(0.0, 2 * math.pi)
    swell_period, swell_phase = rng.uniform(8.0, 16.0), rng.uniform(0.0, 2 * math.pi)
    lo, hi = _LOUD_LIMITS if loud else _SOFT_LIMITS
    for n in notes:
        q = n.start / sec_per_quarter - offset
        on_bar = bar > 0 and min(q % bar, bar - q % bar) < 1e-6
        on_beat = beat > 0 and min(q % beat, beat - q % beat) < 1e-6
        accent = 1.15 if on_bar else 1.05 if on_beat else 0.92
        swell = 1.0 + 0.12 * math.sin(2 * math.pi * n.start / swell_period + swell_phase)
        floor = min(lo, int(0.8 * n.velocity))  # a loud clip's light hi-hat stays light
        n.velocity = int(np.clip(round(n.velocity * accent * swell * math.exp(rng.normal(0.0, 0.06))), floor, hi))
        shift = drift * math.sin(2 * math.pi * n.start / drift_period + drift_phase) + float(np.clip(rng.normal(0.0, 0.012), -0.03, 0.03))
        length = (n.end - n.start) * rng.uniform(0.85, 1.0)
        n.start = max(0.0, n.start + shift)
        n.end = n.start + max(length, 0.03)


__all__ = ["KITS", "PERFORMANCE", "drum_hits", "humanise", "parse_performance"]
