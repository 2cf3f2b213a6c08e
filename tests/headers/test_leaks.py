"""Leak tests: no planted PHI string survives de-identification, in any encoding, anywhere in the output.

The shared generated files come with manifests of every fake string planted in them
(standard attributes, nested sequences, private blocks, overlays, JPEG COM/EXIF).
The adversarial fixtures below are built in code for the places a manifest cannot
cover: private sequences, UN elements, other character sets, deep nesting.

The search is on the bytes pydicom writes, so it sees whatever the engine left in
any element, sequence, private block, file meta or JPEG segment.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import pixel_module, roundtrip, to_bytes, vl_photo
from fuzz_corpus import DEVICE_IDENTITY
from PIL import Image
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pydicom.valuerep import PersonName

from dicom_anon.headers.engine import Profile, deidentify
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.options import Option
from dicom_anon.headers.pseudonyms import SiteKey

# Manufacturer, Manufacturer's Model Name and Software Versions are not in Table E.1-1,
# so the Basic Profile keeps them as standard public attributes: the manifest's
# "device" strings may be there, and nowhere else.
KEPT_DEVICE_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions")

PROFILES = {
    "default": frozenset(),
    "retain-full-dates": frozenset({Option.RETAIN_FULL_DATES}),
    "retain-modified-dates": frozenset({Option.RETAIN_MODIFIED_DATES}),
    "retain-device-identity": frozenset({Option.RETAIN_DEVICE_IDENTITY}),
    "retain-dates-and-device": frozenset({Option.RETAIN_MODIFIED_DATES, Option.RETAIN_DEVICE_IDENTITY}),
}


# --- helpers ----------------------------------------------------------------------


def _deid(ds: Dataset, key: SiteKey, options: frozenset[Option] = frozenset()) -> Dataset:
    return deidentify(ds, key, Profile(options=options), pixels_cleaned=frozenset()).dataset


def _is_short(text: str) -> bool:
    """Values too short to search as bytes.

    "F" (Patient's Sex), "NHS" (an issuer) or "046Y" (an age) turn up by chance in
    pixel bytes, lengths and UIDs, and "F" is also a legitimate code elsewhere
    (Patient Orientation "F" = foot), so a byte search would fail for the wrong
    reason. They are checked as element values at the attributes that held them.
    """
    return len(text) < 4 or re.fullmatch(r"\d{3}[DWMY]", text) is not None


def _variants(text: str) -> set[str]:
    """The spellings a PN value takes: as written, without trailing empty components, spaced."""
    forms = {text}
    if "^" in text or "=" in text:
        forms |= {text.rstrip("^="), text.replace("^", " ").strip(), text.split("=")[0].rstrip("^")}
    return {f for f in forms if f}


def _encodings(text: str, charset: object) -> set[bytes]:
    found = {text.encode("utf-8")}
    with contextlib.suppress(UnicodeEncodeError):
        found.add(text.encode("latin-1"))
    if charset:
        found.add(encode_string(text, convert_encodings(charset)))
        for part in re.findall(r"[^\x00-\x7f]+", text):
            # ISO 2022 escapes wrap each run; the run's own bytes are the value an
            # escape-unaware search (or a reader that lost the escapes) would see.
            encoded = encode_string(part, convert_encodings(charset))
            found.add(re.sub(rb"\x1b[\x24\x28\x29\x2d][\x28\x29]?[\x40-\x5a]", b"", encoded))
    return {b for b in found if len(b) >= 3}


def _walk(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _tags_holding(ds: Dataset, text: str) -> set[int]:
    """Tags whose whole value is ``text`` (a value inside a multi-valued element is not "held")."""
    return {int(e.tag) for e in _walk(ds) if isinstance(e.value, str | PersonName) and str(e.value) == text}


def find_leaks(
    original: Dataset, output: Dataset, strings: list[str], allowed: frozenset[str] = frozenset()
) -> list[str]:
    """Every string of ``strings`` (minus ``allowed``) that is still in ``output``, with how it was found."""
    raw = to_bytes(output)
    charset = original.get("SpecificCharacterSet")
    leaks = []
    for text in strings:
        if text in allowed:
            continue
        if _is_short(text):
            tags = _tags_holding(original, text)
            still = sorted(t for t in _tags_holding(output, text) if t in tags)
            leaks += [f"{text!r} still the value of {pydicom.tag.Tag(t)}" for t in still]
            continue
        for form in _variants(text):
            for encoded in _encodings(form, charset):
                if encoded in raw:
                    leaks.append(f"{text!r} found as {encoded!r} at byte {raw.index(encoded)}")
    return leaks


def _without(ds: Dataset, keywords: tuple[str, ...]) -> Dataset:
    """A copy of ``ds`` without ``keywords`` at any depth."""
    copy = roundtrip(ds)
    for item in [copy, *(i for e in _walk(copy) if e.VR == "SQ" for i in e.value)]:
        for keyword in keywords:
            if keyword in item:
                delattr(item, keyword)
    return copy


# --- the shared generated files ------------------------------------------------------


def _manifests(testdata: Path) -> list[tuple[Path, dict]]:
    found = sorted((testdata / "dicom" / "generated").glob("*_phi_manifest.json"))
    assert found, "no manifests in testdata/dicom/generated"
    return [(p, json.loads(p.read_text(encoding="utf-8"))) for p in found]


def _noburn_files(testdata: Path) -> list[tuple[Path, dict]]:
    return [
        (m.parent / name, manifest)
        for m, manifest in _manifests(testdata)
        for name in manifest["files"]
        if "noburn" in name
    ]


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_files_leak_no_phi(testdata: Path, site_key: SiteKey, profile: str) -> None:
    options = PROFILES[profile]
    allowed = DEVICE_IDENTITY if Option.RETAIN_DEVICE_IDENTITY in options else frozenset()
    files = _noburn_files(testdata)
    assert len(files) >= 4
    leaks = []
    for path, manifest in files:
        original = pydicom.dcmread(path)
        output = _deid(pydicom.dcmread(path), site_key, options)
        leaks += [
            f"{path.name}: {leak}"
            for leak in find_leaks(original, output, manifest["strings"]["phi"], allowed)
        ]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_files_dates_and_times(testdata: Path, site_key: SiteKey, profile: str) -> None:
    """Dates and times go unless kept by an option; Modified Dates shifts dates but may keep times of day."""
    options = PROFILES[profile]
    leaks = []
    for path, manifest in _noburn_files(testdata):
        original = pydicom.dcmread(path)
        output = _deid(pydicom.dcmread(path), site_key, options)
        planted = manifest["strings"]["dates_times"]
        if Option.RETAIN_FULL_DATES in options:
            assert output.StudyDate == original.StudyDate, f"{path.name}: full dates not retained"
            continue
        if Option.RETAIN_MODIFIED_DATES in options:
            planted = [s for s in planted if original.StudyDate in s]
            assert output.StudyDate and output.StudyDate != original.StudyDate, f"{path.name}: not shifted"
        leaks += [f"{path.name}: {leak}" for leak in find_leaks(original, output, planted)]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_files_device_values(testdata: Path, site_key: SiteKey, profile: str) -> None:
    """Make, model and software stay only where the Basic Profile keeps them (unless the option keeps all)."""
    options = PROFILES[profile]
    leaks = []
    for path, manifest in _noburn_files(testdata):
        original = pydicom.dcmread(path)
        output = _deid(pydicom.dcmread(path), site_key, options)
        if Option.RETAIN_DEVICE_IDENTITY in options:
            assert output.DeviceSerialNumber == original.DeviceSerialNumber, f"{path.name}: not retained"
            continue
        rest = _without(output, KEPT_DEVICE_KEYWORDS)
        leaks += [
            f"{path.name}: {leak}" for leak in find_leaks(original, rest, manifest["strings"]["device"])
        ]
    assert not leaks, "\n".join(leaks)


def test_examples_leak_no_phi(site_key: SiteKey) -> None:
    """The demo's own photos (in the repository, so this runs without ../shared too)."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    manifests = sorted(examples.glob("*_phi_manifest.json"))
    assert len(manifests) >= 3
    leaks = []
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for name in manifest["files"]:
            original = pydicom.dcmread(examples / name)
            output = _deid(pydicom.dcmread(examples / name), site_key)
            leaks += [f"{name}: {leak}" for leak in find_leaks(original, output, manifest["strings"]["phi"])]
    assert not leaks, "\n".join(leaks)


def test_burned_in_files_refused(testdata: Path, site_key: SiteKey) -> None:
    burned = [
        path for path in sorted((testdata / "dicom" / "generated").glob("*.dcm")) if "noburn" not in path.name
    ]
    assert burned
    for path in burned:
        ds = pydicom.dcmread(path)
        assert ds.BurnedInAnnotation == "YES"
        with pytest.raises(Refused) as err:
            deidentify(ds, site_key, Profile(options=frozenset()), pixels_cleaned=frozenset())
        assert err.value.code == "burned-in-annotation", path.name


# --- adversarial fixtures built in code -------------------------------------------------


def _photo(charset: str | list[str] = "ISO_IR 192", transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A small valid VL Photographic instance with a name and an ID, no burned-in text."""
    return vl_photo(
        charset=charset,
        transfer_syntax=transfer_syntax,
        PatientName="Plain^Patient",
        PatientID="PID-0042-ADV",
        StudyDate="20230102",
        ImageType=["ORIGINAL", "PRIMARY"],
        BurnedInAnnotation="NO",
        **pixel_module(8, 8, bytes(range(192))),
    )


def _assert_no_leak(original: Dataset, output: Dataset, strings: list[str]) -> None:
    leaks = find_leaks(original, output, strings)
    assert not leaks, "\n".join(leaks)


def test_names_in_private_sequences(site_key: SiteKey) -> None:
    ds = _photo()
    block = ds.private_block(0x0029, "ADVERSARY PRIVATE 1", create=True)
    inner = Dataset()
    inner.PatientName = "Privseq^Hannelore"
    deeper = Dataset()
    deeper_block = deeper.private_block(0x0031, "ADVERSARY NESTED", create=True)
    deeper_block.add_new(0x01, "LO", "Nested private Ottokar Quist")
    inner.add_new(0x00291010, "LO", "ADVERSARY PRIVATE 1")  # a creator inside the item
    inner.add_new(0x00291001, "SQ", Sequence([deeper]))
    block.add_new(0x10, "SQ", Sequence([inner]))
    ds.add_new(0x00190010, "LO", "ANOTHER CREATOR")
    ds.add_new(0x00191020, "UT", "Orphan private text for Hannelore Privseq")
    ds.add_new(0x00211010, "LO", "No creator at all: Ottokar Quist")  # private element without its creator
    original = roundtrip(ds)
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(original, output, ["Privseq^Hannelore", "Hannelore", "Ottokar Quist", "Privseq"])


def test_private_elements_read_as_un_from_implicit_vr(site_key: SiteKey) -> None:
    ds = _photo(transfer_syntax=ImplicitVRLittleEndian)
    block = ds.private_block(0x0041, "UNKNOWN VENDOR 7", create=True)
    block.add_new(0x01, "LO", "Implicit Ulrike Vandermeer")
    item = Dataset()
    item.PatientName = "Vandermeer^Ulrike"
    block.add_new(0x02, "SQ", Sequence([item]))
    block.add_new(0x03, "OB", b"blob Ulrike Vandermeer MRN-77812")
    ds.add_new(0x00431001, "LO", "stray Vandermeer note")  # no creator
    original = roundtrip(ds)
    assert original[0x00411001].VR == "UN"  # the dictionary does not know this private tag
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(original, output, ["Vandermeer", "Ulrike", "MRN-77812"])


@pytest.mark.parametrize("replace_un", [True, False], ids=["un-read-as-known-vr", "un-kept-as-un"])
def test_public_element_encoded_as_un(
    site_key: SiteKey, monkeypatch: pytest.MonkeyPatch, replace_un: bool
) -> None:
    """Some converters write standard attributes with VR UN; the profile must still see them,
    whether the reader turns them back into their dictionary VR (pydicom's default) or not."""
    monkeypatch.setattr(pydicom.config, "replace_un_with_known_vr", replace_un)
    ds = _photo()
    del ds.PatientName
    ds.add_new(0x00100010, "UN", b"Unvr^Theodora ")
    ds.add_new(0x00081070, "UN", b"Operator^Unvr^Leopold ")  # Operators' Name
    original = roundtrip(ds)
    assert (original["PatientName"].VR == "UN") is not replace_un
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(original, output, ["Unvr^Theodora", "Theodora", "Leopold"])


def _jpeg_with_exif() -> bytes:
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x013B] = "Exif Artist Wilhelmina Crane"
    exif[0x010E] = "ImageDescription MRN-55201 Crane"
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", exif=exif.tobytes(), comment=b"COM Wilhelmina Crane MRN-55201")
    return buf.getvalue()


def test_exif_and_comment_inside_jpeg(site_key: SiteKey) -> None:
    ds = _photo(transfer_syntax=JPEGBaseline8Bit)
    ds.Rows, ds.Columns = 32, 32
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([_jpeg_with_exif()])
    ds["PixelData"].is_undefined_length = True
    original = roundtrip(ds)
    assert b"Wilhelmina" in to_bytes(original)
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(original, output, ["Wilhelmina", "Crane", "MRN-55201"])
    assert np.array_equal(roundtrip(output).pixel_array, original.pixel_array)


@pytest.mark.parametrize(
    ("charset", "name", "parts"),
    [
        pytest.param("ISO_IR 192", "Größe-Öztürk^Zoë^Åsa", ["Größe-Öztürk", "Zoë", "Åsa"], id="utf-8"),
        pytest.param(
            "ISO_IR 100", "Müller-Lüdenscheidt^Jürgen", ["Müller-Lüdenscheidt", "Jürgen"], id="latin-1"
        ),
        pytest.param(
            ["", "ISO 2022 IR 87"],
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
            ["Yamada", "Tarou", "山田", "太郎", "やまだ", "たろう"],
            id="iso2022-jp",
        ),
    ],
)
def test_names_in_other_character_sets(
    site_key: SiteKey, charset: str | list[str], name: str, parts: list[str]
) -> None:
    ds = _photo(charset)
    ds.PatientName = name
    ds.OtherPatientNames = name
    ds.ImageComments = f"Photo of {name.split('=')[-1]}"
    block = ds.private_block(0x0033, "CHARSET VENDOR", create=True)
    block.add_new(0x01, "LO", parts[0])
    original = roundtrip(ds)
    assert any(e in to_bytes(original) for e in _encodings(parts[-1], charset))
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(original, output, [name, *parts])


def test_phi_three_sequences_deep(site_key: SiteKey) -> None:
    """Inside sequences the profile keeps (coded anatomy), a person's data three levels down."""
    level3 = Dataset()
    level3.PatientName = "Deepnest^Cordelia"
    level3.PatientID = "DEEP-ID-5531"
    level3.PatientBirthDate = "19610907"
    level3.ReferringPhysicianName = "Deepdoc^Barnaby"
    level3.ImageComments = "Cordelia's third visit, see Dr Barnaby"
    priv = level3.private_block(0x0035, "DEEP VENDOR", create=True)
    priv.add_new(0x01, "LO", "Deep private Cordelia")
    level2 = Dataset()
    level2.CodeValue, level2.CodingSchemeDesignator, level2.CodeMeaning = "24028007", "SCT", "Right"
    level2.PurposeOfReferenceCodeSequence = Sequence([level3])
    level1 = Dataset()
    level1.CodeValue, level1.CodingSchemeDesignator, level1.CodeMeaning = "89545001", "SCT", "Face"
    level1.AnatomicRegionModifierSequence = Sequence([level2])
    ds = _photo()
    ds.AnatomicRegionSequence = Sequence([level1])
    original = roundtrip(ds)
    output = _deid(roundtrip(ds), site_key)
    _assert_no_leak(
        original, output, ["Deepnest^Cordelia", "Cordelia", "DEEP-ID-5531", "19610907", "Barnaby", "Deepnest"]
    )
    assert output.AnatomicRegionSequence[0].CodeMeaning == "Face"  # coded anatomy is kept, not dropped


@pytest.mark.parametrize("profile", ["default", "retain-device-identity"])
def test_attributes_later_editions_added_to_the_table(site_key: SiteKey, profile: str) -> None:
    """Attributes PS3.15 Table E.1-1 gained after the 2024 edition of our copy, which pydicom's
    dictionary already knows: kept before as unlisted standard attributes (the patient's
    ethnicity as a code; a device serial number in Secondary Capture Device ID, where a fuzzed
    bit flip had moved Device Serial Number, fuzz_deid seed 12345). Also inside a sequence."""
    ethnic = Dataset()
    ethnic.CodeValue, ethnic.CodingSchemeDesignator = "ETHN-CODE-77", "99LOCAL"
    ethnic.CodeMeaning = "Ethnicity-Meaning-Planted"
    ds = _photo()
    ds.add_new(0x00102161, "SQ", Sequence([ethnic]))  # Ethnic Group Code Sequence
    ds.add_new(0x00181010, "LO", "SCDEV-SERIAL-4471")  # Secondary Capture Device ID
    ds.add_new(0x00181011, "LO", "HARDCOPY-ID-9913")  # Hardcopy Creation Device ID
    ds.add_new(0x003A0203, "SH", "CHAN-LABEL-55")  # Channel Label
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "89545001", "SCT", "Face"
    nested.add_new(0x00181010, "LO", "NESTED-SCDEV-0082")
    ds.AnatomicRegionSequence = Sequence([nested])
    original = roundtrip(ds)
    output = _deid(roundtrip(ds), site_key, PROFILES[profile])
    _assert_no_leak(
        original,
        output,
        [
            "ETHN-CODE-77",
            "Ethnicity-Meaning-Planted",
            "SCDEV-SERIAL-4471",
            "HARDCOPY-ID-9913",
            "CHAN-LABEL-55",
            "NESTED-SCDEV-0082",
        ],
    )
    assert 0x00102161 not in output
    assert output.AnatomicRegionSequence[0].CodeMeaning == "Face"
