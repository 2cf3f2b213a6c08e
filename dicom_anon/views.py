"""Which view of a clinic's photo set an instance is (frontal, smile, profile, intraoral buccal ...),
from the codes dental photography puts in the headers, else from the words of its descriptions.

A route matches on these names (``match: {view: [intraoral]}``), so that each view of an
orthodontic record takes its own way: intraoral views show no face and keep their pixels, the
face is replaced on frontal views, profile views are held. Kept free of pixels and models:
``rules test`` and the console show from the same code what was recognised and from what.

Where the codes come from (SNOMED CT, scheme SCT), as the ADA/open-ortho orthodontic photo
specification (open-ortho/dent-oip, ADA 1107 draft; used by dicom4ortho) assigns them:
- Anatomic Region Sequence (0008,2218): 123851003 "Mouth region structure" for intraoral views,
  774007 "Structure of head and/or neck" for extraoral views; its Anatomic Region Modifier
  24028007 "Right" / 7771000 "Left" gives the side. 89545001 "Face structure" (PS3.16 CID 4031,
  common in senders outside dentistry) and 74262004 "Oral cavity structure" are read alike.
- View Code Sequence (0054,0220), DICOM PS3.16 CID 4062 "VL View" and CID 4063 "VL Dental View":
  399033003 frontal, 399198007 right lateral, 399173006 left lateral, 260424009 / 260421001 right /
  left lateral oblique, 260499007 occlusal projection.
- Primary Anatomic Structure Sequence (0008,2228): 362626009 / 362627000 entire right / left side
  of face (profiles), and 70925003 maxilla / 91609006 mandible for the occlusal views.
- Acquisition Context Sequence (0040,0555), concept 130324 (DCM) "Functional condition present
  during acquisition" = 225583004 "Smiles" makes a frontal extraoral view a smile.
Senders that code nothing are read from Series Description, then Image Comments (where
dicom4ortho writes the ADA view name, e.g. "EV01^Right Profile ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom is imported by the functions that read an instance: the settings check a route's view
# names (VIEW_NAMES) here, and ``rules check`` would otherwise pay for all of pydicom at start-up.

# Every name a route may give, each with the recognised views it covers. A recognised view is one
# of the specific names, or a general one ("intraoral", "profile") when the photo says no more.
INTRAORAL_VIEWS = (
    "intraoral-frontal",
    "intraoral-buccal-right",
    "intraoral-buccal-left",
    "occlusal-upper",
    "occlusal-lower",
)
EXTRAORAL_VIEWS = ("frontal", "smile", "profile-right", "profile-left", "oblique-right", "oblique-left")
GROUPS: dict[str, frozenset[str]] = {
    "intraoral": frozenset({"intraoral", "occlusal", *INTRAORAL_VIEWS}),
    "occlusal": frozenset({"occlusal", "occlusal-upper", "occlusal-lower"}),
    "extraoral": frozenset({"extraoral", "profile", "oblique", *EXTRAORAL_VIEWS}),
    "profile": frozenset({"profile", "profile-right", "profile-left"}),
    "oblique": frozenset({"oblique", "oblique-right", "oblique-left"}),
}
VIEW_NAMES: dict[str, frozenset[str]] = {
    **{name: frozenset({name}) for name in (*INTRAORAL_VIEWS, *EXTRAORAL_VIEWS)},
    **GROUPS,
}

_INTRAORAL_REGIONS = {"123851003": "mouth region", "74262004": "oral cavity"}
_EXTRAORAL_REGIONS = {"774007": "head and/or neck", "89545001": "face"}
_RIGHT, _LEFT = "24028007", "7771000"
_VIEW_CODES = {
    "399033003": "frontal",
    "399198007": "lateral-right",
    "399173006": "lateral-left",
    "260424009": "oblique-right",
    "260421001": "oblique-left",
    "260499007": "occlusal",
}
_STRUCTURES = {"362626009": "right", "362627000": "left", "70925003": "upper", "91609006": "lower"}
_SMILES = "225583004"

# The words clinics' photo desks use, tried in this order (the first that matches wins); {side}
# is filled in with "right" or "left" from the same text.
_WORDS: tuple[tuple[str, str], ...] = (
    # "occlusal" (the view), never "occlusion" (the bite it was taken in: "centric occlusion").
    (r"occlusal.*(upper|maxill)|(upper|maxill).*occlusal", "occlusal-upper"),
    (r"occlusal.*(lower|mandib)|(lower|mandib).*occlusal", "occlusal-lower"),
    (r"occlusal", "occlusal"),
    (r"buccal|intra.?oral.*(lateral|side)", "intraoral-buccal-{side}"),
    (r"intra.?oral.*(front|anterior)|(front|anterior).*intra.?oral", "intraoral-frontal"),
    (r"intra.?oral|\bteeth\b|dentition", "intraoral"),
    (r"profile|lateral", "profile-{side}"),
    (r"oblique|three.?quarter|\b45\b", "oblique-{side}"),
    (r"smil", "smile"),
    (r"fronta|\bface\b|portrait|extra.?oral.*(front|rest)|en face", "frontal"),
    (r"extra.?oral", "extraoral"),
)
_WORDS_COMPILED = tuple((re.compile(p, re.IGNORECASE), v) for p, v in _WORDS)


@dataclass(frozen=True)
class RecognisedView:
    """The view a photo declares and the evidence: ``source`` is what ``rules test`` prints."""

    name: str | None  # None: nothing in the headers says which view it is
    source: str

    def describe(self) -> str:
        return f"{self.name or 'not recognised'} ({self.source})"


def covers(route_views: list[str], view: str | None) -> bool:
    """Whether a recognised ``view`` is one a route's ``view:`` list names (groups included)."""
    return view is not None and any(view in VIEW_NAMES[name] for name in route_views)


