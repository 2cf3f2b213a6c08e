"""Keyed pseudonyms: the site secret and everything derived from it.

HMAC-SHA256 with a per-site secret gives the same pseudonym for the same input
across runs, restarts and machines that share the secret, needs no lookup table,
and cannot be reversed by hashing a list of known patient IDs (as unkeyed MD5
can). See docs/keys.md for the secret's role and rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import SiteKeyError

KEY_BYTES = 32
# Date offsets run backwards between MIN and MAX days: never zero (a zero shift
# leaks the real date) and within ten years so ages stay plausible.
MIN_SHIFT_DAYS = 30
MAX_SHIFT_DAYS = 3650


@dataclass(frozen=True)
class SiteKey:
    """The site secret. Every pseudonym, new UID and date shift is an HMAC under it."""

    secret: bytes

    @classmethod
    def load_or_create(cls, path: Path) -> SiteKey:
        """Read the secret at ``path``; create it (mode 0600) when absent.

        A secret that group or others can read is refused: anyone who reads it can
        test guesses of patient IDs against pseudonyms.
        """
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise SiteKeyError(f"{path}: cannot read the site secret ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SiteKeyError(
                f"{path}: the site secret is readable by others (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod 600 {path}"
            )
        if len(data) < 16:
            raise SiteKeyError(f"{path}: the site secret is {len(data)} bytes; it needs at least 16")
        return cls(data)

    def digest(self, purpose: str, value: str) -> bytes:
        """HMAC of ``value`` in a named domain, so a UID and a patient ID never share a hash."""
        msg = purpose.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
        return hmac.new(self.secret, msg, hashlib.sha256).digest()

    def token(self, purpose: str, value: str, length: int = 12) -> str:
        """Upper-case base32 text from the HMAC: valid in LO/SH/PN/CS values."""
        return base64.b32encode(self.digest(purpose, value)).decode()[:length]

    def keyed_hash(self, value: str) -> str:
        """Hex HMAC for the audit trail: an original identifier that only a key holder can look up."""
        return self.digest("audit", value).hex()[:32]

    def fingerprint(self) -> str:
        """Names the key in markers and audit events without revealing it."""
        return hashlib.sha256(b"dicom-anon key fingerprint\x00" + self.secret).hexdigest()[:16]

    # --- the pseudonyms a header needs -------------------------------------------------

    def patient_id(self, patient_key: str) -> str:
        return "ANON" + self.token("patient-id", patient_key, 12)

    def patient_name(self, patient_key: str) -> str:
        return "ANON^" + self.token("patient-name", patient_key, 10)

    def accession_number(self, value: str) -> str:
        return "A" + self.token("accession", value, 15)

    def study_id(self, value: str) -> str:
        return "S" + self.token("study-id", value, 15)

    def uid(self, original: str) -> str:
        """A ``2.25.`` UID from the HMAC of the original; 128 bits keep it under 64 characters."""
        return "2.25." + str(int.from_bytes(self.digest("uid", original.strip())[:16], "big"))

    def date_shift_days(self, patient_key: str) -> int:
        """Days to add to every date of this patient: negative, never zero, the same in every study."""
        n = int.from_bytes(self.digest("date-shift", patient_key)[:8], "big")
        return -(MIN_SHIFT_DAYS + n % (MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1))
