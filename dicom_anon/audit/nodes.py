"""Several nodes' trails read as one: verified chain by chain, searched in time order.

Each node (machine) writes its own hash chain, because one chain shared by machines would need a lock
across them on every record; a reviewer still asks one question of all of them ("what left, when").
So each chain is verified on its own (a break names the node), and their records are merged by time
stamp. Every trail is in time order already (a node stamps a record while it holds the file's lock),
so a k-way merge (``heapq.merge``) reads them together without sorting the whole lot.

Where the trails are: with ``audit.shared_dir`` one folder per node id under it, each holding that
node's ``audit.jsonl`` (and its rotated files); without it, the one trail of this node.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import TRAIL_NAME, Settings
from .trail import Problem, Verification, read_records, rotated_files, verify


def trails_in(folder: Path) -> dict[str, Path]:
    """node id -> trail of every node that has written under ``folder`` (a shared audit folder, or
    a reviewer's copy of one), by node id."""
    found = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            trail = entry / TRAIL_NAME
            if entry.is_dir() and (trail.exists() or rotated_files(trail)):
                found[entry.name] = trail
    return found


def node_trails(settings: Settings) -> dict[str, Path]:
    """The trails the reviewer's commands read: every node's under a shared folder, else this
    node's own (which may not exist yet)."""
    if settings.audit.shared_dir is not None:
        return trails_in(settings.audit.shared_dir)
    return {settings.node.id: settings.audit_path}


def verify_nodes(trails: Mapping[str, Path]) -> dict[str, Verification]:
    """Each node's chain verified on its own."""
    return {node: verify(path) for node, path in trails.items()}


def combined(results: Mapping[str, Verification]) -> Verification:
    """One verdict over several chains; with more than one, each problem names its node."""
    if len(results) == 1:
        return next(iter(results.values()))
    problems = tuple(
        Problem(p.line, p.message, f"node {node}" + (f" {p.file}" if p.file else ""))
        for node, result in results.items()
        for p in result.problems
    )
    return Verification(sum(r.records for r in results.values()), problems)


def merged_records(trails: Mapping[str, Path]) -> list[dict[str, Any]]:
    """Every parseable record of every trail, oldest first. A record written before nodes had ids
    is given its trail's node id, so each one says where it comes from."""
    return [record for _, _, record in heapq.merge(*(_timed(n, p) for n, p in trails.items()))]


def _timed(node: str, path: Path) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """One trail's records in chain order as (time, node, record): ordered across trails by time,
    then node, so two records are never compared. A record whose time stamp cannot be read keeps
    its place in its chain (it takes the time of the record before it)."""
    when = float("-inf")
    for record in read_records(path):
        record.setdefault("node", node)
        with suppress(ValueError):
            when = datetime.fromisoformat(str(record.get("ts"))).timestamp()
        yield when, node, record
