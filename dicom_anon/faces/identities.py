"""Where a patient's new person comes from, and what the site remembers of it.

An ``IdentitySource`` offers the surrogates (``pool.Surrogate``: an aligned crop with
landmarks, skin tone, SFace embedding, sex and age) that a backend renders into the patient's
photo; the backend does not care where they came from, so the in-context GAN can draw on the
same sources as the transplant. Two sources: ``generated.GeneratedIdentities`` (one new person
per patient, drawn from the generator by the patient's keyed latent stream) and
``PoolIdentities`` below (``choice.candidates`` over a built pool: openpeople's ten, or a
site's own), for sites where the generator's non-commercial weights do not fit.
``IdentityMemory`` is what the site remembers of each patient's person (the service's state
store is one), so that every later photo shows the same person.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..headers.pseudonyms import SiteKey
from .choice import PatientContext, candidates
from .detect import Face
from .pool import ADULT_AGE_YEARS, Pool, Surrogate


class IdentityMemory(Protocol):
    """What the site remembers of each patient's new person (the service's state store is one).

    Pool people are remembered by name; generated people by their index in the patient's
    keyed latent stream and the steering code they were given (``steer_code``), with their
    SFace embedding so that a new patient's person can be kept apart from everyone already
    given one.
    """

    def surrogate_for(self, pseudonym: str) -> str | None: ...

    def remember_surrogate(self, pseudonym: str, surrogate: str) -> None: ...

    def generated_for(self, pseudonym: str) -> tuple[int, str] | None: ...

    def remember_generated(self, pseudonym: str, index: int, steer: str, embedding: np.ndarray) -> None: ...

    def generated_embeddings(self, excluding: str) -> np.ndarray: ...

    def last_passed(self, pseudonym: str) -> tuple[int, float]:
        """The variant of the patient's generated person and the face oval that last passed QA
        ((0, 0.0): none yet)."""
        ...

    def remember_passed(self, pseudonym: str, oval: float, variant: int | None = None) -> None:
        """``variant`` None leaves the remembered variant as it was."""
        ...


class InMemoryIdentities:
    """An ``IdentityMemory`` for one process (evaluations, batch runs)."""

    def __init__(self) -> None:
        self._chosen: dict[str, str] = {}
        self._generated: dict[str, tuple[int, str, np.ndarray]] = {}
        self._passed: dict[str, tuple[int, float]] = {}

    def surrogate_for(self, pseudonym: str) -> str | None:
        return self._chosen.get(pseudonym)

    def remember_surrogate(self, pseudonym: str, surrogate: str) -> None:
        self._chosen.setdefault(pseudonym, surrogate)

    def generated_for(self, pseudonym: str) -> tuple[int, str] | None:
        entry = self._generated.get(pseudonym)
        return None if entry is None else entry[:2]

    def remember_generated(self, pseudonym: str, index: int, steer: str, embedding: np.ndarray) -> None:
        self._generated.setdefault(pseudonym, (index, steer, np.asarray(embedding, np.float32)))

    def generated_embeddings(self, excluding: str) -> np.ndarray:
        rows = [e for p, (_, _, e) in self._generated.items() if p != excluding]
        return np.stack(rows) if rows else np.zeros((0, 128), np.float32)

    def last_passed(self, pseudonym: str) -> tuple[int, float]:
        return self._passed.get(pseudonym, (0, 0.0))

    def remember_passed(self, pseudonym: str, oval: float, variant: int | None = None) -> None:
        if pseudonym in self._generated:
            kept = self.last_passed(pseudonym)[0] if variant is None else variant
            self._passed[pseudonym] = (kept, oval)


class IdentitySource(Protocol):
    """Offers a patient's surrogates, best first, and remembers the one that passed QA."""

    name: str
    # Offers one person per call (the pipeline asks again, with those tried excluded).
    one_at_a_time: bool

    def remembered(self, memory: IdentityMemory, pseudonym: str, key: SiteKey) -> str | None:
        """The person this patient was given before, if any."""
        ...

    def people(self, ctx: PatientContext) -> list[Surrogate]: ...

    def remember(self, memory: IdentityMemory, pseudonym: str, surrogate: Surrogate, oval: float) -> None:
        """Called when ``surrogate`` passed QA at ``oval`` on the patient's first face."""
        ...

    def why_none(self, ctx: PatientContext, hints: dict) -> str:
        """Why ``people`` offered nobody, for the records officer (``hints``: where sex and age came from)."""
        ...

    def mouth_opening(self, rgb: np.ndarray, face: Face) -> float | None:
        """The patient's lips' opening (``mouth``), where this source matches new people's
        mouths to it; None where it does not."""
        ...


class PoolIdentities:
    """The people of a built pool, in the patient's keyed order (``choice.candidates``)."""

    name = "pool"
    one_at_a_time = False

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def remembered(self, memory: IdentityMemory, pseudonym: str, key: SiteKey) -> str | None:
        return memory.surrogate_for(pseudonym)

    def people(self, ctx: PatientContext) -> list[Surrogate]:
        return candidates(self.pool, ctx)

    def remember(self, memory: IdentityMemory, pseudonym: str, surrogate: Surrogate, oval: float) -> None:
        # The person only: a pool's people are photos whose fit does not follow the oval.
        memory.remember_surrogate(pseudonym, surrogate.person)

    def mouth_opening(self, rgb: np.ndarray, face: Face) -> float | None:
        return None

    def why_none(self, ctx: PatientContext, hints: dict) -> str:
        if hints["age_years"] is not None and hints["age_years"] < ADULT_AGE_YEARS:
            return (
                f"a child (age {hints['age_years']:.0f}, from the {hints['age_from']}) and the pool "
                "holds nobody near that age; add synthetic children to the pool"
            )
        if candidates(self.pool, ctx, gain_limit=None):
            return (
                "the patient's skin is much lighter than that of every pool person left (relit "
                "that far, a new face washes out); add people with lighter skin to the pool"
            )
        if hints["sex"]:
            return (
                f"every pool person of the patient's sex ({hints['sex']}, from the {hints['sex_from']}) "
                "resembles the patient; add more people of that sex to the pool"
            )
        return "every pool person resembles the patient"