def _codes(items: object) -> list[tuple[str, str, str]]:
    """(value, scheme, meaning) of a code sequence's items; a malformed one yields nothing."""
    from pydicom.dataset import Dataset

    out = []
    for item in items or []:
        if isinstance(item, Dataset):
            out.append(
                (
                    str(item.get("CodeValue", "")).strip(),
                    str(item.get("CodingSchemeDesignator", "")).strip().upper(),
                    str(item.get("CodeMeaning", "")).strip(),
                )
            )
    return out


def _sct(items: object) -> list[tuple[str, str]]:
    return [(value, meaning) for value, scheme, meaning in _codes(items) if scheme in ("SCT", "SRT")]


def _side(text: str) -> str | None:
    right, left = re.search(r"\bright\b", text, re.I), re.search(r"\bleft\b", text, re.I)
    if right and not left:
        return "right"
    if left and not right:
        return "left"
    return None


def _from_codes(ds: Dataset) -> tuple[str | None, list[str]]:
    """The view the codes give (None when they give none), with the codes that gave it."""
    from pydicom.dataset import Dataset

    region = side = jaw = view = None
    used: list[str] = []
    for item in ds.get("AnatomicRegionSequence", None) or []:
        for value, meaning in _sct([item]):
            if value in _INTRAORAL_REGIONS or value in _EXTRAORAL_REGIONS:
                region = "intraoral" if value in _INTRAORAL_REGIONS else "extraoral"
                used.append(f"Anatomic Region SCT {value} {meaning!r}")
                if isinstance(item, Dataset):
                    for mod, mod_meaning in _sct(item.get("AnatomicRegionModifierSequence", None)):
                        if mod in (_RIGHT, _LEFT):
                            side = "right" if mod == _RIGHT else "left"
                            used.append(f"modifier SCT {mod} {mod_meaning!r}")
    for value, meaning in _sct(ds.get("PrimaryAnatomicStructureSequence", None)):
        if value in _STRUCTURES:
            found = _STRUCTURES[value]
            if found in ("upper", "lower"):
                jaw = found
            else:
                side = side or found
            used.append(f"Primary Anatomic Structure SCT {value} {meaning!r}")
    for value, meaning in _sct(ds.get("ViewCodeSequence", None)):
        if value in _VIEW_CODES:
            view = _VIEW_CODES[value]
            used.append(f"View Code SCT {value} {meaning!r}")
            break
    smiling = any(
        value == _SMILES
        for item in ds.get("AcquisitionContextSequence", None) or []
        if isinstance(item, Dataset)
        for value, _ in _sct(item.get("ConceptCodeSequence", None))
    )
    if smiling:
        used.append(f"Acquisition Context SCT {_SMILES} 'Smiles'")
    if view == "occlusal":  # occlusal projections are intraoral whatever the region says
        return (f"occlusal-{jaw}" if jaw else "occlusal"), used
    if region == "intraoral":
        if view == "frontal":
            return "intraoral-frontal", used
        if view in ("lateral-right", "lateral-left", "oblique-right", "oblique-left"):
            return f"intraoral-buccal-{view.rsplit('-', 1)[1]}", used
        return "intraoral", used
    if region == "extraoral":
        if view == "frontal":
            return ("smile" if smiling else "frontal"), used
        if view in ("lateral-right", "lateral-left"):
            return f"profile-{view.rsplit('-', 1)[1]}", used
        if view in ("oblique-right", "oblique-left"):
            return view, used
        if side is not None:  # a head with one side named and no view code: a profile
            return f"profile-{side}", used
        return ("smile" if smiling else "extraoral"), used
    return None, used


def _from_words(text: str) -> tuple[str, str] | None:
    """The view the words give and the words that gave it (only the vocabulary's own words are
    quoted back: descriptions often carry a patient's name)."""
    for pattern, view in _WORDS_COMPILED:
        found = pattern.search(text)
        if found:
            if "{side}" in view:
                side = _side(text)
                view = view.format(side=side) if side else view.split("-{side}")[0].replace("-buccal", "")
                return view, f"{found.group(0)!r}" + (f" and {side!r}" if side else "")
            return view, repr(found.group(0))
    return None


def recognise(ds: Dataset) -> RecognisedView:
    """The most specific view the headers give. Codes come first; the descriptions name the view
    only where the codes give none, or refine a general one ('extraoral' head codes and a series
    called 'smile'; a series called 'Extraoral series' and Image Comments that say 'Right Profile',
    as dicom4ortho writes them). A description never moves a photo between intraoral and extraoral
    that its codes placed: a wrongly worded series must not send a face down the intraoral route."""
    coded, used = _from_codes(ds)
    evidence = "; ".join(used)
    if coded is not None and coded not in GROUPS:
        return RecognisedView(coded, f"from codes: {evidence}")
    best: RecognisedView | None = RecognisedView(coded, f"from codes: {evidence}") if coded else None
    for keyword, label in (("SeriesDescription", "Series Description"), ("ImageComments", "Image Comments")):
        found = _from_words(str(ds.get(keyword, "") or ""))
        if found is None:
            continue
        worded, words = found
        if best is not None and (best.name not in GROUPS or worded not in GROUPS[best.name]):
            continue  # the words disagree with, or say no more than, what is known: that stands
        why = f"{label} says {words}"
        best = RecognisedView(worded, f"{why}; {evidence}" if evidence else why)
        if worded not in GROUPS:
            break
    return best or RecognisedView(None, "no view code and no description naming one")
