"""The whole photo path: decode, detect, replace, QA, encode, decode again."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import torch
from facekit import photo_dataset
from PIL import Image

from dicom_anon.config import PixelSettings
from dicom_anon.faces import replace
from dicom_anon.faces.detect import MOUTH_LEFT, get_detector, resolve_device
from dicom_anon.faces.masks import OVAL_LADDER
from dicom_anon.faces.pipeline import process_photo
from dicom_anon.headers.errors import Refused
from dicom_anon.headers.options import Option
from dicom_anon.pixels import decode

PSEUDONYM = "ANONPATIENT0001"


def stored(ds) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def test_preserved_mouth_is_bit_identical_after_the_full_dicom_path(face_a, lenient, site_key) -> None:
    ds = photo_dataset(face_a[None], jpeg=True)
    before = decode(ds).frames
    result = process_photo(ds, lenient, PSEUDONYM, site_key)
    after = decode(stored(result.dataset)).frames
    keep = result.preserved
    assert keep.sum() > 500  # a mouth, not a token pixel
    assert np.array_equal(after[keep], before[keep])
    changed = np.abs(after.astype(int) - before).max(axis=-1) > 8
    assert changed[~keep].sum() > 10 * keep.sum() / 4  # the face around it really changed
    assert result.options_cleaned == frozenset({Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES})
    assert result.dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert result.dataset.LossyImageCompression == "01"  # the JPEG input was lossy once
    face = result.qa_figures["faces"][0]
    assert face["preserved_max_abs_diff"] == 0 and face["face_found"]
    assert result.qa_figures["stored_preserved_max_abs_diff"] == 0


def test_two_faces_both_replaced_with_different_people(face_a, face_b, lenient, site_key) -> None:
    h = max(face_a.shape[0], face_b.shape[0])
    canvas = np.full((h + 40, face_a.shape[1] + face_b.shape[1] + 60, 3), 128, np.uint8)
    canvas[20 : 20 + face_a.shape[0], 20 : 20 + face_a.shape[1]] = face_a
    canvas[20 : 20 + face_b.shape[0], 40 + face_a.shape[1] : 40 + face_a.shape[1] + face_b.shape[1]] = face_b
    result = process_photo(photo_dataset(canvas[None]), lenient, PSEUDONYM, site_key)
    faces = result.qa_figures["faces"]
    assert len(faces) == 2
    assert faces[0]["person"] != faces[1]["person"]


def test_grey_photo_stays_grey_and_exact(face_a, lenient, site_key) -> None:
    grey = np.asarray(Image.fromarray(face_a).convert("L"))
    ds = photo_dataset(grey[None])
    result = process_photo(ds, lenient, PSEUDONYM, site_key)
    out = stored(result.dataset)
    assert out.PhotometricInterpretation == "MONOCHROME2" and out.SamplesPerPixel == 1
    keep = result.preserved[0]
    assert np.array_equal(out.pixel_array[keep], grey[keep])


def test_multiframe_instance_processes_every_frame(face_a, lenient, site_key) -> None:
    frames = np.stack([face_a, face_a[:, ::-1].copy()])
    result = process_photo(photo_dataset(frames), lenient, PSEUDONYM, site_key)
    out = decode(stored(result.dataset)).frames
    assert out.shape == frames.shape
    assert {f["where"] for f in result.qa_figures["faces"]} == {"frame 1 face 1", "frame 2 face 1"}
    for i in range(2):
        keep = result.preserved[i]
        assert np.array_equal(out[i][keep], frames[i][keep])
        assert not np.array_equal(out[i], frames[i])


def test_large_6000x4000_photo(face_a, lenient, site_key) -> None:
    big = np.empty((4000, 6000, 3), np.uint8)
    big[...] = np.linspace(60, 190, 6000, dtype=np.uint8)[None, :, None]
    face = np.asarray(Image.fromarray(face_a).resize((1200, 1200), Image.Resampling.BICUBIC))
    big[1400:2600, 2400:3600] = face
    result = process_photo(photo_dataset(big[None]), lenient, PSEUDONYM, site_key)
    out = decode(result.dataset).frames[0]
    keep = result.preserved[0]
    assert np.array_equal(out[keep], big[keep])
    # Outside the face's region nothing moved.
    assert np.array_equal(out[:1000], big[:1000])


def test_no_face_is_refused_unless_the_route_forwards(site_key) -> None:
    rng = np.random.default_rng(3)
    scene = (rng.integers(0, 30, (240, 320, 3)) + 100).astype(np.uint8)
    ds = photo_dataset(scene[None])
    with pytest.raises(Refused) as exc:
        process_photo(ds, PixelSettings(preserve=["mouth"], device="cpu"), PSEUDONYM, site_key)
    assert exc.value.code == "no-face"
    result = process_photo(ds, PixelSettings(device="cpu", on_no_face="forward"), PSEUDONYM, site_key)
    assert result.options_cleaned == frozenset()  # nothing was cleaned, so nothing is claimed
    assert np.array_equal(decode(result.dataset).frames[0], scene)


def test_tiny_face_is_refused(face_a, site_key) -> None:
    canvas = np.full((400, 400, 3), 120, np.uint8)
    small = np.asarray(Image.fromarray(face_a).resize((64, 64), Image.Resampling.LANCZOS))
    canvas[150:214, 150:214] = small
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(canvas[None]), PixelSettings(device="cpu"), PSEUDONYM, site_key)
    assert exc.value.code == "face-too-small"


def test_face_cut_by_the_photos_edge_is_refused(face_a, site_key) -> None:
    # The bottom of the photo runs through the mouth: the detector still reports a face (and
    # guesses the mouth corners), but its cheeks and mouth are not there to work with.
    face = get_detector("cpu").detect([face_a])[0][0]
    cut = face_a[: int(face.landmarks[MOUTH_LEFT, 1]) + 2]
    assert get_detector("cpu").detect([cut])[0], "the cut face should still be detected"
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(cut[None]), PixelSettings(device="cpu"), PSEUDONYM, site_key)
    assert exc.value.code == "face-cut-off"


def test_turned_face_is_refused(face_a, site_key) -> None:
    # No face is perfectly frontal; a route limit of half a degree makes this one "too turned".
    settings = PixelSettings(preserve=["mouth"], device="cpu", max_yaw=0.5)
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(face_a[None]), settings, PSEUDONYM, site_key)
    assert exc.value.code == "face-too-turned"


def test_identity_still_too_similar_is_refused(face_a, site_key) -> None:
    # A limit of 0.001 asks for an output unrelated to the patient; a face that shares the
    # patient's mouth and hair never gets there, so every candidate fails the identity check.
    settings = PixelSettings(
        preserve=["mouth"],
        device="cpu",
        max_identity_similarity=0.001,
        max_candidates=1,
        identity="generated",
    )
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(face_a[None]), settings, PSEUDONYM, site_key)
    assert exc.value.code == "qa-identity-too-similar"
    # One generated person (max_candidates counts people; one face each) at every face-oval size.
    assert f"after {len(OVAL_LADDER)} tries" in exc.value.reason
    # A pool person: both of their photos, each at every oval size.
    pool = settings.model_copy(update={"identity": "pool"})
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(face_a[None]), pool, PSEUDONYM, site_key)
    assert f"after {2 * len(OVAL_LADDER)} tries" in exc.value.reason


def test_undecodable_pixels_are_refused(face_a, lenient, site_key) -> None:
    ds = photo_dataset(face_a[None], jpeg=True)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8garbage" * 10])
    with pytest.raises(Refused) as exc:
        process_photo(ds, lenient, PSEUDONYM, site_key)
    assert exc.value.code == "undecodable-pixels"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_configured_on_a_machine_without_it_is_refused_with_the_fix(face_a, site_key) -> None:
    """Not an internal error per photo: the route's setting is named, with what to set instead."""
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(face_a[None]), PixelSettings(device="cuda"), PSEUDONYM, site_key)
    assert exc.value.code == "method-unavailable"
    assert "no usable CUDA" in exc.value.reason and "device: auto or cpu" in exc.value.reason


