"""The two ways :meth:`~.tagger.Tagger.predict_many` keeps a machine busy with many files.

- :func:`one_thread_per_file` (the default on a CPU): each worker thread
  decodes and runs one file at a time, torch ops single threaded meanwhile,
  so decoding and the networks of different files fill the cores instead of
  contending inside each op.
- :func:`shared_passes` (the default on CUDA): worker threads only decode
  and cut files into windows, while the calling thread passes the windows of
  consecutive files through the networks together: one stream of full
  batches fills a GPU, where a pass per thread and file would leave it half
  idle and hold one batch of activations per thread in its memory.

Both yield, in input order, each file's result or the
:class:`~tagstack.errors.TagstackError` that made it unusable, and read the
paths lazily, a few per worker ahead; what a file gives is the tagger's
business, handed in as functions, so either way gives the same results
(``tests/test_equivalence.py``).
"""

from __future__ import annotations

import itertools
import queue as queues
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import TagstackError
from .result import Result
from .sources import as_source, source_name
from .windows import Window


def one_thread_per_file(
    paths: Iterable[str | Path], *, predict: Callable[[str | Path], Result], workers: int
) -> Iterator[Result | TagstackError]:
    """``predict`` of each path in ``workers`` threads, torch single threaded meanwhile, at most ``2 * workers`` ahead.

    A :class:`~tagstack.errors.TagstackError` that ``predict`` raises is that
    path's result; torch's number of threads is restored when the generator
    ends, however it ends.
    """

    def one(path) -> Result | TagstackError:
        try:
            return predict(path)
        except TagstackError as e:
            return e

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            it = iter(paths)
            queue = deque(pool.submit(one, p) for p in itertools.islice(it, 2 * workers))
            while queue:
                result = queue.popleft().result()
                queue.extend(pool.submit(one, p) for p in itertools.islice(it, 1))
                yield result
    finally:
        torch.set_num_threads(threads)


def shared_passes(
    paths: Iterable[str | Path],
    *,
    windows: Callable[[str | np.ndarray], Iterator[Window]],
    results: Callable[[list[Iterator[Window]], list[str]], list[Result | TagstackError]],
    batch: int,
    workers: int,
) -> Iterator[Result | TagstackError]:
    """Each path's result, ``workers`` threads decoding and this one running the networks over several files at once.

    The workers cut each file into ``windows`` (at most ``workers + 1`` files
    ahead, each at most ``batch`` windows ahead of the networks, so memory
    stays bounded however long the files); this thread hands the windows of up
    to ``batch`` consecutive files to ``results`` together, which returns
    their results (or errors) in order. A file whose decoding fails, or a
    path that is not one (:func:`~.sources.as_source`'s error), gets its
    error in its place. The threads are daemons and give up when the caller
    stops early, so an unfinished loop never holds the process at exit.
    """
    stop = threading.Event()
    end = object()

    def put(box: queues.Queue, item) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queues.Full:
                pass
        return False

    def cut(source: str | np.ndarray | TagstackError, box: queues.Queue) -> None:
        """In a worker thread: the file's windows, or the error that ends them, then ``end``."""
        try:
            if isinstance(source, TagstackError):  # not a path (as_source's error): this file's result
                raise source
            for win in windows(source):
                if not put(box, win):
                    return
        except Exception as e:  # a bad file (TagstackError) or a bug: raised where this thread reads the file
            put(box, e)
        put(box, end)

    def replay(box: queues.Queue) -> Iterator[Window]:
        while (item := box.get()) is not end:
            if isinstance(item, Exception):
                raise item  # in `results`, where a TagstackError takes its source's place
            yield item

    def work() -> None:
        while (job := jobs.get()) is not None and not stop.is_set():
            cut(*job)

    def submit(path) -> tuple[str, queues.Queue]:
        box: queues.Queue = queues.Queue(maxsize=batch)
        try:
            source = as_source(path)
        except TagstackError as e:
            jobs.put((e, box))
            return str(path), box
        jobs.put((source, box))
        return source_name(source), box

    # daemon threads: a script that leaves this generator unfinished (a loop that breaks or raises) still exits,
    # where Python would wait at exit for a pool's threads waiting to hand over windows
    jobs: queues.Queue = queues.Queue()
    threads = [threading.Thread(target=work, name=f"tagstack-decode-{i}", daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        it = iter(paths)
        ahead = deque(submit(p) for p in itertools.islice(it, workers + 1))
        while ahead:
            chunk = [ahead.popleft() for _ in range(min(batch, len(ahead)))]
            ahead.extend(submit(p) for p in itertools.islice(it, len(chunk)))
            yield from results([replay(box) for _, box in chunk], [n for n, _ in chunk])
    finally:  # also when the caller stops early: workers waiting to hand over windows give up
        stop.set()
        for _ in threads:
            jobs.put(None)
        for thread in threads:
            thread.join()
