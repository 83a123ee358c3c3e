"""The ``tagstack`` command: its flags (:mod:`.parser`), what each subcommand does (:mod:`.commands`), and here
how every run ends: a :class:`~tagstack.errors.TagstackError` is one line on stderr and exit status 1, a usage error
one line and 2, Ctrl-C 130; ``main(argv)`` can be called in-process (the tests do).

Only this package reads command-line flags; below it everything takes plain arguments.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from ..errors import ParameterError, TagstackError
from ..fileio import shown
from ..runtime import leave_distributed
from .parser import UsageError, build_parser


class _TqdmHandler(logging.Handler):
    """Log records written between progress-bar updates, so neither garbles the other."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        if sys.stderr is None:  # started with stderr closed: tqdm.write would fall back to stdout, the results
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except (BrokenPipeError, ValueError):  # whoever read stderr went away (a pipe, a closed file): the job goes on
            pass
        except Exception:
            self.handleError(record)


def _log_to_terminal() -> None:
    """Show the library's progress messages (logging) on stderr."""
    root = logging.getLogger("tagstack")
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


#: Commands that train, and so may run as several processes under torchrun (DistributedDataParallel).
DISTRIBUTED_COMMANDS = {"run", "local", "aggregate", "global", "reproduce", "demo"}


def _join_torchrun(command: str) -> None:
    """Under ``torchrun``, join the process group; only the first process talks to the terminal."""
    from ..runtime import die_with_parent, distributed, world_size

    if world_size() == 1:
        return
    if command not in DISTRIBUTED_COMMANDS:
        raise ParameterError(f"tagstack {command} runs as one process; under torchrun only {', '.join(sorted(DISTRIBUTED_COMMANDS))} do")
    die_with_parent()  # a killed torchrun agent takes its workers with it
    rank, world = distributed()
    if rank > 0:
        logging.getLogger("tagstack").setLevel(logging.WARNING)
        sys.stdout = open(os.devnull, "w")
    else:
        logging.getLogger("tagstack").info("torchrun: %d processes; this one (rank 0) writes the results", world)


#: Errors of a write that names no file: in the CLI, standard output (a full disk, a quota, a lost device).
_FULL_OR_GONE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EBADF}


#: Commands that keep their work as they go (run folders, the corpus, a tag/embed journal, Ray shards).
_RESUMABLE = {"demo", "run", "local", "aggregate", "global", "reproduce", "corpus", "embed"}


def _resumes(args: argparse.Namespace) -> bool:
    """Whether the same command continues where an interrupted one stopped (``tag`` only with an output file;
    ``evaluate`` and ``tag`` to standard output start again)."""
    return args.command in _RESUMABLE or (args.command == "tag" and args.output is not None)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    _log_to_terminal()
    try:
        _join_torchrun(args.command)
        return args.func(args)
    except TagstackError as e:
        print(f"tagstack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tagstack: interrupted{'; run the same command again to resume' if _resumes(args) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`tagstack tag ... | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's own flush at exit does not fail again
        return 141
    except OSError as e:  # output files become OutputError in fileio; this is what is left: standard output on a full disk ...
        where = f"{shown(e.filename)}: " if e.filename else ("standard output: " if e.errno in _FULL_OR_GONE else "")
        print(f"tagstack: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        leave_distributed()


if __name__ == "__main__":
    sys.exit(main())
