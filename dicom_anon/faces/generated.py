"""Generated people: one new person per patient, drawn from the generator.

The patient's keyed pseudonym seeds a latent stream (HMAC-SHA256 under the site key, then a
NumPy generator per block of latents: ``person_codes``). Each latent is screened first, in the
generator's style space, where a linear read-out (``readouts``, learnt from labelled samples of
this generator: dicom_anon/lab/directions/learn.py) says sex, age, glasses, headwear, pose and
skin tone, at ~0.1 ms a latent. A latent of the other sex or another skin tone is not passed
over but steered: its style is moved, the least it can be, until the read-outs say the
patient's sex and skin while the others (age, pose, glasses, ...) stay where they were. FFHQ
holds few dark-skinned and few old people, and without steering every dark-skinned patient of
a test set was held (no-surrogate). Only the latents that pass are previewed (``preview``: the
face at 256 px, ~0.1 s) and measured the way pool photos are (``pool.crop_face``,
``attributes.estimate``, SFace). The first that fits the patient and resembles neither the
patient nor another patient of this site is rendered in full and measured again; if it still
fits, it becomes the patient's new person: its index in the stream, the steering it was given
and its SFace embedding (never the face) are remembered (``identities.IdentityMemory``), so
every later photo, on every machine sharing the key and the store, regenerates the same person.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..headers.pseudonyms import SiteKey
from .attributes import ADULT_FACE_YEARS, AttributesRefused, ModelsError, estimate
from .choice import (
    BEARDED,
    CHILD_AGE_TOLERANCE_YEARS,
    EXCLUDE_SIMILARITY,
    PATIENT_BEARDED,
    PatientContext,
    smile,
)
from .detect import Face, FaceDetector, get_detector
from .embed import SFACE_SAME_PERSON, Recognizer, cosine, get_recognizer
from .generator import Begun, FaceGenerator, GeneratorUnavailable, get_generator
from .identities import IdentityMemory
from .judge import JudgeUnavailable
from .mouth import MOUTH_CLOSED, MOUTH_OPEN, MouthReader, get_mouth_reader
from .person_codes import (
    BLOCK,
    SEX_STEER_LOGIT,
    base_person,
    latents,
    parse_person,
    person_id,
    steer_code,
    steer_targets,
    steer_variant,
    steer_version,
    stream_seed,
    variant_of,
    versioned,
)
from .pool import ADULT_AGE_YEARS, MAX_SKIN_GAIN, PhotoSkipped, Surrogate, crop_face, skin_gain
from .prepare import surrogate_problem
from .preview import FEATURES_NODE, PreviewHead
from .preview import faces as preview_faces
from .preview import load as load_preview_head
from .readouts import DIRECTIONS, Directions, DirectionsError, load_directions

# Truncation of the new people's faces. Over random pairs of generated faces SFace called 15.5%
# the same person at 0.7 (400 faces), 3.7% at 0.85 and 1.8% at 1.0 (44 and 40 faces); 1.0 showed
# more distorted faces and headwear on the contact sheets (docs/research/generated-identities.md).
PSI = 0.85
# At most this many latents are screened in style space, and this many faces previewed, in one
# draw before it gives up (the photo is held, or QA's next person is not found). It was 12 full
# renders; a preview with its checks costs about half of one, and with 12 previews five more
# photos of 110 were held than with 20. 32 forwarded two more of 110 than 20 (an older woman
# whose second draw had found nobody, a child), 48 one more child; a draw's median stayed 2.1 s,
# its p95 rose 4.1 -> 5.1 s (7.5 s at 48). Only draws that have not found anyone spend the rest.
MAX_SCREENED = 4096
MAX_RENDERS = 32
# Draws kept for the evaluation's figures (an evaluation draws for at most a few hundred patients).
DRAWS_KEPT = 10_000
# Kept latents ranked by likeness at a time (``_Screening``).
WINDOW = 8
# The generated 1024 px face is found on a copy this size (the face fills ~40% of it).
DETECT_SIDE = 384
# A new person this close (SFace cosine) to another patient's is passed over while patience
# lasts: below SFace's 0.363 "same person", with the margin the choice keeps from the patient
# (choice.EXCLUDE_SIMILARITY). After OTHERS_PATIENCE such faces the least alike is taken. Most
# draws end there, on the least near of the faces near the patient. 6 (with MAX_RENDERS 16)
# held fewer photos (34 of 217 instead of 39) and kept openpeople's different people apart in 80%
# of pairs instead of 67%, at no privacy cost beyond chance; but of the 26 held-out photos that
# got another person, most got a worse picture: the least near of six is often a face that
# differs from the patient by hair over its forehead, which the fringe check misses and the
# transplant pastes as a lock or strands (docs/research/generated-identities.md). Not kept.
OTHERS_SIMILARITY = 0.30
OTHERS_PATIENCE = 4
# A generated face at least this close (SFace cosine) to the patient is taken only when patience
# runs out (never at the pool's EXCLUDE_SIMILARITY, 0.30, or more): the output keeps the
# patient's mouth, face shape and light, so it lands closer to the patient than the new face
# itself, and with 0.30 alone a quarter of the outputs of 24 SFHQ patients were still nearer
# their own original than any other (rank-1).
PATIENT_SIMILARITY = 0.10
# An estimated sex counts only at this confidence (the estimator's own threshold).
SEX_CONFIDENCE = 0.95
# With the patient's age unknown, an adult of these years is drawn.
UNKNOWN_AGE_YEARS = (22.0, 60.0)
# With the patient's age read from the photo, a new person's reading (same estimator, same bias)
# is held to this share of it, at least the minimum: the pool's 15 years gave young women faces
# of forty (3 of 16 outputs looked at). The estimator's error grows with age and the generator
# holds few old faces: at 7 years for everyone, every patient over 55 of 24 was held.
ESTIMATED_AGE_TOLERANCE_SHARE = 0.2
ESTIMATED_AGE_TOLERANCE_MIN_YEARS = 7.0
# A new person is frontal (within MAX_YAW) or turned the patient's way no further than the
# patient: a patient turned 30 degrees or more (the gate lets 35 through) could not be given
# anyone frontal within MAX_YAW_DIFFERENCE, and every such patient was held (3 of 217).
MAX_YAW = 15.0
MAX_YAW_DIFFERENCE = 20.0
# Mouth width over eye distance, candidate against patient (choice.smile): a broad smile's cheeks
# round a kept closed mouth read as a grimace.
MAX_SMILE_DIFFERENCE = 0.25
# The skin read-out is steered to the patient's CIELAB when it is further than this (delta E)
# from it; nearer, the latent is left as drawn.
SKIN_STEER_FROM = 6.0
# The largest move, in units of the z-scored style, a latent may be steered: up to ~9 the faces
# looked like people of another skin tone or sex; beyond, some looked lit grey rather than dark.
MAX_STEER = 9.0
# A generated face's cheeks must be this near the patient's (delta E; the pool allows
# choice.MAX_SKIN_DELTA_E, 22, since ten people cannot match everyone). The relighting gain
# matches the skin's level but not the face's own modelling: a lighter face 12.5 apart stayed a
# pale patch on a dark-skinned man, a darker one 9 apart a mask with dark sockets on a pale one.
GENERATED_MAX_SKIN_DELTA_E = 8.0
# A render whose skin or age misses the patient's is steered once more from where it landed,
# instead of being passed over with what came before in ``_fits`` (sex, and for skin also age,
# pose, expression) fitting: a read-out misses a given face by a few units, and consistently so
# for that face (a skin missed by 9-11 delta E landed within 2-3.4 once steered again; a child's
# age read-out steered to 9 gave estimator readings of 1 to 23). Not past these misses (delta E;
# age read-out units, where 16 aged faces by 14-20 years).
SKIN_CORRECTION_MAX = 20.0
AGE_CORRECTION_MAX = 24.0
# Corrections of the age at most, and the least rise of the estimator's reading (years per
# read-out unit, between a face's two renders) the second follows (see ``_corrected``).
AGE_CORRECTIONS = 2
AGE_MIN_SLOPE = 0.25
# An older patient's or a child's person is steered into the age band (the age read-out,
# ``A<read-out>`` in the code) when the latent reads outside it: FFHQ at psi 0.85 holds few faces
# the estimator puts over 60 or under 10, and of 4,096 latents a patient of 75 or 80 found none.
# A move of 16 read-out units aged four faces by 14-20 years (the estimator's reading). Adults
# whose screen asks for younger faces (``_age_steered``) find enough as drawn. It was the band's
# floor that counted, not the screen's (3 years inside it): a woman read at 62 (band 49.6-74.4)
# was not steered, 6 of 4,096 latents passed the screen, and she was held.
AGE_STEER_FROM = 50.0
# A remembered person that QA turns down on a later photo of the patient (its render there still
# too like the patient: SFace 0.30-0.35 on 13 of 60 openpeople photos) is offered again as up to
# VARIANTS variants before anyone new: the same latent moved JITTER (z-scored style units) in a
# keyed random direction that leaves every read-out (sex, age, skin, glasses, pose...) where it
# was. Given someone new instead, only 41-47% of a patient's photo pairs showed one new person to
# SFace, against 100% where the person was kept. Of those 13 photos, three variants passed on 3 at
# a JITTER of 4, 6 at 7 and 4 at 10 (more variants read as another age or sex), their outputs at
# SFace 0.74-0.87 to the patient's first output (0.363 is one person). Of the 7 photos three
# variants left to someone new, 8 variants rescued 2 and 16 rescued 5 (one patient's three
# photos all by the 14th): one person per patient rose from 89% to 100% of photo pairs. The
# variant that passed is remembered (``IdentityMemory.remember_passed``) and offered first next
# time, so a patient's later photos do not walk the same failing variants again.
VARIANTS = 16
JITTER = 7.0
# A variant the age estimator reads further than this from the remembered person is not offered.
VARIANT_AGE_YEARS = 5
# Keeps the variants' random directions apart from the latent stream's blocks (``latents``).
_JITTER_STREAM = 0x4A495454
_SKIN = ("skin_l", "skin_a", "skin_b")


class GeneratedFace(Surrogate):
    """A generated person as a surrogate: the aligned crop held in memory, not in a file, and the
    generator's style that drew it (the GAN backend starts its inversion from it). A ``preview``
    is measured on the 256 px preview: a draw's checks read it, no photo is given it; its ``sex``
    is the estimator's likelier reading, ``sex_sure`` whether it reached ``SEX_CONFIDENCE``.

    ``embed``, given instead of an ``embedding``, computes SFace's vector when it is first read:
    seven in ten previews are turned down by their age, skin, pose or mouth before anything asks
    whom they look like, and SFace is a seventh of a preview's cost."""

    def __init__(
        self,
        pixels: np.ndarray,
        index: int,
        steer: str,
        *,
        mouth_open: float,
        style: np.ndarray | None = None,
        preview: bool = False,
        sex_sure: bool = True,
        embed: Callable[[], np.ndarray] | None = None,
        **fields,
    ) -> None:
        if embed is not None:
            fields["embedding"] = None
        super().__init__(path=None, **fields)
        if embed is not None:
            # The field's value leaves the instance, so that ``embedding`` below answers.
            object.__delattr__(self, "embedding")
            object.__setattr__(self, "_embed", embed)
        object.__setattr__(self, "preview", preview)
        object.__setattr__(self, "sex_sure", sex_sure)
        object.__setattr__(self, "pixels", pixels)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "steer", steer)
        object.__setattr__(self, "mouth_open", mouth_open)
        object.__setattr__(self, "style", style)

    @property
    def image(self) -> np.ndarray:  # type: ignore[override]
        return self.pixels

    @cached_property
    def embedding(self) -> np.ndarray:  # type: ignore[override]
        return self._embed()


