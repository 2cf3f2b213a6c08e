"""What a generated person is remembered by: the patient's keyed latent stream, the latent's index
in it and the steering code it was given. Together they regenerate the same face on any machine
that shares the site key, so the state store keeps these names, never a face.
"""

from __future__ import annotations

import re

import numpy as np

from ..headers.pseudonyms import SiteKey
from .generator import STYLE_DIM

# Latents drawn per block of the keyed stream (one mapping-network call).
BLOCK = 64
PERSON_PREFIX = "generated"
# Steering (``steer_code``): the sex read-out's logit a steered latent is given (the unsteered
# latents the sex estimator was sure of sit at about +-4 to +-8).
SEX_STEER_LOGIT = 4.0
_STEER = re.compile(r"^(?:d(\d+))?(?:L(-?\d+)a(-?\d+)b(-?\d+))?(?:A(-?\d+))?([MF])?(?:J(\d+))?$")


def stream_seed(key: SiteKey, pseudonym: str) -> bytes:
    """The patient's latent stream seed: keyed, so unguessable without the site key."""
    return key.digest("generated-identity", pseudonym)


def latents(seed: bytes, block: int) -> np.ndarray:
    """Latents ``block * BLOCK`` to ``(block + 1) * BLOCK - 1`` of the stream ``seed`` starts."""
    seq = np.random.SeedSequence(int.from_bytes(seed, "big"), spawn_key=(block,))
    return np.random.default_rng(seq).standard_normal((BLOCK, STYLE_DIM)).astype(np.float32)


def person_id(seed: bytes, index: int, steer: str = "") -> str:
    """Names the new person in audit events and the pipeline: a tag of the (keyed) stream, the
    index and the steering (``steer_code``), which together make the face."""
    return f"{PERSON_PREFIX}-{seed[:5].hex()}-{index}" + (f"-{steer}" if steer else "")


def parse_person(person: str) -> tuple[int, str]:
    """The index and steering code ``person_id`` put into a name."""
    _, _, index, *steer = person.split("-", 3)  # a steering code may hold a minus sign
    return int(index), steer[0] if steer else ""


def steer_code(
    skin_lab: np.ndarray | None, sex: str | None, version: int = 1, age_read_out: float | None = None
) -> str:
    """The steering a latent is given, as a short code that the store keeps: ``L36a15b18`` for
    a skin tone (CIELAB, whole units: the read-outs' errors are 2-4 units), ``A58`` for the age
    read-out (whole units) and ``M``/``F`` for a sex, after ``d2`` when read-outs other than the
    first (version 1) steered it. Kept as a target and the read-outs' version, not a move, so
    the same code regenerates the same face."""
    skin = "" if skin_lab is None else "L{}a{}b{}".format(*(round(float(v)) for v in skin_lab))
    age = "" if age_read_out is None else f"A{round(age_read_out)}"
    return versioned(skin + age + (sex or ""), version)


def versioned(code: str, version: int) -> str:
    return f"d{version}{code}" if code and version != 1 else code


def _steer_match(code: str) -> re.Match[str]:
    m = _STEER.match(code)
    if m is None:
        raise ValueError(f"not a steering code: {code!r}")
    return m


def steer_version(code: str) -> int:
    """The version of the read-outs that ``steer_code`` steered with."""
    return int(_steer_match(code).group(1) or 1)


def steer_targets(code: str) -> dict[str, float]:
    """The read-out values ``steer_code`` names."""
    m = _steer_match(code)
    targets: dict[str, float] = {}
    if m.group(2) is not None:
        targets |= {"skin_l": float(m.group(2)), "skin_a": float(m.group(3)), "skin_b": float(m.group(4))}
    if m.group(5) is not None:
        targets["age"] = float(m.group(5))
    if m.group(6):
        targets["male"] = SEX_STEER_LOGIT if m.group(6) == "M" else -SEX_STEER_LOGIT
    return targets


def steer_variant(code: str) -> int:
    """Which variant of a remembered person ``steer_code`` names (0: the person itself)."""
    return int(_steer_match(code).group(7) or 0)


def variant_of(person: str, variant: int, version: int) -> str:
    """The name of ``person``'s ``variant``-th variant (``VARIANTS``): its steering code with
    ``J<variant>`` after it, under the read-outs' ``version`` when it had none (``d2J1``)."""
    prefix, steer = _split_person(person)
    return f"{prefix}-{steer + f'J{variant}' if steer else versioned(f'J{variant}', version)}"


def base_person(person: str) -> str:
    """The person a variant (``variant_of``) was made from; any other name unchanged."""
    if not person.startswith(f"{PERSON_PREFIX}-"):
        return person
    prefix, steer = _split_person(person)
    return f"{prefix}-{steer}" if steer else prefix


def _split_person(person: str) -> tuple[str, str]:
    """(``generated-<stream>-<index>``, the steering code without its variant)."""
    parts = person.split("-", 3)
    steer = re.sub(r"J\d+$", "", parts[3]) if len(parts) > 3 else ""
    # A variant of an unsteered person carries its read-outs' version alone (``d2J1``).
    return "-".join(parts[:3]), "" if re.fullmatch(r"d\d+", steer) else steer
