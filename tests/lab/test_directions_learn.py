"""The read-outs' calibration (lab/directions/learn.py): what the service's screen reads an age through."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from dicom_anon.lab.directions.learn import calibration


def test_calibration_undoes_a_read_out_shrunk_towards_the_middle() -> None:
    rng = np.random.default_rng(0)
    age = rng.uniform(5, 85, 2000)
    read_out = 35 + 0.6 * (age - 35) + rng.normal(0, 2, len(age))
    cal = calibration(read_out, age)
    knots, expected = np.array(cal["read_out"]), np.array(cal["expected"])
    assert len(knots) == 20 and np.all(np.diff(knots) > 0) and np.all(np.diff(expected) >= 0)
    # Taken at its word the top read-out says ~75; the calibration gives what the faces are.
    top = read_out > np.quantile(read_out, 0.95)
    assert abs(expected[-1] - age[top].mean()) < 1.5 and expected[-1] > knots[-1] + 5


def test_a_screen_read_out_written_leaves_the_other_screens(tmp_path) -> None:
    """mouth.py and child.py (through fit_screen) each write their own screen into the same
    file; the read-outs loaded from it hold both, and the steering read-outs are untouched."""
    from dicom_anon.faces.readouts import DIRECTIONS, load_directions
    from dicom_anon.lab.directions.learn import write_screen

    path = tmp_path / "directions.json"
    out = json.loads(DIRECTIONS.read_text())
    before = load_directions(DIRECTIONS)
    w = np.linspace(-1, 1, len(out["mean"]))
    write_screen(path, out, "trial", w, 0.5, 1.25, {"samples": 3})
    d = load_directions(path)
    assert set(d.screen_weights) == set(before.screen_weights) | {"trial"}
    assert d.screen_reject_above["trial"] == 1.25 and d.screen_bias["trial"] == 0.5
    for name in before.screen_weights:
        assert np.array_equal(d.screen_weights[name], before.screen_weights[name])
    assert d.version == before.version and all(
        np.array_equal(d.weights[k], before.weights[k]) for k in d.weights
    )
    assert json.loads(path.read_text())["screen"]["sources"]["trial"] == {"samples": 3}


def _samples(folder, psi: float, n: int, weights: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sample.py's file, made up: styles whose faces' embeddings are a linear map of the z-scored
    style plus noise (the fourth face gave no crop: no embedding)."""
    from dicom_anon.faces.readouts import DIRECTIONS

    out = json.loads(DIRECTIONS.read_text())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(out["mean"])))
    styles = np.asarray(out["mean"]) + x * np.asarray(out["scale"])
    embeddings = x @ weights + rng.normal(0, 0.5, (n, weights.shape[1]))
    embeddings[3] = 0
    folder.mkdir()
    np.savez_compressed(folder / "samples.npz", psi=psi, styles=styles, embeddings=embeddings)
    return styles, embeddings


def test_the_likeness_read_out_learns_the_embedding_a_style_gives(tmp_path, monkeypatch, capsys) -> None:
    """likeness.py fits the style -> SFace embedding map that a draw ranks its renders by, into
    the read-outs file beside the others (version and steering untouched); samples drawn at
    another truncation are refused, since the map is of styles truncated at the file's psi."""
    import pytest

    from dicom_anon.faces.readouts import DIRECTIONS, load_directions
    from dicom_anon.lab.directions import likeness

    before = load_directions(DIRECTIONS)
    path = tmp_path / "directions.json"
    path.write_text(DIRECTIONS.read_text())
    weights = np.random.default_rng(1).standard_normal((len(before.mean), 128)) / 10
    _samples(tmp_path / "a", before.psi, 600, weights, seed=2)
    monkeypatch.setattr("sys.argv", ["likeness", str(tmp_path / "a"), "-o", str(path)])
    likeness.main()
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 599 and max(report["cv_cosine"].values()) > 0.8
    d = load_directions(path)
    assert d.likeness is not None and d.version == before.version
    assert all(np.array_equal(d.weights[k], before.weights[k]) for k in d.weights)
    # On styles it never saw: how like a target face each will be, as the map says.
    styles, embeddings = _samples(tmp_path / "b", before.psi, 200, weights, seed=3)
    target = embeddings[0]
    norms = np.maximum(np.linalg.norm(embeddings, axis=1), 1e-9)
    truth = embeddings @ target / norms / np.linalg.norm(target)
    predicted = d.likeness_to(styles.astype(np.float32), target)
    assert np.corrcoef(predicted[4:], truth[4:])[0, 1] > 0.8
    assert not before.likeness_to(styles, None).any()
    _samples(tmp_path / "c", 0.7, 50, weights, seed=4)
    monkeypatch.setattr("sys.argv", ["likeness", str(tmp_path / "c"), "-o", str(path)])
    with pytest.raises(SystemExit, match=r"psi 0\.7"):
        likeness.main()


def test_the_typical_face_is_the_direction_the_embeddings_share(tmp_path, monkeypatch, capsys) -> None:
    """typical.py writes the direction generated faces' embeddings share and a limit along it on
    the likeness read-out's prediction; the faces it keeps are taken for one another less often
    than all of them. Version and steering are untouched: remembered people keep their faces."""
    from dicom_anon.faces.readouts import DIRECTIONS, load_directions
    from dicom_anon.lab.directions import likeness, typical

    before = load_directions(DIRECTIONS)
    path = tmp_path / "directions.json"
    path.write_text(DIRECTIONS.read_text())
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((len(before.mean), 128)) / 10
    # A part every face's embedding has, as generated faces do, the larger the further the style
    # lies along its first axis.
    shared = rng.standard_normal(128)
    shared /= np.linalg.norm(shared)
    for folder, seed, n in (("a", 6, 600), ("b", 7, 400)):
        _samples(tmp_path / folder, before.psi, n, weights, seed=seed)
        d = np.load(tmp_path / folder / "samples.npz")
        along = 20 + 10 * (d["styles"][:, 0] - before.mean[0]) / before.scale[0]
        e = d["embeddings"] + np.outer(along * (np.linalg.norm(d["embeddings"], axis=1) > 0), shared)
        np.savez_compressed(tmp_path / folder / "samples.npz", psi=d["psi"], styles=d["styles"], embeddings=e)
    monkeypatch.setattr("sys.argv", ["likeness", str(tmp_path / "a"), "-o", str(path)])
    likeness.main()
    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["typical", str(tmp_path / "b"), "-o", str(path), "--sampled", "made up"])
    typical.main()
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 399 and report["r_predicted_own"] > 0.5 and report["kept"] == 0.799
    assert report["one_person_pairs_kept"] < report["one_person_pairs"]
    d = load_directions(path)
    assert d.typical is not None and abs(np.linalg.norm(d.typical) - 1) < 1e-5
    assert np.dot(d.typical, shared) > 0.5
    styles = np.load(tmp_path / "b" / "samples.npz")["styles"].astype(np.float32)
    assert abs(d.typical_faces(styles).mean() - 0.2) < 0.01
    assert d.version == before.version
    assert all(np.array_equal(d.weights[k], before.weights[k]) for k in d.weights)
    assert json.loads(path.read_text())["typical"]["source"]["sampled"] == "made up"
    # Read-outs without the entry screen nothing.
    assert not dataclasses.replace(d, typical=None).typical_faces(styles).any()
