"""Learn the style screen for children among an adult's candidates (``screen`` in
models/generated/directions.json).

    .venv/bin/python -m dicom_anon.lab.directions.child [-n 1200] [--seed 13] [--keep DIR | --samples DIR]

The age read-out is linear and calibrated on unsteered faces; steering a latent to a patient's
skin holds that read-out, but not always the face's age: in a draw log of the first 100 SFHQ
photos (985 renders, nearly all steered), 66 of 776 renders for adults were faces the age
estimator read under 16, most of them at a read-out of 24-31 years. Those renders (~0.4 s
each) are wasted, and on young adults whose band is narrow they used up the draw's budget.

Draws as the service draws: for random adult patients (sex, an age of 20-60, a skin tone in the
span of the test patients), the first latents of each one's keyed stream that the other screens
keep, steered as the draw steers them, are rendered and read by the age estimator the draw uses.
It fits an L2-regularised logistic read-out of "reads under ``CHILD_UNDER``" on the steered
style, z-scored as the file's other read-outs. The threshold catches ``RECALL`` of those
children in five-fold cross-validation. A screen only: steering neither moves nor holds it, so
the file's version stays and every remembered person keeps their face.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from rich.progress import Progress

from ...faces.choice import PatientContext
from ...faces.generated import _want, get_generated
from ...faces.person_codes import latents, stream_seed
from ...faces.readouts import DIRECTIONS
from ...headers.pseudonyms import SiteKey
from .learn import screen_command

CHILD_UNDER = 16.0
# Renders, not latents, are what a draw runs out of: passing over 7-8% of the adults to catch 90%
# of the children costs nothing a render would not.
RECALL = 0.9
ADULT_AGES = (20.0, 60.0)
# Renders per sampled patient: the first latents a draw would render for them.
PER_PATIENT = 3
# CIELAB of the cheeks steered to: the span of the SFHQ and openpeople patients' skin.
SKIN_LAB = ((25.0, 75.0), (8.0, 24.0), (8.0, 28.0))


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Styles (truncated, as steered) and estimated ages of ``n`` renders a draw would make."""
    source = get_generated("cpu")
    g, d = source.generator, source.directions
    # Drawn as before this screen existed: its own read-out must not choose its samples.
    source.directions = dataclasses.replace(
        d, screen_weights={k: v for k, v in d.screen_weights.items() if k != "child"}
    )
    rng = np.random.default_rng(seed)
    key = SiteKey(rng.bytes(32))
    styles, aged = [], []
    with Progress() as progress:
        task = progress.add_task("rendering and measuring", total=n)
        patient = 0
        while len(styles) < n:
            ctx = PatientContext(
                pseudonym=f"SAMPLE{patient}",
                key=key,
                sex=str(rng.choice(["F", "M"])),
                age_years=float(rng.uniform(*ADULT_AGES)),
                skin_lab=np.array([rng.uniform(lo, hi) for lo, hi in SKIN_LAB]),
            )
            patient += 1
            stream = stream_seed(key, ctx.pseudonym)
            keep, codes, _, _ = source._screen(g.raw_styles(latents(stream, 0)), _want(ctx), ctx)
            for j in np.flatnonzero(keep)[:PER_PATIENT]:
                face = source.face(stream, int(j), codes[j])
                if isinstance(face, str) or not face.age_band or face.style is None:
                    continue
                styles.append(face.style)
                aged.append(face.age_band[0])
                progress.advance(task)
    return np.asarray(styles, np.float64)[:n], np.asarray(aged)[:n]


def main() -> None:
    screen_command(
        __doc__,
        "child",
        "samples-child.npz",
        "ages",
        (1200, 13),
        DIRECTIONS,
        sample,
        lambda ages: (ages < CHILD_UNDER).astype(float),
        {"under_years": CHILD_UNDER},
        RECALL,
        ("children", "others"),
    )


if __name__ == "__main__":
    main()
