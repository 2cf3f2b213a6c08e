"""PS3.15 Annex E de-identification of one dataset: the table, the options, the pseudonyms.

``deidentify`` copies the input and walks the copy at every depth. For each element:

* private elements (odd groups, including ones read as UN from Implicit VR) are
  removed, unless Retain Safe Private is on and (private creator, element) is on the
  profile's safe list; a private creator goes when none of its elements stays;
* Icon Image Sequence (0088,0200), overlay groups 60xx, curve groups 50xx, Waveform
  Sequence (5400,0100) and directory attributes (group 0004) are removed wherever they
  appear (with Clean Graphics too: burned overlay bits cannot be cleaned, only removed);
* Patient ID and Patient's Name become keyed pseudonyms of the original Patient ID
  (or of name and birth date when the ID is empty); Accession Number and Study ID
  become keyed pseudonyms of themselves, so studies stay distinguishable;
* attributes in Table E.1-1 get the action that ``table.resolve`` chooses:
  X remove, Z empty, D dummy (``dummies``), K keep, U new UID (``uids``), C clean:
  dates shift by the patient's offset (``dates``), prose becomes a neutral value
  (``text``), sequences are kept and their items de-identified;
* other standard attributes are kept, except prose, which is cleaned; attributes
  that are neither in the data dictionary nor private are removed, since nobody can
  say what they hold.

A sequence is always recursed into when it is kept, so the table applies at every
depth; D on a sequence keeps its structure (IOD types stay satisfied) and replaces
every value inside with a dummy. Then JPEG metadata segments are stripped from
encapsulated Pixel Data (``encapsulated``), the markers are written (``markers``) and
the file meta is rebuilt around the new SOP Instance UID.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pydicom
from pydicom import Dataset
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, repeater_has_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from .. import __version__
from .acceptance import check_acceptable, sop_class_kind
from .dates import shift_da, shift_dt
from .dummies import base_vr, dummy_value, empty_value
from .echo import Identifiers, identifiers
from .encapsulated import strip_pixel_data
from .markers import write_markers
from .options import PIXEL_OPTIONS, Option
from .pseudonyms import SiteKey
from .table import Resolved, Table, load_table, repeating_group_base, resolve
from .text import CLEANED_TEXT, clean_code_string, is_free_text, is_text, names_prose
from .uids import new_uid

# Private attributes kept under Retain Safe Private: numeric acquisition parameters
# (diffusion b-values and directions, PET SUV scaling) that PS3.15 Table E.3.10-1 lists
# as safe. Only numbers, no text: a wrong entry here would keep a value, so the list is
# short on purpose; a site adds its own through Profile.safe_private.
DEFAULT_SAFE_PRIVATE: frozenset[tuple[str, int]] = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0C),  # (0019,xx0C) B_value
        ("SIEMENS MR HEADER", 0x0D),  # (0019,xx0D) DiffusionDirectionality
        ("SIEMENS MR HEADER", 0x0E),  # (0019,xx0E) DiffusionGradientDirection
        ("SIEMENS MR HEADER", 0x27),  # (0019,xx27) B_matrix
        ("GEMS_PARM_01", 0x39),  # (0043,xx39) slop_int_6..9 (diffusion b-value)
        ("Philips Imaging DD 001", 0x03),  # (2001,xx03) Diffusion B-Factor
        ("Philips PET Private Group", 0x00),  # (7053,xx00) SUV Factor
        ("Philips PET Private Group", 0x09),  # (7053,xx09) Activity Concentration Scale Factor
    }
)

# Plain ints: comparing pydicom BaseTags goes through a slow __eq__, and this runs per element.
ICON_IMAGE_SEQUENCE = 0x00880200
WAVEFORM_SEQUENCE = 0x54000100
DIRECTORY_GROUP = 0x0004
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
ACCESSION_NUMBER = 0x00080050
STUDY_ID = 0x00200010
PSEUDONYM_TAGS = frozenset({PATIENT_ID, PATIENT_NAME, ACCESSION_NUMBER, STUDY_ID})
TIMEZONE_OFFSET = 0x00080201
PIXEL_DATA = Tag(0x7FE0, 0x0010)

# File meta elements carried over; the rest (Source/Sending/Receiving AE titles, private
# information) name the sender and are dropped.
_FILE_META_KEPT = ("FileMetaInformationVersion", "TransferSyntaxUID")


@dataclass(frozen=True)
class Profile:
    """Which Annex E options a route applies, and which private attributes count as safe."""

    options: frozenset[Option] = frozenset()
    safe_private: frozenset[tuple[str, int]] = DEFAULT_SAFE_PRIVATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", frozenset(Option(o) for o in self.options))
        object.__setattr__(self, "safe_private", frozenset(self.safe_private))
        if {Option.RETAIN_FULL_DATES, Option.RETAIN_MODIFIED_DATES} <= self.options:
            raise ValueError("retain-full-dates and retain-modified-dates exclude each other; choose one")


@dataclass(frozen=True)
class Change:
    """One line of a dry-run review: where, what was done, the masked old value, the new value."""

    location: str
    action: str
    old: str
    new: str


@dataclass(frozen=True)
class DeidResult:
    """A de-identified copy of an instance and what was done to it."""

    dataset: Dataset
    changes: tuple[Change, ...]
    patient_pseudonym: str
    patient_hash: str
    date_shift_days: int | None
    options: frozenset[Option]
    # The input's name and IDs, for the last gate to look for in what is kept (``echo``).
    identifiers: Identifiers = field(default_factory=Identifiers, repr=False)


def deidentify(
    ds: Dataset,
    key: SiteKey,
    profile: Profile,
    *,
    pixels_cleaned: frozenset[Option] = frozenset(),
    in_place: bool = False,
) -> DeidResult:
    """De-identify a copy of ``ds``; raise ``Refused`` when the profile cannot make it safe.

    ``pixels_cleaned`` is the pixel stage's statement of what it did to the pixels
    (clean-pixel-data, clean-recognizable-visual-features); only those pixel options
    are claimed in the output, whatever the profile asked for. ``in_place`` is for a caller
    that never looks at ``ds`` again (``deid`` reads each file once): the copy costs a quarter
    of the engine's time on a small instance, and a refused ``ds`` is then half de-identified.
    """
    pixels_cleaned = frozenset(pixels_cleaned)
    check_acceptable(ds, profile.options, pixels_cleaned)
    applied = (profile.options - PIXEL_OPTIONS) | (pixels_cleaned & PIXEL_OPTIONS)

    original_meta = getattr(ds, "file_meta", None)
    before = identifiers(ds)
    out = ds if in_place else copy.deepcopy(ds)
    patient_key = patient_key_of(out)
    shift = key.date_shift_days(patient_key) if Option.RETAIN_MODIFIED_DATES in applied else None
    walker = _Walker(key, profile, applied, patient_key, shift)
    walker.dataset(out, "")
    walker.ensure_patient(out)

    for description in strip_pixel_data(out).removed:
        walker.record(_location("", PIXEL_DATA, ""), "strip-jpeg", description, "")

    is_image = sop_class_kind(str(out.SOPClassUID)) == "image"
    for keyword, (old, new) in write_markers(out, applied, key.fingerprint(), is_image=is_image).items():
        tag = Tag(keyword)
        walker.record(_location("", tag, keyword), "add-marker", _mask(old, "CS"), _show(new))

    walker.rebuild_file_meta(out, original_meta)
    return DeidResult(
        dataset=out,
        changes=tuple(walker.changes),
        patient_pseudonym=key.patient_id(patient_key),
        patient_hash=key.keyed_hash(patient_key),
        date_shift_days=shift,
        options=applied,
        identifiers=before,
    )


def patient_key_of(ds: Dataset) -> str:
    """The original identity that every pseudonym of this instance is keyed by.

    Public so that the pixel stage keys the surrogate face by the same identity as the
    header pseudonyms: one patient, one new name, one new face.
    """
    return _patient_key(ds) or _fallback_patient_key(ds)


def patient_pseudonym(ds: Dataset, key: SiteKey) -> str:
    """The pseudonymous Patient ID ``deidentify`` will write for ``ds``."""
    return key.patient_id(patient_key_of(ds))


def _patient_key(item: Dataset) -> str | None:
    """What identifies the patient in this dataset or item: the Patient ID, else name and birth date."""
    patient_id = _text(item.get(PATIENT_ID))
    if patient_id:
        return patient_id
    name = _text(item.get(PATIENT_NAME))
    if name:
        return f"name:{name}|{_text(item.get((0x0010, 0x0030)))}"
    return None


def _fallback_patient_key(ds: Dataset) -> str:
    """With no patient identity at all, each study is its own pseudonymous patient."""
    return f"study:{_text(ds.get((0x0020, 0x000D)))}"


def _text(elem: DataElement | None) -> str:
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, MultiValue | list):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


@dataclass
class _Walker:
    """One pass over one instance; collects the review lines as it goes."""

    key: SiteKey
    profile: Profile
    options: frozenset[Option]
    patient_key: str
    shift_days: int | None
    table: Table = field(default_factory=load_table)
    changes: list[Change] = field(default_factory=list)

    def record(self, location: str, action: str, old: str, new: str) -> None:
        self.changes.append(Change(location, action, old, new))

    # --- walking ---------------------------------------------------------------------

    def dataset(self, ds: Dataset, prefix: str, *, dummy: bool = False) -> None:
        """De-identify one dataset or sequence item in place; ``dummy`` replaces every value."""
        level_key = _patient_key(ds) or self.patient_key
        for elem in list(ds):
            tag = elem.tag
            if tag.is_private:
                if not tag.is_private_creator:
                    self._private(ds, elem, prefix)
                continue
            location = _location(prefix, tag, elem.keyword)
            if tag.element == 0:
                self._remove(ds, elem, location, "X")
            elif (removal := removed_everywhere(tag)) is not None:
                self._remove(ds, elem, location, removal)
            elif dummy:
                self._dummy(ds, elem, prefix, location)
            elif int(tag) in PSEUDONYM_TAGS:
                self._pseudonym(ds, elem, location, level_key)
            else:
                self._public(ds, elem, prefix, location)
        self._drop_unused_private_creators(ds, prefix)

    def _public(self, ds: Dataset, elem: DataElement, prefix: str, location: str) -> None:
        vr = value_vr(elem)
        row = self.table.lookup(elem.tag)
        if row is None:
            if not (dictionary_has_tag(elem.tag) or repeater_has_tag(elem.tag)):
                # Neither standard nor private: nobody can say what it holds.
                self._remove(ds, elem, location, "X")
            elif vr == "SQ":
                self._items(elem, prefix)
            elif is_free_text(vr, elem.keyword) and not _is_empty(elem):
                self._set(ds, elem, CLEANED_TEXT, location, "C")
            else:
                self._clean_code_string(ds, elem, location)
            return
        self._apply(ds, elem, resolve(row, self.options, vr=vr, keyword=elem.keyword), prefix, location)

    def _apply(self, ds: Dataset, elem: DataElement, action: Resolved, prefix: str, location: str) -> None:
        vr = value_vr(elem)
        code = action.code
        if code == "X":
            self._remove(ds, elem, location, "X")
        elif code == "Z":
            if not _is_empty(elem):
                self._set(ds, elem, empty_value(vr), location, "Z")
        elif code == "D":
            if vr == "SQ":
                self._items(elem, prefix, dummy=True)
                self.record(location, "D", _mask(elem.value, vr), "dummy items")
            else:
                self._set(ds, elem, self._dummy_value(elem), location, "D")
        elif code == "U":
            if vr == "SQ":
                self._items(elem, prefix)
            else:
                self._set(ds, elem, self._uid_value(elem), location, "U")
        elif code == "K":
            self._keep(ds, elem, prefix, location)
        elif code == "C":
            self._clean(ds, elem, action.option, prefix, location)
        else:
            raise ValueError(f"unresolved action {code!r} for {location}")

    def _keep(self, ds: Dataset, elem: DataElement, prefix: str, location: str) -> None:
        vr = value_vr(elem)
        if vr == "SQ":
            self._items(elem, prefix)
        elif names_prose(vr, elem.keyword) and not _is_empty(elem):
            # An option keeps what an attribute identifies, never a description's prose.
            self._set(ds, elem, CLEANED_TEXT, location, "C")
        elif not _is_empty(elem) and not self._clean_code_string(ds, elem, location):
            self.record(location, "K", _mask(elem.value, vr), _mask(elem.value, vr))

    def _clean_code_string(self, ds: Dataset, elem: DataElement, location: str) -> bool:
        """A kept code string that is not one of its terms is free text: clean it (True if it was)."""
        if value_vr(elem) != "CS" or _is_empty(elem):
            return False
        cleaned = clean_code_string(elem.keyword, _values(elem))
        if cleaned is None:
            return False
        self._set(ds, elem, _join(cleaned), location, "C")
        return True

    def _clean(
        self, ds: Dataset, elem: DataElement, option: Option | None, prefix: str, location: str
    ) -> None:
        vr = value_vr(elem)
        if vr == "SQ":
            self._items(elem, prefix)
        elif _is_empty(elem):
            return
        elif option is Option.RETAIN_MODIFIED_DATES:
            self._shift(ds, elem, location)
        elif vr == "UI":
            self._set(ds, elem, self._uid_value(elem), location, "U")
        elif is_text(vr):
            self._set(ds, elem, CLEANED_TEXT, location, "C")
        else:
            self._set(ds, elem, dummy_value(vr), location, "C")

    def _shift(self, ds: Dataset, elem: DataElement, location: str) -> None:
        """Retain Modified Dates: dates move by the patient's offset; times and UTC offsets stay."""
        vr = value_vr(elem)
        if vr in ("DA", "DT"):
            shift = shift_da if vr == "DA" else shift_dt
            days = self.shift_days or 0
            values = _values(elem)
            moved = [shift(v, days) if v else v for v in values]
            if any(m is None for m in moved):
                # Not a date we can read: it cannot be kept, so it becomes a dummy.
                self._set(ds, elem, dummy_value(vr), location, "D")
            else:
                self._set(ds, elem, _join(moved), location, "shift")
        elif vr == "TM" or int(elem.tag) == TIMEZONE_OFFSET:
            self.record(location, "K", _mask(elem.value, vr), _mask(elem.value, vr))
        else:
            self._remove(ds, elem, location, "X")

    def _dummy(self, ds: Dataset, elem: DataElement, prefix: str, location: str) -> None:
        """Inside a sequence whose action is D: keep every element, replace every value."""
        vr = value_vr(elem)
        if vr == "SQ":
            self._items(elem, prefix, dummy=True)
        elif vr == "UI":
            self._set(ds, elem, self._uid_value(elem), location, "U")
        else:
            self._set(ds, elem, dummy_value(vr), location, "D")

    def _items(self, elem: DataElement, prefix: str, *, dummy: bool = False) -> None:
        for index, item in enumerate(elem.value or ()):
            self.dataset(item, _item_prefix(prefix, elem, index), dummy=dummy)

    # --- the special attributes ---------------------------------------------------------

    def _pseudonym(self, ds: Dataset, elem: DataElement, location: str, level_key: str) -> None:
        tag = int(elem.tag)
        if tag == PATIENT_ID:
            value = self.key.patient_id(level_key)
        elif tag == PATIENT_NAME:
            value = self.key.patient_name(level_key)
        else:
            original = _text(elem)
            if not original:
                return
            derive = self.key.accession_number if tag == ACCESSION_NUMBER else self.key.study_id
            value = derive(original)
        self._set(ds, elem, value, location, "pseudonym")

    def ensure_patient(self, ds: Dataset) -> None:
        """The output always names its pseudonymous patient, even when the input left the attributes out."""
        if PATIENT_NAME not in ds:
            ds.PatientName = self.key.patient_name(self.patient_key)
            self.record(_location("", Tag(PATIENT_NAME), "PatientName"), "pseudonym", "", str(ds.PatientName))
        if PATIENT_ID not in ds:
            ds.PatientID = self.key.patient_id(self.patient_key)
            self.record(_location("", Tag(PATIENT_ID), "PatientID"), "pseudonym", "", ds.PatientID)

    def _private(self, ds: Dataset, elem: DataElement, prefix: str) -> None:
        tag = elem.tag
        creator = private_creator(ds, tag)
        location = _location(prefix, tag, f"private [{creator}]" if creator else "private")
        safe = (
            Option.RETAIN_SAFE_PRIVATE in self.options
            and creator is not None
            and tag.element >= 0x1000
            and (creator, tag.element & 0xFF) in self.profile.safe_private
        )
        if not safe:
            self._remove(ds, elem, location, "remove-private")
        elif value_vr(elem) == "SQ":
            self._items(elem, prefix)
        else:
            self.record(location, "K", _mask(elem.value, elem.VR), _mask(elem.value, elem.VR))

    def _drop_unused_private_creators(self, ds: Dataset, prefix: str) -> None:
        for elem in list(ds):
            tag = elem.tag
            if not tag.is_private_creator:
                continue
            block = (tag.group << 16) | ((tag.element & 0xFF) << 8)
            if not any(block <= int(t) <= block + 0xFF for t in ds.keys()):  # noqa: SIM118 (tags, not items)
                self._remove(ds, elem, _location(prefix, tag, "private creator"), "remove-private")

    # --- values -------------------------------------------------------------------------

    def _uid_value(self, elem: DataElement) -> str | list[str]:
        return _join([new_uid(self.key, v) for v in _values(elem)])

    def _dummy_value(self, elem: DataElement) -> object:
        return self._uid_value(elem) if value_vr(elem) == "UI" else dummy_value(value_vr(elem))

    def _set(self, ds: Dataset, elem: DataElement, value: object, location: str, action: str) -> None:
        vr = value_vr(elem)
        old = _mask(elem.value, vr)
        replacement = DataElement(elem.tag, vr, value)
        ds[elem.tag] = replacement
        self.record(location, action, old, _show(replacement.value))

    def _remove(self, ds: Dataset, elem: DataElement, location: str, action: str) -> None:
        del ds[elem.tag]
        self.record(location, action, _mask(elem.value, value_vr(elem)), "")

    def rebuild_file_meta(self, out: Dataset, old_meta: FileMetaDataset | None) -> None:
        """A fresh file meta for the new instance: new SOP Instance UID, nothing about the sender."""
        old_meta = old_meta or FileMetaDataset()
        meta = FileMetaDataset()
        for keyword in _FILE_META_KEPT:
            if keyword in old_meta:
                setattr(meta, keyword, old_meta[keyword].value)
        meta.MediaStorageSOPClassUID = out.SOPClassUID
        if "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = f"DICOMANON_{__version__}"[:16]
        for elem in old_meta:
            if elem.keyword not in meta and elem.keyword != "FileMetaInformationGroupLength":
                self.record(_location("", elem.tag, elem.keyword), "X", _mask(elem.value, elem.VR), "")
        old_uid = old_meta.get("MediaStorageSOPInstanceUID")
        if old_uid and old_uid != meta.get("MediaStorageSOPInstanceUID"):
            location = _location("", Tag(0x0002, 0x0003), "MediaStorageSOPInstanceUID")
            self.record(location, "U", _mask(old_uid, "UI"), str(meta.get("MediaStorageSOPInstanceUID", "")))
        out.file_meta = meta


