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
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .headers.errors import Refused
from .headers.precheck import check_before_parsing
from .headers.strict import MAX_DEPTH, NotStrict, check_strict

# pydicom's own reading validation only warns, and its warnings quote the value, which can be a
# patient's name, into every log. headers.strict validates every value itself and refuses.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


# The largest instance read: ingress refuses a C-STORE that sends more (``ingress.max_instance_mb``),
# and a deflated dataset may not inflate to more. A 4000 x 3000 photo is 36 MB uncompressed, the
# largest photo the pixel stage takes (120 MP) 360 MB; pydicom holds what it reads in memory.
MAX_INSTANCE_BYTES = 512 * 1024 * 1024


def read_instance(source: Path | bytes, max_bytes: int = MAX_INSTANCE_BYTES) -> Dataset:
    """Parse a DICOM Part 10 file (path or bytes) fully and strictly, or raise Refused saying why not.

    The whole dataset is parsed and checked here (``headers.strict``), not lazily, so that a
    truncated or lying element is found now, with a clear reason, rather than trusted by the
    profile or met halfway through de-identification.
    """
    if (source.stat().st_size if isinstance(source, Path) else len(source)) > max_bytes:
        raise Refused("too-large", f"the instance is larger than {max_bytes / 2**20:g} MiB, the largest read")
    data = source.read_bytes() if isinstance(source, Path) else source
    if not data:
        raise Refused("empty-file", "the file is empty")
    check_before_parsing(data, max_bytes)
    try:
        ds = pydicom.dcmread(BytesIO(data))
        check_strict(ds)
    except Refused:
        raise
    except RecursionError:
        raise NotStrict(
            "too-deep", f"sequences nested deeper than a reader can follow (limit {MAX_DEPTH})"
        ) from None
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


def read_checked(data: bytes) -> Dataset:
    """Parse bytes that ``read_instance`` has already passed, without checking every element again.

    For the service's received files: ingress reads them strictly before it acknowledges them,
    and the worker hands them on only once their SHA-256 matches the one ingress recorded. The
    checks' outcome depends on the bytes alone, so it is known; checking again cost a tenth to a
    sixth of each de-identification (benchmarks/README.md). The last gate still reads its own
    output strictly.
    """
    try:
        return pydicom.dcmread(BytesIO(data))
    except Exception as exc:  # the same bytes parsed before: only a changed pydicom gets here
        raise Refused("corrupt-dicom", f"cannot parse the DICOM data ({type(exc).__name__})") from None


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


def write_instance(data: bytes, path: Path, *, fsync: bool = True) -> None:
    """Write the bytes of an instance (``headers.gate.release`` made them) atomically: temp file,
    fsync, rename, so that a reader never sees half a file. ``fsync=False`` leaves the flush to
    the caller (``deid`` syncs once after the whole batch instead of once per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
