"""Face pipeline speed: seconds per 4000x3000 JPEG Baseline photo end to end, and photos/s in flight.

End to end means what the service worker does for a photo route: decode the JPEG,
detect faces, replace the identity (all candidates the QA gate needs), QA, encode
(Explicit VR Little Endian by default) and read the stored pixels back to verify the
preserved area. Also prints where the time goes, per stage.

    .venv/bin/python benchmarks/bench_faces.py [--runs 5] [--in-flight 2] [--device auto]
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicom_anon.config import PixelSettings
from dicom_anon.faces import blend, detect, embed, pipeline, qa, replace
from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.pixels import codec

STAGES: dict[str, float] = defaultdict(float)
_lock = threading.Lock()


def timed(owner: object, name: str, label: str) -> None:
    """Wrap ``owner.name`` so its wall time adds up under ``label`` (nested stages are not subtracted)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            with _lock:
                STAGES[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def photo() -> Dataset:
    """A 4000x3000 JPEG Baseline (YBR_FULL_422) VL Photographic instance with one ~1100 px face."""
    import openpeople

    portrait = Image.open(openpeople.curated.get("P003").asset_path("studio_portrait")).convert("RGB")
    face = np.asarray(portrait.resize((3000, 3000), Image.Resampling.BICUBIC))
    rgb = np.pad(face, ((0, 0), (500, 500), (0, 0)), mode="reflect")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92, subsampling=1)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = (
        ds.file_meta.MediaStorageSOPClassUID,
        ds.file_meta.MediaStorageSOPInstanceUID,
    )
    ds.PatientID, ds.PatientSex, ds.PatientAge = "BENCH", "F", "030Y"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", default="explicit-le", help="output encoding (explicit-le, rle, ...)")
    ap.add_argument(
        "--max-similarity",
        type=float,
        default=0.30,
        help="QA identity limit; 0.9 shows the one-candidate floor",
    )
    args = ap.parse_args()

    settings = PixelSettings(
        preserve=["mouth"],
        device=args.device,
        output=args.output,
        max_identity_similarity=args.max_similarity,
    )
    key = SiteKey(b"benchmark secret benchmark secret")
    ds = photo()
    pipe = pipeline.get_pipeline(settings)
    print(f"device {pipe.device}, torch threads {torch.get_num_threads()}, output {args.output}")
    pipeline.process_photo(ds, settings, "ANONBENCH", key)  # warm-up: model load, caches

    for owner, name, label in [
        (codec, "decode", "decode (incl. read-back)"),
        (codec, "encode", "encode"),
        (detect.FaceDetector, "detect", "MTCNN detect (incl. QA re-detect)"),
        (replace.SurrogateBackend, "render", "render surrogate"),
        (blend, "composite", "  of which torch harmonise+membrane+blend"),
        (embed.Recognizer, "embed", "SFace embed"),
        (qa, "check", "QA checks (incl. re-detect, embed)"),
    ]:
        timed(owner, name, label)
    # The pipeline imported these by name; point it at the timed wrappers.
    pipeline.decode, pipeline.encode, pipeline.check = codec.decode, codec.encode, qa.check

    times, attempts = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = pipeline.process_photo(ds, settings, "ANONBENCH", key)
        times.append(time.perf_counter() - started)
        attempts.append(result.qa_figures["faces"][0]["attempts"])
    med = statistics.median(times)
    print(
        f"sequential: median {med:.2f} s per 4000x3000 photo over {args.runs} runs "
        f"(min {min(times):.2f}, max {max(times):.2f}); candidates tried per face: {attempts}"
    )
    print("where the time goes (sum over sequential runs, nested stages overlap):")
    for label, secs in sorted(STAGES.items(), key=lambda kv: -kv[1]):
        print(f"  {label:45s} {secs / args.runs:6.2f} s/photo")

    STAGES.clear()
    n = max(args.runs, 2 * args.in_flight)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.in_flight) as pool:
        list(pool.map(lambda _: pipeline.process_photo(ds, settings, "ANONBENCH", key), range(n)))
    wall = time.perf_counter() - started
    print(f"{args.in_flight} in flight: {n / wall:.2f} photos/s ({wall / n:.2f} s per photo, {n} photos)")


if __name__ == "__main__":
    main()
