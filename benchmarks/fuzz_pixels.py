"""The photo fuzzing run at a size CI cannot afford: hostile photos through the face pipeline.

Usage: .venv/bin/python benchmarks/fuzz_pixels.py [--count 500] [--seed 0] [--keep DIR]

The cases are tests/photo_fuzz.py's (one face photo, JPEG and native, with its JPEG stream, its
encapsulation or its image pixel module broken), run as the worker's pixel stage runs them.
Prints the outcomes per mutation and in all, the cases per second, the slowest case, and every
case that broke an invariant (an exception other than a refusal with a code, or a written photo
whose pixel data does not match its description); exits 1 if there was one. The same seed and
count give the same cases; ``--keep`` writes each broken case there, named by its number. Needs
../shared/testdata.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

from rich.progress import track

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzzing import arguments, finish, keep  # noqa: E402
from photo_fuzz import hostile, run, seeds  # noqa: E402

from dicom_anon.config import PixelSettings  # noqa: E402

TESTDATA = ROOT.parent / "shared" / "testdata"


def main() -> None:
    args = arguments(__doc__, 500).parse_args()
    if not (TESTDATA / "faces" / "sfhq").is_dir():
        sys.exit(f"the seed photo's face is read from {TESTDATA}/faces/sfhq, which is not there")
    warnings.simplefilter("ignore")  # damaged pixel data makes pydicom and the decoders warn
    bases = seeds(TESTDATA)
    settings = PixelSettings(preserve=["mouth"], device="cpu")
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()  # per mutation (a case with two counts under both)
    totals: Counter[str] = Counter()
    broken: list[str] = []
    slowest = (0.0, "")
    start = time.perf_counter()
    for i in track(range(args.count), description="hostile photos"):
        base = rng.choice(sorted(bases))
        data, done = hostile(bases[base], rng)
        what = f"{i} ({base}: {', '.join(done)})"
        try:
            outcome, seconds = run(data, settings, f"ANON-FUZZ-{i}")
        except Exception:  # the invariant: nothing but a refusal with a code may come out
            broken.append(f"{what}: {traceback.format_exc(limit=4)}")
            keep(args.keep, str(i), data)
            continue
        slowest = max(slowest, (seconds, what))
        totals[outcome] += 1
        for name in done:
            outcomes[f"{name}: {outcome}"] += 1
    seconds = time.perf_counter() - start
    for line, n in sorted(outcomes.items()):
        print(f"{line:70s} {n:5d}")
    print("all cases: " + ", ".join(f"{outcome} {n}" for outcome, n in totals.most_common()))
    finish(args.count, seconds, slowest, broken)


if __name__ == "__main__":
    main()
