"""Tag groups: the vocabulary each tag belongs to (mood, genre, a teacher's tags ...).

A dataset's ``tag_groups.csv``, a model and its file all name groups the
same way, so the rule lives here, below both :mod:`~tagstack.datasets` and
:mod:`~tagstack.models`.
"""

from __future__ import annotations

#: The longest group name accepted.
MAX_GROUP_NAME = 100
#: The group a tag without one is shown in (``tagstack tag --per-group``, ``tagstack info``).
UNGROUPED = "other"


def is_group_name(group: object) -> bool:
    """A tag-group name as ``tag_groups.csv``, a model and a model file accept it: a string of 1..MAX_GROUP_NAME characters."""
    return isinstance(group, str) and 0 < len(group) <= MAX_GROUP_NAME
