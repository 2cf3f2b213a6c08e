"""Learn the likeness read-out: from a latent's style, the SFace embedding its face will have.

    .venv/bin/python -m dicom_anon.lab.directions.sample --psi 0.85 -n 900 --seed 28 -o /tmp/gen085
    .venv/bin/python -m dicom_anon.lab.directions.likeness /tmp/gen085 --sampled "sample.py ... --seed 28"

A draw renders the latents its screen keeps least like the patient first (``likeness`` in
models/generated/directions.json). Inputs: ``samples.npz`` from ``sample.py`` at the read-outs'
truncation (styles, and the rendered faces' SFace embeddings). The read-out is a ridge regression
from the z-scored style to the unit embedding, its shrinkage chosen by five-fold cross-validation
(the mean cosine between the embedding predicted and the one rendered). It steers nothing and
holds nothing while steering, so the file's version stays and remembered people keep their faces.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np

from ...faces.readouts import DIRECTIONS
from .learn import cross_validated, ridge

L2 = (100.0, 300.0, 1000.0, 3000.0)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def rendered_samples(folders: list[Path], psi: float) -> tuple[np.ndarray, np.ndarray]:
    """The styles and SFace embeddings of the faces in ``folders``' samples.npz that gave a crop;
    samples drawn at another truncation than the read-outs' ``psi`` are refused (SystemExit)."""
    styles, embeddings = [], []
    for folder in folders:
        d = np.load(folder / "samples.npz")
        if abs(float(d["psi"]) - psi) > 1e-6:
            raise SystemExit(f"{folder}: sampled at psi {float(d['psi'])}, the read-outs are at {psi}")
        rendered = np.linalg.norm(d["embeddings"], axis=1) > 0  # a face that gave a crop
        styles.append(d["styles"][rendered])
        embeddings.append(d["embeddings"][rendered])
    return np.concatenate(styles), np.concatenate(embeddings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, nargs="+", help="folders holding sample.py's samples.npz")
    ap.add_argument("-o", type=Path, default=DIRECTIONS)
    ap.add_argument("--sampled", default="", help="how the samples were made, for the file's record")
    args = ap.parse_args()
    out = json.loads(args.o.read_text())
    styles, embeddings = rendered_samples(args.samples, float(out["psi"]))
    x = (styles.astype(np.float64) - np.asarray(out["mean"])) / np.asarray(out["scale"])
    y = unit(embeddings.astype(np.float64))
    report: dict = {"n": len(y), "cv_cosine": {}}
    for l2 in L2:
        cv = cross_validated(partial(ridge, l2=l2), x, y)
        report["cv_cosine"][l2] = round(float(np.mean(np.sum(unit(cv) * y, axis=1))), 4)
    best = max(report["cv_cosine"], key=report["cv_cosine"].get)
    w, mean = ridge(x, y, best)
    out["likeness"] = {
        "weights": w.round(5).tolist(),
        "mean": mean.round(6).tolist(),
        "source": {"sampled": args.sampled, "l2": best, "cross_validation": report},
    }
    args.o.write_text(json.dumps(out) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
