"""``dicom-anon eval`` with the GAN backend registered, on faces the encoder never saw.

The face pipeline's method registry (``dicom_anon.faces.replace``) does not list ``gan`` until
it is wired there; this script registers the backend with a given encoder, then runs the same
``eval`` command, table and contact sheet as for the other methods.

    .venv/bin/python benchmarks/gan_eval.py --encoder /tmp/dicom-anon-gan-lambda-area/area_10/encoder.pt \
        --held-out-of /tmp/dicom-anon-gan-lambda-area/faces.pt -- --method gan --method surrogate \
        --sheet docs/img/gan_eval_sheet.png

Everything after ``--`` goes to ``dicom-anon eval``. With ``--held-out-of`` the faces are the
held-out fifth of the aligned set that benchmarks/gan_lambda_area.py trained on.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from dicom_anon.cli import app
from dicom_anon.faces.gan.backend import load_backend
from dicom_anon.faces.replace import register_method

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "testdata" / "faces" / "sfhq"


def main() -> None:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    mine = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument(
        "--held-out-of", type=Path, help="faces.pt of gan_lambda_area.py: use its held-out faces"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(mine)
    torch.set_num_threads(args.threads)

    register_method(
        "gan",
        lambda pool, device, identities: load_backend(
            args.encoder, device=device, pool=pool, identities=identities
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        faces = [str(FACES)]
        if args.held_out_of:
            names = torch.load(args.held_out_of, weights_only=True)["names"]
            held = [n for i, n in enumerate(names) if i % 5 == 0]
            for name in held:
                shutil.copy(FACES / name, tmp)
            faces = [tmp]
            print(f"{len(held)} held-out faces", file=sys.stderr)
        app(["eval", *faces, *rest], standalone_mode=True)


if __name__ == "__main__":
    main()
