"""``dicom-anon train-encoder`` through the real CLI."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_anon.cli import app

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.mark.skipif(importlib.util.find_spec("gan_face_generate") is None, reason="gan-face-generate missing")
def test_train_encoder_runs_writes_its_outputs_and_resumes(testdata: Path, tmp_path: Path) -> None:
    images = tmp_path / "faces"
    images.mkdir()
    for src in sorted((testdata / "faces" / "sfhq").glob("*.jpg"))[:3]:
        shutil.copy(src, images)
    run = tmp_path / "run"
    common = ["train-encoder", "--images", str(images), "--models-dir", str(MODELS), "--out", str(run),
              "--batch-size", "2", "--width", "8", "--threads", "1", "--device", "cpu"]  # fmt: skip
    first = runner.invoke(app, [*common, "--steps", "2"])
    assert first.exit_code == 0, first.output
    assert (run / "encoder.pt").is_file() and (run / "losses.png").is_file()
    resumed = runner.invoke(app, [*common, "--steps", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from step" in resumed.output
    with (run / "losses.csv").open() as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["1", "2", "3"]
    changed = runner.invoke(app, [*common, "--steps", "4", "--resume", "--lambda-area", "0"])
    assert changed.exit_code == 2 and "different settings (lambda_area)" in changed.output


def test_train_encoder_rejects_an_unknown_area_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train-encoder", "--images", str(tmp_path), "--preserve", "ears"])
    assert result.exit_code == 2
    assert "--preserve" in result.output and "Traceback" not in result.output
