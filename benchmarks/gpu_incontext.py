"""The lambda_area ablation for the 1024 px MobileStyleGAN, in one time-boxed run on a GPU host.

    DICOM_ANON_GENERATOR_DIR=.venv/lib/python3.11/site-packages/random_face/data \\
        python benchmarks/gpu_incontext.py --out $OUT --minutes 2.5

Trains one area-preserving encoder per lambda_area (0, 1, 10) for ``--minutes`` of wall clock
each, on G's own samples at the 256 px working resolution (dicom_anon.lab.training.samples), with the
train-encoder machinery (checkpoints under --work, so a run can be resumed with --resume); then
evaluates every encoder on the same held-out generated faces and writes to --out:

* ``encoder_area{L}.pt`` per lambda (what ``dicom-anon``'s gan backend loads);
* ``losses.csv`` (every step of every run, with its lambda_area);
* ``results.csv`` (per lambda: steps, seconds a step, held-out errors; per face in ``faces.csv``);
* ``sheet.png`` (held-out examples: patient, context, merged input with the mouth outlined, then
  G(E(merged)) per lambda);
* ``log.txt`` when the caller tees it there.

Imports torch, numpy, Pillow and the project's torch-only modules: nothing else is installed on
the GPU host (checked with ``python -X importtime``, see tests/lab/training/test_samples.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_anon.faces.gan.mobile import NAME, MobileGenerator  # noqa: E402 (after the path is set)
from dicom_anon.lab.training.samples import HeldOut, SampledFaces, evaluate_held_out, held_out  # noqa: E402
from dicom_anon.lab.training.train import ENCODER, TrainConfig, train_encoder  # noqa: E402

CARD = ROOT / "models" / "generators" / f"{NAME}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="where results go (the device's $OUT)")
    p.add_argument("--minutes", type=float, default=2.5, help="training wall clock per lambda_area")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    p.add_argument("--resolution", type=int, default=256, help="encoder working resolution")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--lambda-rec", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=100_000, help="a bound; the clock normally ends a run")
    p.add_argument("--eval-faces", type=int, default=64)
    p.add_argument("--sheet-rows", type=int, default=6)
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_incontext"), help="checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the runs under --work")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    return p.parse_args(argv)


def tile(image: torch.Tensor, side: int) -> Image.Image:
    rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(rgb).resize((side, side), Image.Resampling.LANCZOS)


def contact_sheet(
    data: HeldOut, outputs: dict[float, torch.Tensor], rows: int, path: Path, side: int = 192
) -> None:
    heads = ["patient", "context", "merged"] + [f"lambda_area {lam:g}" for lam in outputs]
    sheet = Image.new("RGB", (side * len(heads), 16 + side * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for c, head in enumerate(heads):
        draw.text((c * side + 4, 2), head, fill="black")
    for r in range(min(rows, len(data.codes))):
        merged = tile(data.merged[r], side)
        mask = Image.fromarray((data.masks[r, 0].numpy() * 255).astype(np.uint8)).resize((side, side))
        outline = np.asarray(mask) > np.asarray(mask.filter(ImageFilter.MinFilter(5)))
        px = np.asarray(merged).copy()
        px[outline] = (255, 255, 0)
        cells = [tile(data.patients[r], side), tile(data.contexts[r], side), Image.fromarray(px)]
        cells += [tile(out[r], side) for out in outputs.values()]
        for c, cell in enumerate(cells):
            sheet.paste(cell, (c * side, 16 + r * side))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # the generator was checked against OpenVINO in fp32
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} threads", flush=True
    )
    card = json.loads(CARD.read_text(encoding="utf-8"))
    generator = MobileGenerator(card["frame"], args.resolution, device=device, **card["params"]).to(device)
    data = held_out(generator, args.eval_faces)
    print(
        f"generator and {args.eval_faces} held-out faces ready at {time.perf_counter() - began:.1f} s",
        flush=True,
    )

    results: list[dict[str, float]] = []
    per_face: dict[float, dict[str, torch.Tensor]] = {}
    outputs: dict[float, torch.Tensor] = {}
    losses: list[dict[str, float]] = []
    for lam in args.lambdas:
        config = TrainConfig(
            generator=NAME,
            lambda_area=lam,
            lambda_rec=args.lambda_rec,
            steps=args.max_steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            width=args.width,
            checkpoint_every=100,
        )
        run_dir = args.work / f"area_{lam:g}"

        def report(step: int, row: dict[str, float], lam: float = lam) -> None:
            if step % 25 == 0 or step <= 2:
                print(
                    f"  lambda_area {lam:g} step {step}: latent {row['latent']:.4f} area {row['area']:.4f} "
                    f"rec {row['rec']:.4f} ({row['seconds']:.1f} s)",
                    flush=True,
                )

        result = train_encoder(
            generator,
            SampledFaces(generator),
            config,
            run_dir,
            device=device,
            resume=args.resume,
            on_step=report,
            stop_after_s=args.minutes * 60,
            plot=False,
            deterministic=False,
        )
        shutil.copyfile(run_dir / ENCODER, args.out / f"encoder_area{lam:g}.pt")
        losses += [{"lambda_area": lam, **row} for row in result.history]
        metrics, outputs[lam] = evaluate_held_out(generator, result.encoder, data)
        per_face[lam] = metrics
        trained = result.history[-1]["seconds"] if result.history else 0.0
        row = {
            "lambda_area": lam,
            "steps": result.steps_done,
            "s_per_step": trained / max(1, result.steps_done),
            **{k: float(v.mean()) for k, v in metrics.items()},
        }
        if lam != args.lambdas[0]:
            base = per_face[args.lambdas[0]]
            for kind in ("real", "merged"):
                better = (metrics[f"{kind}_area_mse"] < base[f"{kind}_area_mse"]).sum()
                row[f"{kind}_area_better_than_first"] = int(better)
        results.append(row)
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    fields = list(dict.fromkeys(k for r in results for k in r))
    with (args.out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(results)
    with (args.out / "faces.csv").open("w", newline="") as fh:
        keys = list(next(iter(per_face.values())))
        writer = csv.writer(fh)
        writer.writerow(["lambda_area", "face", *keys])
        for lam, metrics in per_face.items():
            for i in range(len(data.codes)):
                writer.writerow([lam, i, *(f"{float(metrics[k][i]):.6g}" for k in keys)])
    with (args.out / "losses.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(losses[0]) if losses else ["lambda_area"])
        writer.writeheader()
        writer.writerows(losses)
    contact_sheet(data, outputs, args.sheet_rows, args.out / "sheet.png")
    print(f"done in {time.perf_counter() - began:.1f} s; outputs in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
