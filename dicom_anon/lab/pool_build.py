"""Building a surrogate pool and looking it over: ``dicom-anon models build-surrogates`` and
``models check-pool``.

``build`` turns a source (the ``openpeople`` package, or a folder a site supplies) into
``models/surrogates/``: one cropped JPEG per usable photo plus ``manifest.json`` with landmarks,
pose, measured skin tone, sex and age band (as the source states them, else estimated from the
photos), an SFace identity embedding, and source, licence and checksums; the service only reads
it back (``faces.pool.load``). ``report`` and ``contact_sheet`` say what a records officer should
know about a pool before a route uses it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..faces.attributes import AttributesRefused, ModelsError, estimate
from ..faces.detect import FaceDetector
from ..faces.embed import SFACE_SAME_PERSON, Recognizer, cosine, model_checksums
from ..faces.pool import (
    FORMAT,
    MANIFEST,
    MAX_SKIN_GAIN,
    PhotoCheck,
    PhotoSkipped,
    Pool,
    child_band,
    crop_face,
    file_sha256,
    skin_gain,
)

_OPENPEOPLE_ASSETS = ("studio_portrait", "amateur_selfie")

# Fewer people than this of one sex: patients of that sex share new faces often and are refused
# more (docs/faces.md, consistency: ten people gave 50% different-person separation, 76 gave 86%).
FEW_PEOPLE_PER_SEX = 50

# An estimated age becomes a band this many years either side (the stated bands of openpeople
# are ten years wide; the estimator is within a few years on adults).
_ESTIMATED_AGE_HALF_BAND = 5

# A fair, pale cheek (CIELAB; the palest of the 217 evaluation faces): a pool whose people of a
# sex are all too dark to be relit to it holds such patients' photos.
FAIR_SKIN_LAB = (85.0, 8.0, 9.0)


def _sex(text: str | None) -> str | None:
    t = (text or "").strip().lower()
    return {"female": "F", "f": "F", "woman": "F", "male": "M", "m": "M", "man": "M"}.get(t)


def _age_band(text: str | None) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d{1,3})\s*[-–]\s*(\d{1,3})\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class SourceImage:
    """A photo offered to the pool builder, with what its source says about the person."""

    path: Path
    person: str
    sex: str | None
    age_band: tuple[int, int] | None
    source: str
    licence: str


def openpeople_sources() -> Iterator[SourceImage]:
    """The frontal photos of the ``openpeople`` package (10 synthetic people, MIT)."""
    import importlib.metadata

    import openpeople

    version = importlib.metadata.version("openpeople")
    for person in openpeople.curated.list():
        demo = person.demographics
        for key in _OPENPEOPLE_ASSETS:
            yield SourceImage(
                path=Path(person.asset_path(key)),
                person=f"openpeople-{person.person_id}",
                sex=_sex(demo.sex if demo else None),
                age_band=_age_band(demo.age_range if demo else None),
                source=f"openpeople {version} {person.person_id}/{key}",
                licence="MIT (openpeople, Copyright (c) 2026 Prompt Haus)",
            )


def folder_sources(folder: Path, licence: str) -> Iterator[SourceImage]:
    """Photos in ``folder``: each subfolder is one person (optional ``metadata.json`` with
    ``sex`` and ``age_range``); a photo directly in ``folder`` is a person of its own."""
    exts = {".jpg", ".jpeg", ".png", ".webp"}
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts):
        rel = path.relative_to(folder)
        person_dir = folder / rel.parts[0] if len(rel.parts) > 1 else None
        meta: dict = {}
        if person_dir is not None and (person_dir / "metadata.json").is_file():
            meta = json.loads((person_dir / "metadata.json").read_text())
        name = rel.parts[0] if person_dir is not None else path.stem
        yield SourceImage(
            path=path,
            person=f"{folder.name}-{name}",
            sex=_sex(meta.get("sex")),
            age_band=_age_band(meta.get("age_range")),
            source=f"{folder.name}/{rel.as_posix()}",
            licence=licence,
        )


def build(
    sources: Iterable[SourceImage],
    out_dir: Path,
    detector: FaceDetector,
    recognizer: Recognizer,
    check: PhotoCheck | None = None,
) -> tuple[list[dict], list[str]]:
    """Crop, measure and embed every usable source photo into ``out_dir``; return entries and notes.

    Sex and age band come from the source where it states them; where it does not (a site's
    folder of faces without ``metadata.json``), they are estimated from the photos, so the
    choice can still keep a bearded man's face away from a woman and an old face from a young one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, notes = [], []
    estimates: dict[str, list[dict]] = {}
    estimating = True
    for src in sources:
        try:
            rgb = np.asarray(Image.open(src.path).convert("RGB"))
        except OSError as exc:  # PIL's UnidentifiedImageError included
            notes.append(f"skipped {src.source}: not a readable image ({exc})")
            continue
        try:
            c = crop_face(rgb, detector, check)
        except PhotoSkipped as exc:
            notes.append(f"skipped {src.source}: {exc}")
            continue
        crop, moved, lms, tone = c.image, c.face, c.face.landmarks, c.skin_lab
        sid = f"{src.person}-{src.path.stem}"
        name = f"{sid}.jpg"
        Image.fromarray(crop).save(out_dir / name, quality=93, subsampling=0)
        if estimating and (src.sex is None or src.age_band is None):
            try:
                guess = estimate(crop, moved)
            except AttributesRefused as exc:
                notes.append(f"{src.source}: sex and age not estimated ({exc})")
            except ModelsError as exc:
                notes.append(f"sex and age not estimated for any photo: {exc}")
                estimating = False
            else:
                estimates.setdefault(src.person, []).append(
                    {"sex": guess.trusted_sex(), "age_years": round(guess.age_years, 1)}
                )
        entries.append(
            {
                "id": sid,
                "person": src.person,
                "file": name,
                "sha256": file_sha256(out_dir / name),
                "source": src.source,
                "source_sha256": file_sha256(src.path),
                "licence": src.licence,
                "sex": src.sex,
                "age_band": list(src.age_band) if src.age_band else None,
                "landmarks": np.round(lms, 2).tolist(),
                "yaw": round(c.yaw, 2),
                "skin_lab": np.round(tone, 2).tolist(),
                "embedding": np.round(recognizer.embed(crop, moved), 6).tolist(),
            }
        )
    for entry in entries:
        _fill_estimates(entry, estimates.get(entry["person"], []))
    return entries, notes


