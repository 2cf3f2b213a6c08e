"""``dicom-anon eval``: how well each method hides identity while keeping the clinical area and skin.

Each input image is its own patient. For every method we run the same pipeline the
service runs (the surrogate method with its QA gate, so refusals count as refusals;
the baselines ungated, since they are shown only for comparison) and measure:
face found again (MTCNN and YuNet), re-identification (SFace cosine >= 0.363 against
the original), rank-1 identification against the whole gallery of originals, both again
with a second recogniser (dlib, ``judge``; also a QA gate unless ``second_recognizer`` is
off, and the table then says so), with the rate at which it takes two different originals
for one person as its chance level, how often the outputs of two different patients are
told apart (against the same for their originals), preserved-area max abs difference,
skin colour drift (CIELAB delta E of the cheeks, the new face against the patient's, which
the QA gate also limits; and of the median over all the patient's skin that was replaced, which
it does not) and seconds per image. The attacker aligns on the
face YuNet finds in the output, or on the original landmarks when it finds none.
"""

from __future__ import annotations

import csv
import hashlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..config import PixelSettings
from ..faces.detect import Face, FaceDetector
from ..faces.embed import SFACE_SAME_PERSON, cosine
from ..faces.generated import split_reasons
from ..faces.identities import InMemoryIdentities
from ..faces.judge import DLIB_SAME_PERSON, distance, get_judge
from ..faces.masks import TEMPLATE, paint, similarity
from ..faces.person_codes import base_person
from ..faces.pipeline import FacePipeline, Patient
from ..faces.pool import skin_lab, skin_mask
from ..faces.prepare import FEATURES, LIPS
from ..faces.qa import iou, skin_change
from ..faces.replace import BASELINES
from ..headers.errors import Refused
from ..headers.pseudonyms import SiteKey

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DICOM_EXTS = {".dcm", ""}
# Every evaluation uses the same key so that its figures can be reproduced exactly.
EVAL_KEY = SiteKey(hashlib.sha256(b"dicom-anon evaluation key").digest())


@dataclass(frozen=True)
class EvalImage:
    stem: str
    rgb: np.ndarray
    person: str  # same-person pairs share it


def _load_path(path: Path) -> np.ndarray | None:
    if path.suffix.lower() in IMAGE_EXTS:
        return np.asarray(Image.open(path).convert("RGB"))
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..pixels import decode

    try:
        ds = pydicom.dcmread(path)
        return decode(ds).frames[0]
    except (InvalidDicomError, Refused, OSError):
        return None


# Every openpeople photo of a person that shows one frontal face large enough to replace:
# the portrait, the selfie, the two full-length photos (eyes ~90 px apart) and one tile of
# each sheet (the sheets' other tiles are turned heads or strong expressions).
CONSISTENCY_ASSETS = (
    "studio_portrait",
    "amateur_selfie",
    "studio_posture",
    "amateur_posture",
    "character_sheet",
    "emotions_sheet",
)
# Sheets whose top-left tile is used: "Front View" of the character sheet, "Neutral" of the
# emotions sheet. The tile grids differ between people, so the tile is found by its face.
_SHEETS = frozenset({"character_sheet", "emotions_sheet"})


def _top_left_tile(rgb: np.ndarray, detector: FaceDetector) -> np.ndarray | None:
    """A square crop around the sheet's top-left face (1.6 face heights wide), or None without faces."""
    faces = detector.detect([rgb])[0]
    if not faces:
        return None
    face = min(faces, key=lambda f: f.box[0] + f.box[1])
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    half = 0.8 * max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    h, w = rgb.shape[:2]
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    return np.ascontiguousarray(rgb[y0 : int(min(h, cy + half)), x0 : int(min(w, cx + half))])


def openpeople_images(
    assets: Sequence[str] = ("studio_portrait",), detector: FaceDetector | None = None
) -> Iterator[EvalImage]:
    """The openpeople photos named by ``assets`` (stems ``P001_studio_portrait``...); sheet
    assets (see ``CONSISTENCY_ASSETS``) need ``detector`` to find their tile."""
    import openpeople

    for person in openpeople.curated.list():
        for asset in assets:
            rgb = np.asarray(Image.open(person.asset_path(asset)).convert("RGB"))
            if asset in _SHEETS:
                if detector is None:
                    raise ValueError(f"openpeople asset {asset!r} needs a face detector to cut its tile")
                tile = _top_left_tile(rgb, detector)
                if tile is None:
                    continue
                rgb = tile
            yield EvalImage(f"{person.person_id}_{asset}", rgb, person.person_id)


