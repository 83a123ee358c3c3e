"""One family of errors, so callers (and the CLI) can catch tagstack's own failures.

The CLI turns every :class:`TagstackError` into a single line on stderr and a
non-zero exit status instead of a traceback.
"""


class TagstackError(Exception):
    """Root of every error tagstack raises on purpose."""


class ParameterError(TagstackError, ValueError):
    """A malformed argument: the message names the parameter, its value and what was expected."""


class AudioError(TagstackError):
    """An audio file that cannot be used: the message names the file and the reason."""


class AudioTooLongError(AudioError):
    """Audio longer than the limit a :class:`~tagstack.Tagger` was given (``max_seconds``), found while decoding it."""


class StoppedError(TagstackError):
    """An analysis stopped before its end because its caller asked (``stop``): a service's client went away."""


class OutputError(TagstackError):
    """An output file that cannot be written (a full disk, a read-only or vanished folder): names the file and the
    reason; whatever the file held before is left as it was."""


class DatasetError(TagstackError):
    """A dataset, split or label file that cannot be read: names the file and the reason."""


class ModelFileError(TagstackError):
    """A model artifact that is missing, foreign or inconsistent."""
