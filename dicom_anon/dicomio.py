"""Reading and writing DICOM instances with errors a person can act on.

Both the CLI and the service read files that come from outside; every way a file
can be unusable becomes a ``Refused`` with a short code and one sentence, never a
traceback.
"""

from __future__ import annotations

import os
import tempfile
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .headers.errors import Refused


def read_instance(source: Path | bytes) -> Dataset:
    """Parse a DICOM Part 10 file (path or bytes) fully, or raise Refused saying why not.

    The whole dataset is parsed here (not lazily) so that a truncated element is
    found now, with a clear reason, rather than halfway through de-identification.
    """
    data = source.read_bytes() if isinstance(source, Path) else source
    if not data:
        raise Refused("empty-file", "the file is empty")
    try:
        ds = pydicom.dcmread(BytesIO(data))
        _check_complete(ds)
    except Refused:
        raise
    except InvalidDicomError:
        raise Refused("not-dicom", "not a DICOM file (no DICM preamble or readable file meta)") from None
    except Exception as exc:  # pydicom raises many types for damaged data; all mean the same to a user
        raise Refused("corrupt-dicom", f"cannot parse the DICOM data ({type(exc).__name__}: {exc})") from None
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise Refused("missing-transfer-syntax", "the file meta has no Transfer Syntax UID")
    if not UID(tsyntax).is_transfer_syntax:
        raise Refused("unknown-transfer-syntax", f"transfer syntax {tsyntax} is not one DICOM defines")
    if "SOPClassUID" not in ds:
        raise Refused("missing-sop-class", "the dataset has no SOP Class UID")
    return ds


UNDEFINED_LENGTH = 0xFFFFFFFF


def _check_complete(ds: Dataset) -> None:
    """Parse every element, checking that each value is as long as its header says.

    pydicom silently returns a short value when the file ends early; a truncated
    transfer must be refused, not de-identified and forwarded as if whole.
    """
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields elements, which converts them
        raw = ds.get_item(tag)
        if (
            isinstance(raw, RawDataElement)
            and raw.length != UNDEFINED_LENGTH
            and raw.value is not None
            and len(raw.value) != raw.length
        ):
            raise Refused(
                "corrupt-dicom", f"element {tag} is truncated ({len(raw.value)} of {raw.length} bytes)"
            )
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _check_complete(item)


def looks_like_dicom(path: Path) -> bool:
    """True for a Part 10 file (DICM at byte 128) or a name ending .dcm; used when walking folders."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def write_instance(ds: Dataset, path: Path) -> None:
    """Write atomically (temp file, fsync, rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
