"""A trial of a profile preset (issue 27): keep the soft-tissue profile below the nose bridge exact,
blur the rest (eye, brow, forehead, ear, hair), and ask both recognisers whether the person can
still be found from their front view. Not used by the service, which holds profiles (profile-view).

    .venv/bin/python -m dicom_anon.lab.profile_band [-o out/profile_band.png]

On the left and right profiles of openpeople's ten synthetic people (their character sheets, MIT):
MTCNN's box and landmarks place the band (from below the eyes to below the chin, from behind the
mouth corners to the photo's edge the face looks towards); the rest is blurred with a sigma of a
tenth of the face box, fading in from the band's edge. Prints, per photo and in sum, SFace's
similarity (same person >= 0.363) and dlib's distance (same person < 0.6) of the profile to the
person's front view, before and after; writes a contact sheet (front | profile | trial) to look at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ..faces.detect import Face, get_detector
from ..faces.embed import SFACE_SAME_PERSON, cosine, get_recognizer
from ..faces.judge import DLIB_SAME_PERSON, distance, get_judge

TILES_X = [(67, 552), (661, 1147), (1253, 1739), (1848, 2333)]  # front, left, back, right at 2400 px


def profiles() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, front view, profile) for each person's two profiles."""
    import openpeople

    out = []
    for sheet in sorted(
        (Path(openpeople.__file__).parent / "data" / "curated").glob("P*/assets/character_sheet.jpg")
    ):
        rgb = np.asarray(Image.open(sheet).convert("RGB"))
        if rgb.shape[:2] != (1792, 2400):
            continue
        front, left, _, right = (np.ascontiguousarray(rgb[140:640, a:b]) for a, b in TILES_X)
        out += [(f"{sheet.parts[-3]}-left", front, left), (f"{sheet.parts[-3]}-right", front, right)]
    return out


def band_mask(shape: tuple[int, ...], face: Face) -> np.ndarray:
    """True where the profile is kept: below the eyes (MTCNN's eye landmarks, plus a margin for the
    lower lid), in front of the mouth corners, down to below the chin."""
    h, w = shape[:2]
    x0, y0, x1, y1 = face.box
    bw, bh = x1 - x0, y1 - y0
    nose = face.landmarks[2]
    mouth_x = face.landmarks[3:5, 0].mean()
    facing_right = nose[0] > (x0 + x1) / 2
    top = int(max(0, face.landmarks[:2, 1].max() + 0.12 * bh))
    bottom = int(min(h, y1 + 0.2 * bh))
    if facing_right:
        left, right = int(max(0, mouth_x - 0.15 * bw)), w
    else:
        left, right = 0, int(min(w, mouth_x + 0.15 * bw))
    mask = np.zeros((h, w), bool)
    mask[top:bottom, left:right] = True
    return mask


def trial(profile: np.ndarray, face: Face) -> np.ndarray:
    """The kept band exact; elsewhere a blur that fades in over a tenth of the face box, so the
    band's edges are not hard seams."""
    keep = band_mask(profile.shape, face)
    sigma = max(4.0, 0.1 * face.width)
    blurred = cv2.GaussianBlur(profile, (0, 0), sigma)
    fade = cv2.distanceTransform((~keep).astype(np.uint8), cv2.DIST_L2, 5)
    alpha = np.clip(fade / max(2.0, 0.1 * face.width), 0, 1)[..., None]
    out = (profile * (1 - alpha) + blurred * alpha + 0.5).astype(np.uint8)
    out[keep] = profile[keep]
    return out


def identity(front: np.ndarray, photo: np.ndarray) -> tuple[float | None, float | None]:
    """SFace similarity and dlib distance of ``photo``'s face to ``front``'s (None: no face found)."""
    recognizer, judge = get_recognizer(), get_judge()
    a, b = recognizer.detect(front), recognizer.detect(photo)
    if not a or not b:
        return None, None
    sim = cosine(recognizer.embed(front, a[0]), recognizer.embed(photo, b[0]))
    dist = distance(judge.describe(front, a[0]), judge.describe(photo, b[0]))
    return sim, dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("out/profile_band.png"))
    args = parser.parse_args()
    detector = get_detector("cpu")
    rows, linked = [], {"before": 0, "after": 0}
    for name, front, profile in profiles():
        faces = detector.detect([profile])[0]
        if not faces:
            print(f"{name}: MTCNN finds no face; skipped")
            continue
        out = trial(profile, faces[0])
        before, after = identity(front, profile), identity(front, out)
        for label, (sim, dist) in (("before", before), ("after", after)):
            if sim is not None and (sim >= SFACE_SAME_PERSON or dist < DLIB_SAME_PERSON):
                linked[label] += 1
        print(f"{name}: SFace/dlib before {before}, after {after}")
        rows.append((name, front, profile, out, after))
    before, after = linked["before"], linked["after"]
    print(f"linked to the front view by SFace or dlib: before {before}, after {after} of {len(rows)}")
    size = 220
    sheet = Image.new("RGB", (3 * size, len(rows) * (size + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, front, profile, out, (sim, dist)) in enumerate(rows):
        top = i * (size + 16)
        for j, img in enumerate((front, profile, out)):
            sheet.paste(Image.fromarray(img).resize((size, size)), (j * size, top))
        found = "no face found" if sim is None else f"SFace {sim:.2f}, dlib {dist:.2f}"
        draw.text((4, top + size + 2), f"{name}: after {found}", fill="black")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"contact sheet: {args.output}")


if __name__ == "__main__":
    main()
