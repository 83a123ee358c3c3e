"""The public API's conventions, after librosa and scikit-learn, checked over the whole package.

- A public function or method takes at most two positional parameters
  (besides ``self``/``cls``): the data it acts on (``eq(y, sr, *, rng)``,
  ``write_table(out, name, *, header, rows)``); everything after is
  keyword-only, so a call names what it sets and a new option never shifts
  the meaning of an old call. Exceptions are listed in
  :data:`POSITIONAL_ALLOWED`, each with its reason. Constructors (dataclasses
  and ``__init__``) and dunder methods are not checked.
- Every public function, method (properties, class and static methods
  included) and class has a docstring of its own (a dataclass's generated
  ``Name(field, ...)`` does not count, nor one inherited from ``nn.Module``).
- The API users call (:data:`USER_API`) documents its parameters and what
  it returns in numpydoc sections (``Parameters``, ``Returns`` or ``Yields``),
  naming every parameter of its signature.

"Public" is what the module defines under a name without a leading
underscore; ``tagstack.cli`` (argparse handlers) is left out.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re

import pytest

import tagstack

#: "module.function" or "module.Class.method" -> why it keeps more than two positional parameters. Empty: none needs to.
#: An entry must name something that still takes more than two (tested), so the list cannot go stale.
POSITIONAL_ALLOWED: dict[str, str] = {}

#: What users call: each documents ``Parameters`` (every parameter by name) and ``Returns``/``Yields`` in numpydoc style.
USER_API = [
    "tagstack.inference.tagger.Tagger",
    "tagstack.inference.tagger.Tagger.predict",
    "tagstack.inference.tagger.Tagger.predict_batch",
    "tagstack.inference.tagger.Tagger.predict_many",
    "tagstack.inference.tagger.Tagger.tag",
    "tagstack.inference.tagger.Tagger.embed",
    "tagstack.inference.tagger.Tagger.taggram",
    "tagstack.inference.outputs.tag_files",
    "tagstack.inference.outputs.embed_files",
    "tagstack.evaluation.assess.evaluate_model",
    "tagstack.models.file.load_model",
    "tagstack.models.file.save_model",
    "tagstack.models.tagging_model.TaggingModel",
    "tagstack.models.tagging_model.TaggingModel.forward",
    "tagstack.models.tagging_model.TaggingModel.forward_features",
    "tagstack.models.tagging_model.TaggingModel.forward_intermediates",
    "tagstack.models.tagging_model.TaggingModel.forward_head",
    "tagstack.models.tagging_model.TaggingModel.predict_proba",
    "tagstack.models.tagging_model.TaggingModel.proba_from_features",
    "tagstack.models.tagging_model.TaggingModel.columns_of",
    "tagstack.models.aggregation.aggregate",
    "tagstack.datasets.load_dataset",
    "tagstack.audio.io.load",
    "tagstack.audio.io.stream",
    "tagstack.experiments.run.Experiment",
    "tagstack.experiments.run.Experiment.run",
    "tagstack.experiments.run.run_experiment",
    "tagstack.experiments.reproduce.reproduce",
]

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(tagstack.__path__, "tagstack.")
    if not (m.name.startswith("tagstack.cli") or m.name.endswith("__main__"))
)


def _import(name: str):
    """The module, or a skip when it needs an optional dependency that is not installed (fastapi for the service)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and not e.name.startswith("tagstack"):
            pytest.skip(f"{name} needs {e.name}, an optional dependency")
        raise


def _unwrap(member):
    """The function behind a class member (method, property getter, class or static method), or None."""
    if isinstance(member, (classmethod, staticmethod)):
        member = member.__func__
    elif isinstance(member, property):
        member = member.fget
    return member if inspect.isfunction(member) else None


def _public(mod) -> list[tuple[str, object]]:
    """``(qualified name, object)`` of every public function, class and class member ``mod`` defines."""
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj):
            out.append((f"{mod.__name__}.{name}", obj))
        elif inspect.isclass(obj):
            out.append((f"{mod.__name__}.{name}", obj))
            for k, member in vars(obj).items():
                f = _unwrap(member)
                if f is not None and not k.startswith("_"):
                    out.append((f"{mod.__name__}.{name}.{k}", f))
    return out


def _positional(f) -> list[str]:
    return [
        p.name
        for p in inspect.signature(f).parameters.values()
        if p.name not in ("self", "cls") and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def _own_doc(obj) -> str:
    """``obj``'s own docstring ('' for none, or for a dataclass's generated signature)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""
        return doc.strip()
    return (obj.__doc__ or "").strip()


@pytest.mark.parametrize("module", MODULES)
def test_public_functions_take_at_most_two_positional_parameters(module):
    mod = _import(module)
    offenders = {
        name: _positional(f)
        for name, f in _public(mod)
        if not inspect.isclass(f) and len(_positional(f)) > 2 and name not in POSITIONAL_ALLOWED
    }
    assert not offenders, (
        "make the parameters after the data keyword-only (insert '*'), or add the function to "
        f"POSITIONAL_ALLOWED with the reason: {offenders}"
    )


def test_every_allowed_exception_still_needs_its_place():
    for name, reason in POSITIONAL_ALLOWED.items():
        assert reason.strip(), f"{name}: give the reason"
        obj = _resolve(name)
        assert len(_positional(obj)) > 2, f"{name} takes at most two positional parameters now: remove it from POSITIONAL_ALLOWED"


@pytest.mark.parametrize("module", MODULES)
def test_public_functions_methods_and_classes_have_docstrings(module):
    mod = _import(module)
    missing = [name for name, obj in _public(mod) if not _own_doc(obj)]
    assert not missing, f"say what these are for in a docstring: {missing}"


def _resolve(name: str):
    """The object a dotted name of :data:`USER_API` names (a module, then attributes)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = _import(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = _unwrap(vars(obj)[attr]) if inspect.isclass(obj) else getattr(obj, attr)
        return obj
    raise LookupError(name)


def _sections(doc: str) -> dict[str, list[str]]:
    """numpydoc sections of a docstring: title -> its lines (a title is a line underlined with dashes)."""
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, list[str]] = {}
    title = None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()) and line.strip():
            title = line.strip()
            out[title] = []
        elif title is not None and not re.fullmatch(r"-{3,}", line.strip()):
            out[title].append(line)
    return out


def _documented(lines: list[str]) -> set[str]:
    """Parameter names of a ``Parameters`` section: its unindented lines, ``name : type`` or ``a, b : type``."""
    names = set()
    for line in lines:
        if line and not line[0].isspace():
            names.update(n.strip().lstrip("*") for n in line.split(" : ")[0].split(","))
    return names


@pytest.mark.parametrize("name", USER_API)
def test_the_user_api_documents_parameters_and_returns_in_numpydoc_sections(name):
    obj = _resolve(name)
    doc = _own_doc(obj)
    assert doc, f"{name}: no docstring"
    sections = _sections(doc)
    f = obj.__init__ if inspect.isclass(obj) else obj
    params = [p.name for p in inspect.signature(f).parameters.values() if p.name not in ("self", "cls")]
    if params:
        assert "Parameters" in sections, f"{name}: no Parameters section"
        undocumented = set(params) - _documented(sections["Parameters"])
        assert not undocumented, f"{name}: Parameters does not name {sorted(undocumented)}"
    returns = inspect.signature(f).return_annotation
    if not inspect.isclass(obj) and returns not in ("None", None, inspect.Signature.empty):
        assert "Returns" in sections or "Yields" in sections, f"{name}: no Returns (or Yields) section"
