"""De-identifying files from disk: what ``dicom-anon deid`` runs per file, on one core or all of them.

Kept apart from the CLI so that the command only presents results, and so that
tests can check outcomes without parsing terminal output.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .dicomio import looks_like_dicom, read_instance, write_instance
from .headers.engine import Change, Profile, deidentify
from .headers.errors import Refused
from .headers.gate import release
from .headers.pseudonyms import SiteKey


@dataclass(frozen=True)
class Inputs:
    """The files to process, and what a folder walk passed over (reported, never silently lost)."""

    files: tuple[Path, ...]
    skipped: tuple[Path, ...] = ()
    missing: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What happened to one input file."""

    source: Path
    output: Path | None = None
    refused: Refused | None = None
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.refused is None


def collect_inputs(paths: Iterable[Path]) -> Inputs:
    """Expand folders recursively. Files named explicitly are always tried; inside folders only
    files that look like DICOM are taken, so a README next to the photos is not a failure."""
    files: list[Path] = []
    skipped: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                (files if looks_like_dicom(child) else skipped).append(child)
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return Inputs(tuple(files), tuple(skipped), tuple(missing))


def deid_file(
    source: Path, key: SiteKey, profile: Profile, outdir: Path, *, dry_run: bool = False
) -> Outcome:
    """Read strictly, de-identify, pass the last gate and (unless dry_run) write one file as
    ``OUTDIR/<new SOP Instance UID>.dcm``.

    The output is named by its new UID because original file names often carry
    the patient's name or MRN. A dry run passes the gate too, so that it refuses what a real
    run would.
    """
    try:
        ds = read_instance(source)
        result = deidentify(ds, key, profile, in_place=True)
        data = release(result, profile)
    except Refused as refused:
        return Outcome(source, refused=refused)
    except OSError as exc:
        return Outcome(source, refused=Refused("unreadable", f"cannot read the file ({exc.strerror})"))
    except Exception as exc:  # fail closed: one file the engine cannot handle must not stop the batch
        return Outcome(
            source, refused=Refused("internal-error", f"cannot de-identify it ({type(exc).__name__})")
        )
    if dry_run:
        return Outcome(source, changes=result.changes)
    target = outdir / f"{result.dataset.SOPInstanceUID}.dcm"
    try:
        write_instance(data, target, fsync=False)  # deid_files syncs once at the end
    except OSError as exc:
        return Outcome(source, refused=Refused("write-failed", f"cannot write the output ({exc.strerror})"))
    return Outcome(source, output=target, changes=result.changes)


def default_jobs() -> int:
    """One worker process per core this process may use."""
    return len(os.sched_getaffinity(0))


# What each worker process de-identifies with, set once when the pool starts (by fork, so the site
# key is inherited, never pickled).
_worker: tuple[SiteKey, Profile, Path, bool] | None = None


def _start_worker(key: SiteKey, profile: Profile, outdir: Path, dry_run: bool) -> None:
    global _worker
    _worker = (key, profile, outdir, dry_run)


def _deid_in_worker(source: Path) -> tuple[Path, Path | None, tuple[str, str] | None, tuple[Change, ...]]:
    """``deid_file`` in a worker, its outcome as plain values: ``Refused`` and its subclasses take
    their own arguments and cannot be pickled back as they are."""
    assert _worker is not None
    key, profile, outdir, dry_run = _worker
    o = deid_file(source, key, profile, outdir, dry_run=dry_run)
    refused = (o.refused.code, o.refused.reason) if o.refused is not None else None
    return o.source, o.output, refused, o.changes


def deid_files(
    sources: Iterable[Path],
    key: SiteKey,
    profile: Profile,
    outdir: Path,
    *,
    dry_run: bool = False,
    jobs: int = 1,
) -> Iterator[Outcome]:
    """``deid_file`` over many files, outcomes in input order. With ``jobs`` > 1 the files are shared
    among that many worker processes: de-identification is CPU-bound Python, which threads would
    run one at a time. Each output is named by its keyed new UID, so which worker wrote it does not
    change a byte of it."""
    files = list(sources)
    yield from _outcomes(files, key, profile, outdir, dry_run, min(jobs, len(files)))
    # One flush for the whole batch, instead of an fsync per file (a third of the time on small
    # files): the outputs are on disk when the command reports them.
    if not dry_run:
        os.sync()


def _outcomes(
    files: list[Path], key: SiteKey, profile: Profile, outdir: Path, dry_run: bool, jobs: int
) -> Iterator[Outcome]:
    if jobs <= 1:
        for source in files:
            yield deid_file(source, key, profile, outdir, dry_run=dry_run)
        return
    # fork: the workers start with everything this process has imported and the key it has loaded.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start_worker, initargs=(key, profile, outdir, dry_run)
    ) as pool:
        chunk = max(1, min(16, len(files) // (jobs * 4)))
        for source, output, refused, changes in pool.map(_deid_in_worker, files, chunksize=chunk):
            yield Outcome(source, output, Refused(*refused) if refused else None, changes)
