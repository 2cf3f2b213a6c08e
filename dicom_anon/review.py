"""Review sheets: de-identified photos laid side by side, grouped by patient, for a person to look at
before they become teaching material.

Every photo that leaves has passed the privacy checks, but not every new face looks natural yet
(docs/faces.md, Known weaknesses), and a patient's photos should all show one new face. Both are
things people see at a glance and no measure catches well, so the sheet puts each patient's photos
next to each other, labelled with the file and SOP Instance UID to withdraw a bad one by.

The sheet is meant for de-identified files only: a file whose Patient Identity Removed (0012,0062)
is not YES is never drawn, and neither its Patient ID nor its UIDs are written on the sheet; its
tile says why it is empty, so a stray original among the outputs is noticed instead of shown.
A photo on which no face was replaced (Recognizable Visual Features not NO: an intraoral photo
forwarded without a face, a file de-identified by its headers only) is drawn with an orange
mark, since any face on it is still the patient's.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .dicomio import read_instance
from .headers.errors import Refused
from .pixels.codec import UnsupportedPixels, decode

# Tiles of photos that are not drawn, and the band under each tile that holds its label.
_WITHHELD = (110, 24, 24)
_NOT_PHOTO = (96, 96, 96)
_LABEL_HEIGHT = 44


@dataclass(frozen=True)
class Tile:
    """One file on the sheet: its first frame, or why it is not drawn (``withheld``: something is
    wrong with it; ``not_photo``: a de-identified image that is not a photo, a CT in an export)."""

    source: Path
    patient: str = ""
    uid: str = ""
    image: Image.Image | None = None  # the first frame, already scaled down to the tile
    frames: int = 1
    withheld: str = ""
    not_photo: str = ""
    # Recognizable Visual Features (0028,0302) is NO only where the face pipeline replaced every
    # face; an intraoral photo forwarded without a face, or a headers-only file, says otherwise.
    face_replaced: bool = False
    qa: str = ""  # what the service's audit trail says of how the face was replaced
    name: str = ""  # what the label calls the file (a quarantine item's id); its name if empty


def qa_figures(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """New SOP Instance UID -> the face pipeline's QA figures for it, from the audit trail's
    ``instance_deidentified`` records (the service writes them there, nowhere else)."""
    figures = {}
    for record in records:
        uid = record.get("new_sop_uid")
        qa = (record.get("pixels") or {}).get("qa")
        if record.get("event") == "instance_deidentified" and uid and qa:
            figures[uid] = qa
    return figures


def qa_notes(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """New SOP Instance UID -> the pool photo, oval size and SFace similarity of each face the
    service replaced, from the audit trail's ``instance_deidentified`` records.

    On the sheet beside the photo: a reviewer sees which pool person each of a patient's photos
    was given, and the photos most often flawed (a pool person's selfie, the largest oval,
    docs/faces.md) can be looked at first.
    """
    return {
        uid: "; ".join(_qa_note(face) for face in qa["faces"])
        for uid, qa in qa_figures(records).items()
        if qa.get("faces")
    }


def qa_lines(qa: Mapping[str, Any]) -> list[str]:
    """The QA figures of one photo as a reviewer reads them: per face, who the new face is, how
    far it is from the patient by both recognisers, how far its cheeks' colour moved and what sex
    and age it reads as; then what was kept exactly. The console's tiles and the rules test show
    these lines; the numbers are the audit trail's."""
    lines = []
    for face in qa.get("faces") or []:
        tries = f", {face['attempts']} attempt(s)" if face.get("attempts") else ""
        new = f"new face {face.get('surrogate', '?')} ({face.get('identity', '?')})"
        guess = f", {_sex_guess(face)}" if _sex_guessed(face) else ""
        lines.append(f"{face.get('where', 'face')}: {new}, oval {face.get('oval', '?')}{tries}{guess}")
        checks = [f"SFace similarity to the patient {_number(face.get('identity_similarity'))}"]
        if face.get("second_recognizer_distance") is not None:
            checks.append(f"dlib distance {_number(face['second_recognizer_distance'])}")
        if face.get("skin_delta_e") is not None:
            checks.append(f"cheek colour moved {face['skin_delta_e']} delta E")
        if face.get("read_sex") is not None:
            checks.append(
                f"reads as {face['read_sex']} ({_number(face.get('read_sex_confidence'))}), "
                f"{face.get('read_age_years', '?')} years"
            )
        checks.append("found again" if face.get("face_found") else "NOT found again")
        checks.append(f"preserved area changed by {face.get('preserved_max_abs_diff', '?')}")
        lines.append("  " + ", ".join(checks))
    if not qa.get("faces"):
        return ["no face found: none replaced, the pixels leave as they came"]
    lines.append(
        f"{qa.get('method', '?')}: {qa.get('preserved_pixels', 0)} pixels kept exactly, "
        f"stored copy differs there by {qa.get('stored_preserved_max_abs_diff', '?')}; "
        f"{qa.get('output', '?')}, {qa.get('seconds', '?')} s"
    )
    return lines


