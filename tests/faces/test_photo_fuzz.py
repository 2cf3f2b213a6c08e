"""Fuzzing the face pipeline: hostile photos in, a photo or a refusal with a code out.

The cases (tests/photo_fuzz.py) break a face photo's JPEG stream, its encapsulation or its image
pixel module; each runs as the worker's pixel stage runs it. benchmarks/fuzz_pixels.py runs the
same on hundreds of cases.
"""

from __future__ import annotations

import io
import random
from collections import Counter

import pydicom
import pytest
from photo_fuzz import ENCAPSULATED, hostile, run, seeds

from dicom_anon.config import PixelSettings

CASES = 40


@pytest.mark.timeout(600)
def test_hostile_photos_are_written_or_refused_with_a_code_never_an_error(testdata) -> None:
    bases = seeds(testdata)
    settings = PixelSettings(preserve=["mouth"], device="cpu")
    rng = random.Random(20261207)
    outcomes: Counter[str] = Counter()
    for i in range(CASES):
        base = rng.choice(sorted(bases))
        data, done = hostile(bases[base], rng)
        outcome, seconds = run(data, settings, f"ANON-FUZZ-{i}")  # anything but Refused fails here
        assert seconds < 60, (i, base, done)
        outcomes[outcome] += 1
    # The cases stay hostile: most are refused, for several different reasons, some still written.
    refusals = {o for o in outcomes if o.startswith("refused")}
    assert len(refusals) >= 4 and outcomes["written"] >= 1, outcomes
    assert sum(n for o, n in outcomes.items() if o in refusals) > CASES / 2, outcomes


def test_a_frame_in_several_fragments_is_a_photo_like_any_other(testdata) -> None:
    """PS3.5 A.4 lets one frame's stream span fragments: the photo is decoded and written."""
    ds = pydicom.dcmread(io.BytesIO(seeds(testdata)["jpeg"]))
    ENCAPSULATED["a frame in two fragments"](ds, random.Random(3))
    assert len(ds.PixelData) > 0 and "NumberOfFrames" not in ds
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    settings = PixelSettings(preserve=["mouth"], device="cpu")
    assert run(buf.getvalue(), settings, "ANON-FRAGMENTS")[0] == "written"