def collect(inputs: Iterable[str], limit: int | None = None, skip: int = 0) -> list[EvalImage]:
    """Images from files, folders (recursively) and the word ``openpeople`` (its ten portraits).

    ``skip`` passes over a folder's first images (in name order) before ``limit`` counts, so that a
    setting tuned on a folder's first hundred can be judged on the photos after them."""
    images: list[EvalImage] = []
    for item in inputs:
        if item == "openpeople":
            images.extend(openpeople_images())
            continue
        path = Path(item)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.is_dir():
            files = [f for f in files if f.suffix.lower() in IMAGE_EXTS | DICOM_EXTS][skip:]
        taken = 0
        for f in files:
            if f.suffix.lower() not in IMAGE_EXTS | DICOM_EXTS:
                continue
            rgb = _load_path(f)
            if rgb is not None:
                images.append(EvalImage(f.stem, rgb, f.stem))
                taken += 1
            if limit and taken >= limit:
                break
    return images


@dataclass
class Outcome:
    """One image through one method."""

    stem: str
    output: np.ndarray | None = None
    preserved: np.ndarray | None = None
    replaced: np.ndarray | None = None
    refused: str | None = None
    seconds: float = 0.0
    mtcnn_found: bool = False
    yunet_found: bool = False
    similarity: float | None = None
    rank1: bool = False
    judge_distance: float | None = None
    judge_rank1: bool = False
    preserved_diff: int = 0
    delta_e: float | None = None
    face_delta_e: float | None = None
    attempts: int = 0
    surrogate: str | None = None
    # Who is in the image (``EvalImage.person``) and SFace's embedding of the output's face.
    person: str = ""
    probe: np.ndarray | None = None


def rate(k: int, n: int, z: float = 1.96) -> str:
    """``k`` of ``n`` as a percentage with its 95% Wilson score interval, e.g. "5.7% [2.5-12.8]".

    Wilson's rather than the normal approximation because the shares that matter here are near
    0 (rank-1, re-identification), where the normal interval reaches below zero. Written out (a
    few lines) rather than taken from SciPy or statsmodels, which nothing else here needs.
    """
    if n == 0:
        return "-"
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return f"{100 * p:.1f}% [{100 * max(0.0, centre - half):.1f}-{100 * min(1.0, centre + half):.1f}]"


@dataclass(frozen=True)
class Gallery:
    """The originals every output is compared with, under both recognisers."""

    sface: list[tuple[str, np.ndarray]]
    judge: list[tuple[str, np.ndarray]]

    def judge_chance(self) -> float:
        """Share of pairs of different originals the judge takes for one person: what its
        re-identification rate would be if the outputs were strangers."""
        vecs = np.stack([v for _, v in self.judge]) if len(self.judge) > 1 else None
        if vecs is None:
            return 0.0
        apart = np.linalg.norm(vecs[:, None] - vecs[None], axis=2)[np.triu_indices(len(vecs), 1)]
        return float(np.mean(apart < DLIB_SAME_PERSON))


