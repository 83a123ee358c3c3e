"""Progress of long work: a bar on a terminal or in a notebook, a log line every half minute anywhere else.

tqdm's bar is made for a terminal. Written to a file it is either hidden
(``disable=None`` off a TTY) or one endless line of carriage returns, and
jobs run under ``nohup``, a scheduler, Ray or a service's log are exactly
where hours of work most need a visible pulse. Off a terminal the same tqdm
object (its counting, rate and ETA) therefore writes plain lines such as
``stage 2: 120/500 batch (24%), 3.10batch/s, 00:39 elapsed, 02:03 left`` to
the ``tagstack.progress`` logger: one when the work starts, then at the
first step after every ``LOG_EVERY_S`` seconds, and one when it ends (a
step that takes longer than that shows when it ends). The rate is the
average since the start, not tqdm's smoothed one, which a line every half
minute would sample too rarely. The CLI shows that logger on
stderr; a Python caller sees it once it configures ``logging``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _plain_tqdm

log = logging.getLogger("tagstack.progress")
_NOTEBOOK = any(c.__name__ == "tqdm_notebook" for c in _auto_tqdm.__mro__)  # tqdm.auto chose Jupyter's widget

LOG_EVERY_S = 30.0
_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, {elapsed} elapsed, {remaining} left"
_LINE_NO_TOTAL = "{desc}: {n_fmt} {unit}, {rate_fmt}, {elapsed} so far"


class _ToLog:
    """A file for tqdm that turns each refresh into one log record (tqdm writes ``\\r`` + line, and blanks on clear)."""

    def __init__(self) -> None:
        self.count = ""

    def write(self, text: str) -> None:
        line = " ".join(text.split())  # tqdm pads rates to a fixed width
        count = line.split(", ")[0]
        if line and count != self.count:  # closing right after a refresh repeats its count
            self.count = count
            log.info(line)

    def flush(self) -> None:
        pass


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    hide: bool = False,
    leave: bool = True,
    every: float = LOG_EVERY_S,
) -> _plain_tqdm:
    """A tqdm over ``iterable`` (or updated by hand) that shows on a terminal and logs elsewhere.

    ``hide``: nothing at all (a ``torchrun`` process other than rank 0, a job
    of one file); so does tqdm's ``TQDM_DISABLE=1``. ``leave=False`` is for a step of a larger job that logs
    its own line per step (an epoch): on a terminal its bar goes when it
    ends, in a log it speaks only when it takes longer than ``every``.
    """
    if hide or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false", "no"):  # tqdm's own switch, read now
        return _plain_tqdm(iterable, total=total, disable=True)
    if (sys.stderr is not None and sys.stderr.isatty()) or _NOTEBOOK:  # None: started with stderr closed
        return _auto_tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=False)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return _plain_tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=_ToLog(),
        disable=False,
        mininterval=every,
        maxinterval=every,
        miniters=1,  # look at the clock on every step: tqdm's adaptive skipping would delay lines past `every`
        smoothing=0,  # the average rate since the start
        leave=leave,
        delay=0 if leave else every,  # a step of a larger job that logs its own lines: only a slow one reports
        ascii=True,
        bar_format=_LINE if total else _LINE_NO_TOTAL,
    )