def unsure_sex(qa: Mapping[str, Any]) -> str | None:
    """Why a new face on this photo may be of the other sex than the patient, or None.

    A new person is chosen by the patient's sex: the header's, else the face's where the
    estimator is sure. Where it is not, the new person is of the likelier sex (or of either), and
    the triage of issue 20 found a woman's face on a man and a man's on a woman among such photos
    only. A route with ``hold_for_review: unsure-sex`` holds these for a person to look at.
    """
    for face in qa.get("faces") or []:
        if _sex_guessed(face):
            return f"{face.get('where', 'a face')}: no Patient's Sex in the header, and {_sex_guess(face)}"
    return None


def _sex_guessed(face: Mapping[str, Any]) -> bool:
    """Whether the face was given a new person (not blurred) with no sex from header or sure estimate."""
    return bool(face.get("person")) and face.get("sex") is None


def _sex_guess(face: Mapping[str, Any]) -> str:
    if face.get("likely_sex"):
        read = f"the face reads {face['likely_sex']} at only {_number(face.get('likely_sex_confidence'))}"
    else:
        read = f"the face's sex could not be read ({face.get('estimate') or 'no estimate'})"
    return f"{read}: the new face's sex is a guess"


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "?"


def read_tile(path: Path, size: int = 240, qa: Mapping[str, str] | None = None, name: str = "") -> Tile:
    """The tile for one file, its photo scaled to fit ``size`` (a 12 MP frame kept whole would hold
    36 MB per photo of an export), with its ``qa`` note (``qa_notes``) if any and labelled ``name``
    (the file's name if empty); never raises for a bad file, the tile says what is wrong."""
    try:
        ds = read_instance(path)
    except Refused as exc:
        return Tile(path, withheld=f"not readable as DICOM: {exc}", name=name)
    if str(ds.get("PatientIdentityRemoved", "")).strip().upper() != "YES":
        return Tile(
            path, withheld="not de-identified (Patient Identity Removed is not YES): not shown", name=name
        )
    patient, uid = str(ds.get("PatientID", "")), str(ds.get("SOPInstanceUID", ""))
    try:
        frames = decode(ds).frames
    except UnsupportedPixels as exc:
        return Tile(path, patient, uid, not_photo=f"not a photo, not drawn ({exc.reason})", name=name)
    except Refused as exc:
        return Tile(path, patient, uid, withheld=f"pixels not shown: {exc}", name=name)
    replaced = str(ds.get("RecognizableVisualFeatures", "")).strip().upper() == "NO"
    thumbnail = Image.fromarray(frames[0])
    thumbnail.thumbnail((size, size))
    note = (qa or {}).get(uid, "")
    return Tile(path, patient, uid, thumbnail, len(frames), face_replaced=replaced, qa=note, name=name)