@dataclass
class MethodReport:
    method: str
    gallery: Gallery
    outcomes: list[Outcome] = field(default_factory=list)
    # The route's second_recognizer made dlib a gate too: its figures are no longer unseen.
    judge_gated: bool = False

    def _refused(self) -> str:
        codes = Counter(o.refused for o in self.outcomes if o.refused)
        detail = ", ".join(f"{c} {n}" for c, n in codes.most_common())
        return rate(sum(codes.values()), len(self.outcomes)) + (f" ({detail})" if detail else "")

    def _apart(self) -> str:
        """Share of pairs of different patients whose outputs SFace tells apart (< 0.363), beside
        the same share for their originals.

        The consistency test's different-person figure uses openpeople, whose ten people are
        also the default pool; here every input is its own patient and none is in the pool,
        so this is the same question asked the way a clinic's patients would.
        """
        originals = dict(self.gallery.sface)
        done = [o for o in self.outcomes if o.probe is not None and o.stem in originals]
        if len(done) < 2:
            return "-"
        upper = np.triu_indices(len(done), 1)
        people = np.array([o.person for o in done])
        different = people[upper[0]] != people[upper[1]]
        if not different.any():
            return "-"

        def apart(vectors: list[np.ndarray]) -> float:
            m = np.stack(vectors)
            return 100 * float(np.mean((m @ m.T)[upper][different] < SFACE_SAME_PERSON))

        outputs = apart([o.probe for o in done])
        return f"{outputs:.1f}% (originals {apart([originals[o.stem] for o in done]):.1f}%)"

    def row(self) -> dict[str, str]:
        """The table's row. Shares of photos carry their 95% interval in brackets: on a hundred
        photos one photo is a point, and runs that differ by three or four photos differ by chance."""
        done = [o for o in self.outcomes if o.output is not None]
        n = max(1, len(done))
        de = [o.delta_e for o in done if o.delta_e is not None]
        face_de = [o.face_delta_e for o in done if o.face_delta_e is not None]
        judged = [o for o in done if o.judge_distance is not None]
        size = max(1, len(self.gallery.sface))
        return {
            "method": self.method,
            "images": str(len(self.outcomes)),
            "refused": self._refused(),
            "face found MTCNN": f"{100 * sum(o.mtcnn_found for o in done) / n:.1f}%",
            "face found YuNet": f"{100 * sum(o.yunet_found for o in done) / n:.1f}%",
            "re-ID (SFace>=0.363)": rate(
                sum((o.similarity or 0) >= SFACE_SAME_PERSON for o in done), len(done)
            ),
            "rank-1": f"{rate(sum(o.rank1 for o in done), len(done))} (chance {100 / size:.1f}%)",
            f"re-ID (dlib<{DLIB_SAME_PERSON})": (
                f"{rate(sum(o.judge_distance < DLIB_SAME_PERSON for o in judged), len(judged))} "
                f"(chance {100 * self.gallery.judge_chance():.1f}%{'; gated' if self.judge_gated else ''})"
            ),
            "rank-1 (dlib)": (
                f"{rate(sum(o.judge_rank1 for o in judged), len(judged))} "
                f"(chance {100 / max(1, len(self.gallery.judge)):.1f}%)"
            ),
            "different patients apart": self._apart(),
            "preserved max diff": str(max((o.preserved_diff for o in done), default=0)),
            "skin dE median/p95": _median_p95(de),
            "face skin dE median/p95": _median_p95(face_de),
            "s/image": f"{statistics.mean(o.seconds for o in self.outcomes):.2f}" if self.outcomes else "-",
        }


