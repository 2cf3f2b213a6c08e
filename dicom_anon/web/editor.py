"""The Rules page's editor: a settings text checked as ``rules check`` checks a file, its problems
put on their lines, and applying it (write, reload the service, audit the diff).

The text is checked by ``config.load_settings`` itself, on a copy written beside nothing else (a
temporary folder), so the console and ``rules check`` give the same messages; the copy's name is
put back to the real file's in them.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, Settings, load_settings
from ..service.files import replace_durable
from ..service.status import request_reload

# The audit event holds the whole diff up to this size (a settings file is a few kilobytes).
MAX_DIFF = 64 * 1024


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Checked:
    """A settings text and what ``rules check`` says of it: the settings, or problems by line
    (line None: the problem has no line, such as a file that is not a mapping)."""

    text: str
    settings: Settings | None
    problems: tuple[tuple[int | None, str], ...] = ()
    by_line: dict[int, list[str]] = field(default_factory=dict)

    def numbered(self) -> list[tuple[int, str, list[str]]]:
        """Each line with its number and the problems found on it, for the page."""
        lines = self.text.removesuffix("\n").split("\n")
        return [(i, line, self.by_line.get(i, [])) for i, line in enumerate(lines, start=1)]


def check_text(config: Path, text: str) -> Checked:
    """Check ``text`` as if it were the settings file ``config``."""
    with tempfile.TemporaryDirectory(prefix="dicom-anon-console-") as folder:
        copy = Path(folder) / config.name
        copy.write_text(text, encoding="utf-8")
        try:
            return Checked(text, load_settings(copy))
        except ConfigError as exc:
            message = str(exc).replace(str(copy), str(config))
    pattern = re.compile(rf"^{re.escape(str(config))}(?::(\d+))?: ?(.*)$")
    problems: list[tuple[int | None, str]] = []
    by_line: dict[int, list[str]] = {}
    for line in message.splitlines():
        match = pattern.match(line)
        number = int(match.group(1)) if match and match.group(1) else None
        problems.append((number, match.group(2) if match else line))
        if number is not None:
            by_line.setdefault(number, []).append(problems[-1][1])
    return Checked(text, None, tuple(problems), by_line)


@dataclass(frozen=True)
class Applied:
    applied: bool
    message: str


def apply_text(config: Path, trail: Path, text: str, base: str, record: Callable[..., Any]) -> Applied:
    """Write ``text`` over ``config`` if it checks and the file is still the one the editor opened
    (``base``: its SHA-256), ``record`` the change with its diff, and have the service reload."""
    checked = check_text(config, text)
    if checked.settings is None:
        return Applied(False, f"not applied: {len(checked.problems)} problem(s), shown on their lines")
    before = config.read_text(encoding="utf-8")
    if sha256_of(before) != base:
        return Applied(
            False, "not applied: the file was changed by someone else since you opened it; reload the page"
        )
    if before == text:
        return Applied(False, "nothing to apply: the text is the file as it is")
    diff = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), text.splitlines(keepends=True), str(config), str(config)
        )
    )
    replace_durable(config, text.encode("utf-8"))
    # Recorded before the reload, so that the service's config_reloaded follows it in the trail.
    record(
        config=str(config),
        before_sha256=sha256_of(before),
        after_sha256=sha256_of(text),
        diff=diff[:MAX_DIFF],
        diff_truncated=len(diff) > MAX_DIFF,
    )
    return Applied(True, f"applied: {config} written; {request_reload(trail, config)}")
