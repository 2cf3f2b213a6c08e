"""Learn the style screen for open mouths (``screen`` in models/generated/directions.json).

    .venv/bin/python -m dicom_anon.lab.directions.mouth [-n 900] [--seed 7] [--keep DIR | --samples DIR]

Renders ``n`` latents of one seed at the service's truncation, a third of them steered into
children's ages (whose new people most often smile with their teeth), measures each face's
lips (``faces.mouth``, as the identity source does on a render) and fits an L2-regularised
logistic read-out of "open" (opening >= ``MOUTH_OPEN``) on the style, z-scored as the file's
other read-outs. The threshold catches ``RECALL`` of the open mouths in five-fold
cross-validation. It is a screen only: steering neither moves nor holds it, so the file's
version (which names how people are steered) stays, and every remembered person keeps their face.
"""

from __future__ import annotations

import numpy as np
from rich.progress import track

from ...faces.generated import DETECT_SIDE, get_generated
from ...faces.generator import GeneratorUnavailable
from ...faces.mouth import MOUTH_OPEN, get_mouth_reader
from ...faces.pool import PhotoSkipped, crop_face
from ...faces.readouts import DIRECTIONS
from .learn import screen_command

# Renders are what a draw runs out of (12 a draw), latents are not (the screen reads thousands a
# second): at 0.9, 15% of the latents it kept were open and their renders wasted (127 of 1,742 in
# the judged run); at 0.97, 7.5%, for passing over 45% of the closed ones instead of 21%.
RECALL = 0.97
CHILD_AGES = (4.0, 16.0)


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncated-at-the-read-outs styles and lip openings of the faces that gave a crop."""
    source = get_generated("cpu")
    g, d = source.generator, source.directions
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 512)).astype(np.float32)
    ages = rng.uniform(*CHILD_AGES, n)
    reader = get_mouth_reader()
    styles, openings = [], []
    for i in track(range(n), description="rendering and measuring"):
        raw = g.raw_styles(z[i : i + 1])
        if i % 3 == 2:
            raw = source._steered(raw, {"age": d.read_out_for("age", float(ages[i]))}, d)
        try:
            c = crop_face(g.faces(g.truncate(raw))[0], source.detector, detect_side=DETECT_SIDE)
        except (PhotoSkipped, GeneratorUnavailable):
            continue
        styles.append(g.truncate(raw, d.psi)[0])
        openings.append(reader.opening(c.image, c.face))
    return np.asarray(styles, np.float64), np.asarray(openings)


def main() -> None:
    screen_command(
        __doc__,
        "mouth_open",
        "samples-mouth.npz",
        "openings",
        (900, 7),
        DIRECTIONS,
        sample,
        lambda openings: (openings >= MOUTH_OPEN).astype(float),
        {"open_from": MOUTH_OPEN},
        RECALL,
        ("open", "closed"),
    )


if __name__ == "__main__":
    main()
