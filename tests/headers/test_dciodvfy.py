"""The output stays a valid instance: dciodvfy finds no error in it that it did not find in the input.

Many real files already fail dciodvfy (missing Type 2 attributes, bad private values);
de-identification must not add to that list. Error lines are compared after removing
what legitimately differs between input and output (values, UIDs, lengths).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.pseudonyms import SiteKey

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed"),
]

SHARED_DICOM = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "dicom"
FILES = sorted(p.relative_to(SHARED_DICOM).as_posix() for p in SHARED_DICOM.rglob("*.dcm"))


def dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's Error lines for ``path``, with values, UIDs and numbers that differ by design removed."""
    run = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    errors = set()
    for line in (run.stdout + run.stderr).splitlines():
        if not line.startswith("Error"):
            continue
        line = re.sub(r"\] = <.*", "] = <value>", line)  # the value (and the complaint about it)
        line = re.sub(r"value <[^>]*>", "value <value>", line)  # enumerated values
        line = re.sub(r"\b\d+(\.\d+){2,}\b", "<uid>", line)
        errors.add(line.strip())
    return errors


@pytest.mark.parametrize("name", FILES)
def test_output_has_no_new_dciodvfy_errors(
    testdata: Path, site_key: SiteKey, tmp_path: Path, name: str
) -> None:
    source = testdata / "dicom" / name
    try:
        result = deidentify(pydicom.dcmread(source), site_key, Profile(options=frozenset()))
    except Refused as refused:
        pytest.skip(f"refused by the engine: {refused.code}")
    output = tmp_path / "out.dcm"
    pydicom.dcmwrite(output, result.dataset, enforce_file_format=True)
    new = dciodvfy_errors(output) - dciodvfy_errors(source)
    assert not new, "errors the output has and the input had not:\n" + "\n".join(sorted(new))
