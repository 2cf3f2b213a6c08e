"""The lab's CLI commands: ``dicom-anon models build-surrogates``, ``models check-pool``, ``eval`` and
``eval-compare``.

Registered lazily on the main ``app`` in ``dicom_anon/cli.py`` (``train-encoder`` is in
``training/commands.py``); they only parse arguments and present results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import TextColumn, track
from rich.table import Table

from ..console import err, fail, out, progress_bar

if TYPE_CHECKING:
    import torch

models_app = typer.Typer(help="Build and inspect the models the face pipeline uses.", no_args_is_help=True)


def _writable_or_exit(option: str, folder: Path) -> None:
    """``folder`` made if missing and writable, or a one-line error naming ``option``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{option}: cannot create {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise fail(f"{option}: {folder} is not writable")


def device_or_exit(name: str) -> torch.device:
    """The torch device ``--device`` names, or a one-line error before any model loads."""
    from ..faces.detect import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise fail(f"--device: {exc}") from None


@models_app.command("build-surrogates")
def build_surrogates(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="'openpeople' (the package's 10 synthetic people) or a folder of photos."
        ),
    ] = "openpeople",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Pool folder (default models/surrogates).")
    ] = None,
    licence: Annotated[
        str, typer.Option(help="Licence of the photos in a folder source (recorded per surrogate).")
    ] = "",
    device: Annotated[str, typer.Option(help="torch device for MTCNN: auto, cpu, cuda.")] = "auto",
) -> None:
    """Crop, measure and embed surrogate faces into a pool with a checksummed manifest."""
    from ..faces.detect import FaceDetector
    from ..faces.embed import get_recognizer
    from ..faces.pool import DEFAULT_POOL
    from ..faces.prepare import pool_photo_problem
    from .pool_build import build, folder_sources, openpeople_sources, write_manifest

    dev = device_or_exit(device)
    target = output or DEFAULT_POOL
    if source == "openpeople":
        sources = openpeople_sources()
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise fail(f"--from {source}: not 'openpeople' and not a folder")
        if not licence:
            raise fail(
                "--licence is required for a folder source: say under which terms the faces may be used"
            )
        sources = folder_sources(folder, licence)
    # A bar, not silence: each photo is detected, segmented and embedded (~0.3 s on CPU).
    photos = track(
        list(sources),
        description="building the pool",
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    entries, notes = build(
        photos, target, FaceDetector(device=str(dev)), get_recognizer(), check=pool_photo_problem
    )
    for note in notes:
        err.print(note, highlight=False)
    if not entries:
        raise fail(f"no usable face in {source}; nothing written")
    manifest = write_manifest(
        target, entries, [source if source == "openpeople" else str(Path(source).resolve())]
    )
    people = len({e["person"] for e in entries})
    out.print(f"{len(entries)} surrogate photos of {people} people -> {manifest}", highlight=False)
    guessed = {e["person"] for e in entries if "estimated" in e}
    if guessed:
        out.print(
            f"{len(guessed)} of the {people} people: sex or age band estimated from the photos "
            '("estimated" in the manifest); a metadata.json beside their photos states them instead',
            highlight=False,
        )
    out.print(f"look it over: dicom-anon models check-pool --pool {target} --sheet pool.png", highlight=False)


@models_app.command("check-pool")
def check_pool(
    pool: Annotated[
        Path | None, typer.Option(help="Surrogate pool folder (default models/surrogates).")
    ] = None,
    sheet: Annotated[
        Path | None, typer.Option(help="Also write every pool photo, labelled, to this PNG.")
    ] = None,
) -> None:
    """Say who is in a surrogate pool and what to add or remove before routes use it."""
    from ..faces.pool import DEFAULT_POOL, PoolError, load
    from .pool_build import contact_sheet, report

    try:
        loaded = load(pool or DEFAULT_POOL)
    except PoolError as exc:
        raise fail(str(exc)) from None
    r = report(loaded)
    table = Table(title=f"surrogate pool {loaded.root}")
    for col in ("people", "photos", "women", "men", "sex unknown", "children", "estimated"):
        table.add_column(col)
    counts = (r.people, r.photos, r.sexes.get("F", 0), r.sexes.get("M", 0), r.sexes.get("?", 0))
    table.add_row(*(str(v) for v in (*counts, r.children, r.estimated)))
    out.print(table)
    for a, b, sim in r.look_alikes[:10]:
        out.print(f"look-alikes: {a} and {b} (SFace {sim:.2f})", highlight=False)
    if len(r.look_alikes) > 10:
        out.print(f"... and {len(r.look_alikes) - 10} more pairs", highlight=False)
    for note in r.warnings():
        err.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    if sheet is not None:
        out.print(f"contact sheet: {contact_sheet(loaded, sheet)}", highlight=False)


def eval_command(
    faces: Annotated[
        list[str],
        typer.Argument(help="Image/DICOM files or folders; the word 'openpeople' adds its 10 portraits."),
    ],
    preserve: Annotated[list[str], typer.Option(help="Preserved area preset (repeatable).")] = ["mouth"],  # noqa: B006
    method: Annotated[
        list[str], typer.Option(help="surrogate, blur, pixelate, eyebar (repeatable; gan once installed).")
    ] = ["surrogate", "blur", "pixelate", "eyebar"],  # noqa: B006
    save: Annotated[
        Path | None,
        typer.Option(
            help="Write each result as DIR/STEM.png and its mask as DIR/STEM.mask.png (STEM: the input's)."
        ),
    ] = None,
    sheet: Annotated[Path, typer.Option(help="Contact sheet PNG.")] = Path("eval-contact-sheet.png"),
    sheet_rows: Annotated[int, typer.Option(help="Rows on the contact sheet.")] = 12,
    report: Annotated[Path | None, typer.Option(help="Also write the table as Markdown here.")] = None,
    per_photo: Annotated[
        Path | None,
        typer.Option(
            help="Also write one CSV row per photo and method: refused or not, the new person, and "
            "each recogniser's verdict on the output against its own original (which photos a "
            "figure counts)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images per folder.")] = None,
    skip: Annotated[
        int,
        typer.Option(
            min=0,
            help="Pass over each folder's first images (name order) before --limit counts: judge a "
            "setting tuned on the first hundred on the photos after them (--skip 100).",
        ),
    ] = 0,
    consistency_pairs: Annotated[
        bool,
        typer.Option(
            "--consistency/--no-consistency",
            help="Before/after test: six photos of each openpeople person under one pseudonym.",
        ),
    ] = True,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory/--no-memory",
            help="Consistency test: keep each patient's first new face, as the service does "
            "(--no-memory: the keyed choice alone, as on a machine that has not seen the patient).",
        ),
    ] = True,
    pool: Annotated[
        Path | None, typer.Option(help="Surrogate pool folder (default models/surrogates).")
    ] = None,
    identity: Annotated[
        str,
        typer.Option(
            help="Where new people come from: 'generated' (one per patient, from the face generator) "
            "or 'pool' (--pool's people), as the route setting pixels.identity."
        ),
    ] = "pool",
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda.")] = "auto",
    max_similarity: Annotated[
        float, typer.Option(help="QA gate: SFace similarity must stay below this.")
    ] = 0.30,
    second_recognizer: Annotated[
        bool,
        typer.Option(
            "--second-recognizer/--no-second-recognizer",
            help="QA gate: dlib's recogniser must also tell the new face from the patient's, as the "
            "route setting of that name (default on; the dlib columns then measure a gate, marked "
            "'gated'; --no-second-recognizer leaves dlib a judge the gate never saw).",
        ),
    ] = True,
    same_new_face: Annotated[
        str,
        typer.Option(
            help="Consistency test: 'prefer' (a later photo whose new face fails QA gets another) "
            "or 'require' (it is held), as the route setting of that name."
        ),
    ] = "prefer",
) -> None:
    """Measure identity removal, clinical exactness and skin drift per method; write a contact sheet.

    Re-identification is measured twice: with SFace and with dlib's recogniser, beside the rate
    at which dlib confuses two different originals (its chance level). The QA gate uses both by
    default, so both figures are low by construction; --no-second-recognizer gates on SFace
    alone and leaves dlib a judge the gate never saw.
    """
    from pydantic import ValidationError

    from ..config import PixelSettings
    from ..faces.generator import GeneratorUnavailable
    from ..faces.judge import JudgeUnavailable
    from ..faces.pipeline import get_pipeline
    from ..faces.pool import PoolError
    from ..faces.replace import BASELINES
    from ..faces.replace import methods as known_methods
    from . import evaluate as ev

    unknown = [m for m in method if m not in known_methods()]
    if unknown:
        raise fail(f"unknown method {', '.join(unknown)}; choose from: {', '.join(known_methods())}")
    try:
        settings = PixelSettings(
            preserve=preserve,
            device=device,
            max_identity_similarity=max_similarity,
            pool=pool,
            identity=identity,
            same_new_face=same_new_face,
            second_recognizer=second_recognizer,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = {"max_identity_similarity": "max-similarity"}.get(field, field.replace("_", "-"))
        raise fail(f"--{option}: {first['msg']}") from None
    missing = [item for item in faces if item != "openpeople" and not Path(item).exists()]
    if missing:
        raise fail(f"{missing[0]}: no such file or folder (give image/DICOM files, folders or 'openpeople')")
    # Checked before the run, not after half an hour of it.
    for option, folder in (
        ("--sheet", sheet.parent), ("--save", save), ("--report", report and report.parent),
        ("--per-photo", per_photo and per_photo.parent),
    ):  # fmt: skip
        if folder is not None:
            _writable_or_exit(option, folder)
    images = ev.collect(faces, limit, skip)
    if not images:
        raise fail("no readable images in the inputs")
    device_or_exit(device)
    try:
        evaluator = ev.Evaluator(settings, method)
    except (PoolError, GeneratorUnavailable) as exc:
        raise fail(str(exc)) from None
    except JudgeUnavailable as exc:
        raise fail(f"the second recogniser (dlib) cannot run: {exc}; install the 'faces' extra") from None
    # A judged run takes half an hour on two cores: a bar with what is done and what is left.
    with progress_bar(TextColumn("{task.fields[photo]}")) as bar:
        task = bar.add_task("evaluating", total=len(images) * len(method), photo="")
        started = iter(range(len(images) * len(method)))
        reports, originals = evaluator.run(
            images, lambda m, s: bar.update(task, completed=next(started), photo=f"{m}: {s}")
        )
    rows = [r.row() for r in reports.values()]
    table = Table(title=f"{len(images)} images, preserve {'+'.join(preserve)}")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*r.values())
    out.print(table)
    md = ev.markdown_table(rows)
    pipe = evaluator.pipelines.get("surrogate")
    draws = ev.draw_line(getattr(pipe.identities, "draws", [])) if pipe else ""
    if draws:
        out.print(draws, highlight=False)
        md += "\n\n" + draws
    # Each method that gives people (not the baselines) is asked the same: one patient, one new person.
    giving_people = [m for m in method if m not in BASELINES] if consistency_pairs else []
    for name in giving_people:
        pipeline = get_pipeline(settings, name)
        photos = list(ev.openpeople_images(ev.CONSISTENCY_ASSETS, pipeline.detector))
        with progress_bar(TextColumn("{task.fields[photo]}")) as bar:
            task = bar.add_task(f"consistency ({name})", total=len(photos), photo="")
            begun = iter(range(len(photos)))
            c = ev.consistency(
                pipeline,
                photos,
                lambda s, b=bar, t=task, n=begun: b.update(t, completed=next(n), photo=s),
                memory,
            )
        how = "with" if memory else "without"
        line = (
            f"Consistency of {name} on openpeople ({', '.join(ev.CONSISTENCY_ASSETS)}), {how} the identity "
            f"memory: {c.line()}."
        )
        out.print(line, highlight=False)
        md += "\n\n" + line
    path = ev.contact_sheet(images, reports, originals, sheet, rows=sheet_rows)
    out.print(f"contact sheet: {path}", highlight=False)
    if save is not None:
        out.print(f"saved {ev.save_outputs(reports, save)} results under {save}", highlight=False)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(md + "\n")
        out.print(f"table: {report}", highlight=False)
    if per_photo is not None:
        out.print(f"per photo: {ev.write_per_photo(reports, per_photo)}", highlight=False)


