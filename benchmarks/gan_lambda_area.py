"""Does the area loss help? The area-preserving GAN-inversion paper's claim, measured here.

Trains the encoder for the DCGAN generator (gan-face-generate, 64x64) on SFHQ face crops aligned
to the pipeline's template, once per lambda_area at the same step budget and seed, and measures on
held-out faces the preserved-area (mouth) and whole-image error of G(E(x)), for the crops
themselves and for merged inputs (the crop's mouth on a generated context face, as the backend
uses E). Prints a markdown table, writes JSON, a bar chart and an example sheet.

    .venv/bin/python benchmarks/gan_lambda_area.py --steps 400 --lambda-area 0 10

CPU is fine (about 1 s per step at batch 16 on two shared cores); it uses CUDA when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dicom_anon.faces.gan.frame import to_rgb8
from dicom_anon.faces.gan.generators import open_generator
from dicom_anon.faces.masks import Preset
from dicom_anon.lab.training.facesets import FaceSet, list_images, load_faces
from dicom_anon.lab.training.train import TrainConfig, evaluate, train_encoder

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "testdata" / "faces" / "sfhq"
GENERATOR = "dcgan-digiface-64"


def load_split(work: Path, device: str, frame: tuple[float, float, float]) -> tuple[FaceSet, FaceSet]:
    """All faces aligned once (cached), every fifth one (by sorted name) held out."""
    cache = work / "faces.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        faces = FaceSet(saved["images"], saved["masks"], saved["names"])
    else:
        faces, skipped = load_faces(list_images(FACES), 64, [Preset.MOUTH], device=device, frame=frame)
        print(f"aligned {len(faces)} faces, no face found in {len(skipped)}", file=sys.stderr)
        torch.save({"images": faces.images, "masks": faces.masks, "names": faces.names}, cache)
    held = [i for i in range(len(faces)) if i % 5 == 0]
    train = [i for i in range(len(faces)) if i % 5 != 0]
    return faces.subset(train), faces.subset(held)


@torch.no_grad()
def per_face_area_mse(generator, encoder, faces: FaceSet) -> np.ndarray:
    out = generator(encoder(faces.images))
    err = ((faces.images - out) ** 2 * faces.masks).sum(dim=(1, 2, 3)) / (3 * faces.masks.sum(dim=(1, 2, 3)))
    return err.numpy()


@torch.no_grad()
def example_sheet(
    generator, encoders: dict[float, torch.nn.Module], faces: FaceSet, path: Path, n: int = 8
) -> None:
    """Rows: input crop, then G(E(x)) per lambda_area; mouth outline drawn on the input row."""
    x = faces.images[:n]
    m = faces.masks[:n]
    rows = []
    edge = (m - torch.nn.functional.max_pool2d(-m, 3, 1, 1).neg()).clamp(0, 1) > 0  # inner boundary
    marked = x.clone()
    marked[:, 0][edge[:, 0]] = 1.0
    marked[:, 1][edge[:, 0]] = -1.0
    marked[:, 2][edge[:, 0]] = -1.0
    rows.append(marked)
    for encoder in encoders.values():
        rows.append(generator(encoder(x)))
    tiles = [np.concatenate([to_rgb8(img) for img in row], axis=1) for row in rows]
    sheet = np.concatenate(tiles, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)


def bar_chart(results: dict[float, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("real_area_mse", "mouth, real crop"),
        ("real_whole_mse", "whole, real crop"),
        ("merged_area_mse", "mouth, merged"),
        ("merged_whole_mse", "whole, merged"),
    ]
    lambdas = list(results)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    width = 0.8 / len(lambdas)
    for j, lam in enumerate(lambdas):
        ax.bar(
            [i + j * width for i in range(len(keys))],
            [results[lam][k] for k, _ in keys],
            width,
            label=f"lambda_area = {lam:g}",
        )
    ax.set_xticks(
        [i + width * (len(lambdas) - 1) / 2 for i in range(len(keys))], [label for _, label in keys]
    )
    ax.set_ylabel("MSE of G(E(x)) vs x (images in [-1, 1])")
    ax.set_title("Held-out SFHQ faces, DCGAN 64x64, same step budget")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lambda-area", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--lambda-rec", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-anon-gan-lambda-area"
    )
    parser.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not FACES.is_dir():
        sys.exit(f"{FACES} is missing")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    args.work.mkdir(parents=True, exist_ok=True)
    args.img.mkdir(parents=True, exist_ok=True)
    generator = open_generator(ROOT / "models", GENERATOR, device)
    train, held = load_split(args.work, device, generator.card.frame)
    print(f"train {len(train)} faces, held out {len(held)}", file=sys.stderr)

    results: dict[float, dict[str, float]] = {}
    encoders = {}
    per_face = {}
    for lam in args.lambda_area:
        config = TrainConfig(
            generator=GENERATOR,
            lambda_area=lam,
            lambda_rec=args.lambda_rec,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=100,
        )
        started = time.perf_counter()
        result = train_encoder(
            generator, train, config, args.work / f"area_{lam:g}", device=device, resume=True
        )
        seconds = time.perf_counter() - started
        encoder = result.encoder.cpu()
        generator_cpu = generator.cpu()
        results[lam] = {**evaluate(generator_cpu, encoder, held), "train_seconds": seconds}
        results[lam]["train_" + "area_mse"] = evaluate(generator_cpu, encoder, train)["real_area_mse"]
        encoders[lam] = encoder
        per_face[lam] = per_face_area_mse(generator_cpu, encoder, held)
        generator = generator.to(device)
        print(f"lambda_area={lam:g}: {results[lam]}", file=sys.stderr)

    base = args.lambda_area[0]
    print(f"\n{len(held)} held-out faces, {args.steps} steps x batch {args.batch_size}, seed {args.seed}\n")
    print(
        "| lambda_area | mouth MSE (crop) | mouth MAE, 8-bit levels (crop) | whole MSE (crop) "
        "| mouth MSE (merged) | whole MSE (merged) | faces with lower mouth error than lambda_area="
        f"{base:g} |"
    )
    print("|---|---|---|---|---|---|---|")
    for lam, r in results.items():
        better = "" if lam == base else f"{int((per_face[lam] < per_face[base]).sum())}/{len(held)}"
        print(
            f"| {lam:g} | {r['real_area_mse']:.4f} | {r['real_area_mae8']:.1f} | {r['real_whole_mse']:.4f} "
            f"| {r['merged_area_mse']:.4f} | {r['merged_whole_mse']:.4f} | {better} |"
        )
    (args.work / "results.json").write_text(json.dumps({f"{k:g}": v for k, v in results.items()}, indent=2))
    bar_chart(results, args.img / "gan_lambda_area.png")
    example_sheet(generator.cpu(), encoders, held, args.img / "gan_examples.png")
    print(f"\nwrote {args.img / 'gan_lambda_area.png'}, {args.img / 'gan_examples.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
