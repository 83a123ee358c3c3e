"""The ``tagstack`` command line: its flags (:mod:`.parser`), what each subcommand does (:mod:`.commands`), and
:func:`.main.main`, which runs one and turns every error into one line."""

from .main import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