@dataclass(frozen=True)
class Want:
    """What the patient's new person must be, from ``PatientContext``."""

    sex: str | None
    age: tuple[float, float]
    child: bool


def _want(ctx: PatientContext) -> Want:
    # Never "either sex" for an adult: where the estimator is unsure, its likelier reading. A
    # child's new person may be of a sex the estimator is unsure of (it seldom is sure of one).
    adult_sex = ctx.sex or ctx.likely_sex
    if ctx.age_years is None:
        return Want(adult_sex, UNKNOWN_AGE_YEARS, False)
    child = ctx.age_years < ADULT_AGE_YEARS
    if child:
        tol = CHILD_AGE_TOLERANCE_YEARS
    else:
        tol = ctx.age_tolerance
        if ctx.age_estimated:
            share = ESTIMATED_AGE_TOLERANCE_SHARE * ctx.age_years
            tol = min(tol, max(ESTIMATED_AGE_TOLERANCE_MIN_YEARS, share))
    lo = ctx.age_years - tol if child else max(ADULT_FACE_YEARS, ctx.age_years - tol)
    return Want(ctx.sex if child else adult_sex, (lo, ctx.age_years + tol), child)


def _closed(ctx: PatientContext) -> bool:
    """Whether the patient's mouth is closed: a new person's must then be closed too."""
    return ctx.mouth_open is not None and ctx.mouth_open < MOUTH_CLOSED


