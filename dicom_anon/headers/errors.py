"""Why an instance was not de-identified. Callers quarantine (service) or report and exit non-zero (CLI)."""

from __future__ import annotations


class Refused(Exception):
    """The profile cannot make this instance safe; it must not be forwarded.

    ``code`` is a short stable identifier (for audit queries and tests), ``reason``
    the sentence shown to a records officer.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SiteKeyError(Exception):
    """The site secret is missing, unreadable or too widely readable."""
