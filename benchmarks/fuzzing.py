"""What the fuzzing runs (fuzz_deid.py, fuzz_pixels.py) share: their command line, the inputs
of the cases that broke an invariant, and how a run ends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


def arguments(doc: str, count: int) -> argparse.ArgumentParser:
    """--count, --seed and --keep; a run adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="a folder for the inputs of cases that broke an invariant")
    return parser


def keep(folder: Path | None, name: str, data: bytes) -> None:
    """A broken case's input as ``folder/name.dcm``, to be read again with dicom-anon or pydicom."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.dcm").write_bytes(data)


def finish(count: int, seconds: float, slowest: tuple[float, str], broken: list[str]) -> NoReturn:
    """The speed, the slowest case and every broken one; exit 1 if there was one."""
    print(f"{count} cases in {seconds:.1f} s ({count / seconds:.1f}/s); slowest {slowest[0]:.2f} s")
    print(f"  ({slowest[1]}); invariant broken: {len(broken)}")
    for line in broken:
        print(f"BROKEN {line}")
    sys.exit(1 if broken else 0)
