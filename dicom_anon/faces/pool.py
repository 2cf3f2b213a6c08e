"""The surrogate pool: synthetic (or consented) faces that lend their features, with what we know of them.

``build`` turns a source (the ``openpeople`` package, or a folder a site supplies) into
``models/surrogates/``: one cropped JPEG per usable photo plus ``manifest.json`` with
landmarks, pose, measured skin tone, sex and age band (as the source states them, else
estimated from the photos), an SFace identity embedding, and source, licence and
checksums. ``load`` reads it back and refuses files whose checksum does not match, so a
swapped picture cannot slip in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .attributes import AttributesRefused, ModelsError, estimate
from .detect import Face, FaceDetector
from .embed import SFACE_SAME_PERSON, Recognizer, cosine, model_checksums
from .masks import TEMPLATE, TEMPLATE_EYE_DISTANCE, apply, ellipse, invert, similarity

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "models" / "surrogates"
MANIFEST = "manifest.json"
FORMAT = 1

# Surrogate crops are stored with this eye distance (px) at most: enough detail for a face
# ~3x larger in a 12 MP photo after upscaling, small enough to keep the pool a few MB.
_EYE_DISTANCE = 180.0
_CROP_EYE_DISTANCES = 4.6
_MAX_POOL_YAW = 20.0
_OPENPEOPLE_ASSETS = ("studio_portrait", "amateur_selfie")

# A pool person whose age band ends below this is a child: given to children only.
ADULT_AGE_YEARS = 18.0
# Fewer people than this of one sex: patients of that sex share new faces often and are refused
# more (docs/faces.md, consistency: ten people gave 50% different-person separation, 76 gave 86%).
FEW_PEOPLE_PER_SEX = 50

# An estimated age becomes a band this many years either side (the stated bands of openpeople
# are ten years wide; the estimator is within a few years on adults).
_ESTIMATED_AGE_HALF_BAND = 5

# Two cheek patches (template units), away from eyes, nose, mouth and beard line.
_CHEEKS = ((33.0, 74.0), (79.0, 74.0))
_CHEEK_RADIUS = 6.5

# Relit to the patient, a pool photo is multiplied channel by channel by the ratio of the two skins
# (blend.relight). Darkening looks natural at any ratio; brightening by more than this in any
# channel washed the new face out: highlights clipped flat white, the photo's colour casts came up
# with it. On the 217 evaluation faces the five fair, pale patients given a much darker pool photo
# needed 1.94-2.46 in blue and all five looked wrong; at 1.85 and below they looked natural.
MAX_SKIN_GAIN = 1.9
# A fair, pale cheek (CIELAB; the palest of the 217 evaluation faces): a pool whose people of a
# sex are all too dark to be relit to it holds such patients' photos.
FAIR_SKIN_LAB = (85.0, 8.0, 9.0)


class PoolError(Exception):
    """The pool is missing, unreadable or fails its checksums; the message says how to rebuild it."""


def skin_lab(rgb: np.ndarray, face: Face) -> np.ndarray:
    """Median CIELAB (L 0-100) of both cheeks: the skin tone the surrogate should match."""
    to_img = invert(similarity(face.landmarks, TEMPLATE))
    radius = max(1, round(_CHEEK_RADIUS * face.eye_distance / TEMPLATE_EYE_DISTANCE))
    centres = np.round(apply(to_img, np.array(_CHEEKS))).astype(int)
    # The cheeks only, not a mask of the whole photo: on 12 MP that took 28 ms, once per render.
    h, w = rgb.shape[:2]
    x0, y0 = np.clip(centres.min(axis=0) - radius, 0, [w, h])
    x1, y1 = np.clip(centres.max(axis=0) + radius + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return np.array([50.0, 0.0, 0.0])
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for cx, cy in centres:
        cv2.circle(mask, (int(cx - x0), int(cy - y0)), radius, 1, -1)
    pix = rgb[y0:y1, x0:x1][mask.astype(bool)]
    if len(pix) == 0:
        return np.array([50.0, 0.0, 0.0])
    lab = cv2.cvtColor(pix[None].astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[0]
    return np.median(lab, axis=0).astype(np.float64)


def skin_gain(patient_lab: np.ndarray, surrogate_lab: np.ndarray) -> float:
    """The largest factor, over R, G and B, that relighting multiplies the surrogate's skin by to
    reach the patient's (both CIELAB, L 0-100)."""
    rgb = cv2.cvtColor(np.array([[patient_lab, surrogate_lab]], np.float32), cv2.COLOR_LAB2RGB)[0]
    return float((rgb[0] / np.maximum(rgb[1], 0.02)).max())


