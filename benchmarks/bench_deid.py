"""``dicom-anon deid`` against the dicognito CLI: whole runs, start-up included, on the same files.

    .venv/bin/python benchmarks/bench_deid.py [--rounds 5] [--jobs 0] [--corpus small mixed photos]

Corpora (made once in a temporary folder):
- small: 1,000 small VL Photographic instances (1.6 kB, fake PHI, Burned In Annotation NO);
- mixed: the real files under ../shared/testdata/dicom (pydicom, deid-data, dicom4ortho, dcm4che),
  copied three times over with fresh SOP Instance UIDs;
- photos: 100 copies of the generated face photo without burned-in text (uncompressed, 835 kB).

Each round runs both tools on a corpus in turn (which goes first alternates), each a fresh process
into an empty folder, and the ratio is taken per round (dicognito's seconds / ours): a machine shared
with other work slows both runs of a round alike. Prints each round, then medians. Files either tool
refuses (dicognito has no notion of burned-in text that cannot be made safe) still count as processed.
dicognito's console script is broken in 0.19 (``main()`` wants its arguments), so it runs as
``python -m dicognito``, as its README also shows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT.parent / "shared" / "testdata" / "dicom"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
BIN = Path(sys.executable).parent


def small_instance(i: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = VL_PHOTO
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = VL_PHOTO
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", f"MRN{i % 50:06d}", "19780314"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.Modality, ds.InstanceNumber = "20240102", "XC", i + 1
    ds.InstitutionName, ds.StudyDescription = "St. Elsewhere", "Photo of Jane Doe"
    ds.BurnedInAnnotation = "NO"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes((i + k) % 256 for k in range(16 * 16 * 3))
    return ds


def copies(sources: list[Path], folder: Path, times: int) -> int:
    """Each readable source ``times`` over, each copy with a fresh SOP Instance UID."""
    n = 0
    for t in range(times):
        for src in sources:
            try:
                ds = pydicom.dcmread(src)
                ds.SOPInstanceUID = generate_uid()
                if "MediaStorageSOPInstanceUID" in ds.file_meta:
                    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(folder / f"{t}-{n:05d}.dcm", enforce_file_format=False)
                n += 1
            except Exception:  # a file pydicom itself cannot round-trip is left out of both runs
                continue
    return n


def make_corpus(name: str, folder: Path) -> int:
    folder.mkdir(parents=True)
    if name == "small":
        for i in range(1000):
            small_instance(i).save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        return 1000
    if name == "mixed":
        real = sorted(
            p
            for sub in ("pydicom", "deid-data", "dicom4ortho", "dcm4che")
            for p in (TESTDATA / sub).rglob("*")
            if p.is_file() and p.suffix.lower() in (".dcm", "")
        )
        return copies(real, folder, 3)
    photo = TESTDATA / "generated" / "vlphoto_face_noburn_explicit_le.dcm"
    return copies([photo], folder, 100)


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=0, help="dicom-anon deid --jobs (0: one per core)")
    parser.add_argument("--corpus", nargs="+", default=["small", "mixed", "photos"])
    args = parser.parse_args()
    if not TESTDATA.is_dir() and set(args.corpus) - {"small"}:
        sys.exit(f"the shared test data is missing ({TESTDATA}); run with --corpus small")
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        work = Path(tmp)
        for corpus in args.corpus:
            src = work / corpus
            count = make_corpus(corpus, src)
            ours = [
                str(BIN / "dicom-anon"), "deid", str(src), "--data-dir", str(work / "d"),
                "--jobs", str(args.jobs), "-o",
            ]  # fmt: skip
            theirs = [sys.executable, "-m", "dicognito", "--quiet", str(src), "-o"]
            print(f"\n{corpus}: {count} files, {args.rounds} rounds (ratio = dicognito s / dicom-anon s)")
            ratios, our_s, their_s = [], [], []
            for r in range(args.rounds):
                runs = {}
                order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
                for who in order:
                    out = work / f"out-{who}"
                    shutil.rmtree(out, ignore_errors=True)
                    runs[who] = timed([*(ours if who == "ours" else theirs), str(out)])
                our_s.append(runs["ours"])
                their_s.append(runs["theirs"])
                ratios.append(runs["theirs"] / runs["ours"])
                print(
                    f"  round {r + 1}: dicom-anon {runs['ours']:.2f} s, dicognito {runs['theirs']:.2f} s,"
                    f" ratio {ratios[-1]:.2f}x"
                )
            print(
                f"  median: dicom-anon {statistics.median(our_s):.2f} s"
                f" ({count / statistics.median(our_s):.0f} files/s), dicognito"
                f" {statistics.median(their_s):.2f} s, ratio {statistics.median(ratios):.2f}x"
            )


if __name__ == "__main__":
    main()