def eval_compare_command(
    first: Annotated[Path, typer.Argument(help="The first run's --per-photo CSV (e.g. before a change).")],
    second: Annotated[Path, typer.Argument(help="The second run's --per-photo CSV, of the same photos.")],
    names: Annotated[int, typer.Option(help="Photos named per change (0: none).")] = 6,
) -> None:
    """Compare two `eval --per-photo` runs photo by photo: which photos each figure gained or lost.

    For each measure (held, re-identified and named first by SFace and by dlib), the photos only
    one run counts, and the exact McNemar p-value of that split: the chance of a split at least
    this uneven if neither run were better. A figure that moved by a few photos with p well
    above 0.05 has not been shown to move.
    """
    from .compare import compare, read_per_photo

    runs = []
    for path in (first, second):
        try:
            runs.append(read_per_photo(path))
        except OSError as exc:
            raise fail(f"{path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise fail(str(exc)) from None
    comparisons = compare(*runs)
    if not comparisons:
        raise fail(f"{first} and {second} share no method and photo: not two runs of the same photos")
    for c in comparisons:
        table = Table(title=f"{c.method}: {first} -> {second}")
        for col in ("measure", "photos", "first", "second", "only first", "only second", "p (McNemar)"):
            table.add_column(col)
        if names:
            table.add_column("photos that changed")
        for ch in c.changes:
            row = [ch.measure, str(ch.photos), str(ch.first), str(ch.second)]
            row += [str(len(ch.only_first)), str(len(ch.only_second)), f"{ch.p_value:.2f}"]
            if names:
                moved = [f"-{p}" for p in ch.only_first[:names]] + [f"+{p}" for p in ch.only_second[:names]]
                row.append(" ".join(moved))
            table.add_row(*row)
        out.print(table)
        out.print(
            f"{c.method}: the same new person on {c.same_person} of the {c.forwarded_both} photos"
            " both runs forwarded",
            highlight=False,
        )
