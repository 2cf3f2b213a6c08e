"""Code the example photos' views as a dental clinic's photo desk would (docs/dental-views.md), so the
demo shows each view of an orthodontic set taking its own route. The *_explicit_le files get the
dental photography codes (Anatomic Region, View Code, SNOMED CT as dicom_anon/views.py lists them);
the *_jpeg_baseline files keep no codes and name the view in Series Description only, as senders
that code nothing do. Run by make_examples.sh after the photos are made; rewrites them in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

# prefix -> (Anatomic Region, View Code, region modifier or None, Series Description)
VIEWS = {
    "patient_a_intraoral": (
        ("123851003", "Mouth region structure"),
        ("399033003", "Frontal projection"),
        None,
        "Intraoral frontal",
    ),
    "patient_a_profile": (
        ("774007", "Structure of head and/or neck"),
        ("399198007", "Right lateral projection"),
        ("24028007", "Right"),
        "Extraoral right profile",
    ),
}


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def main(folder: Path) -> None:
    for prefix, (region, view, side, description) in VIEWS.items():
        for path in sorted(folder.glob(f"{prefix}_*.dcm")):
            ds = pydicom.dcmread(path)
            ds.SeriesDescription = description
            if path.name.endswith("_explicit_le.dcm"):
                item = code(*region)
                if side is not None:
                    item.AnatomicRegionModifierSequence = [code(*side)]
                ds.AnatomicRegionSequence = [item]
                ds.ViewCodeSequence = [code(*view)]
            else:
                for keyword in ("AnatomicRegionSequence", "ViewCodeSequence"):
                    if keyword in ds:
                        delattr(ds, keyword)
            ds.save_as(path, enforce_file_format=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