# --- small helpers ---------------------------------------------------------------------


def removed_everywhere(tag: BaseTag) -> str | None:
    """The action that removes ``tag`` wherever it appears, whatever the table or an option says.

    Icons are a thumbnail of the picture; overlays and curves carry drawn or typed text, and
    their successor, a Waveform Sequence inside an image, carries channel labels and coded
    annotations with free text; directory attributes (group 0004) belong to a DICOMDIR, not
    to an instance, and name files, whose names often carry the patient's name.
    """
    if int(tag) == ICON_IMAGE_SEQUENCE:
        return "remove-icon"
    if int(tag) == WAVEFORM_SEQUENCE:
        return "remove-waveform"
    if tag.group == DIRECTORY_GROUP:
        return "remove-directory"
    base = repeating_group_base(tag.group)
    if base is not None:
        return "remove-overlay" if base == 0x6000 else "remove-curve"
    return None


def value_vr(elem: DataElement) -> str:
    """The element's VR; the dictionary's when the file said UN (Implicit VR, unknown to the reader)."""
    if elem.VR == "UN" and not elem.tag.is_private:
        try:
            return base_vr(dictionary_VR(elem.tag))
        except KeyError:
            return "UN"
    return base_vr(elem.VR)


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    if isinstance(value, list | MultiValue):
        return not value
    return value is None or value == "" or value == b""


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def _join(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def private_creator(ds: Dataset, tag: BaseTag) -> str | None:
    """The private creator string that reserves ``tag``'s block, or None."""
    creator_tag = Tag(tag.group, tag.element >> 8)
    if tag.element < 0x1000 or creator_tag not in ds:
        return None
    value = ds[creator_tag].value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip() if value else None


def _location(prefix: str, tag: BaseTag, name: str) -> str:
    here = f"({tag.group:04X},{tag.element:04X}) {name or keyword_for_tag(tag) or 'unknown'}"
    return f"{prefix} > {here}" if prefix else here


def _item_prefix(prefix: str, elem: DataElement, index: int) -> str:
    name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    here = f"{name}[{index}]"
    return f"{prefix} > {here}" if prefix else here


def _mask(value: object, vr: str) -> str:
    """A review-safe hint of an original value: never the value itself."""
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, Sequence):
        return f"<{len(value)} items>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list) else str(value)
    if vr == "UI":
        # The root of a UID names the organisation that made it, not the patient.
        return text[:12] + "…" if len(text) > 12 else text
    if len(text) <= 3:
        return f"…({len(text)} chars)"
    return f"{text[0]}…({len(text)} chars)"


def _show(value: object) -> str:
    """A written (new) value as text for the review."""
    if value is None:
        return ""
    if isinstance(value, Sequence):
        return f"<{len(value)} items>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    return str(value)
