"""The intraoral preset's no-face check (dicom_anon/faces/intraoral.py) on the test data: how many
intraoral photos it lets through, how many faces and eye bands it holds, and by which detector.

    .venv/bin/python -m dicom_anon.lab.intraoral_check [--faces 207]

Intraoral: dicom4ortho's sample photo (full size, mirrored, its left and right halves as stand-ins
for buccal views, the teeth only, upside down as an occlusal mirror shot, grey) and the two DICOM
copies of it in the test data and the examples. Faces: the SFHQ synthetic faces, whole, and a band
across each face's eyes only (eyes without a face, cut where MTCNN put the eyes); and the left and
right profiles of openpeople's ten synthetic people (MIT; their character sheets), with how close
SFace puts each profile to the same person's front view (0.363 = "same person"): why profile views
are held (docs/dental-views.md). Prints one line per group: photos, held, and how many each
detector flagged; then the seconds per photo.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from dicom_anon.faces.detect import get_detector
from dicom_anon.faces.intraoral import MIN_SIDE, findings
from dicom_anon.pixels import decode

ROOT = Path(__file__).resolve().parents[2]  # the repository (an editable install's checkout)
TESTDATA = ROOT.parent / "shared" / "testdata"


def intraoral_photos() -> dict[str, np.ndarray]:
    nikon = np.asarray(Image.open(TESTDATA / "dicom/dicom4ortho/sample_NikonD90.JPG").convert("RGB"))
    h, w = nikon.shape[:2]
    photos = {
        "nikon": nikon,
        "nikon-mirrored": nikon[:, ::-1],
        "nikon-left-half": nikon[:, : w // 2],
        "nikon-right-half": nikon[:, w // 2 :],
        "nikon-teeth": nikon[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5],
        "nikon-upside-down": nikon[::-1, ::-1],
        "nikon-grey": np.repeat(np.asarray(Image.fromarray(nikon).convert("L"))[..., None], 3, 2),
    }
    for path in (
        TESTDATA / "dicom/generated/vlphoto_intraoral_noburn_explicit_le.dcm",
        ROOT / "examples/patient_a_intraoral_explicit_le.dcm",
    ):
        photos[path.name] = decode(pydicom.dcmread(path)).frames[0]
    return {k: np.ascontiguousarray(v) for k, v in photos.items()}


def face_photos(limit: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    faces, bands = {}, {}
    detector = get_detector("cpu")
    for path in sorted((TESTDATA / "faces/sfhq").glob("*.jpg"))[:limit]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces[path.name] = rgb
        found = detector.detect([rgb])[0]
        if found:
            (lx, ly), (rx, _) = found[0].landmarks[0], found[0].landmarks[1]
            span = rx - lx
            y0, y1 = max(0, int(ly - 0.6 * span)), int(ly + 0.5 * span)
            x0, x1 = max(0, int(lx - 0.8 * span)), int(rx + 0.8 * span)
            if min(y1 - y0, x1 - x0) >= MIN_SIDE:  # smaller ones the check holds as too small
                bands[path.name] = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    return faces, bands


def openpeople_profiles() -> tuple[dict[str, np.ndarray], list[float]]:
    """Each person's left and right profile, cut from the sheet's top row, and SFace's similarity of
    each to the person's front view (the first tile)."""
    import openpeople

    from dicom_anon.faces.embed import cosine, get_recognizer

    recognizer = get_recognizer()
    sheets = Path(openpeople.__file__).parent / "data" / "curated"
    tiles_x = [(67, 552), (661, 1147), (1253, 1739), (1848, 2333)]  # front, left, back, right (2400 px)
    profiles, similarity = {}, []
    for sheet in sorted(sheets.glob("P*/assets/character_sheet.jpg")):
        rgb = np.asarray(Image.open(sheet).convert("RGB"))
        if rgb.shape[:2] != (1792, 2400):
            continue
        front, left, _, right = (np.ascontiguousarray(rgb[140:640, a:b]) for a, b in tiles_x)
        front_faces = recognizer.detect(front)
        for side, tile in (("left", left), ("right", right)):
            profiles[f"{sheet.parts[-3]}-{side}"] = tile
            found = recognizer.detect(tile)
            if front_faces and found:
                similarity.append(
                    cosine(recognizer.embed(front, front_faces[0]), recognizer.embed(tile, found[0]))
                )
    return profiles, similarity


def report(group: str, photos: dict[str, np.ndarray]) -> float:
    started = time.perf_counter()
    results = {name: findings(rgb, "cpu") for name, rgb in photos.items()}
    seconds = time.perf_counter() - started
    held = [name for name, found in results.items() if any(found.values())]
    per_detector = {k: sum(1 for f in results.values() if f[k]) for k in next(iter(results.values()))}
    print(f"{group}: {len(photos)} photos, {len(held)} held; flagged by {per_detector}")
    if group == "intraoral" and held:
        print(f"  held intraoral photos: {held}")
    return seconds / max(1, len(photos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=207, help="how many SFHQ faces (default: all)")
    args = parser.parse_args()
    faces, bands = face_photos(args.faces)
    profiles, similarity = openpeople_profiles()
    times = [
        report("intraoral", intraoral_photos()),
        report("faces", faces),
        report("eye bands", bands),
        report("profiles", profiles),
    ]
    print(
        f"SFace similarity of a profile to the same person's front view: {len(similarity)} pairs, "
        f"min {min(similarity):.2f}, median {np.median(similarity):.2f}, max {max(similarity):.2f}"
    )
    print(
        f"seconds per photo: {', '.join(f'{t:.2f}' for t in times)} (intraoral, faces, eye bands, profiles)"
    )


if __name__ == "__main__":
    main()
