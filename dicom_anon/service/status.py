"""Whether the service runs, and asking it to re-read its settings, from outside its process.

The console (and any operator's tool) shares only the data dir with the service: the state store,
the audit trail and the settings file. The trail's last ``service_started`` or ``service_stopped``
record says which process runs the service and with which settings file; the process is checked
to be alive, and a reload is the SIGHUP that ``systemctl reload`` sends.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit.query import short_time
from ..audit.trail import read_records

_LIFE_CYCLE = ("service_started", "service_stopped")
_RELOADED = ("config_reloaded", "config_reload_failed")


@dataclass(frozen=True)
class ServiceState:
    """``running``: the process that last recorded a start is alive; ``since`` is that record's time."""

    running: bool
    pid: int | None = None
    since: str | None = None
    config: str | None = None
    listen: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return "never started with this data dir"
        if self.running:
            return f"up since {short_time(self.since)} UTC (process {self.pid}, listening on {self.listen})"
        return f"down (process {self.pid} that started at {short_time(self.since)} UTC is gone or stopped)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and run by another account (the service's own)
        return True
    return True


def service_state(records: Sequence[dict[str, Any]]) -> ServiceState:
    """The service's state from the trail's ``records`` (as ``read_records`` gives them)."""
    last = next((r for r in reversed(records) if r.get("event") in _LIFE_CYCLE), None)
    if last is None:
        return ServiceState(False)
    pid = last.get("pid")
    if last["event"] == "service_stopped":
        starts = (r for r in reversed(records) if r.get("event") == "service_started" and r.get("pid") == pid)
        started = next(starts, last)
        return ServiceState(False, pid, started.get("ts"), started.get("config"), started.get("listen"))
    running = isinstance(pid, int) and _alive(pid)
    return ServiceState(running, pid, last.get("ts"), last.get("config"), last.get("listen"))


def request_reload(trail: Path, config: Path, wait_s: float = 15.0) -> str:
    """SIGHUP the running service if it runs with ``config``, and wait for its answer in the trail;
    the answer (or why no reload was asked for) in one line. The service reloads between two
    turns of its main loop; busy with photos on a loaded machine it once took more than 5 s."""
    records = read_records(trail)
    state = service_state(records)
    if not state.running or state.pid is None:
        return "the service is not running: it reads the new settings when it starts"
    if state.config is None or Path(state.config).resolve() != config.resolve():
        return (
            f"the running service uses {state.config}, not {config}: not reloaded "
            "(reload it with: systemctl reload dicom-anon)"
        )
    seen = len(records)
    try:
        os.kill(state.pid, signal.SIGHUP)
    except PermissionError:
        return "the service runs under another account: reload it with: systemctl reload dicom-anon"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        answer = next((r for r in read_records(trail)[seen:] if r.get("event") in _RELOADED), None)
        if answer is not None and answer["event"] == "config_reloaded":
            return "the service reloaded the settings"
        if answer is not None:
            return f"the service kept its rules: {answer.get('error', 'the file has errors')}"
    return f"asked the service (process {state.pid}) to reload; it has not answered yet: see its log"
