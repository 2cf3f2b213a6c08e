"""Learn the generator's style-space read-outs (models/generated/directions.json) from labelled samples.

    .venv/bin/python -m dicom_anon.lab.directions.learn /tmp/gen07 [-o models/generated/directions.json]

Inputs: ``samples.npz`` from ``sample.py`` and ``labels.json`` (beside this module)
(indices of the sampled faces a person marked, by looking at the contact sheets, as wearing
glasses or headwear). Targets: ``male`` (the sex estimator, where it is confident), ``age``
(the age estimator), ``yaw`` (MTCNN's landmarks), ``skin_l/a/b`` (the cheeks' CIELAB),
``smile`` (mouth width over eye distance), ``glasses``, ``headwear`` (the labels).
Whether a face gives a usable crop at all (no hair over it, one face, frontal) was tried as a
target too: AUC 0.73, too weak to screen by, so the rendered crop's own check decides that.

Each read-out is a linear model on the z-scored style: L2-regularised logistic regression
(or ridge regression for the measured quantities), written out here in NumPy because the project has no
scikit-learn and the models are a few lines. Five-fold cross-validation prints AUC, and for
each screen the share of labelled positives it catches and of negatives it passes over at
the chosen threshold, which goes into the file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

LABELS = Path(__file__).with_name("labels.json")
L2 = 30.0
# Screens reject above the logit that catches this share of the labelled positives in
# cross-validation (glasses, headwear, unusable).
RECALL = {"glasses": 0.99, "headwear": 0.9}
# Checked again on the rendered face, from its SFace embedding (computed anyway): glasses there
# have AUC 0.98 by cross-validation, headwear 0.74 (too weak). The threshold catches every
# labelled pair of glasses in cross-validation.
FACE_SCREENS = {"glasses": 1.0}
# SFace embeddings have unit length; the logistic regression on them needs far less shrinkage.
FACE_L2 = 0.03
REGRESSIONS = ("age", "yaw", "skin_l", "skin_a", "skin_b", "smile")
# The measured quantities' shrinkage is chosen per read-out by cross-validated error: at 30 the
# read-outs over-reached (a CV calibration slope of 0.8-0.9), and a steered dark skin landed
# 12 L* short of its target.
REGRESSION_L2 = (30.0, 100.0, 300.0, 1000.0)
# Read-outs the screen reads through a calibration (``calibration``), in bins of this many
# equal counts (about 50 faces each).
CALIBRATED = ("age",)
CALIBRATION_BINS = 20


def logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 400) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (n ~ 400, d = 512)."""
    w, b = np.zeros(x.shape[1]), 0.0
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = np.full(x.shape[1] + 1, l2)
    reg[-1] = 1e-6
    theta = np.zeros(x.shape[1] + 1)
    for _ in range(min(steps, 30)):
        p = 1 / (1 + np.exp(-(xb @ theta)))
        grad = xb.T @ (p - y) + reg * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        theta -= np.linalg.solve(hess, grad)
    w, b = theta[:-1], float(theta[-1])
    return w, b


def ridge(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float | np.ndarray]:
    """Ridge regression of ``y``, or of each of its columns at once (a (d, k) weight and k means)."""
    mean = y.mean(axis=0)
    w = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ (y - mean))
    return w, mean


