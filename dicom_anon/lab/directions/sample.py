"""Sample the face generator and measure every face, for learning and checking the candidate filters.

    .venv/bin/python -m dicom_anon.lab.directions.sample --psi 0.7 -n 400 -o /tmp/gen07

Writes ``samples.npz`` (latents, truncated styles, and per face what the identity source
measures: whether a usable crop came out and why not, sex and its confidence, age, skin
tone, yaw, smile, SFace embedding) and numbered contact sheets (``sheet-NN.png``, 100 faces
each) to label by eye: glasses, headwear, fringe, artefacts. The labels go into
``labels.json`` beside this module; ``learn.py`` learns from both.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...faces.attributes import AttributesRefused, estimate
from ...faces.choice import smile
from ...faces.detect import get_detector
from ...faces.embed import get_recognizer
from ...faces.generator import STYLE_DIM, load
from ...faces.pool import PhotoSkipped, crop_face
from ...faces.prepare import pool_photo_problem

THUMB = 128
SAVE_EVERY = 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", type=Path, required=True)
    args = ap.parse_args()
    args.o.mkdir(parents=True, exist_ok=True)
    gen = load(args.psi)
    detector, recognizer = get_detector("cpu"), get_recognizer()
    z = np.random.default_rng(args.seed).standard_normal((args.n, STYLE_DIM)).astype(np.float32)
    styles = gen.styles(z)
    rows: dict[str, list] = {k: [] for k in ("problem", "sex", "sex_conf", "age", "skin", "yaw", "smile")}
    embeddings, thumbs = [], []
    started = time.perf_counter()
    for i in range(args.n):
        face = gen.faces(styles[i : i + 1])[0]
        thumbs.append(np.asarray(Image.fromarray(face).resize((THUMB, THUMB), Image.BILINEAR)))
        try:
            c = crop_face(face, detector, pool_photo_problem)
            problem = ""
        except PhotoSkipped as exc:
            problem = str(exc)
            try:
                c = crop_face(face, detector)
            except PhotoSkipped:
                c = None
        rows["problem"].append(problem)
        if c is None:
            for k in ("sex", "sex_conf", "age", "yaw", "smile"):
                rows[k].append(np.nan if k != "sex" else "")
            rows["skin"].append([np.nan] * 3)
            embeddings.append(np.zeros(128))
            continue
        try:
            a = estimate(c.image, c.face)
            sex, conf, age = a.sex, a.sex_confidence, a.age_years
        except AttributesRefused:
            sex, conf, age = "", np.nan, np.nan
        rows["sex"].append(sex)
        rows["sex_conf"].append(conf)
        rows["age"].append(age)
        rows["skin"].append(c.skin_lab)
        rows["yaw"].append(c.yaw)
        rows["smile"].append(smile(c.face.landmarks))
        embeddings.append(recognizer.embed(c.image, c.face))
        if i % 50 == 49:
            print(f"{i + 1} faces, {(time.perf_counter() - started) / (i + 1):.2f} s each", flush=True)
        if i % SAVE_EVERY == SAVE_EVERY - 1 or i == args.n - 1:
            # Written as it goes: a long run on a shared machine can be used before it ends.
            k = i + 1
            np.savez_compressed(
                args.o / "samples.npz",
                psi=args.psi,
                z=z[:k],
                styles=styles[:k],
                embeddings=np.stack(embeddings),
                thumbs=np.stack(thumbs),
                **{name: np.array(v) for name, v in rows.items()},
            )
    for s in range(0, args.n, 100):
        sheet = Image.new("RGB", (10 * THUMB, 10 * THUMB), "white")
        draw = ImageDraw.Draw(sheet)
        for j, t in enumerate(thumbs[s : s + 100]):
            x, y = (j % 10) * THUMB, (j // 10) * THUMB
            sheet.paste(Image.fromarray(t), (x, y))
            draw.text((x + 3, y + 2), str(s + j), fill="yellow")
        sheet.save(args.o / f"sheet-{s // 100:02d}.png")


if __name__ == "__main__":
    main()
