"""The deid fuzzing run at a size CI cannot afford: thousands of hostile instances through deid_file.

Usage: .venv/bin/python benchmarks/fuzz_deid.py [--count 5000] [--seed 0] [--profile OPTION ...]
    [--keep DIR]

The corpus is tests/fuzz_corpus.py's (planted markers everywhere PHI hides, then lying lengths,
truncation, bit flips, wrong VRs, deep nesting, broken encapsulation, wrong transfer syntaxes,
multi-valued UIDs, command elements), seeded by the shared test data when it is there. Prints
the outcome counts per refusal code, the cases per second, the slowest case, and every case
that broke an invariant (an internal error, or a planted string in a written file); exits 1 if
there was one. The same seed and count give the same cases; ``--keep`` writes each case that
broke an invariant there, named by its number, to be read with ``dicom-anon deid`` or pydicom.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_corpus import DEVICE_IDENTITY, corpus, leaks  # noqa: E402
from fuzzing import arguments, finish, keep  # noqa: E402

from dicom_anon.batch import deid_file  # noqa: E402
from dicom_anon.headers.engine import Profile  # noqa: E402
from dicom_anon.headers.options import Option, parse_options  # noqa: E402
from dicom_anon.headers.pseudonyms import SiteKey  # noqa: E402

TESTDATA = ROOT.parent / "shared" / "testdata"


def main() -> None:
    parser = arguments(__doc__, 5000)
    parser.add_argument("--profile", nargs="*", default=[], help="Annex E options (default: basic profile)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # damaged input makes pydicom warn about charsets; counted below instead
    testdata = TESTDATA if TESTDATA.is_dir() else None
    profile = Profile(options=parse_options(args.profile))
    # What the options keep on purpose is not a leak.
    kept = DEVICE_IDENTITY if Option.RETAIN_DEVICE_IDENTITY in profile.options else frozenset()
    key = SiteKey(b"fuzz-benchmark-secret-0123456789ab")
    outcomes: Counter[str] = Counter()
    broken: list[str] = []
    slowest = (0.0, "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.dcm"
        for hostile in corpus(args.count, seed=args.seed, testdata=testdata):
            source.write_bytes(hostile.data)
            began = time.perf_counter()
            outcome = deid_file(source, key, profile, work / "out")
            slowest = max(slowest, (time.perf_counter() - began, hostile.name))
            problem = None
            if outcome.refused is not None:
                outcomes[outcome.refused.code] += 1
                if outcome.refused.code == "internal-error":
                    problem = outcome.refused.reason
            else:
                outcomes["written"] += 1
                assert outcome.output is not None
                found = leaks(outcome.output.read_bytes(), testdata, kept)
                outcome.output.unlink()
                if found:
                    problem = f"planted {found} in the output"
            if problem is not None:
                broken.append(f"{hostile.name}: {problem}")
                keep(args.keep, hostile.name.split("-")[0], hostile.data)
    seconds = time.perf_counter() - start
    for code, n in outcomes.most_common():
        print(f"{code:28s} {n:6d}")
    finish(args.count, seconds, slowest, broken)


if __name__ == "__main__":
    main()
