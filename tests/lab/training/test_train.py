"""Encoder training on a tiny configuration: it learns, it checkpoints, and a resume is exact."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from dicom_anon.faces.gan.encoder import Encoder, load_encoder
from dicom_anon.faces.gan.generators import FaceGenerator
from dicom_anon.lab.training.facesets import FaceSet
from dicom_anon.lab.training.losses import encoder_loss
from dicom_anon.lab.training.train import (
    CHECKPOINT,
    ENCODER,
    LOSSES_CSV,
    LOSSES_PNG,
    ResumeError,
    TrainConfig,
    load_checkpoint,
    make_batch,
    save_checkpoint,
    step_rng,
    train_encoder,
)


def _config(**kw: object) -> TrainConfig:
    fields: dict[str, object] = {
        "generator": "tiny-dcgan",
        "steps": 12,
        "batch_size": 4,
        "lr": 2e-3,
        "width": 8,
        "checkpoint_every": 5,
        "lambda_area": 5.0,
    }
    fields.update(kw)
    return TrainConfig(**fields)


@torch.no_grad()
def _fixed_batch_terms(
    generator: FaceGenerator, encoder: Encoder, faces: FaceSet, config: TrainConfig
) -> dict[str, float]:
    """The loss terms on one batch that no training step draws (its seed is not the run's)."""
    z, generated, inputs, masks = make_batch(generator, faces, config, step_rng(999, 0), torch.device("cpu"))
    encoder.eval()
    terms = encoder_loss(
        z,
        encoder(generated),
        inputs,
        generator(encoder(inputs)),
        masks,
        config.lambda_area,
        config.lambda_rec,
    )
    return terms.as_floats()


def test_a_few_steps_reduce_the_loss(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    config = _config(steps=40, batch_size=8)
    torch.manual_seed(config.seed)
    untrained = Encoder(64, tiny_generator.latent_dim, width=config.width)
    before = _fixed_batch_terms(tiny_generator, untrained, tiny_faces, config)
    result = train_encoder(tiny_generator, tiny_faces, config, tmp_path)
    after = _fixed_batch_terms(tiny_generator, result.encoder, tiny_faces, config)
    assert after["total"] < 0.6 * before["total"]
    assert all(after[k] < before[k] for k in ("latent", "area", "rec"))


def test_training_writes_checkpoint_csv_plot_and_encoder(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    config = _config()
    result = train_encoder(tiny_generator, tiny_faces, config, tmp_path)
    with (tmp_path / LOSSES_CSV).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert set(rows[0]) == {"step", "latent", "area", "rec", "total", "seconds"}
    assert (tmp_path / LOSSES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    encoder, meta = load_encoder(str(tmp_path / ENCODER))
    assert meta["steps"] == 12 and meta["lambda_area"] == 5.0 and meta["generator"] == "tiny-dcgan"
    x = tiny_faces.images[:2]
    with torch.no_grad():
        assert torch.equal(encoder(x), result.encoder(x))


def test_checkpoint_round_trip_restores_encoder_optimiser_and_step(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    config = _config(steps=3)
    result = train_encoder(tiny_generator, tiny_faces, config, tmp_path)
    encoder, optimizer, step = load_checkpoint(tmp_path / CHECKPOINT, config, torch.device("cpu"))
    assert step == 3
    for a, b in zip(encoder.state_dict().values(), result.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert optimizer.state_dict()["state"][0]["step"] == 3

    again = tmp_path / "again.pt"
    save_checkpoint(again, encoder, optimizer, config, step)
    _, optimizer2, step2 = load_checkpoint(again, config, torch.device("cpu"))
    assert step2 == 3
    assert torch.equal(
        optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_resume_continues_the_step_count_and_matches_uninterrupted_training(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    full = train_encoder(tiny_generator, tiny_faces, _config(steps=10), tmp_path / "full")

    first = train_encoder(tiny_generator, tiny_faces, _config(steps=6), tmp_path / "split")
    assert first.steps_done == 6
    resumed = train_encoder(tiny_generator, tiny_faces, _config(steps=10), tmp_path / "split", resume=True)
    assert resumed.resumed_from == 6 and resumed.steps_done == 10
    assert [r["step"] for r in resumed.history] == list(range(1, 11))
    for a, b in zip(full.encoder.state_dict().values(), resumed.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # Steps 7-10 ran in this process: identical. Steps 1-6 came back from the CSV (6 digits).
    assert [r["total"] for r in resumed.history[6:]] == [r["total"] for r in full.history[6:]]
    assert [r["total"] for r in resumed.history] == pytest.approx(
        [r["total"] for r in full.history], rel=1e-5
    )


def test_different_seeds_train_different_encoders(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    a = train_encoder(tiny_generator, tiny_faces, _config(steps=2), tmp_path / "a")
    b = train_encoder(tiny_generator, tiny_faces, _config(steps=2, seed=1), tmp_path / "b")
    assert not torch.equal(a.encoder.head.weight, b.encoder.head.weight)


def test_resume_refuses_a_checkpoint_from_other_settings(
    tiny_generator: FaceGenerator, tiny_faces: FaceSet, tmp_path: Path
) -> None:
    train_encoder(tiny_generator, tiny_faces, _config(steps=2), tmp_path)
    with pytest.raises(ResumeError, match="lambda_area"):
        train_encoder(tiny_generator, tiny_faces, _config(steps=4, lambda_area=0.0), tmp_path, resume=True)
