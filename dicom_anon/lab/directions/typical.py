"""Learn the typical face: the direction generated faces' SFace embeddings share, and a limit along it.

    .venv/bin/python -m dicom_anon.lab.directions.sample --psi 0.85 -n 600 --seed 29 -o /tmp/gen085b
    .venv/bin/python -m dicom_anon.lab.directions.typical /tmp/gen085b --sampled "sample.py ... --seed 29"

SFace's embeddings of generated faces are not spread evenly: they share a direction (their mean
has length 0.42), and a face far along it is one person to SFace with many others (young, light,
frontal and smiling: FFHQ's commonest face). The draw's style screen passes over the latents
whose face the likeness read-out predicts that far along (``Directions.typical``), before any
render is spent on them.

Inputs: ``samples.npz`` from ``sample.py`` at the read-outs' truncation. Sample with another seed
than the likeness read-out was learnt on: the limit is a percentile (``--above``) of its
predictions, which are too good on the faces it was fitted to. It steers nothing and holds nothing
while steering, so the file's version stays and remembered people keep their faces.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ...faces.embed import SFACE_SAME_PERSON
from ...faces.readouts import DIRECTIONS, load_directions
from .likeness import rendered_samples, unit


def one_person_share(embeddings: np.ndarray) -> float:
    """Share of the pairs of ``embeddings`` (unit) that SFace takes for one person."""
    upper = np.triu_indices(len(embeddings), 1)
    return float(np.mean((embeddings @ embeddings.T)[upper] >= SFACE_SAME_PERSON))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, nargs="+", help="folders holding sample.py's samples.npz")
    ap.add_argument("-o", type=Path, default=DIRECTIONS)
    ap.add_argument("--above", type=float, default=80.0, help="percentile of the predicted cosines")
    ap.add_argument("--sampled", default="", help="how the samples were made, for the file's record")
    args = ap.parse_args()
    out = json.loads(args.o.read_text())
    directions = load_directions(args.o)
    if directions.likeness is None:
        raise SystemExit(f"{args.o}: no likeness read-out to predict embeddings with (likeness.py first)")
    styles, embeddings = rendered_samples(args.samples, directions.psi)
    y = unit(embeddings.astype(np.float64))
    direction = unit(y.mean(axis=0))
    predicted = directions.likeness_to(styles, direction)
    above = float(np.percentile(predicted, args.above))
    kept = predicted <= above
    report = {
        "n": len(y),
        "mean_length": round(float(np.linalg.norm(y.mean(axis=0))), 4),
        "r_predicted_own": round(float(np.corrcoef(predicted, y @ direction)[0, 1]), 3),
        "one_person_pairs": round(one_person_share(y), 4),
        "one_person_pairs_kept": round(one_person_share(y[kept]), 4),
        "kept": round(float(kept.mean()), 3),
    }
    out["typical"] = {
        "direction": direction.round(6).tolist(),
        "above": round(above, 4),
        "source": {"sampled": args.sampled, "percentile": args.above, "report": report},
    }
    args.o.write_text(json.dumps(out) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
