"""The generator's style read-outs (``models/generated/directions.json``).

Linear models that say, from a latent's style alone, what its face will look like (sex, age,
skin tone, glasses, headwear, pose, an open mouth, how like a given patient), and move a style
so that some of those change while the others stay. Learnt from labelled samples of the
generator itself (``dicom_anon/lab/directions/``). A draw reads them at ~0.1 ms a latent where
a preview costs a tenth of a second, so only the latents they pass are ever rendered.

Apart from the draw (``generated``) because they are a versioned model file: a remembered
person is regenerated with the read-outs it was steered with (``load_directions(version=...)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIRECTIONS = Path(__file__).resolve().parents[2] / "models" / "generated" / "directions.json"


class DirectionsError(RuntimeError):
    """models/generated/directions.json is missing or not for this generator."""


@dataclass(frozen=True)
class Directions:
    """Linear read-outs of the generator's style truncated at ``psi`` (z-scored by
    ``mean``/``scale``): ``weights[name] . x + bias[name]`` is a logit (glasses, headwear, male)
    or, for ``age`` and ``yaw``, years and degrees. Learnt from labelled samples:
    dicom_anon/lab/directions/learn.py. Faces rendered at another truncation are read at this
    one (the same latent's style, truncated at ``psi``): coarse attributes such as glasses
    stay with the latent."""

    psi: float
    mean: np.ndarray
    scale: np.ndarray
    weights: dict[str, np.ndarray]
    bias: dict[str, float]
    # Logit above which a latent is passed over (glasses, headwear).
    reject_above: dict[str, float]
    source: dict = field(default_factory=dict)
    # Read-outs of a rendered face's SFace embedding (unit length), and the logit above which
    # the face is turned down (glasses the style screen let through).
    face_weights: dict[str, np.ndarray] = field(default_factory=dict)
    face_bias: dict[str, float] = field(default_factory=dict)
    face_reject_above: dict[str, float] = field(default_factory=dict)
    # A steered person is the move these read-outs give, so relearnt read-outs get a new version
    # and the old file stays (``directions-v<N>.json``): remembered people keep their faces.
    version: int = 1
    # Read-out -> what the estimator reads on such faces on average (knots, non-decreasing): the
    # ridge read-outs shrink towards the middle; the screen reads the age through this.
    calibration: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # Screen-only read-outs (an open mouth): neither steered nor held while steering, so adding
    # one leaves every steered person as they were and needs no new version.
    screen_weights: dict[str, np.ndarray] = field(default_factory=dict)
    screen_bias: dict[str, float] = field(default_factory=dict)
    screen_reject_above: dict[str, float] = field(default_factory=dict)
    # The likeness read-out, screen-only too: the SFace embedding a style's face will have, as
    # (512, 128) weights on the z-scored style and the (128,) mean (lab/directions/likeness.py).
    likeness: tuple[np.ndarray, np.ndarray] | None = None
    # The direction SFace's embeddings of generated faces share (their mean, unit length), and
    # how far along it the face a style will give may lie, as the likeness read-out predicts it
    # (cosine; lab/directions/typical.py). The faces furthest along it (young, light, frontal,
    # smiling) are one person to SFace with many others: screen-only, like the likeness.
    typical: np.ndarray | None = None
    typical_above: float = 1.0

    def _z(self, styles: np.ndarray) -> np.ndarray:
        """(n, 512) styles truncated at ``psi``, z-scored as every read-out reads them."""
        return (styles - self.mean) / self.scale

    def scores(self, styles: np.ndarray) -> dict[str, np.ndarray]:
        x = self._z(styles)
        return {k: x @ w + self.bias[k] for k, w in self.weights.items()}

    def screen_scores(self, styles: np.ndarray) -> dict[str, np.ndarray]:
        """The screen-only read-outs (logits) of (n, 512) styles truncated at ``psi``."""
        x = self._z(styles)
        return {k: x @ w + self.screen_bias[k] for k, w in self.screen_weights.items()}

    def likeness_to(self, styles: np.ndarray, embedding: np.ndarray | None) -> np.ndarray:
        """How like ``embedding`` (SFace) the faces of (n, 512) styles truncated at ``psi`` will
        be, as the cosine of the embedding the read-out predicts; zeros without a read-out or
        an embedding."""
        if self.likeness is None or embedding is None:
            return np.zeros(len(styles))
        weights, mean = self.likeness
        predicted = self._z(styles) @ weights + mean
        target = embedding / max(float(np.linalg.norm(embedding)), 1e-9)
        return predicted @ target / np.maximum(np.linalg.norm(predicted, axis=1), 1e-9)

    def typical_faces(self, styles: np.ndarray) -> np.ndarray:
        """Which of (n, 512) styles truncated at ``psi`` will likely give a typical face (see
        ``typical``); none without the direction or the likeness read-out."""
        if self.typical is None or self.likeness is None:
            return np.zeros(len(styles), bool)
        return self.likeness_to(styles, self.typical) > self.typical_above

    def expected(self, name: str, read_out: np.ndarray) -> np.ndarray:
        """What the estimator would read, on average, on faces with this read-out (linear beyond
        the end knots: an old face reads past the last one). Uncalibrated: the read-out."""
        if name not in self.calibration:
            return read_out
        return np.interp(read_out, *self.calibration[name])

    def read_out_for(self, name: str, value: float) -> float:
        """The read-out at which ``expected`` gives ``value`` (the calibration inverted)."""
        if name not in self.calibration:
            return value
        x, y = self.calibration[name]
        # The knots' expectations may repeat (made non-decreasing): the rising segment that
        # reaches ``value`` first.
        k = int(np.clip(np.searchsorted(y, value), 1, len(y) - 1))
        return float(x[k - 1] + (value - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1]))

    def seen_on(self, embedding: np.ndarray) -> str | None:
        """What the rendered face's embedding says it shows that a new person must not (glasses)."""
        x = embedding / max(float(np.linalg.norm(embedding)), 1e-9)
        for name, limit in self.face_reject_above.items():
            if float(x @ self.face_weights[name]) + self.face_bias[name] > limit:
                return name
        return None

    def steer(self, styles: np.ndarray, change: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Move (n, 512) styles (truncated at ``psi``) so that each read-out named in ``change``
        moves by that much and every other read-out stays; and how far each moved (z-scored).

        The least-norm move in the z-scored style space that does this (InterFaceGAN's
        conditional manipulation, here with all the read-outs at once), so that steering skin
        tone does not also age the face or put glasses on it, as far as the read-outs see.
        """
        names = list(self.weights)
        u = np.stack([self.weights[k] for k in names])
        d = np.stack([np.asarray(change.get(k, np.zeros(len(styles))), np.float64) for k in names], axis=1)
        dx = d @ np.linalg.solve(u @ u.T, u)
        return styles + (dx * self.scale).astype(np.float32), np.linalg.norm(dx, axis=1)

    def unseen(self, move: np.ndarray) -> np.ndarray:
        """``move`` (z-scored) less its part that any read-out sees: the complement of ``steer``,
        a change of face that leaves sex, age, skin, glasses and pose as they read."""
        u = np.stack(list(self.weights.values()))
        return move - u.T @ np.linalg.solve(u @ u.T, u @ move)


def load_directions(path: Path = DIRECTIONS, version: int | None = None) -> Directions:
    """The read-outs in ``path``, or the older ``version`` kept beside it."""
    if version is not None:
        current = load_directions(path)
        if current.version == version:
            return current
        path = path.with_name(f"{path.stem}-v{version}{path.suffix}")
    try:
        return _directions(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # A damaged file is the generator's files missing: a clear refusal, never a traceback.
        raise DirectionsError(f"{path}: cannot read the generator's style read-outs ({exc!r})") from None


def _directions(d: dict) -> Directions:
    screen = d.get("screen", {})
    return Directions(
        psi=float(d["psi"]),
        mean=np.asarray(d["mean"], np.float32),
        scale=np.asarray(d["scale"], np.float32),
        weights={k: np.asarray(v, np.float32) for k, v in d["weights"].items()},
        bias={k: float(v) for k, v in d["bias"].items()},
        reject_above={k: float(v) for k, v in d["reject_above"].items()},
        source=d.get("source", {}),
        face_weights={k: np.asarray(v, np.float64) for k, v in d.get("face", {}).get("weights", {}).items()},
        face_bias={k: float(v) for k, v in d.get("face", {}).get("bias", {}).items()},
        face_reject_above={k: float(v) for k, v in d.get("face", {}).get("reject_above", {}).items()},
        version=int(d.get("version", 1)),
        calibration={k: _extended(v["read_out"], v["expected"]) for k, v in d.get("calibration", {}).items()},
        screen_weights={k: np.asarray(v, np.float32) for k, v in screen.get("weights", {}).items()},
        screen_bias={k: float(v) for k, v in screen.get("bias", {}).items()},
        screen_reject_above={k: float(v) for k, v in screen.get("reject_above", {}).items()},
        likeness=(
            (np.asarray(d["likeness"]["weights"], np.float32), np.asarray(d["likeness"]["mean"], np.float32))
            if "likeness" in d
            else None
        ),
        **(
            {
                "typical": np.asarray(d["typical"]["direction"], np.float64),
                "typical_above": float(d["typical"]["above"]),
            }
            if "typical" in d
            else {}
        ),
    )


def _extended(read_out: list[float], expected: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Calibration knots with one more far out at each end, on the end segments' lines, so that
    interpolation between knots also extends the calibration linearly past them."""
    x, y = np.asarray(read_out, np.float64), np.asarray(expected, np.float64)
    far = 1e3
    low = y[0] - far * (y[1] - y[0]) / (x[1] - x[0])
    high = y[-1] + far * (y[-1] - y[-2]) / (x[-1] - x[-2])
    return np.r_[x[0] - far, x, x[-1] + far], np.r_[low, y, high]