def in_review_order(tiles: Iterable[Tile]) -> list[Tile]:
    """Files that could not be drawn first (someone has to look into them), then each patient's
    photos together, by file name within a patient."""
    return sorted(tiles, key=lambda t: (not t.withheld, t.patient, t.name or t.source.name))


def _qa_note(face: dict[str, Any]) -> str:
    """``P003-studio_portrait oval 1.25 SFace 0.21``: short enough for a 240 px tile's label."""
    sface = _number(face.get("identity_similarity"))
    pool_photo = str(face.get("surrogate", "?")).removeprefix("openpeople-")
    return f"{pool_photo} oval {face.get('oval', '?')} SFace {sface}"


def _label(tile: Tile) -> tuple[str, str, str]:
    name = tile.name or tile.source.name
    if tile.withheld or tile.not_photo:
        return name, "not shown (why: above)", ""
    frames = f"  frame 1 of {tile.frames}" if tile.frames > 1 else ""
    kept = "" if tile.face_replaced else "NO FACE REPLACED  "
    return (
        f"{tile.patient or '(no Patient ID)'}  {name}",
        f"{kept}UID ...{tile.uid[-24:]}{frames}",
        tile.qa,
    )


def _draw(tile: Tile, size: int) -> Image.Image:
    cell = Image.new("RGB", (size, size + _LABEL_HEIGHT), "white")
    if tile.image is None:
        cell.paste(_WITHHELD if tile.withheld else _NOT_PHOTO, (0, 0, size, size))
        # PIL draws no wrapped text; the reasons run long.
        reason = "\n".join(textwrap.wrap(tile.withheld or tile.not_photo, width=max(8, size // 7)))
        ImageDraw.Draw(cell).multiline_text((6, 8), reason, fill="white")
    else:
        photo = tile.image
        if max(photo.size) > size:
            photo = photo.copy()
            photo.thumbnail((size, size))
        cell.paste(photo, ((size - photo.width) // 2, (size - photo.height) // 2))
    first, second, third = _label(tile)
    draw = ImageDraw.Draw(cell)
    draw.text((3, size + 2), first[: size // 6], fill="black")
    draw.text((3, size + 28), third[: size // 6], fill="navy")
    draw.text((3, size + 15), second[: size // 6], fill="dimgray" if tile.face_replaced else "darkorange")
    return cell


def sheets(tiles: Sequence[Tile], size: int = 240, columns: int = 5, per_page: int = 30) -> list[Image.Image]:
    """The tiles, in review order, on pages of at most ``per_page``."""
    ordered = in_review_order(tiles)
    pages = []
    for start in range(0, len(ordered), per_page):
        page = ordered[start : start + per_page]
        rows = -(-len(page) // columns)
        width, height = columns * size + (columns - 1) * 4, rows * (size + _LABEL_HEIGHT + 4)
        sheet = Image.new("RGB", (width, height), "white")
        for i, tile in enumerate(page):
            sheet.paste(
                _draw(tile, size), ((i % columns) * (size + 4), (i // columns) * (size + _LABEL_HEIGHT + 4))
            )
        pages.append(sheet)
    return pages


def page_paths(out: Path, pages: int) -> list[Path]:
    """``out`` itself for one page; ``out``'s stem numbered from 1 for more."""
    if pages == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, pages + 1)]


def output_problem(out: Path) -> str | None:
    """Why the sheet cannot be written to ``out``, checked before any photo is read."""
    if out.suffix.lower() != ".png":
        return f"-o {out}: the sheet is a PNG; give a name ending in .png"
    if not out.parent.is_dir():
        return f"cannot write {out}: there is no folder {out.parent}"
    return None


def save_sheets(tiles: Sequence[Tile], out: Path, size: int, columns: int, per_page: int) -> list[Path]:
    """The tiles' pages written to ``out`` (numbered when more than one); OSError if one cannot be."""
    pages = sheets(tiles, size=size, columns=columns, per_page=per_page)
    paths = page_paths(out, len(pages))
    for page, path in zip(pages, paths, strict=True):
        page.save(path)
    return paths
