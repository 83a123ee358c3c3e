"""``tagstack serve``: the tagger as an HTTP service with a web page (needs the ``serve`` extra)."""
from .app import Problem, ServiceLimits, create_app, serve

__all__ = ["Problem", "ServiceLimits", "create_app", "serve"]
