"""Performance for the rendered corpus: drum patterns that fit the metre, humanised timing and dynamics."""

import numpy as np
import pretty_midi
import pytest

from tagstack.corpus.performance import KITS, LOUD, SOFT, _LOUD_LIMITS, _SOFT_LIMITS, drum_hits, humanise, parse_performance
from tagstack.errors import ParameterError


def test_parse_performance():
    assert parse_performance("humanise, drums") == ("drums", "humanise")
    assert parse_performance("all") == ("drums", "humanise") and parse_performance("none") == ()
    with pytest.raises(ParameterError, match="unknown performance part.*cowbell"):
        parse_performance("drums,cowbell")


def onsets(hits, key):
    return [round(o, 6) for o, k, _ in hits if k == key]


@pytest.mark.parametrize(
    "metre,bar,beat,low,mid,high_step",
    [
        ("duple", 4.0, 1.0, [0, 2, 4, 6], [1, 3, 5, 7], 0.5),  # 4/4: low on 1 and 3, mid on 2 and 4
        ("triple", 3.0, 1.0, [0, 3], [1, 2, 4, 5], 0.5),  # 3/4: low on 1, mid on 2 and 3
        ("compound", 3.0, 1.5, [0, 3], [1.5, 4.5], 0.5),  # 6/8: low on the first, mid on the second dotted beat
        ("compound", 4.5, 1.5, [0, 4.5], [1.5, 3, 6, 7.5], 0.5),  # 9/8: three beats, like 3/4
        ("compound", 6.0, 1.5, [0, 3, 6, 9], [1.5, 4.5, 7.5, 10.5], 0.5),  # 12/8: like 4/4
        ("duple", 2.0, 1.0, [0, 2], [1, 3], 0.5),  # 2/4
        (None, 4.0, 1.0, [0, 2, 4, 6], [1, 3, 5, 7], 0.5),  # no known metre: played as duple
    ],
)
def test_drum_patterns_fit_the_metre(metre, bar, beat, low, mid, high_step):
    kit = KITS["jig"]
    hits = drum_hits("jig", metre=metre, bar=bar, beat=beat, span=2 * bar, loud=False, rng=np.random.default_rng(0))
    assert onsets(hits, kit[0]) == low and onsets(hits, kit[1]) == mid
    assert onsets(hits, kit[2]) == list(np.arange(0, 2 * bar, high_step))  # every eighth
    assert all(SOFT[0] * 0.6 - 1 <= v <= SOFT[1] for _, _, v in hits)
    loud = drum_hits("jig", metre=metre, bar=bar, beat=beat, span=2 * bar, loud=True, rng=np.random.default_rng(0))
    assert min(v for _, k, v in loud if k != kit[2]) >= LOUD[0]


def test_drums_follow_the_bar_lines_of_a_tune_with_a_pickup():
    """A jig that starts on its last eighth: the low drum falls on every bar line of the score, not on beat 0."""
    from tagstack.corpus.render import STYLES, _parse, list_pieces, metre_grid

    jigs = list_pieces(next(s for s in STYLES if s.name == "jig"))
    score = next(sc for sc in map(_parse, jigs[:20]) if sc.pickup > 0 and metre_grid(sc)[0] == "compound")
    metre, beat, bar = metre_grid(score)
    hits = drum_hits("jig", metre=metre, bar=bar, beat=beat, span=4 * bar, loud=True, rng=np.random.default_rng(0), offset=score.pickup)
    assert onsets(hits, KITS["jig"][0]) == [round(score.pickup + k * bar, 6) for k in range(4) if score.pickup + k * bar < 4 * bar]
    assert min(o for o, _, _ in hits) == 0  # the pickup has its eighths too, nothing before the clip


def test_styles_without_a_drummer_get_none():
    assert drum_hits("chorale", metre="duple", bar=4.0, beat=1.0, span=16.0, loud=True, rng=np.random.default_rng(0)) == []
    assert drum_hits("string-quartet", metre="triple", bar=3.0, beat=1.0, span=12.0, loud=True, rng=np.random.default_rng(0)) == []


def grid(velocity: int, n: int = 64) -> list:
    """Eighth notes at 120 bpm in 4/4 (a quarter is 0.5 s)."""
    return [pretty_midi.Note(velocity=velocity, pitch=60, start=0.25 * i, end=0.25 * i + 0.2) for i in range(n)]


@pytest.mark.parametrize("loud", [False, True])
def test_humanise_moves_onsets_a_little_and_shapes_dynamics_inside_their_band(loud):
    velocity = 110 if loud else 44
    notes, straight = grid(velocity), grid(velocity)
    humanise(notes, np.random.default_rng(1), sec_per_quarter=0.5, bar=4.0, beat=1.0, loud=loud)
    shifts = np.array([n.start - s.start for n, s in zip(notes, straight)])
    assert 0.002 < np.abs(shifts).mean() and np.abs(shifts).max() <= 0.06 + 0.03 + 1e-9  # drift + jitter
    lengths = np.array([n.end - n.start for n in notes])
    assert np.all((lengths >= 0.85 * 0.2 - 1e-9) & (lengths <= 0.2 + 1e-9))
    v = np.array([n.velocity for n in notes])
    lo, hi = _LOUD_LIMITS if loud else _SOFT_LIMITS
    assert v.min() >= lo and v.max() <= hi and len(set(v)) > 5
    drawn = int(0.6 * velocity)
    light = grid(drawn)  # the drummer's light voice stays light in a loud clip
    humanise(light, np.random.default_rng(2), sec_per_quarter=0.5, bar=4.0, beat=1.0, loud=loud)
    assert max(n.velocity for n in light) <= hi and min(n.velocity for n in light) >= min(lo, int(0.8 * drawn))
    assert np.mean([n.velocity for n in light]) < v.mean()
    downbeats, offbeats = v[::8], v[1::2]  # every bar's first eighth; the eighths between beats
    assert downbeats.mean() > offbeats.mean()
    again = grid(velocity)
    humanise(again, np.random.default_rng(1), sec_per_quarter=0.5, bar=4.0, beat=1.0, loud=loud)
    assert [(n.start, n.velocity) for n in again] == [(n.start, n.velocity) for n in notes]  # seeded