class Evaluator:
    """Runs methods over a set of images and measures them."""

    def __init__(self, settings: PixelSettings, methods: Sequence[str]) -> None:
        self.settings = settings
        self.pipelines: dict[str, FacePipeline] = {}
        for m in methods:
            self.pipelines[m] = FacePipeline(settings, method=m, gate=m not in BASELINES)
        first = next(iter(self.pipelines.values()))
        self.detector, self.recognizer = first.detector, first.recognizer
        self.judge = get_judge()
        # Each method remembers the new person of every patient, as the service's store does:
        # generated people are kept apart from those of the patients before.
        self.memories = {m: InMemoryIdentities() for m in methods}

    def _face(self, rgb: np.ndarray) -> Face | None:
        faces = self.detector.detect([rgb])[0]
        return faces[0] if faces else None

    def run(
        self, images: Sequence[EvalImage], progress: Callable[[str, str], None] | None = None
    ) -> tuple[dict[str, MethodReport], dict[str, tuple[Face | None, np.ndarray | None]]]:
        originals: dict[str, tuple[Face | None, np.ndarray | None]] = {}
        judged: list[tuple[str, np.ndarray]] = []
        for img in images:
            face = self._face(img.rgb)
            originals[img.stem] = (face, self.recognizer.embed(img.rgb, face) if face else None)
            if face is not None:
                judged.append((img.stem, self.judge.describe(img.rgb, face)))
        gallery = Gallery([(s, e) for s, (_, e) in originals.items() if e is not None], judged)
        reports = {}
        for method, pipeline in self.pipelines.items():
            report = MethodReport(method, gallery, judge_gated=pipeline.judge is not None)
            for img in images:
                if progress:
                    progress(method, img.stem)
                report.outcomes.append(self._one(pipeline, img, originals[img.stem], gallery))
            reports[method] = report
        return reports, originals

    def _one(
        self,
        pipeline: FacePipeline,
        img: EvalImage,
        original: tuple[Face | None, np.ndarray | None],
        gallery: Gallery,
    ) -> Outcome:
        face, emb = original
        outcome = Outcome(img.stem, person=img.person)
        started = time.perf_counter()
        try:
            result = pipeline.process_frames(
                img.rgb[None], Patient(f"eval-{img.person}", EVAL_KEY, memory=self.memories[pipeline.method])
            )
        except Refused as exc:
            outcome.refused = exc.code
            outcome.seconds = time.perf_counter() - started
            return outcome
        outcome.seconds = time.perf_counter() - started
        out = result.frames[0]
        outcome.output, outcome.preserved, outcome.replaced = out, result.preserved[0], result.replaced[0]
        outcome.preserved_diff = int(
            np.abs(out[outcome.preserved].astype(int) - img.rgb[outcome.preserved]).max(initial=0)
        )
        if result.faces:
            outcome.attempts = result.faces[0].get("attempts", 1)
            outcome.surrogate = result.faces[0].get("surrogate")
        if face is None or emb is None:
            return outcome
        outcome.mtcnn_found = any(iou(f.box, face.box) >= 0.3 for f in self.detector.detect([out])[0])
        yunet = [f for f in self.recognizer.detect(out) if iou(f.box, face.box) >= 0.3]
        outcome.yunet_found = bool(yunet)
        probe = self.recognizer.embed(out, yunet[0] if yunet else face)
        outcome.similarity = cosine(emb, probe)
        outcome.probe = probe
        best = max(gallery.sface, key=lambda g: cosine(g[1], probe))
        outcome.rank1 = best[0] == img.stem
        described = self.judge.describe(out, face)
        own = next(v for s, v in gallery.judge if s == img.stem)
        outcome.judge_distance = distance(own, described)
        outcome.judge_rank1 = min(gallery.judge, key=lambda g: distance(g[1], described))[0] == img.stem
        outcome.delta_e = skin_change(img.rgb, out, face)
        outcome.face_delta_e = face_skin_change(img.rgb, out, face, outcome.replaced)
        return outcome


