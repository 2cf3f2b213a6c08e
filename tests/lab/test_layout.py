"""The lab stays out of the service: nothing the service, ``deid``, ``rules test``, the trial or the
console runs imports ``dicom_anon.lab`` (only the CLI's lab commands load it, when named)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dicom_anon

PACKAGE = Path(dicom_anon.__file__).resolve().parent
# The CLI registers the lab's commands (eval, train-encoder, models build-surrogates/check-pool)
# and imports them only when one of them is named; it is the one door from the service's side.
DOOR = PACKAGE / "cli.py"


def _service_modules() -> list[str]:
    """Every module of the package outside the lab (and the CLI, whose lab imports are lazy)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if rel.parts[1] == "lab" or path == DOOR:
            continue
        names.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return names


def _lab_modules_loaded_by(modules: list[str]) -> list[str]:
    """The ``dicom_anon.lab`` modules a fresh interpreter holds after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'dicom_anon.lab' "
        "or m.startswith('dicom_anon.lab.'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_no_service_module_imports_the_lab() -> None:
    modules = _service_modules()
    assert {"dicom_anon.service.worker", "dicom_anon.faces.pipeline", "dicom_anon.faces.gan.backend"} <= set(
        modules
    )
    assert _lab_modules_loaded_by([*modules, "dicom_anon.cli"]) == []


def test_the_check_sees_a_lab_import() -> None:
    loaded = _lab_modules_loaded_by(["dicom_anon.faces.pipeline", "dicom_anon.lab.evaluate"])
    assert loaded == ["dicom_anon.lab", "dicom_anon.lab.evaluate"]


def _imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at the top or inside a function."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_no_service_module_imports_the_lab_even_inside_a_function() -> None:
    """Imports done late (inside a function, as the worker does for the face pipeline) escape the
    import check above; the source says what they would load."""
    offenders = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            n for n in _imports_of(path) if n.startswith("dicom_anon.lab")
        )
        for path in PACKAGE.rglob("*.py")
        if "lab" not in path.relative_to(PACKAGE).parts[:1] and path != DOOR
    }
    assert {path: names for path, names in offenders.items() if names} == {}
    # The reader resolves relative imports: the CLI's lazy ones are found.
    assert "dicom_anon.lab.commands" in _imports_of(DOOR)
