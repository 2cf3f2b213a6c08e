"""Training on the 1024 px MobileStyleGAN's own samples: its mouth masks, a real training step through
the CLI, and a training path that imports nothing a torch-only GPU host lacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from gankit import needs_generator
from typer.testing import CliRunner

from dicom_anon.cli import app
from dicom_anon.faces.detect import Face
from dicom_anon.faces.gan.encoder import load_encoder
from dicom_anon.faces.gan.mobile import NAME
from dicom_anon.faces.gan.registry import load_card
from dicom_anon.faces.masks import TEMPLATE, Preset
from dicom_anon.lab.training.facesets import aligned_area_mask
from dicom_anon.lab.training.samples import TEMPLATE_MOUTH, mouth_masks

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
runner = CliRunner()


def test_the_template_mouth_is_the_pipelines() -> None:
    assert np.array_equal(TEMPLATE_MOUTH, TEMPLATE[3:5])


def test_the_mouth_mask_is_the_pipelines_mouth_preset_in_the_generators_frame() -> None:
    frame = load_card(MODELS, NAME).frame
    ours = mouth_masks(1, torch.Generator().manual_seed(0), 256, frame, width_range=(1, 1), shift=0)[0, 0]
    template_face = Face(box=np.zeros(4), landmarks=TEMPLATE, score=1.0)
    pipeline = torch.from_numpy(aligned_area_mask(template_face, [Preset.MOUTH], 256, frame))
    # The same ellipse; OpenCV's polygon fill adds its one-pixel outline.
    grown = torch.nn.functional.max_pool2d(ours[None, None], 3, 1, 1)[0, 0].bool()
    ours = ours.bool()
    assert pipeline.sum() > 500 and bool((ours <= pipeline).all()) and bool((pipeline <= grown).all())


def test_the_mouth_masks_vary_like_mouths() -> None:
    masks = mouth_masks(64, torch.Generator().manual_seed(1), 256, (0.7611, 13.46, 13.11))
    areas = masks.sum(dim=(1, 2, 3))
    assert areas.min() > 0 and areas.max() / areas.min() > 1.6  # a smile 1.35x as wide: 1.8x the area
    rows = masks.sum(dim=(0, 1, 3)).nonzero()
    assert rows.min() > 155 and rows.max() < 240  # below the nose tip (row 155) and above the chin


@needs_generator
def test_train_encoder_on_the_generators_own_samples(tmp_path: Path) -> None:
    """One real step through the CLI: G at 1024 px, forward and backward, on the CPU."""
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train-encoder", "--generator", NAME, "--steps", "1", "--batch-size", "1", "--width", "4",
         "--out", str(out), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    encoder, meta = load_encoder(str(out / "encoder.pt"))
    assert meta["generator"] == NAME and meta["steps"] == 1
    assert encoder.resolution == 256 and encoder.latent_dim == 512
    refused = runner.invoke(
        app, ["train-encoder", "--generator", NAME, "--preserve", "eyes", "--out", str(out)]
    )
    assert refused.exit_code == 2 and "mouth only" in refused.output


def test_the_gpu_training_path_imports_nothing_a_torch_only_host_lacks() -> None:
    """benchmarks/gpu_incontext.py runs where only torch, numpy and Pillow are installed."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "benchmarks" / "gpu_incontext.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert {"torch", "numpy", "PIL", "dicom_anon"} <= imported
    for missing_there in ("typer", "pydantic", "rich", "pydicom", "cv2", "kornia", "structlog", "torchvision",
                          "matplotlib", "openvino", "yaml", "scipy"):  # fmt: skip
        assert missing_there not in imported