def auc(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def cross_validated(
    fit: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float | np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    k: int = 5,
) -> np.ndarray:
    """Each sample's read-out from ``fit`` on the other ``k`` - 1 folds (the same folds for every
    read-out, seed 0): what thresholds and calibrations are chosen on. ``y`` may have a column
    per output (the likeness read-out's embedding)."""
    cv = np.zeros(y.shape)
    for test in np.array_split(np.random.default_rng(0).permutation(len(y)), k):
        train = np.setdiff1d(np.arange(len(y)), test)
        w, b = fit(x[train], y[train])
        cv[test] = x[test] @ w + b
    return cv


def calibration(read_out: np.ndarray, target: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """What the estimator reads, on average, on faces given each cross-validated read-out: knots
    (the bins' median read-out) and the bins' mean target, made non-decreasing. The ridge read-out
    shrinks towards the middle (faces the estimator puts at 60-70 read 52 on average), so a screen
    that took the read-out at its word passed over nearly every old face the generator draws."""
    edges = np.quantile(read_out, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, read_out, side="right") - 1, 0, bins - 1)
    knots = np.array([np.median(read_out[which == i]) for i in range(bins)])
    means = np.maximum.accumulate([target[which == i].mean() for i in range(bins)])
    return {"read_out": knots.round(3).tolist(), "expected": np.round(means, 3).tolist()}


def write_screen(
    path: Path, out: dict, name: str, w: np.ndarray, b: float, limit: float, source: dict
) -> None:
    """Put one screen-only read-out into the read-outs file ``out`` (read from ``path``), leaving
    the other screens as they are, and write it back."""
    screen = out.setdefault("screen", {})
    parts = {"weights": w.round(6).tolist(), "bias": round(b, 6), "reject_above": round(limit, 4)}
    for part, value in parts.items():
        screen.setdefault(part, {})[name] = value
    screen.setdefault("sources", {})[name] = source
    path.write_text(json.dumps(out) + "\n")


def fit_screen(
    path: Path,
    name: str,
    styles: np.ndarray,
    y: np.ndarray,
    recall: float,
    source: dict,
    labels: tuple[str, str],
) -> dict:
    """Fit the screen-only read-out ``name``: a logistic read-out of ``y`` (0/1) on ``styles``,
    z-scored as the file's other read-outs, rejecting above the logit that catches ``recall`` of
    the positives in cross-validation; written beside the file's other screens. Returns the
    cross-validation report, the positives and the negatives passed over named by ``labels``."""
    out = json.loads(path.read_text())
    x = (styles - np.asarray(out["mean"])) / np.asarray(out["scale"])
    cv = cross_validated(logistic, x, y)
    limit = float(np.quantile(cv[y == 1], 1 - recall))
    w, b = logistic(x, y)
    positives, negatives = labels
    report = {
        "n": len(y),
        positives: int(y.sum()),
        "cv_auc": round(auc(cv, y), 3),
        "threshold": round(limit, 3),
        "caught": round(float((cv[y == 1] > limit).mean()), 3),
        f"{negatives}_passed_over": round(float((cv[y == 0] > limit).mean()), 3),
    }
    write_screen(path, out, name, w, b, limit, {"samples": len(y), **source, "cross_validation": report})
    return report


def screen_command(
    doc: str,
    name: str,
    kept: str,
    measured: str,
    defaults: tuple[int, int],
    directions: Path,
    sample: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    label: Callable[[np.ndarray], np.ndarray],
    source: dict,
    recall: float,
    labels: tuple[str, str],
) -> None:
    """The command line every screen-only read-out's lab script runs: ``sample(n, seed)`` renders
    and measures (styles, ``measured``), or the samples an earlier ``--keep`` saved (``kept``) are
    read back; ``label`` makes the measurements 0/1, and ``fit_screen`` writes the screen ``name``
    into ``directions`` (``-o``)."""
    n, seed = defaults
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=n)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--keep", type=Path, help=f"save the measured samples here ({kept})")
    ap.add_argument("--samples", type=Path, help="fit the samples --keep saved here instead of rendering")
    ap.add_argument("-o", type=Path, default=directions)
    args = ap.parse_args()
    if args.samples:
        saved = np.load(args.samples / kept)
        styles, values = saved["styles"], saved[measured]
    else:
        styles, values = sample(args.n, args.seed)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.keep / kept, styles=styles, **{measured: values})
    report = fit_screen(args.o, name, styles, label(values), recall, {"seed": args.seed, **source}, labels)
    print(json.dumps(report, indent=1))


