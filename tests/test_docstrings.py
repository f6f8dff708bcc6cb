"""Runtime docstrings: ``help()`` on the public API says more than a signature.

The compiled module's docstrings come from the ``///`` comments on the Rust items in
``rust/py/src``; the Python modules' from their own docstrings. Every public module of the package
declares ``__all__``, and everything it exports is documented.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import pydoc

import pytest

import fyp_core
import fyp_core._core as core

# Compiled names without a docstring: none (keep it that way).
CORE_EXEMPT: frozenset[str] = frozenset()

# Python modules and exports that lack ``__all__`` or a docstring: none (keep it that way).
MODULES_WITHOUT_ALL: frozenset[str] = frozenset()
UNDOCUMENTED_EXPORTS: frozenset[str] = frozenset()


def _doc_is_signature_only(name: str, doc: str) -> bool:
    return not doc or doc.startswith(name + "(")


def _core_undocumented() -> list[str]:
    """Public classes, methods, properties and functions of ``fyp_core._core`` whose
    ``__doc__`` is empty or only a signature."""
    missing = []
    for name in dir(core):
        if name.startswith("_"):
            continue
        obj = getattr(core, name)
        if inspect.isclass(obj):
            if _doc_is_signature_only(name, (obj.__doc__ or "").strip()):
                missing.append(name)
            for member, value in vars(obj).items():
                if member.startswith("_"):
                    continue
                doc = (getattr(value, "__doc__", None) or "").strip()
                if _doc_is_signature_only(member, doc):
                    missing.append(f"{name}.{member}")
        elif callable(obj) and not (obj.__doc__ or "").strip():
            missing.append(name)
    return missing


def test_nothing_is_exempt() -> None:
    assert not CORE_EXEMPT and not MODULES_WITHOUT_ALL and not UNDOCUMENTED_EXPORTS


def test_every_compiled_public_name_has_a_docstring() -> None:
    missing = [n for n in _core_undocumented() if n not in CORE_EXEMPT]
    assert missing == [], (
        f"no runtime docstring (add a /// comment on the Rust item in rust/py/src): {missing}"
    )


def test_the_check_sees_every_kind_of_member() -> None:
    # a check that inspected no methods or properties would pass on an undocumented module
    kinds: dict[str, int] = {}
    for name in dir(core):
        obj = getattr(core, name)
        if inspect.isclass(obj) and not name.startswith("_"):
            for member, value in vars(obj).items():
                if not member.startswith("_"):
                    kinds[type(value).__name__] = kinds.get(type(value).__name__, 0) + 1
    assert kinds.get("method_descriptor", 0) > 50 and kinds.get("getset_descriptor", 0) > 50
    assert _doc_is_signature_only("feed", "feed($self, user_id, request_id)")
    assert _doc_is_signature_only("feed", "")
    assert not _doc_is_signature_only("feed", "Serves one feed request.")


def test_help_of_feed_names_its_arguments() -> None:
    text = pydoc.render_doc(fyp_core.FeedPipeline.feed, renderer=pydoc.plaintext)
    for arg in ("user_id", "request_id", "n", "now"):
        assert f"`{arg}`" in text, f"help(FeedPipeline.feed) does not explain {arg!r}"
    assert "ValueError" in text and "GIL" in text
    # the signature is still there, above the docstring
    assert "feed(self, /, user_id, request_id, n=20, now=None)" in text


def test_class_docstrings_describe_the_constructor() -> None:
    doc = fyp_core.FeedPipeline.__doc__ or ""
    for arg in ("index", "ranker", "reranker", "split", "event_log", "config", "user_token_key"):
        assert f"`{arg}`" in doc, arg
    assert "user_token_key=None" in (fyp_core.FeedPipeline.__text_signature__ or "")


def _public_modules() -> list[str]:
    names = ["fyp_core"]
    for m in pkgutil.walk_packages(fyp_core.__path__, "fyp_core."):
        if not any(part.startswith("_") for part in m.name.split(".")):
            names.append(m.name)
    return sorted(names)


PUBLIC_MODULES = _public_modules()


def test_public_modules_are_found() -> None:
    for name in ("fyp_core.eventlog", "fyp_core.analytics", "fyp_core.loop.driver", "fyp_core.cli"):
        assert name in PUBLIC_MODULES


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_module_has_docstring_and_all(name: str) -> None:
    mod = importlib.import_module(name)
    assert (mod.__doc__ or "").strip(), f"{name} has no module docstring"
    if name in MODULES_WITHOUT_ALL:
        return
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for attr in exported:
        assert hasattr(mod, attr), f"{name}.__all__ names {attr!r}, which the module lacks"


def _own_doc(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    # a dataclass without a docstring gets its signature as __doc__: that is not documentation
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""
    return doc


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_functions_and_classes_have_docstrings(name: str) -> None:
    mod = importlib.import_module(name)
    missing = []
    for attr in getattr(mod, "__all__", ()):
        obj = getattr(mod, attr)
        kind = inspect.isclass(obj) or inspect.isroutine(obj)
        if not kind or _own_doc(obj) or f"{name}.{attr}" in UNDOCUMENTED_EXPORTS:
            continue
        if getattr(core, attr, None) is obj and attr in CORE_EXEMPT:  # re-exported, exempt above
            continue
        missing.append(attr)
    assert missing == [], f"{name} exports undocumented {missing}"