def _median_p95(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {float(np.percentile(values, 95)):.1f}" if values else "-"


def face_skin_change(
    original: np.ndarray, output: np.ndarray, face: Face, replaced: np.ndarray
) -> float | None:
    """CIELAB delta E between the medians of the patient's skin that was replaced (outside the
    eyes, brows, nose and lips), output against original; None when under 50 pixels of it.

    The QA gate limits the cheeks' delta E (``skin_delta_e``), so that figure cannot show what
    the gate lets through; this one, over the whole replaced skin, is measured apart from it."""
    features = np.zeros(original.shape[:2], np.uint8)
    paint(features, similarity(TEMPLATE, face.landmarks), [FEATURES, LIPS])
    area = replaced & (skin_mask(original, skin_lab(original, face)) > 0.5) & (features == 0)
    if int(area.sum()) < 50:
        return None
    lab = [
        cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[area] for img in (original, output)
    ]
    return float(np.linalg.norm(np.median(lab[1], axis=0) - np.median(lab[0], axis=0)))


@dataclass(frozen=True)
class Consistency:
    """Before/after figures over every pair of forwarded photos (refused photos are left out and counted).

    The surrogate figures say why a pair went wrong: two photos of one patient given
    different pool people, or two patients given the same one. ``original_*`` is SFace on
    the input photos themselves: the recogniser cannot separate outputs better than that.
    """

    photos: int
    refused: dict[str, int]
    same_pairs: int
    same_consistent: float
    same_surrogate: float
    different_pairs: int
    different_separated: float
    different_same_surrogate: float
    original_same: float
    original_separated: float

    def line(self) -> str:
        refused = sum(self.refused.values())
        detail = ", ".join(f"{c} {n}" for c, n in sorted(self.refused.items()))
        return (
            f"same person -> same new person {100 * self.same_consistent:.0f}% of {self.same_pairs} "
            f"photo pairs (same pool person in {100 * self.same_surrogate:.0f}%); different people -> "
            f"different new people {100 * self.different_separated:.0f}% of {self.different_pairs} "
            f"(same pool person in {100 * self.different_same_surrogate:.0f}%); {refused} of "
            f"{self.photos} photos refused{f' ({detail})' if detail else ''}; SFace on the originals: "
            f"same {100 * self.original_same:.0f}%, different {100 * self.original_separated:.0f}%"
        )


def consistency(
    pipeline: FacePipeline,
    images: Sequence[EvalImage],
    progress: Callable[[str], None] | None = None,
    remember: bool = True,
) -> Consistency:
    """Every photo of one person under one pseudonym -> one new person; different people -> different ones.

    Each photo runs through the gated pipeline as the service would run it; the output is
    embedded the way the attacker of ``Evaluator`` does (YuNet's face in the output, else
    the original's landmarks), and every pair of forwarded photos is compared. With
    ``remember`` the pipeline keeps each patient's first surrogate as the service's state
    store does; without it every photo is chosen from the keyed order alone.
    """
    memory = InMemoryIdentities() if remember else None
    done: list[tuple[EvalImage, np.ndarray, np.ndarray, str | None]] = []
    refused: Counter[str] = Counter()
    for img in images:
        if progress:
            progress(img.stem)
        faces = pipeline.detector.detect([img.rgb])[0]
        if not faces:
            refused["no-face"] += 1
            continue
        try:
            res = pipeline.process_frames(
                img.rgb[None], Patient(f"eval-{img.person}", EVAL_KEY, memory=memory)
            )
        except Refused as exc:
            refused[exc.code] += 1
            continue
        out = res.frames[0]
        found = pipeline.recognizer.detect(out)
        probe = pipeline.recognizer.embed(out, found[0] if found else faces[0])
        person = res.faces[0].get("person") if res.faces else None
        done.append((img, pipeline.recognizer.embed(img.rgb, faces[0]), probe, person))
    same: list[tuple[bool, bool, bool]] = []
    diff: list[tuple[bool, bool, bool]] = []
    for i, (a, a_orig, a_out, a_pool) in enumerate(done):
        for b, b_orig, b_out, b_pool in done[i + 1 :]:
            figures = (
                cosine(a_out, b_out) >= SFACE_SAME_PERSON,
                a_pool is not None and b_pool is not None and base_person(a_pool) == base_person(b_pool),
                cosine(a_orig, b_orig) >= SFACE_SAME_PERSON,
            )
            (same if a.person == b.person else diff).append(figures)

    def share(rows: list[tuple[bool, bool, bool]], col: int, want: bool = True) -> float:
        return sum(r[col] == want for r in rows) / max(1, len(rows))

    return Consistency(
        photos=len(images),
        refused=dict(refused),
        same_pairs=len(same),
        same_consistent=share(same, 0),
        same_surrogate=share(same, 1),
        different_pairs=len(diff),
        different_separated=share(diff, 0, False),
        different_same_surrogate=share(diff, 1),
        original_same=share(same, 2),
        original_separated=share(diff, 2, False),
    )


def draw_line(draws: Sequence[dict]) -> str:
    """How often each filter passed over a generated face, and how long new patients waited."""
    if not draws:
        return ""
    rejected: Counter[str] = Counter()
    for d in draws:
        rejected.update(d["rejected"])
    rendered = sum(d["rendered"] for d in draws)
    full = sum(d.get("full renders", 0) for d in draws)
    screened = sum(d["screened"] for d in draws)
    seconds = [d["seconds"] for d in draws]
    passed_over, turned_down = split_reasons(rejected)
    screens = ", ".join(f"{k} {100 * v / screened:.1f}%" for k, v in passed_over.most_common())
    renders = ", ".join(f"{k} {v}" for k, v in turned_down.most_common())
    empty = sum(not d["found"] for d in draws)
    return (
        f"Generated identities: {len(draws)} draws for new patients ({empty} found nobody); the style "
        f"screen passed over {screens or 'none'} of {screened} latents; {rendered} faces "
        f"previewed ({rendered / len(draws):.1f} a draw) and {full} rendered in full, turned down: "
        f"{renders or 'none'}; a draw took "
        f"{statistics.median(seconds):.2f} s median, {float(np.percentile(seconds, 95)):.2f} s p95, "
        f"{max(seconds):.2f} s max."
    )


def markdown_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines)


