"""The embedded default data: a tagged corpus rendered from real scores (:mod:`.render`), optionally
played with a performance (:mod:`.performance`) and put through a production chain (:mod:`.production`).

It is data, not an adapter: ``tagstack corpus build`` writes it, and the ``corpus`` dataset adapter
(:mod:`tagstack.datasets.corpus`) reads what it wrote.
"""

from .render import GROUPS, STYLES, build_corpus, default_folder

__all__ = ["GROUPS", "STYLES", "build_corpus", "default_folder"]
