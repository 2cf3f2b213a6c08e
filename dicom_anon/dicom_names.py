"""DICOM names from pydicom's own tables, read without importing pydicom.

The settings name SOP classes and attributes by keyword, and ``rules check`` prints each SOP class
by its keyword: that is all the settings need of pydicom. Importing pydicom for it (its package
imports numpy and every pixel handler) was most of ``rules check``'s start-up, so the two
generated files that hold the tables, ``pydicom/_uid_dict.py`` and ``pydicom/_dicom_dict.py``
(dict literals, no imports), are run here on their own. They are pydicom's files, so pydicom stays
the one source of the names; once something has imported pydicom, its loaded tables are used.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any


def _package_file(package: str, name: str) -> Path:
    """``name`` in the installed ``package``'s folder, found without importing the package."""
    spec = importlib.util.find_spec(package)  # finds the package's folder; imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{package} is not installed", name=package)
    return Path(next(iter(spec.submodule_search_locations))) / name


def _pydicom_table(name: str) -> ModuleType:
    """pydicom's generated module ``pydicom.<name>``, without running pydicom's ``__init__``."""
    loaded = sys.modules.get(f"pydicom.{name}")
    if loaded is not None:
        return loaded
    path = _package_file("pydicom", f"{name}.py")
    # A private module name, left out of sys.modules: ``import pydicom`` later loads its own copy
    # as usual. The loader still uses pydicom's compiled copy in its __pycache__.
    spec = importlib.util.spec_from_file_location(f"_dicom_anon_pydicom{name}", path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"pydicom's {path} cannot be read", name=f"pydicom.{name}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _uids() -> dict[str, tuple[str, str, str, str, str]]:
    """pydicom's ``UID_dictionary``: UID -> (name, type, info, retired, keyword)."""
    table: dict[str, tuple[str, str, str, str, str]] = _pydicom_table("_uid_dict").UID_dictionary
    return table


@cache
def _sop_classes() -> dict[str, str]:
    """Keyword -> UID of every SOP class the dictionary holds that is not retired."""
    return {
        entry[4]: uid
        for uid, entry in _uids().items()
        if entry[1] == "SOP Class" and not entry[3] and entry[4]
    }


def sop_class_uid(keyword: str) -> str | None:
    """The UID of the SOP class ``keyword`` names (VLPhotographicImageStorage), if pydicom's
    dictionary has it and it is not retired; None otherwise."""
    return _sop_classes().get(keyword)


def uid_keyword(uid: str) -> str:
    """The UID's keyword in pydicom's dictionary, '' when it has none (as ``UID(uid).keyword``)."""
    entry = _uids().get(uid)
    return entry[4] if entry is not None else ""


@cache
def keyword_tags() -> dict[str, int]:
    """Attribute keyword -> tag for the official DICOM attributes, as ``pydicom.datadict``'s
    ``keyword_dict`` (``tag_for_keyword`` is a lookup in it)."""
    table: dict[int, tuple[Any, ...]] = _pydicom_table("_dicom_dict").DicomDictionary
    return {entry[4]: tag for tag, entry in table.items()}


@cache
def storage_sop_classes() -> frozenset[str]:
    """The UIDs of the storage SOP classes the receiver accepts: pynetdicom's
    ``AllStoragePresentationContexts`` (ingress's contexts), built from its ``_STORAGE_CLASSES``.

    Read as the one dict literal that list is in pynetdicom's ``sop_class.py`` (``ast``, about
    10 ms), because importing pynetdicom imports pydicom and would cost ``rules check`` a third of
    a second. Once pynetdicom is imported, or in a release that keeps the list elsewhere, the
    contexts themselves are read.
    """
    if "pynetdicom" not in sys.modules:
        tree = ast.parse(_package_file("pynetdicom", "sop_class.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_STORAGE_CLASSES" for t in node.targets
            ):
                return frozenset(ast.literal_eval(node.value).values())
    from pynetdicom import AllStoragePresentationContexts

    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
