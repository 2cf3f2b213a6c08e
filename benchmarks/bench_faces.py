"""Face pipeline speed: seconds per 4000x3000 JPEG Baseline photo end to end, and photos/s in flight.

End to end means what the service worker does for a photo route: decode the JPEG,
detect faces, replace the identity (all candidates the QA gate needs), QA, encode
(Explicit VR Little Endian by default) and read the stored pixels back to verify the
preserved area. Also prints where the time goes, per stage.

The figure that counts is the median over several different faces (SFHQ faces from
``../shared/testdata/faces/sfhq`` when present, else openpeople portraits), each scaled up
into its own 4000x3000 photo with its own patient. openpeople P003 is printed apart as the
worst case: P003 is also in the surrogate pool, so every candidate near them is excluded
and the QA gate needs many tries.

With ``--identity generated`` each face is timed three ways: a
new patient's first photo (a draw from the generator: screening, previewing and measuring
candidates at 256 px, rendering the one to be taken in full and measuring it again, preparing
it), the same patient's next photo in the same process (the
person remembered, its face and preparation cached), and that photo after a restart (the
person regenerated from its remembered index and prepared again).

With ``--method gan`` the new face is the GAN backend's (docs/gan.md): the same person drawn,
then inverted around the kept area and drawn again at 1024 px.

    .venv/bin/python benchmarks/bench_faces.py [--runs 3] [--faces 5] [--in-flight 2] [--device auto]
        [--identity generated|pool] [--method surrogate|gan]
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicom_anon.config import PixelSettings
from dicom_anon.faces import (
    blend,
    detect,
    embed,
    generated,
    generator,
    identities,
    pipeline,
    prepare,
    qa,
    replace,
)
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.pseudonyms import SiteKey
from dicom_anon.pixels import codec

SFHQ = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "faces" / "sfhq"
KEY = SiteKey(b"benchmark secret benchmark secret")

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


def photo(face: Image.Image, patient_id: str, sex: str = "", age: str = "") -> Dataset:
    """A 4000x3000 JPEG Baseline (YBR_FULL_422) VL Photographic instance: ``face`` scaled to 3000 px
    high, the sides filled by repeating its edge columns (a mirror would add half faces)."""
    square = np.asarray(face.convert("RGB").resize((3000, 3000), Image.Resampling.BICUBIC))
    rgb = np.pad(square, ((0, 0), (500, 500), (0, 0)), mode="edge")
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
    ds.PatientID, ds.PatientSex, ds.PatientAge = patient_id, sex, age
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def openpeople_face(person: str) -> Image.Image:
    import openpeople

    return Image.open(openpeople.curated.get(person).asset_path("studio_portrait"))


def faces(count: int) -> list[tuple[str, Dataset]]:
    """``count`` different faces spread over the SFHQ set (no header sex or age, as in the evaluation),
    or openpeople portraits other than P003 when the shared test data is absent."""
    files = sorted(SFHQ.glob("*.jpg"))
    if files:
        picked = files[:: max(1, len(files) // count)][:count]
        return [(f.stem, photo(Image.open(f), f"BENCH-{f.stem}")) for f in picked]
    people = [f"P{i:03d}" for i in range(1, 11) if i != 3][:count]
    return [(p, photo(openpeople_face(p), f"BENCH-{p}")) for p in people]


def run(
    ds: Dataset,
    settings: PixelSettings,
    pseudonym: str | None = None,
    memory: identities.IdentityMemory | None = None,
) -> tuple[float, str]:
    """Seconds for one photo end to end, and how it ended (candidates tried, or the refusal code)."""
    started = time.perf_counter()
    try:
        result = pipeline.process_photo(ds, settings, pseudonym or f"ANON-{ds.PatientID}", KEY, memory)
        outcome = f"{result.qa_figures['faces'][0]['attempts']} candidate(s)"
    except Refused as exc:
        outcome = f"refused {exc.code}"
    return time.perf_counter() - started, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per face; its median counts")
    ap.add_argument("--faces", type=int, default=5, help="how many different faces")
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", default="explicit-le", help="output encoding (explicit-le, rle, ...)")
    ap.add_argument(
        "--max-similarity",
        type=float,
        default=0.30,
        help="QA identity limit; 0.9 shows the one-candidate floor",
    )
    ap.add_argument(
        "--no-second-recognizer",
        action="store_true",
        help="gate on SFace alone (the route setting second_recognizer: false)",
    )
    ap.add_argument("--identity", default="pool", choices=["generated", "pool"])
    ap.add_argument("--method", default="surrogate", choices=["surrogate", "gan"])
    args = ap.parse_args()
    if args.method == "gan" and args.identity != "generated":
        ap.error("--method gan is timed with --identity generated (its context is the generated person)")

    settings = PixelSettings(
        preserve=["mouth"],
        device=args.device,
        output=args.output,
        max_identity_similarity=args.max_similarity,
        second_recognizer=not args.no_second_recognizer,
        identity=args.identity,
        method=args.method,
    )
    if args.identity == "generated":
        new_and_seen_patients(settings, args)
        return
    photos = faces(args.faces)
    worst = photo(openpeople_face("P003"), "BENCH-P003", "F", "030Y")
    pipe = pipeline.get_pipeline(settings)
    gate = "SFace + dlib" if settings.second_recognizer else "SFace only"
    threads = torch.get_num_threads()
    print(f"device {pipe.device}, torch threads {threads}, output {args.output}, QA gate {gate}")
    run(photos[0][1], settings)  # warm-up: model load, caches
    # A running service has prepared every pool photo it used (GrabCut, inpainting: once per
    # process); the figures below are that steady state, this is the one-off cost.
    started = time.perf_counter()
    for surrogate in pipe.backend.pool.surrogates:
        prepare.prepare(surrogate)
    count = len(pipe.backend.pool.surrogates)
    print(f"preparing the {count} pool photos, once per process: {time.perf_counter() - started:.1f} s")

    stages = [
        (codec, "decode", "decode (incl. read-back)"),
        (codec, "encode", "encode"),
        (detect.FaceDetector, "detect", "MTCNN detect (incl. QA re-detect)"),
        (replace.SurrogateBackend, "render", "render surrogate (screening + full)"),
        (blend, "new_face", "  of which torch harmonise+relight+membrane"),
        (blend, "membrane", "    of which membrane"),
        (embed.Recognizer, "embed", "SFace embed"),
        (qa, "check", "full-resolution QA (re-detect, embed)"),
    ]
    for owner, name, label in stages:
        timed(owner, name, label)
    # The pipeline imported these by name; point it at the timed wrappers.
    pipeline.decode, pipeline.encode, pipeline.check = codec.decode, codec.encode, qa.check

    print(f"sequential, median of {args.runs} runs per photo:")
    medians = []
    for name, ds in photos:
        times, outcome = [], ""
        for _ in range(args.runs):
            secs, outcome = run(ds, settings)
            times.append(secs)
        medians.append(statistics.median(times))
        print(f"  {name:40s} {medians[-1]:6.2f} s  (min {min(times):.2f})  {outcome}")
    stage_runs = len(photos) * args.runs
    print(f"median over {len(photos)} faces: {statistics.median(medians):.2f} s per 4000x3000 photo")
    print("where the time goes over these faces (per photo; nested stages overlap):")
    for _, _, label in stages:
        print(f"  {label:45s} {STAGES[label] / stage_runs:6.2f} s")

    times, outcome = [], ""
    for _ in range(args.runs):
        secs, outcome = run(worst, settings)
        times.append(secs)
    print(
        f"worst case, openpeople P003 (in the pool): median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f})  {outcome}"
    )

    n = max(2 * len(photos), 2 * args.in_flight)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.in_flight) as workers:
        list(workers.map(lambda i: run(photos[i % len(photos)][1], settings), range(n)))
    wall = time.perf_counter() - started
    print(f"{args.in_flight} in flight: {n / wall:.2f} photos/s ({wall / n:.2f} s per photo, {n} photos)")


def new_and_seen_patients(settings: PixelSettings, args: argparse.Namespace) -> None:
    """A new patient's first photo, the next photo in the same process, and after a restart."""
    photos = faces(args.faces)
    pipe = pipeline.get_pipeline(settings)
    source = pipe.identities
    print(f"device {pipe.device}, generated identities (psi {source.generator.psi}), QA gate", end=" ")
    print("SFace + dlib" if settings.second_recognizer else "SFace only")
    run(photos[0][1], settings, "ANON-warm-up", identities.InMemoryIdentities())  # model load
    render = [(replace.SurrogateBackend, "render", "render (screening + full)")]
    if args.method == "gan":
        from dicom_anon.faces.gan.backend import GanBackend

        render = [
            (GanBackend, "render", "render (screening + full)"),
            (GanBackend, "invert", "  of which encode and draw at 1024 px (once per candidate)"),
        ]
    stages = [
        (codec, "decode", "decode (incl. read-back)"),
        (codec, "encode", "encode"),
        (detect.FaceDetector, "detect", "MTCNN detect (incl. QA re-detect, candidates)"),
        (generated.GeneratedIdentities, "people", "draw or recall the new person"),
        (generator.FaceGenerator, "faces", "  of which full renders (OpenVINO, 1024 px)"),
        (generator.FaceGenerator, "features", "  of which previews: synthesis to the 128 px block"),
        (generated, "preview_faces", "  of which previews: the head (torch, 256 px)"),
        (generated, "estimate", "  of which sex and age of candidates"),
        (prepare, "_areas", "  of which GrabCut areas (once per face: fringe check, preparing)"),
        (prepare, "_take_down_shine", "prepare the new person's face: shine (once per person)"),
        (prepare, "_paint_temples", "prepare the new person's face: temples (once per person)"),
        *render,
        (embed.Recognizer, "embed", "SFace embed"),
        (qa, "check", "full-resolution QA (re-detect, embed)"),
    ]
    for owner, name, label in stages:
        timed(owner, name, label)
    pipeline.decode, pipeline.encode, pipeline.check = codec.decode, codec.encode, qa.check
    memory = identities.InMemoryIdentities()
    cases = {
        "new patient, first photo": [],
        "seen before, same process": [],
        "seen before, after a restart": [],
    }
    stage_sums: dict[str, dict[str, float]] = {c: defaultdict(float) for c in cases}
    for r in range(args.runs):
        for name, ds in photos:
            pseudonym = f"ANON-{name}-{r}"
            for case in cases:
                if case.endswith("restart"):
                    source._faces.clear()
                    prepare._PREPARED.clear()
                    prepare._AREAS.clear()
                before, draws = dict(STAGES), len(source.draws)
                secs, outcome = run(ds, settings, pseudonym, memory)
                cases[case].append(secs)
                for label, total in STAGES.items():
                    stage_sums[case][label] += total - before.get(label, 0.0)
                if case.startswith("new"):
                    # A photo held before any draw (a face cut off, say) has no draw of its own.
                    drawn = f"  draw {source.draws[-1]}" if len(source.draws) > draws else ""
                    print(f"  {name:32s} new {secs:6.2f} s  {outcome}{drawn}")
                else:  # which person costs what on every later photo (its ovals, its QA tries)
                    print(f"  {name:32s} {case.split(', ')[1]} {secs:6.2f} s  {outcome}")
    for case, times in cases.items():
        print(
            f"{case}: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
            f"over {len(times)} photos (4000x3000 JPEG)"
        )
        for _, _, label in stages:
            print(f"    {label:50s} {stage_sums[case][label] / len(times):6.2f} s")


if __name__ == "__main__":
    main()
