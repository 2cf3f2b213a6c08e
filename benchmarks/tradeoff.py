"""Privacy against realism: how the QA gate's identity limit trades re-identification for a natural face.

DESIGN.md's lesson from the prototypes: the *least* similar surrogate hides identity perfectly
and looks absurd (wrong age, sex, hard edges), the *most* similar one looks natural and is
recognised again. The surrogate method sits in between: candidates matched on sex, age and
skin tone, then the QA gate's limit (``max_identity_similarity``) decides how far from the
patient the output must be. This script sweeps that limit over the same faces and prints, per
limit, what it costs on each side, and draws the curve (``--plot``):

- privacy: refusals, re-identification (SFace >= 0.363 against the original), mean similarity;
- realism: estimated sex kept (result against original, both from the photo, confident
  estimates only), median estimated age gap, seam smoothness (gradient energy on a thin band
  round the preserved area, result over original: 1.0 is as smooth as the photo; and the same
  over the new skin's own texture, measured on a ring further out, so that a surrogate with more
  skin detail than the patient is not taken for a seam) and the cheek colour drift (CIELAB delta E).

    .venv/bin/python benchmarks/tradeoff.py [--faces 40] [--limits 0.2 0.25 0.3 0.363] [--plot PNG]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import cv2
import numpy as np

from dicom_anon.config import PixelSettings
from dicom_anon.faces.attributes import AttributesRefused, estimate
from dicom_anon.faces.embed import SFACE_SAME_PERSON, cosine
from dicom_anon.faces.pipeline import FacePipeline, Patient
from dicom_anon.faces.pool import skin_lab
from dicom_anon.headers.errors import Refused
from dicom_anon.lab.evaluate import EVAL_KEY, EvalImage, collect, openpeople_images

SFHQ = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "faces" / "sfhq"


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px either side of ``mask``'s edge."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1,) * 2)
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, k) - cv2.erode(m, k)).astype(bool)


def seam_ratio(before: np.ndarray, after: np.ndarray, band: np.ndarray) -> float | None:
    """Gradient energy of ``after`` over ``before`` on ``band``: on a band round the preserved
    area's edge a hard paste measured about 1.5 in the prototypes, 1.0 is as smooth as the photo."""
    if not band.any():
        return None

    def energy(rgb: np.ndarray) -> float:
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
        return float((gx**2 + gy**2)[band].mean())

    base = energy(before)
    return energy(after) / base if base > 0 else None


def faces(n: int) -> list[EvalImage]:
    images = collect([str(SFHQ)], limit=n) if SFHQ.is_dir() else []
    return images or list(openpeople_images())[:n]


def sweep(images: list[EvalImage], limit: float, max_candidates: int) -> dict[str, float]:
    settings = PixelSettings(preserve=["mouth"], max_identity_similarity=limit, max_candidates=max_candidates)
    pipe = FacePipeline(settings)
    refused, sims, sex_pairs, age_gaps, seams, seam_excess, drifts = 0, [], [], [], [], [], []
    for img in images:
        found = pipe.detector.detect([img.rgb])[0]
        if not found:
            continue
        face = found[0]
        try:
            res = pipe.process_frames(img.rgb[None], Patient(f"tradeoff-{img.person}", EVAL_KEY))
        except Refused:
            refused += 1
            continue
        out = res.frames[0]
        again = pipe.recognizer.detect(out)
        probe = again[0] if again else face
        sims.append(cosine(pipe.recognizer.embed(img.rgb, face), pipe.recognizer.embed(out, probe)))
        try:
            a, b = estimate(img.rgb, face), estimate(out, face)
        except AttributesRefused:
            a = b = None
        if a is not None and b is not None:
            if a.trusted_sex() and b.trusted_sex():
                sex_pairs.append(a.trusted_sex() == b.trusted_sex())
            age_gaps.append(abs(a.age_years - b.age_years))
        width = max(2, round(0.05 * face.eye_distance))
        seam = seam_ratio(img.rgb, out, _ring(res.preserved[0], width))
        # The same measure on a ring further out, inside the new face: the new skin's own texture.
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * 6 * width + 1,) * 2)
        outer = cv2.dilate(res.preserved[0].astype(np.uint8), k).astype(bool)
        texture = seam_ratio(img.rgb, out, _ring(outer, width) & res.replaced[0] & ~res.preserved[0])
        if seam is not None and texture:
            seams.append(seam)
            seam_excess.append(seam / texture)
        drifts.append(float(np.linalg.norm(skin_lab(out, face) - skin_lab(img.rgb, face))))
    done = max(1, len(sims))
    return {
        "limit": limit,
        "refused %": 100 * refused / max(1, len(images)),
        "re-ID %": 100 * sum(s >= SFACE_SAME_PERSON for s in sims) / done,
        "mean sim": statistics.mean(sims) if sims else float("nan"),
        "sex kept %": 100 * sum(sex_pairs) / max(1, len(sex_pairs)),
        "age gap y": statistics.median(age_gaps) if age_gaps else float("nan"),
        "seam": statistics.median(seams) if seams else float("nan"),
        "seam/texture": statistics.median(seam_excess) if seam_excess else float("nan"),
        "skin dE": statistics.median(drifts) if drifts else float("nan"),
    }


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["mean sim"] for r in rows]
    left.plot(x, [r["sex kept %"] for r in rows], "o-", label="estimated sex kept %")
    left.plot(x, [100 - r["refused %"] for r in rows], "s--", label="photos forwarded %")
    left.plot(x, [r["re-ID %"] for r in rows], "x-", label="re-identified % (SFace >= 0.363)")
    for r in rows:
        left.annotate(f"limit {r['limit']:.2f}", (r["mean sim"], r["sex kept %"]), fontsize=8)
    left.set_xlabel("mean SFace similarity to the patient (lower = more private)")
    left.set_ylabel("%")
    left.legend(fontsize=8)
    right.plot(x, [r["age gap y"] for r in rows], "o-", label="median age gap (years)")
    right.plot(x, [r["skin dE"] for r in rows], "s-", label="median skin delta E")
    right.plot(x, [10 * r["seam"] for r in rows], "^-", label="seam energy ratio x10 (10 = photo)")
    right.plot(x, [10 * r["seam/texture"] for r in rows], "v--", label="seam over new-skin texture x10")
    right.set_xlabel("mean SFace similarity to the patient")
    right.legend(fontsize=8)
    fig.suptitle("Surrogate method: privacy against realism as the QA limit moves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=40, help="SFHQ test faces (openpeople when absent)")
    ap.add_argument("--limits", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.363])
    ap.add_argument("--max-candidates", type=int, default=PixelSettings().max_candidates)
    ap.add_argument("--plot", type=Path, help="write the curve to this PNG")
    args = ap.parse_args()
    images = faces(args.faces)
    rows = []
    for limit in args.limits:
        rows.append(sweep(images, limit, args.max_candidates))
        print("  ".join(f"{k} {v:.3g}" for k, v in rows[-1].items()), flush=True)
    if args.plot:
        plot(rows, args.plot)
        print(f"curve: {args.plot}")


if __name__ == "__main__":
    main()