def skin_mask(rgb: np.ndarray, tone: np.ndarray, light: float = 35.0, chroma: float = 16.0) -> np.ndarray:
    """float32 1 where a pixel's CIELAB is near the measured cheek ``tone``: within ``chroma`` in
    a*b* and ``light`` in L* (lightness varies with shading far more than hue). Skin, as opposed
    to hair, glasses, brows or background."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    t = tone.astype(np.float32)
    # Squared a*b* distance in float32: np.linalg.norm in float64 took 3/4 of the time on a
    # full-resolution face.
    d_a, d_b = lab[..., 1] - t[1], lab[..., 2] - t[2]
    near = (np.abs(lab[..., 0] - t[0]) < light) & (d_a * d_a + d_b * d_b < chroma * chroma)
    return near.astype(np.float32)


# Where a beard grows (template units): the chin, both jaw corners and the upper lip.
_BEARD = (
    ellipse(56.0, 108.0, 16.0, 6.0),
    ellipse(33.0, 100.0, 6.0, 7.0),
    ellipse(79.0, 100.0, 6.0, 7.0),
    ellipse(56.0, 84.5, 10.0, 2.5),
)


def beard_cover(rgb: np.ndarray, landmarks: np.ndarray, tone: np.ndarray) -> float:
    """Share of where a beard grows that is not skin of the cheeks' ``tone``: about 1 for a full
    beard, 0.1-0.5 for a shaven face (shading and light move it)."""
    to_img = similarity(TEMPLATE, landmarks)
    polys = [apply(to_img, poly) for poly in _BEARD]
    # Only the pixels round the chin are converted: the whole of a 12 MP photo took 0.7 s.
    x0, y0 = np.floor(np.min([p.min(axis=0) for p in polys], axis=0)).astype(int).clip(0)
    x1, y1 = np.ceil(np.max([p.max(axis=0) for p in polys], axis=0)).astype(int) + 1
    crop = rgb[y0:y1, x0:x1]
    if crop.size == 0:
        return 0.0
    area = np.zeros(crop.shape[:2], np.uint8)
    for poly in polys:
        cv2.fillPoly(area, [np.round(poly - [x0, y0]).astype(np.int32)], 1)
    inside = area.astype(bool)
    if not inside.any():
        return 0.0
    return float(1.0 - skin_mask(crop[inside][None], tone, light=25.0, chroma=12.0).mean())


def _sex(text: str | None) -> str | None:
    t = (text or "").strip().lower()
    return {"female": "F", "f": "F", "woman": "F", "male": "M", "m": "M", "man": "M"}.get(t)


def _age_band(text: str | None) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d{1,3})\s*[-–]\s*(\d{1,3})\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Surrogate:
    """One pool photo. ``person`` groups photos of the same synthetic identity."""

    id: str
    person: str
    path: Path
    sha256: str
    landmarks: np.ndarray
    yaw: float
    skin_lab: np.ndarray
    embedding: np.ndarray
    sex: str | None = None
    age_band: tuple[int, int] | None = None
    source: str = ""
    licence: str = ""
    estimated: tuple[str, ...] = ()  # which of sex, age_band the builder estimated

    @cached_property
    def image(self) -> np.ndarray:
        return np.asarray(Image.open(self.path).convert("RGB"))

    @cached_property
    def beard(self) -> float:
        return beard_cover(self.image, self.landmarks, self.skin_lab)


@dataclass(frozen=True)
class Pool:
    """All surrogates of one built pool directory."""

    root: Path
    surrogates: tuple[Surrogate, ...]
    info: dict = field(default_factory=dict)

    def people(self) -> dict[str, list[Surrogate]]:
        out: dict[str, list[Surrogate]] = {}
        for s in self.surrogates:
            out.setdefault(s.person, []).append(s)
        return out


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Why a crop would paste badly (crop, its landmarks, cheek tone, where it shows the source
# photo), or None: the pipeline's check, passed in so this module need not import it.
PhotoCheck = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], str | None]


class PhotoSkipped(ValueError):
    """Why a photo cannot lend its face (several faces, turned away, a fringe over the forehead)."""


@dataclass(frozen=True)
class Cropped:
    """A photo's one face, cropped and scaled the way surrogates are stored, and measured."""

    image: np.ndarray
    face: Face  # in the crop's pixels
    yaw: float  # measured on the whole photo
    skin_lab: np.ndarray


