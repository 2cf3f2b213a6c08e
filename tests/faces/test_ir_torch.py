"""The torch reading of random-face's MobileStyleGAN IR is the same network OpenVINO runs: same
styles, same pixels, gradients to the style, every tensor on the module's device, and refusals
(altered files, unknown ops) by name rather than a wrong picture."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_anon.faces.generator import (
    PINNED_SHA256,
    GeneratorUnavailable,
    OpenVinoEngine,
    model_dir,
    verified_files,
)
from dicom_anon.faces.ir_torch import IRError, IRNetwork, MobileStyleGAN, TorchEngine
from dicom_anon.faces.preview import FEATURES_NODE

# What OpenVINO and torch may differ by on a [-1, 1] image (float32, different summation orders).
IMAGE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return model_dir()
    except GeneratorUnavailable:
        pytest.skip("random-face (the generator's IR files) is not installed")


@pytest.fixture(scope="module")
def engine(data_dir: Path) -> TorchEngine:
    return TorchEngine("cpu", data_dir)


@pytest.fixture(scope="module")
def net(engine: TorchEngine) -> MobileStyleGAN:
    return engine.net


@pytest.fixture(scope="module")
def openvino_nets(data_dir: Path):
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    mapping = core.read_model(data_dir / "MappingNetwork.xml", data_dir / "MappingNetwork.bin")
    mapping.reshape({0: ov.PartialShape([-1, 512])})
    synthesis = core.read_model(data_dir / "SynthesisNetwork.xml", data_dir / "SynthesisNetwork.bin")
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    return core.compile_model(mapping, "CPU", config), core.compile_model(synthesis, "CPU", config)


def latents(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)


def test_torch_computes_what_openvino_computes(engine: TorchEngine, openvino_nets) -> None:
    """Latent to style to face, end to end, through the engine the generator swaps in for
    OpenVINO's (numpy in and out): five styles, two faces, each against OpenVINO's."""
    ov_mapping, ov_synthesis = openvino_nets
    z = latents(5)
    ov_styles = np.asarray(ov_mapping(z)[0])
    styles = engine.styles(z)
    images = engine.images(styles[:2])
    assert styles.dtype == images.dtype == np.float32
    assert np.abs(styles - ov_styles).max() < 1e-4
    assert images.shape == (2, 3, 1024, 1024)
    for style, image in zip(ov_styles[:2], images, strict=True):
        expected = np.asarray(ov_synthesis(style[None])[0])[0]
        assert expected.std() > 0.2  # a picture, not a constant
        assert np.abs(image - expected).max() < IMAGE_TOLERANCE


def test_the_features_a_preview_reads_are_openvinos_and_an_unknown_layer_is_refused(
    engine: TorchEngine, data_dir: Path
) -> None:
    """The preview's head reads the synthesis network's output at ``FEATURES_NODE``: the torch
    port, cut there, gives what the generator's OpenVINO engine gives, cut there."""
    ov_engine = OpenVinoEngine(verified_files(data_dir))
    styles = engine.styles(latents(2, seed=11))
    features = engine.features(styles, FEATURES_NODE)
    expected = ov_engine.features(styles, FEATURES_NODE)
    assert features.shape == expected.shape == (2, 256, 128, 128)
    assert expected.std() > 0.1
    assert np.abs(features - expected).max() < 1e-3 * np.abs(expected).max()
    with pytest.raises(IRError, match="no layer named 'NoSuchLayer'"):
        engine.features(styles[:1], "NoSuchLayer")
    with pytest.raises(GeneratorUnavailable, match="no node 'NoSuchLayer'"):
        ov_engine.features(styles[:1], "NoSuchLayer")


def test_gradients_reach_each_style_of_a_batch_and_no_tensor_is_made_off_device(net: MobileStyleGAN) -> None:
    """The gradient is what issue 23's inversion descends: a loss on the first face of a batch of
    two reaches the first style and not the second (the graph's batch arithmetic keeps faces
    apart). And the stand-in for a CUDA run (see test_blend): with torch's default device set to
    ``meta``, a tensor made in the forward or backward pass without naming its device would
    clash with the CPU module's own."""
    style = net.mapping(torch.from_numpy(latents(2, seed=3))).detach().requires_grad_(True)
    torch.set_default_device("meta")
    try:
        image = net(style)
        image[0, :, 384:640, 384:640].square().mean().backward()
    finally:
        torch.set_default_device(None)
    assert image.device.type == "cpu"
    grad = style.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad[0] != 0).float().mean() > 0.9
    assert (grad[1] == 0).all()


def test_builds_and_runs_on_the_device_it_is_given(data_dir: Path) -> None:
    """Every buffer on the named device and a batch of three through both networks there (on
    ``meta`` only shapes are computed, so this is quick, and a CPU-made tensor would clash)."""
    net = MobileStyleGAN(torch.device("meta"), data_dir)
    assert {b.device.type for b in net.buffers()} == {"meta"}
    assert net.state_dict() == {}  # the weights never travel in a checkpoint
    image = net(net.mapping(torch.empty(3, 512, device="meta")))
    assert image.shape == (3, 3, 1024, 1024) and image.device.type == "meta"


@pytest.mark.parametrize("name", sorted(PINNED_SHA256))
def test_altered_or_missing_files_are_refused(data_dir: Path, tmp_path: Path, name: str) -> None:
    for other in PINNED_SHA256:
        shutil.copyfile(data_dir / other, tmp_path / other)
    altered = bytearray((tmp_path / name).read_bytes())
    altered[len(altered) // 2] ^= 1
    (tmp_path / name).write_bytes(altered)
    with pytest.raises(IRError, match=f"{name} is not the pinned one"):
        MobileStyleGAN("cpu", tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(IRError, match=f"cannot read the generator file .*{name}"):
        MobileStyleGAN("cpu", tmp_path)


def _graph(op: str, data: str = "") -> bytes:
    """A one-op IR graph: input -> ``op`` -> output."""
    return f"""<?xml version="1.0"?>
<net name="t" version="11"><layers>
 <layer id="0" name="x" type="Parameter" version="opset1"><data shape="1,4" element_type="f32"/>
  <output><port id="0" precision="FP32"><dim>1</dim><dim>4</dim></port></output></layer>
 <layer id="1" name="op" type="{op}" version="opset1">{data}
  <input><port id="0"><dim>1</dim><dim>4</dim></port></input>
  <output><port id="1" precision="FP32"><dim>1</dim><dim>4</dim></port></output></layer>
 <layer id="2" name="y" type="Result" version="opset1">
  <input><port id="0"><dim>1</dim><dim>4</dim></port></input></layer>
</layers><edges>
 <edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>
 <edge from-layer="1" from-port="1" to-layer="2" to-port="0"/>
</edges></net>""".encode()


def test_unknown_ops_and_broken_graphs_are_refused_by_name() -> None:
    with pytest.raises(IRError, match="does not implement: Erf"):
        IRNetwork(_graph("Erf"), b"")
    with pytest.raises(IRError, match="not readable XML"):
        IRNetwork(b"<net", b"")
    with pytest.raises(IRError, match="cycle"):
        looped = b'<edge from-layer="1" from-port="1" to-layer="1" to-port="0"/>'
        IRNetwork(
            _graph("Erf").replace(b'<edge from-layer="0" from-port="0" to-layer="1" to-port="0"/>', looped),
            b"",
        )
