"""The DICOM audit message schema (PS3.15 A.5.1.1, tests/audit/data/dicom-audit-message.rnc) as an
lxml RelaxNG validator, and the pieces of a received syslog line."""

from __future__ import annotations

import functools
from pathlib import Path

import rnc2rng
from lxml import etree

SCHEMA = Path(__file__).parent / "audit" / "data" / "dicom-audit-message.rnc"
BOM = b"\xef\xbb\xbf"


@functools.cache
def schema() -> etree.RelaxNG:
    # The standard writes its '##' documentation comments after the values they describe, which
    # the compact syntax allows only before; as plain comments they mean the same to a validator.
    text = SCHEMA.read_text().replace("##", "#")
    return etree.RelaxNG(etree.fromstring(rnc2rng.dumps(rnc2rng.loads(text)).encode()))


def invalid(xml: bytes) -> str | None:
    """Why ``xml`` is not a valid DICOM audit message (None when it is)."""
    validator = schema()
    if validator.validate(etree.fromstring(xml)):
        return None
    return str(validator.error_log)


def split_syslog(line: bytes) -> tuple[list[str], bytes]:
    """An RFC 5424 line as received: its header fields (PRI+version, timestamp, host, app, procid,
    msgid, structured data) and the XML after the byte order mark."""
    header, sep, body = line.partition(BOM)
    assert sep, f"no byte order mark before the message: {line[:120]!r}"
    return header.decode("ascii").split(" ")[:7], body
