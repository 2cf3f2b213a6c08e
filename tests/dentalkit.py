"""A clinic's orthodontic photo set made from the shared test data, each view coded as dental
photography codes it (dicom_anon/views.py) and again with no codes, only a series description.

Pictures: the generated face photo (scikit-image's astronaut, public domain), the generated intraoral
photo (dicom4ortho's sample, MIT) and dicom4ortho's coded right-profile drawing (``test.dcm``, MIT).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

DENTAL_ROUTES = [
    {
        "name": "profiles",
        "match": {"view": ["profile", "oblique"]},
        "action": "quarantine",
        "reason": "profile-view",
    },
    {
        "name": "intraoral",
        "match": {"view": "intraoral"},
        "profile": "intraoral",
        "destinations": ["teaching"],
    },
    {
        "name": "photos",
        "match": {"sop_class": ["VLPhotographicImageStorage", "SecondaryCaptureImageStorage"]},
        "profile": "orthodontic",
        "destinations": ["teaching"],
    },
]

CODES = (
    "AnatomicRegionSequence",
    "ViewCodeSequence",
    "PrimaryAnatomicStructureSequence",
    "AcquisitionContextSequence",
)


def code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def coded(
    ds: Dataset,
    region: tuple[str, str],
    view: tuple[str, str] | None = None,
    side: tuple[str, str] | None = None,
    structure: tuple[str, str] | None = None,
    smiling: bool = False,
) -> Dataset:
    """A copy of ``ds`` with new UIDs, a neutral series description and only the given codes."""
    out = uncoded(ds, "Clinical photo")
    region_item = code(*region)
    if side is not None:
        region_item.AnatomicRegionModifierSequence = [code(*side)]
    out.AnatomicRegionSequence = [region_item]
    if view is not None:
        out.ViewCodeSequence = [code(*view)]
    if structure is not None:
        out.PrimaryAnatomicStructureSequence = [code(*structure)]
    if smiling:
        context = Dataset()
        context.ValueType = "CODE"
        context.ConceptNameCodeSequence = [
            code("130324", "Functional condition present during acquisition", "DCM")
        ]
        context.ConceptCodeSequence = [code("225583004", "Smiles")]
        out.AcquisitionContextSequence = [context]
    return out


def uncoded(ds: Dataset, description: str) -> Dataset:
    """A copy of ``ds`` with new UIDs, no view codes and ``description`` as the only hint."""
    out = copy.deepcopy(ds)
    for keyword in CODES:
        if keyword in out:
            delattr(out, keyword)
    out.SeriesDescription = description
    out.ImageComments = "sent by the clinic"
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


MOUTH = ("123851003", "Mouth region structure")
HEAD = ("774007", "Structure of head and/or neck")
FRONTAL = ("399033003", "Frontal projection")
RIGHT_LATERAL = ("399198007", "Right lateral projection")
OCCLUSAL = ("260499007", "Occlusal projection")
RIGHT = ("24028007", "Right")
MAXILLA = ("70925003", "Maxilla")


def sample_set(testdata: Path) -> dict[str, tuple[Dataset, str]]:
    """name -> (instance, the view it should be recognised as)."""
    generated = testdata / "dicom" / "generated"
    face = pydicom.dcmread(generated / "vlphoto_face_noburn_explicit_le.dcm")
    mouth = pydicom.dcmread(generated / "vlphoto_intraoral_noburn_explicit_le.dcm")
    profile = pydicom.dcmread(testdata / "dicom" / "dicom4ortho" / "test.dcm")
    return {
        "frontal-coded": (coded(face, HEAD, FRONTAL), "frontal"),
        "frontal-uncoded": (uncoded(face, "Extraoral frontal at rest"), "frontal"),
        "smile-coded": (coded(face, HEAD, FRONTAL, smiling=True), "smile"),
        "smile-uncoded": (uncoded(face, "Frontal smile"), "smile"),
        "profile-coded": (profile, "profile-right"),
        "profile-uncoded": (uncoded(profile, "Right profile"), "profile-right"),
        "intraoral-coded": (coded(mouth, MOUTH, FRONTAL), "intraoral-frontal"),
        "intraoral-uncoded": (uncoded(mouth, "Intraoral frontal"), "intraoral-frontal"),
        "buccal-right-coded": (coded(mouth, MOUTH, RIGHT_LATERAL, side=RIGHT), "intraoral-buccal-right"),
        "buccal-right-uncoded": (uncoded(mouth, "Right buccal"), "intraoral-buccal-right"),
        "occlusal-upper-coded": (coded(mouth, MOUTH, OCCLUSAL, structure=MAXILLA), "occlusal-upper"),
        "occlusal-upper-uncoded": (uncoded(mouth, "Upper occlusal"), "occlusal-upper"),
        # The mislabelled one: a face sent under the intraoral codes.
        "face-coded-as-intraoral": (coded(face, MOUTH, FRONTAL), "intraoral-frontal"),
    }


# Where each view goes under DENTAL_ROUTES.
ROUTE_OF = {
    "frontal": "photos",
    "smile": "photos",
    "profile-right": "profiles",
    "intraoral-frontal": "intraoral",
    "intraoral-buccal-right": "intraoral",
    "occlusal-upper": "intraoral",
}