def test_device_names_are_checked() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "meta", "cuda:99"):
        with pytest.raises(ValueError, match=repr(bad)):
            resolve_device(bad)


def test_missing_pool_and_unknown_method_are_refused(face_a, tmp_path, site_key, monkeypatch) -> None:
    # As on a site where the GAN backend (issue 5) is not installed.
    monkeypatch.delitem(replace._REGISTRY, "gan", raising=False)
    ds = photo_dataset(face_a[None])
    with pytest.raises(Refused) as exc:
        process_photo(ds, PixelSettings(device="cpu", identity="pool", pool=tmp_path), PSEUDONYM, site_key)
    assert exc.value.code == "surrogate-pool-unavailable"
    with pytest.raises(Refused) as exc:
        gan = PixelSettings(device="cpu", method="gan", identity="generated")
        process_photo(ds, gan, PSEUDONYM, site_key)
    assert exc.value.code == "method-unavailable"


def test_lossy_output_when_the_route_asks(face_a, lenient, site_key) -> None:
    settings = lenient.model_copy(update={"output": "jpeg-baseline"})
    result = process_photo(photo_dataset(face_a[None]), settings, PSEUDONYM, site_key)
    ds = stored(result.dataset)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"


@pytest.mark.parametrize("surroundings", ["blur", "replace"])
def test_surroundings_blur_or_replace_keep_the_preserved_area(
    face_a, lenient, site_key, surroundings
) -> None:
    settings = lenient.model_copy(update={"surroundings": surroundings})
    result = process_photo(photo_dataset(face_a[None]), settings, PSEUDONYM, site_key)
    out = decode(result.dataset).frames[0]
    keep = result.preserved[0]
    assert np.array_equal(out[keep], face_a[keep])
    corner = (slice(0, 40), slice(0, 40))  # background, far from the face
    moved = not np.array_equal(out[corner], face_a[corner])
    assert moved == (surroundings == "blur")


def test_a_photo_smaller_than_any_face_is_held_for_no_face(lenient, site_key) -> None:
    """MTCNN fails on images under its smallest face (20 px); such a photo simply has no face."""
    with pytest.raises(Refused) as held:
        process_photo(photo_dataset(np.full((1, 8, 8, 3), 128, np.uint8)), lenient, PSEUDONYM, site_key)
    assert held.value.code == "no-face"


def test_a_photo_of_more_faces_or_frames_than_a_clinical_photo_is_held_unprocessed(
    face_a, lenient, site_key
) -> None:
    """Each face can take half a minute (a new person drawn for it) while the pipeline thread does
    nothing else: a poster of sixteen faces held it for 68 s."""
    poster = np.tile(face_a, (3, 3, 1))
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(poster[None]), lenient, PSEUDONYM, site_key)
    assert (exc.value.code, exc.value.reason) == (
        "too-many-faces",
        "9 faces found; photos with more than 8 are not processed",
    )
    with pytest.raises(Refused) as exc:
        process_photo(photo_dataset(np.stack([face_a] * 9)), lenient, PSEUDONYM, site_key)
    assert exc.value.code == "too-many-frames"