def _thumb(rgb: np.ndarray, face: Face | None, size: int) -> Image.Image:
    """A square crop around the face (the whole picture when none was found)."""
    h, w = rgb.shape[:2]
    if face is not None:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        half = 0.85 * max(face.box[2] - face.box[0], face.box[3] - face.box[1])
        box = (int(max(0, cx - half)), int(max(0, cy - half)), int(min(w, cx + half)), int(min(h, cy + half)))
        img = Image.fromarray(rgb).crop(box)
    else:
        img = Image.fromarray(rgb)
    img.thumbnail((size, size))
    tile = Image.new("RGB", (size, size), (40, 40, 40))
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def mask_image(preserved: np.ndarray, replaced: np.ndarray) -> np.ndarray:
    """Masks as a picture: white preserved, mid grey replaced, black untouched."""
    out = np.zeros(preserved.shape, np.uint8)
    out[replaced] = 110
    out[preserved] = 255
    return np.repeat(out[..., None], 3, axis=2)


def contact_sheet(
    images: Sequence[EvalImage],
    reports: dict[str, MethodReport],
    originals: dict[str, tuple[Face | None, np.ndarray | None]],
    path: Path,
    rows: int = 12,
    size: int = 220,
) -> Path:
    """original | each method's result | masks (of the first method), one row per image."""
    methods = list(reports)
    cols = ["original", *methods, f"masks ({methods[0]})"]
    header = 24
    sheet = Image.new("RGB", (size * len(cols), header + size * min(rows, len(images))), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(cols):
        draw.text((c * size + 6, 6), name, fill="black")
    by_stem = {m: {o.stem: o for o in r.outcomes} for m, r in reports.items()}
    for r, img in enumerate(images[:rows]):
        face = originals[img.stem][0]
        y = header + r * size
        sheet.paste(_thumb(img.rgb, face, size), (0, y))
        for c, m in enumerate(methods, start=1):
            o = by_stem[m][img.stem]
            if o.output is None:
                tile = Image.new("RGB", (size, size), (90, 20, 20))
                ImageDraw.Draw(tile).text((8, size // 2), f"refused:\n{o.refused}", fill="white")
            else:
                tile = _thumb(o.output, face, size)
                note = f"sim {o.similarity:.2f}" if o.similarity is not None else ""
                ImageDraw.Draw(tile).text((6, size - 16), note, fill="yellow")
            sheet.paste(tile, (c * size, y))
        first = by_stem[methods[0]][img.stem]
        if first.preserved is not None:
            sheet.paste(
                _thumb(mask_image(first.preserved, first.replaced), face, size),
                (len(methods) * size + size, y),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


PER_PHOTO_COLUMNS = (
    "method", "photo", "person", "refused", "new_person", "attempts", "seconds",
    "sface_to_original", "sface_rank1", "dlib_to_original", "dlib_rank1", "skin_delta_e",
    "face_skin_delta_e",
)  # fmt: skip


def write_per_photo(reports: dict[str, MethodReport], path: Path) -> Path:
    """One CSV row per photo and method (``PER_PHOTO_COLUMNS``): the table's figures are shares of
    these rows, so a change in a figure can be traced to the photos that moved it."""

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_PHOTO_COLUMNS)
        for method, report in reports.items():
            for o in report.outcomes:
                done = o.output is not None and o.similarity is not None
                writer.writerow([
                    method, o.stem, o.person, o.refused or "", o.surrogate or "", o.attempts,
                    f"{o.seconds:.2f}", num(o.similarity), int(o.rank1) if done else "",
                    num(o.judge_distance), int(o.judge_rank1) if o.judge_distance is not None else "",
                    num(o.delta_e), num(o.face_delta_e),
                ])  # fmt: skip
    return path


def save_outputs(reports: dict[str, MethodReport], folder: Path) -> int:
    """``DIR/<stem>.png`` and ``DIR/<stem>.mask.png`` (white = preserved); per method subfolder if several."""
    written = 0
    for method, report in reports.items():
        target = folder if len(reports) == 1 else folder / method
        target.mkdir(parents=True, exist_ok=True)
        for o in report.outcomes:
            if o.output is None:
                continue
            Image.fromarray(o.output).save(target / f"{o.stem}.png")
            Image.fromarray((o.preserved * 255).astype(np.uint8)).save(target / f"{o.stem}.mask.png")
            written += 1
    return written