def _yaw_limit(ctx: PatientContext) -> float:
    """How far a new person may be turned (either way; MAX_YAW_DIFFERENCE keeps it the patient's)."""
    return max(MAX_YAW, abs(ctx.yaw))


def _age_margin(want: Want) -> float:
    """How far inside the age band the screen wants a latent's expected age: half the read-out's
    error (5.9 years) where the band is wide enough for it."""
    lo, hi = want.age
    return min(3.0, (hi - lo) / 4)


def _age_steered(want: Want) -> bool:
    """Whether latents expected outside the band are steered into it: a child's, and an older
    patient's whose screen starts at ``AGE_STEER_FROM`` or more (FFHQ holds few such faces)."""
    return want.child or want.age[0] + _age_margin(want) >= AGE_STEER_FROM


def _age_aim(want: Want, age: float) -> float:
    """The age a new person of a patient of ``age`` is steered towards: a child's own; an older
    patient's between the band's floor and their age (the estimator's readings of steered faces
    scatter by ~7 years, and aimed at 80 nine of ten came out too old); anyone else's, their age."""
    return age if want.child or not _age_steered(want) else (want.age[0] + age) / 2


class GeneratedIdentities:
    """One new person per patient, drawn from the generator by the patient's keyed latent stream."""

    name = "generated"
    one_at_a_time = True

    def __init__(
        self,
        generator: FaceGenerator,
        directions: Directions,
        detector: FaceDetector,
        recognizer: Recognizer,
        mouth: MouthReader,
        cache: int = 32,
        directions_path: Path = DIRECTIONS,
        head: PreviewHead | None = None,
    ) -> None:
        self.generator = generator
        self.head = load_preview_head() if head is None else head
        self.mouth = mouth
        self.directions = directions
        self.directions_path = directions_path
        self._older: dict[int, Directions] = {}
        self.detector = detector
        self.recognizer = recognizer
        self._faces: OrderedDict[tuple[bytes, int, str, bool], GeneratedFace | str] = OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()
        self.last_draw: dict = {}
        # The last new patients' draws (what ``last_draw`` says), for the evaluation's wait figures;
        # bounded, or a service running for months would keep one for every new patient.
        self.draws: deque[dict] = deque(maxlen=DRAWS_KEPT)

    # --- one latent ---------------------------------------------------------------------

    def is_cached(self, seed: bytes, index: int, steer: str = "", preview: bool = False) -> bool:
        """Whether ``face`` (``preview``) would answer from this process's cache: a draw's budget
        counts only faces previewed afresh, so that the pipeline's next draw for the same photo
        (after QA turned a person down) passes over the faces the last one turned down and
        reaches new ones, instead of spending its budget on the same faces again."""
        with self._lock:
            return (seed, index, steer, preview) in self._faces

    def face(
        self, seed: bytes, index: int, steer: str = "", begun: Begun | None = None
    ) -> GeneratedFace | str:
        """The stream's ``index``-th person, steered (``steer_code``), rendered and measured
        (cached), or why it is unusable. ``begun``: its preview's synthesis (``preview``'s
        ``keep``), so that only the rest of the network runs; the face is the same."""
        return self._made(seed, index, steer, False, begun=begun)

    def preview(
        self, seed: bytes, index: int, steer: str = "", keep: dict[tuple[int, str], Begun] | None = None
    ) -> GeneratedFace | str:
        """``face`` measured on its 256 px preview (cached): what a draw's checks read. A preview
        made afresh leaves the synthesis it began in ``keep`` under (index, steer), for the full
        render that may follow (a quarter of a render, but 16 MB: a draw keeps only the faces
        that fit)."""
        return self._made(seed, index, steer, True, keep=keep)

    def _made(
        self,
        seed: bytes,
        index: int,
        steer: str,
        preview: bool,
        begun: Begun | None = None,
        keep: dict[tuple[int, str], Begun] | None = None,
    ) -> GeneratedFace | str:
        key = (seed, index, steer, preview)
        with self._lock:
            hit = self._faces.get(key)
            if hit is not None:
                self._faces.move_to_end(key)
                return hit
        raw = self._raw_style(seed, index)
        if steer:
            d = self._read_outs(steer_version(steer))
            raw = self._steered(raw, steer_targets(steer), d)
            if variant := steer_variant(steer):
                raw = self._jittered(raw, seed, index, variant, d)
        style = self.generator.truncate(raw)
        if preview:
            features = self.generator.features(style, FEATURES_NODE)
            if keep is not None:
                keep[(index, steer)] = Begun(FEATURES_NODE, features)
            rgb = preview_faces(self.head, features, style)[0]
        else:
            rgb = self.generator.faces(style, begun)[0]
        made = self._render(seed, index, steer, style, rgb, preview)
        with self._lock:
            self._faces[key] = made
            while len(self._faces) > self._cache:
                self._faces.popitem(last=False)
        return made

    def _raw_style(self, seed: bytes, index: int) -> np.ndarray:
        """The (1, 512) untruncated style of the stream's ``index``-th latent."""
        return self.generator.raw_styles(latents(seed, index // BLOCK)[index % BLOCK][None])

    def _read_outs(self, version: int) -> Directions:
        """The read-outs of ``version``: the current ones, or older ones a remembered person
        was steered with (a missing file makes the person unusable, never another face)."""
        if version == self.directions.version:
            return self.directions
        with self._lock:
            if version not in self._older:
                try:
                    self._older[version] = load_directions(self.directions_path, version)
                except DirectionsError as exc:
                    raise GeneratorUnavailable(f"a remembered person was steered with {exc}") from None
            return self._older[version]

    def _steered(self, raw: np.ndarray, targets: dict[str, float], d: Directions) -> np.ndarray:
        """Untruncated styles moved so that the read-outs ``d`` (at their truncation) reach
        ``targets``; the others stay."""
        at = self.generator.truncate(raw, d.psi)
        s = d.scores(at)
        moved, _ = d.steer(at, {k: v - s[k] for k, v in targets.items()})
        # Back from the read-outs' truncation to the untruncated style the render truncates.
        return raw + (moved - at) / d.psi

    def _jittered(self, raw: np.ndarray, seed: bytes, index: int, variant: int, d: Directions) -> np.ndarray:
        """Untruncated styles moved ``JITTER`` (z-scored) in the keyed direction of ``variant``,
        with every read-out's component taken out, so that sex, age, skin, glasses and pose stay
        as they were while the face changes a little."""
        seq = np.random.SeedSequence(int.from_bytes(seed, "big"), spawn_key=(_JITTER_STREAM, index, variant))
        r = d.unseen(np.random.default_rng(seq).standard_normal(raw.shape[-1]))
        move = JITTER * r / max(float(np.linalg.norm(r)), 1e-9)
        # Made at the read-outs' truncation, like a steering move; back to the untruncated style.
        return raw + (move * d.scale / d.psi).astype(np.float32)

    def _render(
        self, seed: bytes, index: int, steer: str, style: np.ndarray, rgb: np.ndarray, preview: bool
    ) -> GeneratedFace | str:
        """The face ``rgb`` (a render or its preview) measured, or why it is unusable."""
        try:
            c = crop_face(rgb, self.detector, detect_side=DETECT_SIDE, max_yaw=None)
        except PhotoSkipped as exc:
            return f"unusable: {exc}"
        try:
            a = estimate(c.image, c.face)
        except (AttributesRefused, ModelsError) as exc:
            return f"unusable: sex and age not estimated ({exc})"
        pid = person_id(seed, index, steer)
        digest = hashlib.sha256(
            seed + index.to_bytes(8, "big") + str(self.generator.psi).encode() + steer.encode()
        ).hexdigest()
        age = round(a.age_years)
        return GeneratedFace(
            c.image,
            index,
            steer,
            mouth_open=self.mouth.opening(c.image, c.face),
            style=style[0].astype(np.float32),
            preview=preview,
            id=pid,
            person=pid,
            sha256=digest,
            landmarks=c.face.landmarks,
            yaw=c.yaw,
            skin_lab=c.skin_lab,
            embed=lambda: self.recognizer.embed(c.image, c.face),
            # A preview's sex is its likelier one: the estimator is less often sure on a 256 px
            # face, and the full render of a face to be taken must be sure.
            sex=a.trusted_sex(0.5 if preview else SEX_CONFIDENCE),
            sex_sure=a.sex_confidence >= SEX_CONFIDENCE,
            age_band=(age, age),
            source=f"random-face MobileStyleGAN, psi {self.generator.psi}, latent {index}"
            + (f", steered {steer}" if steer else ""),
            licence="generated; weights from StyleGAN2-FFHQ (non-commercial): docs/generator-card.md",
            estimated=("sex", "age_band"),
        )

    # --- the filters ----------------------------------------------------------------------

    def _screen(
        self, raw: np.ndarray, want: Want, ctx: PatientContext
    ) -> tuple[np.ndarray, list[str], Counter, np.ndarray]:
        """Which of a block of (untruncated) styles may fit, by the linear read-outs alone, each
        with the steering it needs (``steer_code``); counts of why not; and how like the patient
        each face will be, as the likeness read-out predicts (SFace cosine).

        A draw renders the kept latents least like the patient first, a window at a time
        (``_Screening``): most of the faces that fit were otherwise at SFace 0.10 or more to the
        patient (450 of 574 renders of 57 patients' draws), and waited. (Rendering the likeliest
        fits first, nearest the band's middle age and most frontal, drew faces SFace took for
        one another: beyond a window, the stream's own order is kept.)"""
        d = self.directions
        at = self.generator.truncate(raw, d.psi)
        s = d.scores(at)
        why: Counter = Counter()
        keep = np.ones(len(raw), bool)
        # Steer the sex where the read-out says the other one or is unsure, and the skin where it
        # is not near the patient's; the screen below then reads the steered values.
        sex_code = np.full(len(raw), "", object)
        change: dict[str, np.ndarray] = {}
        if want.sex is not None:
            target = SEX_STEER_LOGIT if want.sex == "M" else -SEX_STEER_LOGIT
            wrong = (s["male"] < 1.0) if want.sex == "M" else (s["male"] > -1.0)
            change["male"] = np.where(wrong, target - s["male"], 0.0)
            sex_code[wrong] = want.sex
        skin_code = np.full(len(raw), "", object)
        if ctx.skin_lab is not None:
            target_lab = np.round(np.asarray(ctx.skin_lab, np.float64))
            lab = np.stack([s["skin_l"], s["skin_a"], s["skin_b"]], axis=1)
            far = np.linalg.norm(lab - target_lab, axis=1) > SKIN_STEER_FROM
            for i, name in enumerate(("skin_l", "skin_a", "skin_b")):
                change[name] = np.where(far, target_lab[i] - s[name], 0.0)
            skin_code[far] = steer_code(target_lab, None)
        lo, hi = want.age
        # Inside the band by half the read-out's error where the band is wide enough for it, as
        # the estimator would read it (the read-out alone passed over nearly every old face).
        margin = _age_margin(want)
        age_code = np.full(len(raw), "", object)
        if ctx.age_years is not None and _age_steered(want):
            aim = min(max(_age_aim(want, ctx.age_years), lo + margin), hi - margin)
            target = round(d.read_out_for("age", aim))
            expected = d.expected("age", s["age"])
            off = (expected < lo + margin) | (expected > hi - margin)
            change["age"] = np.where(off, target - s["age"], 0.0)
            age_code[off] = steer_code(None, None, age_read_out=target)
        codes = [
            versioned(a + b + c, d.version) for a, b, c in zip(skin_code, age_code, sex_code, strict=True)
        ]
        steered = at
        if change:
            steered, moved = d.steer(at, change)
            s = {k: v + change.get(k, 0.0) for k, v in s.items()}
            bad = keep & (moved > MAX_STEER)
            why["steering too far"] += int(bad.sum())
            keep &= ~bad
        for name, limit in d.reject_above.items():
            bad = keep & (s[name] > limit)
            why[name] += int(bad.sum())
            keep &= ~bad
        # The rendered face's own measures decide; the screen passes over what they would most
        # likely turn down, so that few renders (~1 s each) are wasted: the sex on the wrong side
        # of the read-out (97.7% right in cross-validation) or unsure; an age not inside the band
        # by half the read-out's error (5.9 years); a yaw near the limit (error 3.0 degrees); a
        # smile near its limit (error 0.04). The skin needs no screen: every latent further than
        # SKIN_STEER_FROM from the patient's is steered to it.
        if want.sex is not None:
            bad = keep & ((s["male"] < 1.0) if want.sex == "M" else (s["male"] > -1.0))
            why["sex"] += int(bad.sum())
            keep &= ~bad
        age = d.expected("age", s["age"])
        bad = keep & ((age < lo + margin) | (age > hi - margin))
        why["age"] += int(bad.sum())
        keep &= ~bad
        yaw = s["yaw"]
        bad = keep & (
            (np.abs(yaw) > _yaw_limit(ctx) - 3.0) | (np.abs(yaw - ctx.yaw) > MAX_YAW_DIFFERENCE - 3.0)
        )
        why["pose"] += int(bad.sum())
        keep &= ~bad
        if ctx.smile is not None:
            bad = keep & (np.abs(s["smile"] - ctx.smile) > MAX_SMILE_DIFFERENCE - 0.04)
            why["expression"] += int(bad.sum())
            keep &= ~bad
        # The screen-only read-outs, read on the styles as steered: steering neither moves nor
        # holds them.
        only = d.screen_scores(steered)
        if _closed(ctx) and "mouth_open" in only:
            bad = keep & (only["mouth_open"] > d.screen_reject_above["mouth_open"])
            why["open mouth"] += int(bad.sum())
            keep &= ~bad
        if not want.child and "child" in only:
            # Steering to the patient's skin holds the age read-out but not always the face's
            # age: a child among an adult's candidates is a wasted render.
            bad = keep & (only["child"] > d.screen_reject_above["child"])
            why["child"] += int(bad.sum())
            keep &= ~bad
        # Last, as the likeness needs the steered style too: a typical face's outputs and other
        # patients' came out alike more often (research record, "Typical faces").
        bad = keep & d.typical_faces(steered)
        why["typical face"] += int(bad.sum())
        keep &= ~bad
        return keep, codes, why, d.likeness_to(steered, ctx.embedding)

    def _fits(self, f: GeneratedFace, ctx: PatientContext, want: Want) -> str | None:
        """Why this rendered person does not suit the patient, or None."""
        # The estimator is seldom sure of a child's sex; an adult's must be known. A child's
        # person the estimator is unsure of passes, on a preview too (its likelier reading had
        # turned down 2 to 5 of each held child's 20 previews): the screen put its sex read-out
        # (97.7% right) on the patient's side, and requiring more spent half a child's renders.
        unsure_child = want.child and (f.sex is None or not f.sex_sure)
        if not unsure_child and (f.sex is None or (want.sex is not None and f.sex != want.sex)):
            return "sex"
        age = f.age_band[0] if f.age_band else None
        if age is None or not want.age[0] <= age <= want.age[1]:
            return "age"
        if abs(f.yaw) > _yaw_limit(ctx) or abs(f.yaw - ctx.yaw) > MAX_YAW_DIFFERENCE:
            return "pose"
        if ctx.smile is not None and abs(smile(f.landmarks) - ctx.smile) > MAX_SMILE_DIFFERENCE:
            return "expression"
        if _closed(ctx) and f.mouth_open >= MOUTH_OPEN:
            # Teeth round the patient's kept closed mouth show as white patches at the lips.
            return "open mouth"
        if ctx.skin_lab is not None and (
            float(np.linalg.norm(f.skin_lab - ctx.skin_lab)) > GENERATED_MAX_SKIN_DELTA_E
            or skin_gain(ctx.skin_lab, f.skin_lab) > MAX_SKIN_GAIN
        ):
            return "skin"
        if (ctx.beard is None or ctx.beard < PATIENT_BEARDED) and f.beard >= BEARDED:
            return "beard"
        # Not for a child's person: the embedding's glasses read-out, learnt on 323 faces with few
        # children among them, took 4 of 5 glasses-free faces steered into children's bands for
        # glasses (-1.9 to -0.1 against its limit of -2.7); the style screen, which catches 98% of
        # glasses, still passes over them, and FFHQ's children seldom wear any.
        # Nor on a preview: the read-out was learnt on full renders' embeddings, and on previews
        # it turned down a quarter more faces; the full render of a face to be taken is read.
        seen = None if want.child or f.preview else self.directions.seen_on(f.embedding)
        if seen is not None:
            return f"{seen} on the rendered face"
        if ctx.embedding is not None and cosine(ctx.embedding, f.embedding) >= EXCLUDE_SIMILARITY:
            return "resembles the patient"
        return None

    def _corrected(
        self, missed: list[tuple[GeneratedFace, str]], seed: bytes, ctx: PatientContext, want: Want
    ) -> str | None:
        """The last render of ``missed`` (one latent's renders, each steered again from the one
        before, with what it missed: skin or age) with that target moved by what it missed the
        patient's by, or None where the miss is too large to correct or is corrected enough.

        The skin is corrected once. The age twice: the estimator's reading of a steered child
        moves 0-2 years per read-out unit, depending on the face, where the calibration says 1
        (of 12 renders of a 10-year-old's draw, 9 read outside 6-14, once corrected too); the
        second correction follows the line through this face's last two readings."""
        d = self.directions  # a new person's code is always of the current read-outs
        f, problem = missed[-1]
        times = sum(p == problem for _, p in missed)
        targets = steer_targets(f.steer) if f.steer else {}

        def aimed(face: GeneratedFace, names: tuple[str, ...]) -> np.ndarray:
            """What the read-outs aimed at for the face as rendered: its code's targets, else
            (unsteered) the latent's own read-outs, which the other read-outs' steering held."""
            code = steer_targets(face.steer) if face.steer else {}
            if names[0] in code:
                return np.array([code[k] for k in names])
            own = d.scores(self.generator.truncate(self._raw_style(seed, face.index), d.psi))
            return np.array([own[k][0] for k in names])

        skin_target = np.array([targets[k] for k in _SKIN]) if _SKIN[0] in targets else None
        age_target = targets.get("age")
        if problem == "skin":
            if ctx.skin_lab is None or times > 1:
                return None
            miss = np.asarray(ctx.skin_lab, np.float64) - f.skin_lab
            if float(np.linalg.norm(miss)) > SKIN_CORRECTION_MAX:
                return None
            skin_target = aimed(f, _SKIN) + miss
        else:
            if ctx.age_years is None or not f.age_band:
                return None
            aim = _age_aim(want, ctx.age_years)
            now = float(aimed(f, ("age",))[0])
            if times == 1:
                move = d.read_out_for("age", aim) - d.read_out_for("age", float(f.age_band[0]))
            else:
                e = missed[-2][0]
                if times > AGE_CORRECTIONS or not e.age_band:
                    return None
                before = float(aimed(e, ("age",))[0])
                slope = (f.age_band[0] - e.age_band[0]) / (now - before) if now != before else 0.0
                if slope < AGE_MIN_SLOPE:
                    return None  # this face's reading does not follow the read-out
                move = (aim - f.age_band[0]) / slope
            if abs(move) > AGE_CORRECTION_MAX:
                return None
            age_target = now + move
        sex = None if "male" not in targets else ("M" if targets["male"] > 0 else "F")
        return steer_code(skin_target, sex, d.version, age_target)

    # --- IdentitySource -------------------------------------------------------------------

    def remembered(self, memory: IdentityMemory, pseudonym: str, key: SiteKey) -> str | None:
        entry = memory.generated_for(pseudonym)
        return None if entry is None else person_id(stream_seed(key, pseudonym), *entry)

    def people(self, ctx: PatientContext) -> list[Surrogate]:
        """The remembered person alone, or the first new person of the stream that fits.

        One person, not a ranked list: rendering a candidate costs ~0.5 s, and the pipeline
        asks again (with the people tried excluded) when QA turns this one down.

        The checks read each latent's preview; only a face about to be taken is rendered in full
        and checked again (``_confirmed``), and one the full render turns down is passed over.

        Apart from the other patients' people: a fitting face closer than ``OTHERS_SIMILARITY``
        to none of them is taken at once. A site's people cannot all stay apart for long (two
        random generated faces are one person to SFace 3.7% of the time, so a new face is apart
        from all of 200 others in 0.05% of draws): after ``OTHERS_PATIENCE`` fitting faces that
        are not, the one that SFace takes for the fewest others is taken. The fringe check
        (GrabCut, as long as a render) looks only at a face about to be taken.
        """
        seed = stream_seed(ctx.key, ctx.pseudonym)
        if ctx.remembered is not None and ctx.remembered not in ctx.exclude_people:
            made = self.face(seed, *parse_person(ctx.remembered))
            # A remembered person always rendered before; "unusable" would mean another generator.
            return [made] if isinstance(made, GeneratedFace) else []
        if ctx.passed_over is not None:
            kept = self.face(seed, *parse_person(ctx.passed_over))
            variant = self._variant(seed, ctx, kept) if isinstance(kept, GeneratedFace) else None
            if variant is not None or ctx.variants_only:
                return [] if variant is None else [variant]
            # Someone new for a patient who has a person: where this photo leaves the sex unsure,
            # the person's (read on the first photo) rather than this photo's guess; a man read
            # as a woman at 0.88 on one photo was given a woman there.
            if ctx.sex is None and isinstance(kept, GeneratedFace) and kept.sex:
                ctx = replace(ctx, likely_sex=kept.sex)
        started = time.perf_counter()
        want = _want(ctx)
        others = ctx.taken if ctx.taken is not None else np.zeros((0, 128))
        rendered = 0
        tally: Counter = Counter()  # this draw's full renders (the source serves threads at once)
        rejected: Counter = Counter()
        found: GeneratedFace | None = None
        waiting: list[tuple[Nearness, GeneratedFace]] = []
        # The synthesis begun by the previews of faces that fit, for their full renders.
        begun: dict[tuple[int, str], Begun] = {}

        def look(index: int, code: str) -> tuple[GeneratedFace | str, str | None]:
            made = self.preview(seed, index, code, keep=begun)
            problem = made if isinstance(made, str) else self._fits(made, ctx, want)
            if problem is not None:
                begun.pop((index, code), None)
            return made, problem

        screening = _Screening(self, seed, want, ctx)
        for index, as_screened in screening:
            if person_id(seed, index, as_screened) in ctx.exclude_people:
                continue
            rendered += not self.is_cached(seed, index, as_screened, preview=True)
            made, problem = look(index, as_screened)
            missed: list[tuple[GeneratedFace, str]] = []
            while problem in ("skin", "age") and isinstance(made, GeneratedFace):
                missed.append((made, problem))
                code = self._corrected(missed, seed, ctx, want)
                if code is None or person_id(seed, index, code) in ctx.exclude_people:
                    break
                rejected[f"{problem}, steered again"] += 1
                rendered += not self.is_cached(seed, index, code, preview=True)
                made, problem = look(index, code)
            if problem is None and isinstance(made, GeneratedFace):
                rank = _nearness(made, ctx, others)
                if rank.apart:
                    # Apart by its preview: rendered in full and checked again, and taken at once
                    # if the render is apart too; a render that is near after all waits.
                    full, problem = self._confirmed(made, seed, ctx, want, tally, begun)
                    if full is not None:
                        rank, made = _nearness(full, ctx, others), full
                        if rank.apart:
                            found = full
                            break
                if problem is None:
                    # Fits, but near the patient or another patient's person: once
                    # OTHERS_PATIENCE such faces wait, the least near whose full render passes
                    # is taken (their renders looked at only then, least near first).
                    waiting.append((rank, made))
                    problem = (
                        "near the patient" if rank.to_patient else "resembles another patient's new person"
                    )
                    if len(waiting) >= OTHERS_PATIENCE:
                        found = self._least_near(waiting, seed, ctx, want, tally, begun)
                        if found is not None:
                            break
            rejected[problem.split(":")[0]] += 1
            if rendered >= MAX_RENDERS:
                break
        if found is None:
            found = self._least_near(waiting, seed, ctx, want, tally, begun)
        rejected.update({f"screen: {k}": v for k, v in screening.why.items() if v})
        self.last_draw = {
            "screened": screening.screened,
            "rendered": rendered,
            "full renders": tally["full renders"],
            "rejected": dict(rejected),
            "seconds": round(time.perf_counter() - started, 3),
            "found": found is not None,
        }
        self.draws.append(self.last_draw)
        return [found] if found is not None else []

    def _confirmed(
        self,
        seen: GeneratedFace,
        seed: bytes,
        ctx: PatientContext,
        want: Want,
        tally: Counter,
        begun: dict[tuple[int, str], Begun],
    ) -> tuple[GeneratedFace | None, str | None]:
        """The full render of a previewed face that fits, checked again (the preview's age, sex
        and skin are the render's give or take a little) and for hair over the face last (its
        GrabCut costs half a render, and prepare() reuses it for the face that is taken); or
        None and why not. ``tally`` counts the full renders made afresh; ``begun`` holds the
        synthesis the preview began (taken out: a face is confirmed once)."""
        tally["full renders"] += not self.is_cached(seed, seen.index, seen.steer)
        made = self.face(seed, seen.index, seen.steer, begun.pop((seen.index, seen.steer), None))
        problem = made if isinstance(made, str) else self._fits(made, ctx, want)
        if problem is not None:
            return None, f"{problem.split(':')[0]} (full render)"
        assert isinstance(made, GeneratedFace)
        if hair := surrogate_problem(made):
            return None, f"fringe or hair over the face: {hair}"
        return made, None

    def _least_near(
        self,
        waiting: list[tuple[Nearness, GeneratedFace]],
        seed: bytes,
        ctx: PatientContext,
        want: Want,
        tally: Counter,
        begun: dict[tuple[int, str], Begun],
    ) -> GeneratedFace | None:
        """The least near of the (previewed) faces that fit but wait (near the patient or another
        patient's person) whose full render passes ``_confirmed``; those it turns down leave
        ``waiting`` (a render and a GrabCut each, so only as many as it takes are looked at)."""
        waiting.sort(key=lambda w: w[0])
        while waiting:
            found, _ = self._confirmed(waiting[0][1], seed, ctx, want, tally, begun)
            if found is not None:
                return found
            waiting.pop(0)
        return None

    def _variant(self, seed: bytes, ctx: PatientContext, kept: GeneratedFace) -> GeneratedFace | None:
        """The first variant (``VARIANTS``) of ``kept`` (``ctx.passed_over``) not tried yet that is
        still that person to the read-outs and the estimator (sex, age within VARIANT_AGE_YEARS, no
        glasses) and does not resemble the patient; None when none is left.

        Measured against the remembered person rather than this photo's own estimates: the
        person was chosen on the patient's first photo and is shown on every later one."""
        child = kept.age_band[0] < ADULT_AGE_YEARS
        # The variant that passed on an earlier photo first: photos of one patient tend to fail
        # and pass alike (one openpeople patient's three photos all passed with the 14th).
        first = ctx.preferred_variant if 0 < ctx.preferred_variant <= VARIANTS else 1
        for k in (first, *(k for k in range(1, VARIANTS + 1) if k != first)):
            name = variant_of(ctx.passed_over, k, self.directions.version)
            if name in ctx.exclude_people:
                continue
            made = self.face(seed, *parse_person(name))
            if not isinstance(made, GeneratedFace):
                continue
            if (
                made.sex != kept.sex
                or abs(made.age_band[0] - kept.age_band[0]) > VARIANT_AGE_YEARS
                or (not child and self.directions.seen_on(made.embedding) is not None)
                or (ctx.embedding is not None and cosine(ctx.embedding, made.embedding) >= EXCLUDE_SIMILARITY)
            ):
                continue
            return made
        return None

    def remember(self, memory: IdentityMemory, pseudonym: str, surrogate: Surrogate, oval: float) -> None:
        """The patient's person, the first time (the person a variant was made of, where on the
        first photo only a variant passed: ``_variant``); on every photo where that person or a
        variant of it passed, the variant and the oval, to be tried first next time. Someone new
        who passed on a later photo, when the remembered person could not, is not remembered."""
        if not isinstance(surrogate, GeneratedFace):
            return
        variant = steer_variant(surrogate.steer)
        kept = memory.generated_for(pseudonym)
        if kept is None:
            # A variant is the same person to the recogniser: its embedding serves the others.
            memory.remember_generated(
                pseudonym, *parse_person(base_person(surrogate.person)), surrogate.embedding
            )
        elif not variant and kept != (surrogate.index, surrogate.steer):
            return
        memory.remember_passed(pseudonym, oval, variant or None)

    def mouth_opening(self, rgb: np.ndarray, face: Face) -> float | None:
        return self.mouth.opening(rgb, face)

    def why_none(self, ctx: PatientContext, hints: dict) -> str:
        d = self.last_draw
        # The rendered faces' reasons first: the screen passes over far more latents, and its
        # counts alone hid why the faces that were rendered did not do.
        screen, renders = split_reasons(d.get("rejected", {}))

        def top(c: Counter) -> str:
            return ", ".join(f"{k} {v}" for k, v in c.most_common(4)) or "none"

        return (
            f"none of the {d.get('rendered', 0)} generated faces rendered suits the patient "
            f"(turned down: {top(renders)}); the style screen passed over {top(screen)} "
            f"of {d.get('screened', 0)} latents"
        )


class Nearness(NamedTuple):
    """How near a face is to the patient and to the other patients' people; ordered as faces that
    wait are taken: near the patient (SFace ``PATIENT_SIMILARITY``) last, then by how many other
    people it is one person with, whether it is near any, and its likeness to the patient."""

    to_patient: bool
    same_as_others: int
    to_others: bool
    likeness: float

    @property
    def apart(self) -> bool:
        """Apart from the patient and from every other patient's person: taken at once."""
        return not self.to_patient and not self.to_others


def _nearness(face: GeneratedFace, ctx: PatientContext, others: np.ndarray) -> Nearness:
    sims = others @ face.embedding if len(others) else np.zeros(1)
    near = cosine(ctx.embedding, face.embedding) if ctx.embedding is not None else 0.0
    return Nearness(
        near >= PATIENT_SIMILARITY,
        int((sims >= SFACE_SAME_PERSON).sum()),
        float(sims.max()) >= OTHERS_SIMILARITY,
        near,
    )


def split_reasons(rejected: dict[str, int]) -> tuple[Counter, Counter]:
    """A draw's ``rejected`` counts as (what the style screen passed over, why rendered faces were
    turned down): the screen's keys carry the ``screen: `` prefix, which is left off here."""
    screen: Counter = Counter()
    renders: Counter = Counter()
    for k, v in rejected.items():
        if k.startswith("screen: "):
            screen[k.removeprefix("screen: ")] += v
        else:
            renders[k] += v
    return screen, renders


class _Screening:
    """The stream's latents the screen keeps (``GeneratedIdentities._screen``), as (index,
    steering code), in windows of ``WINDOW`` kept latents, each least like the patient first as
    the likeness read-out predicts; and how many were screened and why those not kept were not.

    Windows rather than the whole stream: a draw usually ends within the first, and ranking a
    larger part of the stream by likeness alone would favour the faces least like anyone.
    """

    def __init__(self, source: GeneratedIdentities, seed: bytes, want: Want, ctx: PatientContext) -> None:
        self.source, self.seed, self.want, self.ctx = source, seed, want, ctx
        self.screened = 0
        self.why: Counter = Counter()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        window: list[tuple[float, int, str]] = []
        for block in range(MAX_SCREENED // BLOCK):
            raw = self.source.generator.raw_styles(latents(self.seed, block))
            keep, codes, why, like = self.source._screen(raw, self.want, self.ctx)
            self.why.update(why)
            self.screened += BLOCK
            window += [(float(like[j]), block * BLOCK + int(j), codes[j]) for j in np.flatnonzero(keep)]
            if len(window) >= WINDOW or block == MAX_SCREENED // BLOCK - 1:
                for _, index, code in sorted(window):
                    yield index, code
                window = []


@lru_cache(maxsize=2)
def get_generated(device: str = "cpu") -> GeneratedIdentities:
    """The generated-identity source (faces at ``PSI``), one per process and device;
    ``GeneratorUnavailable`` when the generator or its read-outs are missing."""
    try:
        directions = load_directions()
    except DirectionsError as exc:
        raise GeneratorUnavailable(str(exc)) from None
    try:
        mouth = get_mouth_reader()
    except JudgeUnavailable as exc:
        raise GeneratorUnavailable(f"the lips cannot be measured: {exc}") from None
    return GeneratedIdentities(get_generator(PSI), directions, get_detector(device), get_recognizer(), mouth)