def _fill_estimates(entry: dict, guesses: list[dict]) -> None:
    """Sex and age band the source left open, settled per person over all of their photos: a
    sex only where every confident estimate agrees, the band around the median age. The
    entry says which of its fields are estimates, so a records officer can see and override them."""
    estimated = []
    sexes = {g["sex"] for g in guesses if g["sex"]}
    if entry["sex"] is None and len(sexes) == 1:
        entry["sex"] = sexes.pop()
        estimated.append("sex")
    if entry["age_band"] is None and guesses:
        age = round(float(np.median([g["age_years"] for g in guesses])))
        entry["age_band"] = [max(0, age - _ESTIMATED_AGE_HALF_BAND), age + _ESTIMATED_AGE_HALF_BAND]
        estimated.append("age_band")
    if estimated:
        entry["estimated"] = estimated


def write_manifest(out_dir: Path, entries: list[dict], sources: list[str]) -> Path:
    manifest = {
        "format": FORMAT,
        "sources": sources,
        "models": model_checksums(),
        "surrogates": sorted(entries, key=lambda e: e["id"]),
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class PoolReport:
    """What a records officer should know about a pool before a route uses it."""

    people: int
    photos: int
    sexes: dict[str, int]  # "F", "M", and "?" for neither stated nor confidently estimated
    children: int
    estimated: int  # people with a sex or age band the builder estimated
    look_alikes: list[tuple[str, str, float]]  # person pairs SFace calls the same, closest first
    # Per sex ("F", "M"), the least any of its photos must be brightened to reach FAIR_SKIN_LAB.
    fair_gain: dict[str, float] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        notes = []
        for sex, word in (("F", "women"), ("M", "men")):
            if self.sexes.get(sex, 0) < FEW_PEOPLE_PER_SEX:
                notes.append(
                    f"{self.sexes.get(sex, 0)} {word}: patients of that sex will often share a new face, "
                    f"and more of them are held as look-alikes; aim for {FEW_PEOPLE_PER_SEX} or more"
                )
        if self.sexes.get("?", 0):
            notes.append(
                f"{self.sexes['?']} people of unknown sex are offered to patients of either sex; "
                "state it in a metadata.json beside their photos"
            )
        if not self.children:
            notes.append("no children: photos of child patients are held (no-surrogate)")
        for sex, word in (("F", "woman"), ("M", "man")):
            if self.fair_gain.get(sex, 0.0) > MAX_SKIN_GAIN:
                notes.append(
                    f"no {word} light-skinned enough for a fair, pale patient (the lightest would need "
                    f"{self.fair_gain[sex]:.1f}x brightening, the limit is {MAX_SKIN_GAIN}): such photos "
                    "are held (no-surrogate); add people with lighter skin"
                )
        if self.look_alikes:
            notes.append(
                f"{len(self.look_alikes)} pairs of people look alike to the recogniser (SFace >= "
                f"{SFACE_SAME_PERSON}): two patients given them can come out as one person; keep one of each"
            )
        return notes


def report(pool: Pool) -> PoolReport:
    """Counts by sex and age, and the pairs of people the recogniser cannot tell apart.

    A pair counts when any photo of one is within ``SFACE_SAME_PERSON`` of any photo of the
    other: different patients given those two came out as one person in the consistency test.
    """
    people = pool.people()
    first = {person: photos[0] for person, photos in people.items()}
    sexes: dict[str, int] = {}
    for s in first.values():
        sexes[s.sex or "?"] = sexes.get(s.sex or "?", 0) + 1
    names = sorted(people)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sim = max(cosine(x.embedding, y.embedding) for x in people[a] for y in people[b])
            if sim >= SFACE_SAME_PERSON:
                pairs.append((a, b, round(sim, 3)))
    return PoolReport(
        people=len(people),
        photos=len(pool.surrogates),
        sexes=sexes,
        children=sum(child_band(s.age_band) for s in first.values()),
        estimated=sum(bool(s.estimated) for s in first.values()),
        look_alikes=sorted(pairs, key=lambda p: -p[2]),
        fair_gain={
            sex: min(skin_gain(np.array(FAIR_SKIN_LAB), s.skin_lab) for s in pool.surrogates if s.sex == sex)
            for sex in ("F", "M")
            if any(s.sex == sex for s in pool.surrogates)
        },
    )


def contact_sheet(pool: Pool, path: Path, size: int = 160, columns: int = 8) -> Path:
    """Every pool photo as a labelled thumbnail (person, sex, age band; ``~`` marks an estimate),
    for looking the pool over before going live: hair over a face, closed eyes, odd light."""
    rows = -(-len(pool.surrogates) // columns)
    label = 28
    sheet = Image.new("RGB", (columns * size, rows * (size + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(pool.surrogates):
        x, y = (i % columns) * size, (i // columns) * (size + label)
        thumb = Image.open(s.path).convert("RGB")
        thumb.thumbnail((size, size))
        sheet.paste(thumb, (x, y))
        sex = ("~" if "sex" in s.estimated else "") + (s.sex or "?")
        band = "?" if s.age_band is None else f"{s.age_band[0]}-{s.age_band[1]}"
        age = ("~" if "age_band" in s.estimated else "") + band
        draw.text((x + 3, y + size + 2), f"{s.person[-18:]}\n{sex}  {age}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
