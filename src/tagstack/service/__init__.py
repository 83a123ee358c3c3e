"""``tagstack serve``: the tagger as an HTTP service with a web page (needs the ``serve`` extra).

:mod:`.limits` (what a request may cost) imports without the web stack, so the
CLI can show its defaults; the application itself is imported when first named.
"""

from .limits import Problem, ServiceLimits

__all__ = ["Problem", "ServiceLimits", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