def face_screens(d: np.lib.npyio.NpzFile, labels: dict, labelled: np.ndarray) -> tuple[dict, dict]:
    """Logistic read-outs of the rendered face's SFace embedding, with the logit above which a
    face is turned down: a second, independent look at what the style screen let through."""
    emb = d["embeddings"].astype(np.float64)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    usable = labelled & (norm[:, 0] > 0)
    x = emb[usable] / norm[usable]
    out: dict = {"weights": {}, "bias": {}, "reject_above": {}}
    report = {}
    for name, recall in FACE_SCREENS.items():
        y = np.isin(np.flatnonzero(usable), labels[name]).astype(float)
        cv = cross_validated(partial(logistic, l2=FACE_L2), x, y)
        limit = float(np.quantile(cv[y == 1], 1 - recall)) - 1e-3
        w, b = logistic(x, y, l2=FACE_L2)
        out["weights"][name], out["bias"][name] = w.round(6).tolist(), round(b, 6)
        out["reject_above"][name] = round(limit, 4)
        report[name] = {
            "n": len(y),
            "positives": int(y.sum()),
            "cv_auc": round(auc(cv, y), 3),
            "caught": round(float((cv[y == 1] > limit).mean()), 3),
            "negatives_passed_over": round(float((cv[y == 0] > limit).mean()), 3),
        }
    return out, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("samples", type=Path)
    ap.add_argument("-o", type=Path, default=Path("models/generated/directions.json"))
    ap.add_argument(
        "--version",
        type=int,
        required=True,
        help="one more than the file it replaces, which must be kept as directions-v<N>.json",
    )
    args = ap.parse_args()
    d = np.load(args.samples / "samples.npz")
    labels = json.loads(LABELS.read_text())
    styles = d["styles"].astype(np.float64)
    n = len(styles)
    # The labels name the first latents of one seed's stream; any truncation of them will do.
    labelled = np.arange(n) < labels["faces"]
    expected = np.random.default_rng(labels["seed"]).standard_normal((labels["faces"], styles.shape[1]))
    if n < labels["faces"] or not np.allclose(d["z"][: labels["faces"]], expected, atol=1e-5):
        need = f"--seed {labels['seed']} -n {labels['faces']} or more"
        raise SystemExit(f"{args.samples}: not sampled with {need}")
    mean, scale = styles.mean(0), styles.std(0) + 1e-6
    x = (styles - mean) / scale
    conf = np.nan_to_num(d["sex_conf"])
    targets: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "male": (np.where(d["sex"] == "M", 1.0, 0.0), (conf >= 0.95)),
        "age": (np.nan_to_num(d["age"]), np.isfinite(d["age"])),
        "glasses": (np.isin(np.arange(n), labels["glasses"]).astype(float), labelled),
        "headwear": (np.isin(np.arange(n), labels["headwear"]).astype(float), labelled),
        "yaw": (np.nan_to_num(d["yaw"]), np.isfinite(d["yaw"])),
        "skin_l": (np.nan_to_num(d["skin"][:, 0]), np.isfinite(d["skin"][:, 0])),
        "skin_a": (np.nan_to_num(d["skin"][:, 1]), np.isfinite(d["skin"][:, 1])),
        "skin_b": (np.nan_to_num(d["skin"][:, 2]), np.isfinite(d["skin"][:, 2])),
        "smile": (np.nan_to_num(d["smile"]), np.isfinite(d["smile"])),
    }
    out = {
        # Steered people are moves these read-outs give: a new file is a new version, and the
        # service keeps the old one beside it (identities.load_directions).
        "version": args.version,
        "psi": float(d["psi"]),
        "mean": mean.round(6).tolist(),
        "scale": scale.round(6).tolist(),
        "weights": {},
        "bias": {},
        "reject_above": {},
        "calibration": {},
    }
    report = {}
    for name, (y, ok) in targets.items():
        xs, ys = x[ok], y[ok]
        best = None
        method = ridge if name in REGRESSIONS else logistic
        for l2 in REGRESSION_L2 if name in REGRESSIONS else (L2,):
            cv = cross_validated(partial(method, l2=l2), xs, ys)
            if best is None or np.abs(cv - ys).mean() < np.abs(best[1] - ys).mean():
                best = (l2, cv)
        l2, cv = best
        w, b = method(xs, ys, l2)
        out["weights"][name] = w.round(6).tolist()
        out["bias"][name] = round(b, 6)
        if name in CALIBRATED:
            out["calibration"][name] = calibration(cv, ys)
        if name in REGRESSIONS:
            report[name] = {
                "n": int(ok.sum()),
                "l2": l2,
                "cv_mean_abs_error": round(float(np.abs(cv - ys).mean()), 2),
            }
            continue
        entry = {"n": int(ok.sum()), "positives": int(ys.sum()), "cv_auc": round(auc(cv, ys), 3)}
        if name in RECALL:
            # The threshold that catches RECALL of the positives in cross-validation.
            limit = float(np.quantile(cv[ys == 1], 1 - RECALL[name]))
            out["reject_above"][name] = round(limit, 4)
            entry.update(
                threshold=round(limit, 3),
                caught=round(float((cv[ys == 1] > limit).mean()), 3),
                negatives_passed_over=round(float((cv[ys == 0] > limit).mean()), 3),
            )
        else:
            entry["cv_accuracy"] = round(float(((cv > 0) == (ys == 1)).mean()), 3)
        report[name] = entry
    out["face"], report["face"] = face_screens(d, labels, labelled)
    out["source"] = {"samples": n, "labels": str(LABELS.name), "cross_validation": report}
    args.o.parent.mkdir(parents=True, exist_ok=True)
    args.o.write_text(json.dumps(out) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
