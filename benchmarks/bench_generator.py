"""The 1024 px MobileStyleGAN (random-face's IR): seconds per face, OpenVINO against torch.

Prints, per engine and device: load time, mapping and synthesis per face, a batch's time per face
(CUDA), a forward and backward pass to the style per face (what each step of issue 23's latent
refinement costs), memory, and how far torch's faces are from OpenVINO's (max abs difference on
[-1, 1] images; without OpenVINO, CUDA is compared with torch on the CPU). CUDA runs in the
pipeline's exact mode (no TF32, deterministic cuDNN: dicom_anon.faces.detect.resolve_device).
OpenVINO is optional: without it, torch only.

    .venv/bin/python benchmarks/bench_generator.py
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from dicom_anon.faces.detect import resolve_device
from dicom_anon.faces.generator import STYLE_DIM, model_dir
from dicom_anon.faces.ir_torch import MobileStyleGAN

FACES = 4  # timed faces per figure, after one warm-up
COMPARED = 2  # faces compared across engines
BATCH = 8  # CUDA batch


def seconds(fn: Callable[[], object], runs: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds of ``fn`` over ``runs`` calls, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def openvino(z: np.ndarray) -> np.ndarray | None:
    """OpenVINO's figures; its styles and first faces as the reference, None without OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        print("openvino: not installed, torch only")
        return None
    folder = model_dir()
    start = time.perf_counter()
    core = ov.Core()
    mapping = core.read_model(folder / "MappingNetwork.xml", folder / "MappingNetwork.bin")
    mapping.reshape({0: ov.PartialShape([-1, STYLE_DIM])})
    synthesis = core.read_model(folder / "SynthesisNetwork.xml", folder / "SynthesisNetwork.bin")
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    run_mapping = core.compile_model(mapping, "CPU", config)
    run_synthesis = core.compile_model(synthesis, "CPU", config)
    load = time.perf_counter() - start
    styles = np.asarray(run_mapping(z)[0])
    t_map = seconds(lambda: run_mapping(z[:1]), FACES)
    faces = iter(styles)
    t_syn = seconds(lambda: run_synthesis(next(faces)[None]), FACES)
    reference = np.stack([np.asarray(run_synthesis(s[None])[0])[0] for s in styles[:COMPARED]])
    print(
        f"openvino cpu ({core.get_property('CPU', 'INFERENCE_NUM_THREADS') or 'all'} threads): "
        f"load {load:.2f} s, mapping {t_map * 1e3:.1f} ms, synthesis {t_syn:.3f} s per face"
    )
    return reference


def torch_figures(device: torch.device, z: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """torch's figures on ``device``; returns its first faces (on the host) for comparison."""
    is_cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)
    start = time.perf_counter()
    net = MobileStyleGAN(device)
    sync()
    load = time.perf_counter() - start
    zt = torch.from_numpy(z).to(device)
    with torch.no_grad():
        styles = net.mapping(zt)
        t_map = seconds(lambda: net.mapping(zt[:1]), FACES, sync)
        faces = iter(styles)
        t_syn = seconds(lambda: net(next(faces)[None]), FACES, sync)
        images = torch.cat([net(styles[i : i + 1]) for i in range(COMPARED)]).cpu().numpy()
        if is_cuda:
            batch = styles[:1].expand(BATCH, -1).contiguous()
            t_batch = seconds(lambda: net(batch), 2, sync) / BATCH
    if is_cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        style = styles[:1].clone().requires_grad_(True)
        net(style).square().mean().backward()

    t_grad = seconds(step, FACES if is_cuda else 1, sync)
    line = (
        f"torch {device} ({torch.get_num_threads()} threads): load {load:.2f} s, "
        f"mapping {t_map * 1e3:.1f} ms, "
        f"synthesis {t_syn:.3f} s per face"
    )
    if is_cuda:
        mib = torch.cuda.max_memory_allocated(device) / 2**20
        line += f" ({t_batch:.3f} s per face in batches of {BATCH})"
        line += f", forward+backward {t_grad:.3f} s per face (peak {mib:.0f} MiB on the GPU)"
    else:
        line += f", forward+backward {t_grad:.2f} s per face (peak RSS so far {peak_rss_mib():.0f} MiB)"
    if reference is not None:
        line += f"; max |torch - reference| {np.abs(images - reference).max():.2e}"
    print(line)
    return images


def main() -> None:
    z = np.random.default_rng(0).standard_normal((FACES + 1, STYLE_DIM)).astype(np.float32)
    print(f"torch {torch.__version__}, {FACES} faces per figure, median after one warm-up")
    reference = openvino(z)
    if reference is not None:
        print("(reference: OpenVINO)")
    cpu_images = torch_figures(torch.device("cpu"), z, reference)
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()}")
        torch_figures(resolve_device("cuda"), z, reference if reference is not None else cpu_images)
    else:
        print("cuda: not available")


if __name__ == "__main__":
    main()
