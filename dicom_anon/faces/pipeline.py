"""The one entry point for photo routes: decode, find faces, replace identities, QA, encode.

``process_photo`` is what the service worker and ``dicom-anon deid`` call for a photo
route; ``FacePipeline.process_frames`` is the same work on bare RGB arrays, for the
evaluation. Either returns a result only when every face found passed the QA gate;
anything else raises a ``Refused`` subclass and nothing leaves.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from pydicom import Dataset

from ..config import PixelSettings
from ..headers.engine import patient_pseudonym
from ..headers.errors import Refused
from ..headers.options import Option
from ..headers.pseudonyms import SiteKey
from ..pixels import OutputEncoding, decode, encode
from . import masks as M
from . import qa
from .attributes import Attributes, AttributesRefused, ModelsError, estimate
from .choice import (
    AGE_TOLERANCE_YEARS,
    ESTIMATED_AGE_TOLERANCE_YEARS,
    PatientContext,
    parse_age,
    parse_sex,
    smile,
)
from .detect import Face, get_detector, resolve_device
from .embed import cosine, get_recognizer
from .generated import get_generated
from .generator import GeneratorUnavailable
from .identities import IdentityMemory, IdentitySource, PoolIdentities
from .intraoral import check_no_face
from .judge import DLIB_SAME_PERSON, JudgeUnavailable, get_judge
from .person_codes import base_person
from .pool import ADULT_AGE_YEARS, DEFAULT_POOL, PoolError, beard_cover, get_pool, skin_lab
from .qa import (
    FaceRefused,
    Looks,
    SecondOpinion,
    Verdict,
    check,
    preserved_diff,
    skin_change,
)
from .replace import BASELINES, Candidate, make_backend
from .shrink import shrink

SCREEN_EYE_DISTANCE = 90.0
# Eyes, nose and mouth must lie at least this many eye distances inside the photo.
CUT_OFF_MARGIN = 0.25
# A clinical photo shows a patient, now and then a parent beside a child. Each face costs up to
# half a minute (a new person drawn for each), and the pipeline thread does nothing else
# meanwhile: a poster of sixteen faces held it 68 s, a hundred would hold the queue for minutes.
MAX_FACES = 8
# Variants of a new patient's first person tried when no one new suits (``plan``): each costs a
# screen at every oval, and a render where the screen passes.
NEW_PATIENT_VARIANTS = 4
MAX_FRAMES = 8
# What a surrogate picture's render can fail that a larger face oval of it does not mend: the
# relit face's colour, and the sex or age it reads as (``_replace_face``).
_SPOILT = ("qa-skin-colour-changed", "qa-sex-changed", "qa-age-changed")


@dataclass(frozen=True)
class PhotoResult:
    """A de-identified photo: the dataset with new pixels, QA figures for the audit event, and
    the pixel options the header engine may claim (empty unless a face was really replaced)."""

    dataset: Dataset
    qa_figures: dict
    options_cleaned: frozenset[Option]
    preserved: np.ndarray  # (frames, rows, columns) bool: the pixels that are bit-identical to the input


@dataclass(frozen=True)
class Patient:
    """Who the photo shows, as far as the pipeline may know: the keyed pseudonym, header hints and
    the memory of the new face this patient was given before."""

    pseudonym: str
    key: SiteKey
    sex: str | None = None
    age_years: float | None = None
    memory: IdentityMemory | None = None


@dataclass
class FramesResult:
    frames: np.ndarray
    preserved: np.ndarray  # (F, H, W) bool
    replaced: np.ndarray  # (F, H, W) bool: pixels that took new content
    faces: list[dict] = field(default_factory=list)


class FacePipeline:
    """Detector, recogniser, pool and backend for one set of pixel settings (built once, reused)."""

    def __init__(self, settings: PixelSettings, method: str | None = None, gate: bool = True) -> None:
        self.settings = settings
        # Without the gate (evaluation of the baselines only) the first rendering is taken as it is.
        self.gate = gate
        self.device = resolve_device(settings.device)
        self.detector = get_detector(str(self.device))
        self.recognizer = get_recognizer()
        self.judge = get_judge() if settings.second_recognizer and gate else None
        self.method = method or settings.method
        pool = None
        self.identities: IdentitySource | None = None
        if self.method not in BASELINES:
            # The pool identity source needs the pool; others (gan) use it for context faces when present.
            try:
                pool = get_pool(str(settings.pool or DEFAULT_POOL))
            except PoolError:
                if self.method == "surrogate" and settings.identity == "pool":
                    raise
        if self.method in ("surrogate", "gan"):
            # Where new people come from; the backend renders whoever it is given (gan: as the
            # context face it generates around the preserved area).
            self.identities = (
                get_generated(str(self.device)) if settings.identity == "generated" else PoolIdentities(pool)
            )
        self.backend = make_backend(self.method, pool, self.device, self.identities)
        if hasattr(self.backend, "max_candidates"):
            self.backend.max_candidates = settings.max_candidates
        self.presets = [M.Preset(p) for p in settings.preserve]
        self.image_boxes = [M.LesionBox(b.x, b.y, b.width, b.height, "image") for b in settings.boxes]
        self.face_boxes = [M.LesionBox(b.x, b.y, b.width, b.height, "face") for b in settings.face_boxes]
        if self.face_boxes and M.Preset.LESION_BOXES not in self.presets:
            self.presets.append(M.Preset.LESION_BOXES)
        self.surroundings = M.Surroundings(settings.surroundings)

    # --- one face -------------------------------------------------------------------

    def _screen(self, face: Face, where: str, shape: tuple[int, ...]) -> None:
        s = self.settings
        h, w = shape[:2]
        margin = CUT_OFF_MARGIN * face.eye_distance
        lm = face.landmarks
        if (lm < margin).any() or (lm[:, 0] > w - margin).any() or (lm[:, 1] > h - margin).any():
            # MTCNN guesses landmarks outside the picture for a face cut by its edge; the cheeks
            # that set the new skin's colour are then missing too (a tile of a grid came out grey).
            raise FaceRefused(
                "face-cut-off",
                f"{where}: eyes, nose or mouth at or past the photo's edge; the face cannot be "
                "replaced and checked reliably",
            )
        if face.eye_distance < s.min_eye_distance:
            raise FaceRefused(
                "face-too-small",
                f"{where}: eyes {face.eye_distance:.0f} px apart, below {s.min_eye_distance:.0f} px; "
                "the face cannot be replaced and checked reliably",
            )
        if abs(face.yaw) > s.max_yaw or not 0.15 < face.pitch_ratio < 0.85:
            raise FaceRefused(
                "face-too-turned",
                f"{where}: turned about {abs(face.yaw):.0f} degrees (limit {s.max_yaw:.0f}) "
                f"or tilted (nose at {face.pitch_ratio:.2f} of eye-to-mouth)",
            )

    def _replace_face(
        self,
        frame: np.ndarray,
        original: np.ndarray,
        face: Face,
        image_preserved: np.ndarray,
        patient: Patient,
        used: set[str],
        where: str,
    ) -> tuple[np.ndarray, M.FaceMasks, dict]:
        """Try candidates (standard face oval first, then larger ones) until one passes QA.

        Candidates are screened on a copy scaled to ~90 px between the eyes, where SFace sees
        what it would see at full size. Screening embeds the rendering at the patient's own
        landmarks (the warp put the surrogate's features exactly there), so it needs no
        detector; only a candidate that passes there is rendered at full resolution and
        checked in full (preserved area, MTCNN finds the face again, SFace), which is the
        check that counts.
        """
        started = time.perf_counter()
        embedding = self.recognizer.embed(original, face)
        second = SecondOpinion(self.judge, original, face) if self.judge else None
        # The first (largest) face is the patient's; others in the frame are other people.
        remembered = (
            self.identities.remembered(patient.memory, patient.pseudonym, patient.key)
            if self.identities and patient.memory and not used
            else None
        )
        reading = _read(original, face)
        hints = _hints(reading, patient)
        # What a new person's face must read as (qa.looks_changed), where the patient's own face
        # can be read: the estimator's bias on this patient is then known to the gate. The sex only
        # where it is known (the header's, or an estimate the pipeline trusts): held to an unsure
        # estimate's likelier sex, a woman read as a man at 0.62 (openpeople's P004) had every
        # pool woman turned down and left with a bearded man's face.
        looks = (
            Looks(
                sex=hints["sex"],
                adult=hints["age_years"] is not None and hints["age_years"] >= ADULT_AGE_YEARS,
                patient=reading,
            )
            if isinstance(reading, Attributes)
            else None
        )
        tone = skin_lab(original, face)
        ctx = PatientContext(
            pseudonym=patient.pseudonym,
            key=patient.key,
            sex=hints["sex"],
            likely_sex=hints.get("likely_sex"),
            age_years=hints["age_years"],
            skin_lab=tone,
            yaw=face.yaw,
            smile=smile(face.landmarks),
            beard=beard_cover(original, face.landmarks, tone),
            mouth_open=self.identities.mouth_opening(original, face) if self.identities else None,
            embedding=embedding,
            exclude_people=frozenset(used),
            remembered=remembered,
            # Only a new person is kept apart from the others; a remembered one is not chosen again.
            taken=patient.memory.generated_embeddings(patient.pseudonym)
            if patient.memory and remembered is None and self.identities and self.identities.one_at_a_time
            else None,
            age_tolerance=(
                ESTIMATED_AGE_TOLERANCE_YEARS if hints["age_from"] == "photo" else AGE_TOLERANCE_YEARS
            ),
            age_estimated=hints["age_from"] == "photo",
        )
        options = self.backend.candidates(ctx)
        strict = remembered is not None and self.settings.same_new_face == "require"
        if strict:
            options = [c for c in options if c.info.get("person") == remembered]
            if not options:
                raise FaceRefused(
                    "no-surrogate",
                    f"{where}: this photo resembles the patient's new face ({remembered}), and the "
                    "route gives each patient one new face (same_new_face: require)",
                )
        if not options:
            why = self.identities.why_none(ctx, hints) if self.identities else "none"
            raise FaceRefused(
                "no-surrogate", f"{where}: the {self.method} method offered no candidate: {why}"
            )
        small = _Scaled(frame, original, face, image_preserved, SCREEN_EYE_DISTANCE)
        screen = self.gate and small.scale < 1.0
        limit = self.settings.max_identity_similarity if self.gate else 1.0
        attempts: list[dict] = []
        # The remembered person's variant and oval that passed on an earlier photo come first:
        # photos of one patient tend to fail and pass alike, and each oval turned down costs a
        # render and a check.
        preferred, passed_oval = (
            patient.memory.last_passed(patient.pseudonym) if patient.memory and remembered else (0, 0.0)
        )
        # (A stable sort: the oval that passed, then the others in their order.)
        ladder = sorted(M.OVAL_LADDER, key=lambda o: o != passed_oval) if self.gate else M.OVAL_LADDER[:1]
        # The patient's own choice (remembered, with each of that person's photos offered, else
        # keyed first) at every oval before anyone else: a larger oval is a smaller change to the
        # picture than another person in the next photo.

        def plan(options: list[Candidate]) -> Iterator[tuple[Candidate, float]]:
            first = options[0].info.get("person")
            lead = [c for c in options if first is not None and c.info.get("person") == first] or options[:1]
            rest = [c for c in options if c not in lead]
            yield from [(c, o) for c in lead for o in ladder] + [(c, o) for o in ladder for c in rest]
            # A source that offers one person at a time (generated) is asked for the next, with
            # everyone tried left out, until max_candidates people have been tried (a remembered
            # person's variants count as that person: ``passed_over``). A route that gives each
            # patient one new person (``strict``) is offered that person's variants only.
            # A new patient for whom no one new suits after the first person (a draw found
            # nobody) is offered that person's variants (NEW_PATIENT_VARIANTS) before the photo
            # is held: an older patient's second draw often finds no one of their age.
            tried = {c.info.get("person") for c in options}
            varied = remembered  # whose variants are asked for (None: someone new)
            first_varied = 0  # variants of a new patient's first person offered so far
            while self.identities and self.identities.one_at_a_time:
                if len({base_person(p) for p in tried if p is not None}) >= self.settings.max_candidates:
                    return
                if varied != remembered and first_varied >= NEW_PATIENT_VARIANTS:
                    return
                more = self.backend.candidates(
                    dataclasses.replace(
                        ctx,
                        remembered=None,
                        passed_over=varied,
                        variants_only=strict or varied != remembered,
                        preferred_variant=preferred,
                        exclude_people=ctx.exclude_people | tried,
                    )
                )
                if not more and varied is None and first is not None:
                    varied = first
                    continue
                if not more:
                    return
                if varied != remembered:
                    first_varied += len(more)
                tried |= {c.info.get("person") for c in more}
                yield from [(c, o) for c in more for o in ladder]

        # The masks depend on the face and the oval only, not on the candidate.
        small_masks: dict[float, M.FaceMasks] = {}
        full_masks: dict[float, M.FaceMasks] = {}
        # Surrogate pictures whose relit face changed the skin's colour, or read as the other sex or
        # a child: their larger ovals are not tried. The change is the picture's relighting, not the
        # oval's; a larger oval brought the cheeks under the limit while the pale or grey face
        # stayed, with more of the person's hair, and brought a pale face that read as a woman at
        # 0.98 on a man's photo under the estimator's threshold (0.80-0.89) while it looked the
        # same. (A candidate without a picture, the GAN's own face, is tried at every oval.)
        spoilt: set[str] = set()
        for cand, oval_scale in plan(options):
            picture = cand.info.get("surrogate")
            if picture in spoilt:
                continue
            attempt = {**cand.info, "oval": oval_scale}
            attempts.append(attempt)
            # Only a new person's face is asked to read as the patient's sex and age (a blurred
            # face reads as anything), and only in full: on the screen's reduced render the
            # estimator read one good new face at 12 years that it read at 29 in the full render.
            person_looks = looks if "person" in cand.info else None
            # The remembered person's first try (at the oval that passed last) goes to the full
            # render at once: it usually passes, and the screen would cost a third to a half of
            # the full render again (both are worked near the new face's own resolution). The
            # full check judges SFace as the screen would.
            if screen and not (
                len(attempts) == 1 and remembered is not None and cand.info.get("person") == remembered
            ):
                if oval_scale not in small_masks:
                    small_masks[oval_scale] = self._masks(
                        small.face, small.frame.shape, small.preserved, oval_scale
                    )
                trial = self._apply(cand, small.frame, small.original, small.face, small_masks[oval_scale])
                # The skin's colour as the full check judges it: a relighting that fails here
                # fails at full size too, and a full render is spared.
                skin = skin_change(small.original, trial, small.face)
                # The gate's own limit, read where the gate keeps it.
                if skin > qa.MAX_SKIN_CHANGE:
                    attempt["screen"] = {"skin_delta_e": round(skin, 1)}
                    attempt["code"] = "qa-skin-colour-changed"
                    if picture is not None:
                        spoilt.add(picture)
                    continue
                # Embedded where the new face's eyes and nose are (the surrogate may move them).
                moved = dataclasses.replace(
                    small.face, landmarks=cand.landmarks(small.face, small_masks[oval_scale])
                )
                sim = cosine(embedding, self.recognizer.embed(trial, moved))
                attempt["screen"] = {"identity_similarity": round(sim, 4)}
                if sim >= limit:
                    attempt["code"] = "qa-identity-too-similar"
                    continue
            if oval_scale not in full_masks:
                full_masks[oval_scale] = self._masks(face, frame.shape, image_preserved, oval_scale)
            fm = full_masks[oval_scale]
            result = self._apply(cand, frame, original, face, fm)
            if self.gate:
                v = check(
                    original,
                    result,
                    fm.preserved,
                    face,
                    embedding,
                    self.detector,
                    self.recognizer,
                    limit,
                    roi=fm.roi,
                    second=second,
                    looks=person_looks,
                )
            else:
                v = Verdict(preserved_diff(original, result, fm.preserved, fm.roi), True, None, None)
            attempt.update(v.figures())
            if v.code is not None:
                attempt["code"] = v.code
                if v.code in _SPOILT and picture is not None:
                    spoilt.add(picture)
                continue
            if "person" in cand.info:
                if self.identities and patient.memory and not used and cand.surrogate is not None:
                    self.identities.remember(patient.memory, patient.pseudonym, cand.surrogate, oval_scale)
                used.add(cand.info["person"])
            return (
                result,
                fm,
                {
                    "where": where,
                    "box": [round(float(v)) for v in face.box],
                    "eye_distance": round(face.eye_distance, 1),
                    "yaw": round(face.yaw, 1),
                    **cand.info,
                    "oval": oval_scale,
                    "remembered": remembered is not None and cand.info.get("person") == remembered,
                    "sex": hints["sex"],
                    "sex_from": hints["sex_from"],
                    "age_years": None if hints["age_years"] is None else round(hints["age_years"], 1),
                    "age_from": hints["age_from"],
                    **{
                        k: hints[k] for k in ("estimate", "likely_sex", "likely_sex_confidence") if k in hints
                    },
                    **v.figures(),
                    "attempts": len(attempts),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        codes = [a["code"] for a in attempts]
        # The most telling failure: a changed clinical area outranks a lost face outranks a
        # look-alike outranks a changed skin colour outranks a face of the other sex or a child's.
        code = next(
            c
            for c in (
                "qa-preserved-area-changed",
                "qa-face-not-found",
                "qa-identity-too-similar",
                "qa-skin-colour-changed",
                "qa-sex-changed",
                "qa-age-changed",
            )
            if c in codes
        )
        sims = [
            x["identity_similarity"]
            for a in attempts
            for x in (a, a.get("screen", {}))
            if x.get("identity_similarity") is not None
        ]
        detail = f"; lowest SFace similarity {min(sims):.2f}" if sims else ""
        apart = [a["second_recognizer_distance"] for a in attempts if "second_recognizer_distance" in a]
        if apart:
            detail += f"; largest dlib distance {max(apart):.2f} (needs {DLIB_SAME_PERSON})"
        if code == "qa-skin-colour-changed":
            skins = [
                x["skin_delta_e"]
                for a in attempts
                if a["code"] == code
                for x in (a, a.get("screen", {}))
                if "skin_delta_e" in x
            ]
            detail += (
                f"; the cheeks' colour changed by at least {min(skins):.1f} (limit {qa.MAX_SKIN_CHANGE:g})"
            )
        if code in ("qa-sex-changed", "qa-age-changed") and looks is not None:
            read = [a for a in attempts if a["code"] == code and "read_sex" in a]
            if code == "qa-sex-changed":
                detail += (
                    f"; the new faces read as {read[0]['read_sex']} (asked for {looks.sex}; "
                    f"the patient's photo reads {looks.patient.sex})"
                )
            else:
                oldest = max(x["read_age_years"] for x in read)
                detail += (
                    f"; the new faces read as a child's (at most {oldest:g} years; "
                    f"the patient's photo reads {looks.patient.age_years:.0f})"
                )
        if strict:
            variants = sum(a.get("person") != remembered for a in attempts if a.get("oval") == ladder[0])
            also = f" and {variants} variant{'s' * (variants != 1)} of it were" if variants else " was"
            detail += f"; only the patient's new face ({remembered}){also} tried (same_new_face: require)"
        raise FaceRefused(
            code,
            f"{where}: no candidate passed QA after {len(attempts)} tries ({', '.join(sorted(set(codes)))})"
            f"{detail}, limit {self.settings.max_identity_similarity:.2f}",
        )

    def _masks(
        self, face: Face, shape: tuple[int, ...], image_preserved: np.ndarray, oval_scale: float
    ) -> M.FaceMasks:
        return M.build(
            face, shape, self.presets, self.face_boxes, image_preserved, self.surroundings, oval_scale
        )

    @staticmethod
    def _apply(
        cand: Candidate, frame: np.ndarray, original: np.ndarray, face: Face, fm: M.FaceMasks
    ) -> np.ndarray:
        """``frame`` with the candidate's new face in it and the preserved area copied back bit for bit."""
        x0, y0, x1, y1 = fm.roi
        roi = cand.render(frame, face, fm)
        roi[fm.preserved] = original[y0:y1, x0:x1][fm.preserved]
        out = frame.copy()
        out[y0:y1, x0:x1] = roi
        return out

    # --- frames ---------------------------------------------------------------------

    def process_frames(self, frames: np.ndarray, patient: Patient) -> FramesResult:
        """Replace every face in every frame; raise ``Refused`` unless all of them pass."""
        n, h, w, _ = frames.shape
        if n > MAX_FRAMES:
            raise FaceRefused(
                "too-many-frames", f"{n} frames; photos of more than {MAX_FRAMES} are not processed"
            )
        out = frames.copy()
        preserved = np.zeros((n, h, w), bool)
        replaced = np.zeros((n, h, w), bool)
        figures: list[dict] = []
        image_preserved = M.image_box_mask((h, w), self.image_boxes)
        detections = self.detector.detect(list(frames))
        found = sum(len(faces) for faces in detections)
        if found > MAX_FACES:
            raise FaceRefused(
                "too-many-faces", f"{found} faces found; photos with more than {MAX_FACES} are not processed"
            )
        for i, faces in enumerate(detections):
            preserved[i] |= image_preserved
            if not faces:
                if self.settings.on_no_face == "forward":
                    continue
                raise FaceRefused("no-face", f"frame {i + 1}: no face found, and the route expects one")
            used: set[str] = set()
            for j, face in enumerate(faces):
                self._screen(face, f"frame {i + 1} face {j + 1}", frames.shape[1:])
            # The frame itself until a face is replaced: the screening copy is then scaled once.
            current = frames[i]
            for j, face in enumerate(faces):
                where = f"frame {i + 1} face {j + 1}"
                current, fm, fig = self._replace_face(
                    current, frames[i], face, image_preserved, patient, used, where
                )
                x0, y0, x1, y1 = fm.roi
                preserved[i, y0:y1, x0:x1] |= fm.preserved
                replaced[i, y0:y1, x0:x1] |= fm.region
                figures.append(fig)
            out[i] = current
            if self.surroundings is M.Surroundings.BLUR:
                out[i] = _blur_surroundings(out[i], replaced[i], preserved[i], faces)
                replaced[i] |= ~preserved[i]
            diff = preserved_diff(frames[i], out[i], preserved[i])
            if diff:
                raise FaceRefused(
                    "qa-preserved-area-changed", f"frame {i + 1}: preserved area changed by {diff}"
                )
        return FramesResult(out, preserved, replaced, figures)

    # --- DICOM ----------------------------------------------------------------------

    def process_photo(
        self, ds: Dataset, pseudonym: str, key: SiteKey, memory: IdentityMemory | None = None
    ) -> PhotoResult:
        started = time.perf_counter()
        decoded = decode(ds)
        patient = Patient(
            pseudonym, key, parse_sex(ds.get("PatientSex")), parse_age(ds.get("PatientAge")), memory
        )
        result = self.process_frames(decoded.frames, patient)
        output = OutputEncoding(self.settings.output)
        out = copy.deepcopy(ds)
        encode(
            out,
            result.frames,
            monochrome=decoded.monochrome,
            lossy_source=decoded.lossy_source,
            source_syntax=decoded.source_syntax,
            output=output,
            quality=self.settings.lossy_quality,
        )
        # Measured, not hoped: read back what will be stored and compare the preserved area.
        stored = decode(out).frames
        stored_diff = max(
            (preserved_diff(decoded.frames[i], stored[i], result.preserved[i]) for i in range(len(stored))),
            default=0,
        )
        if stored_diff and not output.lossy:
            raise FaceRefused(
                "qa-preserved-area-changed",
                f"the stored pixels differ by {stored_diff} in the preserved area",
            )
        figures = {
            "method": self.method,
            "frames": len(stored),
            "faces": result.faces,
            "preserved_pixels": int(result.preserved.sum()),
            "stored_preserved_max_abs_diff": int(stored_diff),
            "output": output.value,
            "seconds": round(time.perf_counter() - started, 3),
        }
        cleaned = frozenset({Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES}) if result.faces else frozenset()
        return PhotoResult(out, figures, cleaned, result.preserved)


def _read(original: np.ndarray, face: Face) -> Attributes | str:
    """The estimator's reading of the patient's face, or why there is none (its refusal code,
    ``models-unavailable``)."""
    try:
        return estimate(original, face)
    except AttributesRefused as exc:
        return exc.code
    except ModelsError:
        return "models-unavailable"


def _hints(estimated: Attributes | str, patient: Patient) -> dict:
    """Sex and age to choose the surrogate by: the header's, else the face's own estimate
    (``_read``; a string says why there is none).

    The estimate only decides how well the new face suits (a child should not get a bearded
    adult's face), never whether the photo is safe, so a face that gives no trustworthy
    estimate, or missing models, leave the choice unfiltered instead of refusing the photo.
    """
    hints = {
        "sex": patient.sex,
        "sex_from": "header" if patient.sex else None,
        "age_years": patient.age_years,
        "age_from": "header" if patient.age_years is not None else None,
    }
    if patient.sex and patient.age_years is not None:
        return hints
    if isinstance(estimated, str):
        return {**hints, "estimate": estimated}
    if not patient.sex and estimated.trusted_sex():
        hints.update(sex=estimated.trusted_sex(), sex_from="photo")
    elif not patient.sex:
        # Unsure, but an adult's new person still needs a sex: a generated identity takes the
        # likelier one (a blonde woman's face on a man the estimator was unsure of looked absurd).
        # The audit keeps the reading: such a new face's sex is a guess (review.unsure_sex).
        hints.update(likely_sex=estimated.sex, likely_sex_confidence=round(estimated.sex_confidence, 2))
    if patient.age_years is None:
        hints.update(age_years=estimated.age_years, age_from="photo")
    return hints


class _Scaled:
    """A frame, its original and its face scaled so the eyes are ``eye_distance`` apart (never enlarged)."""

    def __init__(
        self, frame: np.ndarray, original: np.ndarray, face: Face, preserved: np.ndarray, eye_distance: float
    ) -> None:
        self.scale = min(1.0, eye_distance / max(face.eye_distance, 1e-6))
        if self.scale >= 1.0:
            self.frame, self.original, self.face, self.preserved = frame, original, face, preserved
            return
        self.frame, (kw, kh) = shrink(frame, self.scale)
        size = (self.frame.shape[1], self.frame.shape[0])
        sx, sy = size[0] / kw, size[1] / kh
        same = frame is original
        self.original = self.frame if same else shrink(original, self.scale)[0]
        self.preserved = (
            cv2.resize(preserved[:kh, :kw].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
        )
        self.face = Face(face.box * [sx, sy, sx, sy], face.landmarks * [sx, sy], face.score)


def _blur_surroundings(
    frame: np.ndarray, replaced: np.ndarray, preserved: np.ndarray, faces: list[Face]
) -> np.ndarray:
    """Blur everything outside the new faces and the preserved area, with a soft edge towards the faces."""
    h, w = frame.shape[:2]
    sigma = max(4.0, 0.4 * max(f.eye_distance for f in faces))
    small_scale = min(1.0, 8.0 / sigma)
    small = cv2.resize(
        frame, (max(1, round(w * small_scale)), max(1, round(h * small_scale))), interpolation=cv2.INTER_AREA
    )
    blurred = cv2.resize(
        cv2.GaussianBlur(small, (0, 0), sigma * small_scale), (w, h), interpolation=cv2.INTER_LINEAR
    )
    keep = (replaced | preserved).astype(np.uint8)
    dist = cv2.distanceTransform(1 - keep, cv2.DIST_L2, 5)
    a = np.clip(dist / max(2.0, sigma / 2), 0, 1)[..., None]
    out = (frame * (1 - a) + blurred * a + 0.5).astype(np.uint8)
    out[preserved] = frame[preserved]
    return out


@lru_cache(maxsize=8)
def _pipeline(settings_json: str, method: str | None = None) -> FacePipeline:
    return FacePipeline(PixelSettings.model_validate_json(settings_json), method)


def get_pipeline(settings: PixelSettings, method: str | None = None) -> FacePipeline:
    """A cached pipeline for these settings: models and the pool load once per process."""
    return _pipeline(settings.model_dump_json(), method)


def process_photo(
    ds: Dataset,
    settings: PixelSettings,
    pseudonym: str,
    key: SiteKey,
    memory: IdentityMemory | None = None,
) -> PhotoResult:
    """De-identify the face(s) of one photo instance; raise ``Refused`` if it cannot be made safe.

    ``pseudonym`` is the patient's keyed pseudonym (the same one the header stage writes),
    so every photo of one patient gets the same new face under one site key; ``memory``
    keeps it the same when one photo's measurements would filter the keyed choice away.
    ``method: keep`` (intraoral views) replaces nothing: the photo leaves as received, once no
    face and no eyes are found in it.
    """
    if settings.method == "keep":
        dataset, figures = check_no_face(ds, settings)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        preserved = np.ones((frames, int(ds.Rows), int(ds.Columns)), bool)
        return PhotoResult(dataset, figures, frozenset(), preserved)
    try:
        pipeline = get_pipeline(settings)
    except ValueError as exc:
        raise Refused("method-unavailable", str(exc)) from None
    except PoolError as exc:
        raise Refused("surrogate-pool-unavailable", str(exc)) from None
    except GeneratorUnavailable as exc:
        raise Refused(
            "method-unavailable",
            f"the face generator cannot run: {exc} (or set pixels.identity: pool)",
        ) from None
    except JudgeUnavailable as exc:
        raise Refused(
            "method-unavailable",
            f"the QA gate's second recogniser cannot run: {exc} (or set second_recognizer: false)",
        ) from None
    try:
        return pipeline.process_photo(ds, pseudonym, key, memory)
    except GeneratorUnavailable as exc:  # e.g. the read-outs a remembered person was steered with
        raise Refused("method-unavailable", f"the face generator cannot run: {exc}") from None


def process_instance(
    ds: Dataset, settings: PixelSettings, key: SiteKey, memory: IdentityMemory | None = None
) -> PhotoResult:
    """``process_photo`` keyed by the same pseudonym the header engine will write for ``ds``
    (``rules test`` calls this; the service's pixel stage computes the pseudonym itself, to take
    that patient's lock, and calls ``process_photo``)."""
    return process_photo(ds, settings, patient_pseudonym(ds, key), key, memory)
