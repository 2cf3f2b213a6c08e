"""The preview head's training: samples drawn as the service draws, a head that learns, a file it loads."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_anon.faces.generator import GeneratorUnavailable
from dicom_anon.faces.preview import FEATURES, SIDE, faces, load


def test_a_few_samples_train_a_head_the_service_loads_by_its_printed_checksum(tmp_path) -> None:
    train = pytest.importorskip("dicom_anon.lab.preview.train")
    try:
        feats, images, styles = train.sample(4, seed=3, work=tmp_path, name="t")
    except GeneratorUnavailable as exc:
        pytest.skip(f"the generator is not installed: {exc}")
    assert feats.shape == (4, FEATURES, SIDE // 2, SIDE // 2) and feats.dtype == np.float16
    assert images.shape == (4, SIDE, SIDE, 3) and images.std() > 20  # faces, not a constant
    untrained = train.PreviewHead()
    head = train.train(feats, images, styles, epochs=30, seed=3)
    sha = train.save(head, tmp_path / "head.npz")
    loaded = load(tmp_path / "head.npz", sha256=sha)
    x = np.asarray(feats[:2], np.float32)
    out = faces(loaded, x, styles[:2])
    assert out.shape == (2, SIDE, SIDE, 3) and out.dtype == np.uint8
    assert np.array_equal(out, faces(head, x, styles[:2]))  # the file is the head
    error = np.abs(out.astype(float) - images[:2]).mean()
    assert error < np.abs(faces(untrained, x, styles[:2]).astype(float) - images[:2]).mean() * 0.8