def crop_face(
    rgb: np.ndarray, detector: FaceDetector, check: PhotoCheck | None = None, detect_side: int | None = None
) -> Cropped:
    """The photo's one frontal face as a surrogate crop (eyes at most ``_EYE_DISTANCE`` apart);
    ``PhotoSkipped`` says why not. Pool photos and generated faces both go through it.

    ``detect_side``: find the face on a copy this many pixels on its longer side, for photos
    whose face is known to fill much of the frame (a generated face: MTCNN took 1-3 s on the
    1024 px image, a tenth of that at 384 px).
    """
    scale = 1.0 if detect_side is None else min(1.0, detect_side / max(rgb.shape[:2]))
    if scale < 1.0:
        small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = [Face(f.box / scale, f.landmarks / scale, f.score) for f in detector.detect([small])[0]]
    else:
        faces = detector.detect([rgb])[0]
    if len(faces) != 1:
        raise PhotoSkipped(f"{len(faces)} faces found, need exactly one")
    face = faces[0]
    if abs(face.yaw) > _MAX_POOL_YAW:
        raise PhotoSkipped(f"turned {face.yaw:.0f} degrees, pool faces must be frontal")
    scale = min(1.0, _EYE_DISTANCE / face.eye_distance)
    side = round(_CROP_EYE_DISTANCES * face.eye_distance * scale)
    centre = face.landmarks.mean(axis=0)
    # Crop and scale in one affine warp; outside the photo is reflected, never black.
    m = np.array([[scale, 0, side / 2 - scale * centre[0]], [0, scale, side / 2 - scale * centre[1]]])
    crop = cv2.warpAffine(rgb, m, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    lms = apply(m, face.landmarks)
    moved = Face(box=np.r_[apply(m, face.box.reshape(2, 2)).reshape(-1)], landmarks=lms, score=face.score)
    tone = skin_lab(crop, moved)
    if check is not None:
        shown = np.ones(rgb.shape[:2], np.uint8)
        inside = cv2.warpAffine(shown, m, (side, side), flags=cv2.INTER_NEAREST)
        problem = check(crop, lms, tone, inside.astype(bool))
        if problem:
            raise PhotoSkipped(problem)
    return Cropped(crop, moved, face.yaw, tone)


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
                "sha256": _sha256(out_dir / name),
                "source": src.source,
                "source_sha256": _sha256(src.path),
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


def load(root: Path = DEFAULT_POOL) -> Pool:
    """Read and verify a built pool."""
    root = Path(root)
    path = root / MANIFEST
    hint = "run: dicom-anon models build-surrogates " + (
        "--from openpeople" if root == DEFAULT_POOL else f"--from DIR --licence TEXT -o {root}"
    )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path}: cannot read the surrogate pool ({exc}); {hint}") from None
    if manifest.get("format") != FORMAT:
        raise PoolError(f"{path}: pool format {manifest.get('format')} is not {FORMAT}; {hint}")
    surrogates = []
    for e in manifest["surrogates"]:
        file = root / e["file"]
        if not file.is_file() or _sha256(file) != e["sha256"]:
            raise PoolError(f"{file}: missing or checksum mismatch against the manifest; {hint}")
        surrogates.append(
            Surrogate(
                id=e["id"],
                person=e["person"],
                path=file,
                sha256=e["sha256"],
                landmarks=np.array(e["landmarks"], np.float64),
                yaw=float(e["yaw"]),
                skin_lab=np.array(e["skin_lab"], np.float64),
                embedding=np.array(e["embedding"], np.float64),
                sex=e.get("sex"),
                age_band=tuple(e["age_band"]) if e.get("age_band") else None,
                source=e.get("source", ""),
                licence=e.get("licence", ""),
                estimated=tuple(e.get("estimated", ())),
            )
        )
    if not surrogates:
        raise PoolError(f"{path}: the pool is empty; {hint}")
    return Pool(root=root, surrogates=tuple(surrogates), info={"sources": manifest.get("sources", [])})


def child_band(band: tuple[int, int] | None) -> bool:
    """A pool person whose stated or estimated age band ends before adulthood."""
    return band is not None and band[1] < ADULT_AGE_YEARS


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


@lru_cache(maxsize=4)
def get_pool(root: str = str(DEFAULT_POOL)) -> Pool:
    return load(Path(root))
