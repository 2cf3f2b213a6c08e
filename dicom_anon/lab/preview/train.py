"""Train the preview head (models/generated/preview-head.npz) on the generator's own renders.

    .venv/bin/python -m dicom_anon.lab.preview.train -n 1200 --epochs 100 -o /tmp/head.npz

Samples are drawn as the service draws its candidates: psi 0.85, 60% steered to a random skin
tone, 40% moved in age, 30% steered to the other sex, by the current read-outs. For each, the
synthesis network's features at ``FEATURES_NODE`` and the full render shrunk to 256 px
(area) are kept; the features, float16, take 8 MB a sample (1,200 samples: 10 GB, held in a
memory-mapped file under ``--work``). The head is trained on random 40 x 40 crops of the
features (L1 on the image; a loss on its 8 x 8 means beside it, for the skin's colour, is not
kept: the 96-wide head trained with it came out further from the render on every measure than
this 64-wide one without it), then checked on ``--held-out`` other samples: the
measures a draw reads (age, sex, skin, SFace embedding, pose), preview against full render,
beside the same for the render merely shrunk to 256 px (what a perfect preview could reach).
Prints the SHA-256 to pin in ``dicom_anon/faces/preview.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...faces.attributes import estimate
from ...faces.choice import smile
from ...faces.detect import get_detector
from ...faces.embed import cosine, get_recognizer
from ...faces.generated import DETECT_SIDE, MAX_STEER, PSI
from ...faces.generator import STYLE_DIM, get_generator
from ...faces.pool import PhotoSkipped, crop_face
from ...faces.preview import FEATURES, FEATURES_NODE, SIDE, WIDTH, PreviewHead, faces, save
from ...faces.readouts import load_directions

CROP = 40  # features per side of a training crop
MARGIN = 4  # features at a crop's edge left out of the loss (the convolutions see past it)
BATCH = 8


def sample(n: int, seed: int, work: Path, name: str) -> tuple[np.memmap, np.ndarray, np.ndarray]:
    """``n`` styles drawn and steered as the service draws, their features and 256 px renders."""
    gen, d = get_generator(PSI), load_directions()
    rng = np.random.default_rng(seed)
    at = gen.styles(rng.standard_normal((n, STYLE_DIM)).astype(np.float32))
    s = d.scores(at)
    skin = rng.random(n) < 0.6
    change = {
        "skin_l": np.where(skin, rng.uniform(25, 75, n) - s["skin_l"], 0),
        "skin_a": np.where(skin, rng.uniform(4, 20, n) - s["skin_a"], 0),
        "skin_b": np.where(skin, rng.uniform(6, 26, n) - s["skin_b"], 0),
        "age": np.where(rng.random(n) < 0.4, rng.uniform(-15, 25, n), 0),
        "male": np.where(rng.random(n) < 0.3, -np.sign(s["male"]) * 4 - s["male"], 0),
    }
    moved, norm = d.steer(at, change)
    styles = np.where((norm <= MAX_STEER)[:, None], moved, at).astype(np.float32)
    feats = np.lib.format.open_memmap(
        work / f"{name}-features.npy", "w+", np.float16, (n, FEATURES, SIDE // 2, SIDE // 2)
    )
    images = np.zeros((n, SIDE, SIDE, 3), np.uint8)
    started = time.perf_counter()
    for i in range(n):
        feats[i] = gen.features(styles[i : i + 1], FEATURES_NODE)[0]
        images[i] = cv2.resize(gen.faces(styles[i : i + 1])[0], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        if i % 100 == 99:
            print(
                f"{name}: {i + 1} of {n} sampled, {(time.perf_counter() - started) / (i + 1):.2f} s each",
                flush=True,
            )
    feats.flush()
    return feats, images, styles


def train(
    feats: np.memmap,
    images: np.ndarray,
    styles: np.ndarray,
    epochs: int,
    seed: int,
    width: int = WIDTH,
) -> PreviewHead:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    target = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    style = torch.as_tensor(styles)
    head = PreviewHead(width)
    head.style_mean.copy_(style.mean(0))
    head.style_scale.copy_(style.std(0) + 1e-6)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    m, side = 2 * MARGIN, SIDE // 2 - CROP
    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        order = rng.permutation(len(images))
        for b in range(0, len(order), BATCH):
            idx = order[b : b + BATCH]
            xs, ys = [], []
            for i in idx:
                y0, x0 = rng.integers(0, side, 2)
                xs.append(
                    torch.from_numpy(np.asarray(feats[i, :, y0 : y0 + CROP, x0 : x0 + CROP], np.float32))
                )
                ys.append(target[i, :, 2 * y0 : 2 * (y0 + CROP), 2 * x0 : 2 * (x0 + CROP)])
            p = head(torch.stack(xs), style[idx])[..., m:-m, m:-m]
            y = torch.stack(ys)[..., m:-m, m:-m]
            loss = F.l1_loss(p, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(idx)
        schedule.step()
        print(
            f"epoch {epoch + 1} of {epochs}: loss {total / len(order):.4f}, "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return head.eval()


def check(head: PreviewHead, feats: np.memmap, images: np.ndarray, styles: np.ndarray) -> None:
    """What the draw's checks read on the preview and on the 256 px shrink, against the full render."""
    gen, detector, recognizer = get_generator(PSI), get_detector("cpu"), get_recognizer()

    def measure(rgb: np.ndarray) -> dict | None:
        try:
            c = crop_face(rgb, detector, detect_side=DETECT_SIDE, max_yaw=None)
        except PhotoSkipped:
            return None
        a = estimate(c.image, c.face)
        emb = recognizer.embed(c.image, c.face)
        return {
            "age": a.age_years,
            "sex": a.trusted_sex(),
            "skin": c.skin_lab,
            "yaw": c.yaw,
            "emb": emb,
            "smile": smile(c.face.landmarks),
        }

    rows = []
    for i in range(len(styles)):
        preview = faces(head, np.asarray(feats[i : i + 1], np.float32), styles[i : i + 1])[0]
        rows.append((measure(gen.faces(styles[i : i + 1])[0]), measure(preview), measure(images[i])))
    for j, label in ((1, "preview"), (2, "full render shrunk to 256 px")):
        pairs = [(r[0], r[j]) for r in rows if r[0] is not None and r[j] is not None]
        age = np.array([abs(f["age"] - p["age"]) for f, p in pairs])
        skin = np.array([np.linalg.norm(f["skin"] - p["skin"]) for f, p in pairs])
        emb = np.array([cosine(f["emb"], p["emb"]) for f, p in pairs])
        yaw = np.array([abs(f["yaw"] - p["yaw"]) for f, p in pairs])
        print(
            f"{label}: {len(pairs)} of {len(rows)} measured on both; against the full render: age "
            f"{np.median(age):.1f} / {np.percentile(age, 90):.1f} years (median / p90), skin delta E "
            f"{np.median(skin):.1f} / {np.percentile(skin, 90):.1f}, SFace cosine {np.median(emb):.3f} "
            f"(p10 {np.percentile(emb, 10):.3f}), yaw {np.median(yaw):.1f} degrees, sure sex differs on "
            f"{sum(f['sex'] != p['sex'] for f, p in pairs)}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1200, help="training samples")
    ap.add_argument("--held-out", type=int, default=150, help="samples the head is checked on")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--width", type=int, default=WIDTH, help="the head's channels")
    ap.add_argument("--work", type=Path, default=Path("/tmp/preview-head"), help="for the features (float16)")
    ap.add_argument("-o", type=Path, required=True, help="the head's .npz")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    head = train(*sample(args.n, args.seed, args.work, "train"), args.epochs, args.seed, args.width)
    print(f"SHA-256 to pin in dicom_anon/faces/preview.py: {save(head, args.o)}")
    check(head, *sample(args.held_out, args.seed + 1, args.work, "held-out"))


if __name__ == "__main__":
    main()
