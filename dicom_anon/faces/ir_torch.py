"""The MobileStyleGAN that ``random-face`` installs, run by torch from its OpenVINO IR files.

``random-face==2021.7.21.1`` ships the generator only as OpenVINO IR (``MappingNetwork`` and
``SynthesisNetwork``, each an ``.xml`` graph and a ``.bin`` of weights). OpenVINO runs it fast on a
CPU, but gives no gradients and no GPU; inverting a photo into the generator's latent space needs
both. No maintained library turns IR into torch (OpenVINO exports no ONNX, and onnx2torch starts
from ONNX), so this module reads the IR itself: the XML with the standard library, the weights
with numpy, and evaluates the graph op for op with torch.

Why an interpreter of the graph rather than a hand-written MobileStyleGAN loading the IR's
constants: the two graphs use 18 simple op types, each a line or two of torch with OpenVINO's
documented semantics, and following the graph computes exactly what OpenVINO computes, including
whatever the ONNX export and the model optimizer folded or rewrote (the IDWT as pairs of
transposed convolutions, the modulation as products on the activations). A hand-written
architecture would have to re-derive that rewriting and map some 500 unnamed constants to it, and a
mismatch would show only as a wrong picture. The interpreter refuses any op, attribute or
element type it does not implement, by name, at load time.

Integer tensors (the shape arithmetic the ONNX export left in: ShapeOf, Gather, Concat ...) are
kept on the host as numpy arrays and never touch the device, so the graph is batch-dynamic and
its float part runs on any torch device, differentiable end to end.

The four files are found and checksummed as ``generator`` pins them, as they are read (the bytes
hashed are the bytes parsed). Nothing is downloaded and no weights are copied into the
repository; the weights are non-commercial (docs/generator-card.md).
"""

from __future__ import annotations

import graphlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .generator import PACKAGE, PINNED_SHA256, Begun, GeneratorUnavailable, model_dir

_ELEMENT_TYPES = {"f32": np.float32, "i64": np.int64, "i32": np.int32}

# A value flowing through the graph: a torch tensor (float data, on the module's device) or a
# numpy array (integer shape arithmetic, on the host).
Value = Tensor | np.ndarray


class IRError(GeneratorUnavailable):
    """The generator's IR files are missing, altered, or use something this reader does not
    implement: a kind of ``GeneratorUnavailable``, so callers refuse (``method-unavailable``)."""


def read_checked(path: Path, expected_sha256: str) -> bytes:
    """The file's bytes, refused unless they hash to ``expected_sha256``: the bytes hashed are
    the bytes parsed, so a file replaced between a check and a read cannot slip through."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IRError(f"cannot read the generator file {path} ({e.strerror}); reinstall {PACKAGE}") from None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IRError(f"the generator file {path} is not the pinned one (sha256); reinstall {PACKAGE}")
    return data


@dataclass(frozen=True)
class Layer:
    """One IR layer: its inputs as (layer id, output index) pairs, in port order."""

    id: int
    name: str
    type: str
    attrs: dict[str, str]
    inputs: tuple[tuple[int, int], ...]


def parse_ir(xml: bytes) -> list[Layer]:
    """The graph's layers in an order where every input comes first (IR v10/v11 XML)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise IRError(f"the generator graph is not readable XML: {e}") from None
    if root.tag != "net" or root.get("version") not in ("10", "11"):
        raise IRError(f"not an OpenVINO IR v10/v11 graph (root {root.tag!r}, version {root.get('version')})")
    elements = {int(el.get("id", "-1")): el for el in root.iter("layer")}
    # Edges name ports by id; a layer's outputs are numbered after its inputs.
    out_index = {
        (lid, int(port.get("id", "-1"))): i
        for lid, el in elements.items()
        for i, port in enumerate(el.findall("output/port"))
    }
    feeds = {}
    for e in root.iter("edge"):
        src = (int(e.get("from-layer", "-1")), int(e.get("from-port", "-1")))
        if src not in out_index:
            raise IRError(f"an edge leaves layer {src[0]} by port {src[1]}, which it does not have")
        feeds[(int(e.get("to-layer", "-1")), int(e.get("to-port", "-1")))] = (src[0], out_index[src])
    layers = {}
    for lid, el in elements.items():
        data = el.find("data")
        ports = [(lid, int(p.get("id", "-1"))) for p in el.findall("input/port")]
        if missing := [p for p in ports if p not in feeds]:
            raise IRError(f"layer {el.get('name')} has unconnected inputs {missing}")
        layers[lid] = Layer(
            id=lid,
            name=el.get("name", ""),
            type=el.get("type", ""),
            attrs=dict(data.attrib) if data is not None else {},
            inputs=tuple(feeds[p] for p in ports),
        )
    sorter = graphlib.TopologicalSorter({lid: [src for src, _ in ly.inputs] for lid, ly in layers.items()})
    try:
        return [layers[lid] for lid in sorter.static_order()]
    except graphlib.CycleError:
        raise IRError("the generator graph has a cycle") from None


def _shape(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",")]


def _host(v: Value) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise IRError("a shape or index input is float data computed on the device; not supported")
    return v


def _broadcast(x: Value, target: np.ndarray, mode: str) -> Value:
    target_shape = tuple(int(d) for d in target)
    shape = np.broadcast_shapes(tuple(x.shape), target_shape) if mode == "bidirectional" else target_shape
    return np.broadcast_to(x, shape) if isinstance(x, np.ndarray) else x.expand(shape)


def _tile(x: Value, repeats: np.ndarray) -> Value:
    reps = [int(r) for r in repeats]
    reps = [1] * (x.ndim - len(reps)) + reps
    return np.tile(x, reps) if isinstance(x, np.ndarray) else x.repeat(reps)


def _reshape(x: Value, target: np.ndarray, special_zero: bool) -> Value:
    shape = [int(x.shape[i]) if d == 0 and special_zero else int(d) for i, d in enumerate(target)]
    return x.reshape(shape)


def _unsqueeze(x: Value, axes: np.ndarray) -> Value:
    rank = x.ndim + axes.size
    for a in sorted(int(a) % rank for a in axes.ravel()):
        x = np.expand_dims(x, a) if isinstance(x, np.ndarray) else x.unsqueeze(a)
    return x


def _squeeze(x: Value, axes: np.ndarray) -> Value:
    dims = tuple(int(a) % x.ndim for a in axes.ravel())
    return np.asarray(np.squeeze(x, dims)) if isinstance(x, np.ndarray) else x.squeeze(dims)


def _split(x: Tensor, axis: np.ndarray, lengths: np.ndarray) -> list[Tensor]:
    dim = int(axis) % x.ndim
    sizes = [int(n) for n in lengths]
    if -1 in sizes:
        sizes[sizes.index(-1)] = x.shape[dim] - (sum(sizes) + 1)
    return list(torch.split(x, sizes, dim))


def _concat(xs: list[Value], axis: int) -> Value:
    if all(isinstance(x, np.ndarray) for x in xs):
        return np.concatenate(xs, axis=axis)
    if any(isinstance(x, np.ndarray) for x in xs):
        raise IRError("Concat mixes host shape data with device data; not supported")
    return torch.cat(xs, dim=axis)


def _matmul(a: Tensor, b: Tensor, transpose_a: bool, transpose_b: bool) -> Tensor:
    return torch.matmul(a.mT if transpose_a else a, b.mT if transpose_b else b)


def _pads(attrs: dict[str, str]) -> int | tuple[int, int]:
    """torch's symmetric padding for an explicitly padded 2-D convolution."""
    if attrs.get("auto_pad", "explicit") not in ("explicit", "notset"):
        raise IRError(f"auto_pad={attrs['auto_pad']} is not implemented")
    begin, end = _ints(attrs["pads_begin"]), _ints(attrs["pads_end"])
    if begin != end or len(begin) != 2:
        raise IRError(f"asymmetric or non-2-D padding {begin}/{end} is not implemented")
    return (begin[0], begin[1])


def _nhwc(x: Tensor) -> Tensor:
    """Convolutions in channels-last layout: oneDNN's depthwise and transposed kernels on the
    CPU are 2-3x faster in it than in NCHW for this network (7.3 s -> 1.9 s a face on 2 cores);
    elementwise ops keep the layout, so after the first convolution this is free."""
    return x.contiguous(memory_format=torch.channels_last)


def _conv(x: Tensor, w: Tensor, a: dict[str, str]) -> Tensor:
    return F.conv2d(_nhwc(x), w, None, _ints(a["strides"]), _pads(a), _ints(a["dilations"]))


def _group_conv(x: Tensor, w: Tensor, a: dict[str, str]) -> Tensor:
    # IR weights: [groups, C_out/groups, C_in/groups, kH, kW]; torch: [C_out, C_in/groups, kH, kW].
    g = w.shape[0]
    return F.conv2d(_nhwc(x), w.flatten(0, 1), None, _ints(a["strides"]), _pads(a), _ints(a["dilations"]), g)


def _group_conv_transposed(x: Tensor, w: Tensor, a: dict[str, str]) -> Tensor:
    # IR weights: [groups, C_in/groups, C_out/groups, kH, kW]; torch: [C_in, C_out/groups, kH, kW].
    g = w.shape[0]
    out_pad = _ints(a.get("output_padding", "0, 0"))
    return F.conv_transpose2d(
        _nhwc(x), w.flatten(0, 1), None, _ints(a["strides"]), _pads(a), out_pad, g, _ints(a["dilations"])
    )


def _reduce_mean(x: Tensor, axes: np.ndarray, keep_dims: bool) -> Tensor:
    return x.mean(dim=tuple(int(d) for d in axes.ravel()), keepdim=keep_dims)


def _prelu(x: Tensor, slope: Tensor) -> Tensor:
    if slope.ndim != 1:
        raise IRError(f"PReLU with a slope of shape {tuple(slope.shape)} is not implemented")
    return F.prelu(x, slope)


def _elementwise(
    tensor_op: Callable[[Tensor, Tensor], Tensor], host_op: Callable[..., np.ndarray]
) -> Callable[[Layer, Value, Value], Value]:
    def run(layer: Layer, a: Value, b: Value) -> Value:
        if layer.attrs.get("auto_broadcast", "numpy") != "numpy":
            raise IRError(
                f"{layer.type} with auto_broadcast={layer.attrs['auto_broadcast']} is not implemented"
            )
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return np.asarray(host_op(a, b))
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            raise IRError(f"{layer.type} mixes host shape data with device data; not supported")
        return tensor_op(a, b)

    return run


def _flag(layer: Layer, name: str) -> bool:
    return layer.attrs.get(name, "false") == "true"


# Each op: (layer, *inputs) -> a value, or a list of values for multi-output ops. Semantics as in
# OpenVINO's operation specifications (opset1, Gather opset7/8, ShapeOf/Broadcast opset3).
_CONVOLUTIONS = ("Convolution", "GroupConvolution", "GroupConvolutionBackpropData")
_OPS: dict[str, Callable[..., Value | list[Value]]] = {
    "Add": _elementwise(torch.add, np.add),
    "Multiply": _elementwise(torch.mul, np.multiply),
    "Power": _elementwise(torch.pow, np.power),
    "MatMul": lambda ly, a, b: _matmul(a, b, _flag(ly, "transpose_a"), _flag(ly, "transpose_b")),
    "PReLU": lambda ly, x, slope: _prelu(x, slope),
    "ReduceMean": lambda ly, x, axes: _reduce_mean(x, _host(axes), _flag(ly, "keep_dims")),
    "Convolution": lambda ly, x, w: _conv(x, w, ly.attrs),
    "GroupConvolution": lambda ly, x, w: _group_conv(x, w, ly.attrs),
    "GroupConvolutionBackpropData": lambda ly, x, w: _group_conv_transposed(x, w, ly.attrs),
    "ShapeOf": lambda ly, x: np.asarray(x.shape, dtype=np.int64),
    "Gather": lambda ly, d, i, axis: np.asarray(np.take(_host(d), _host(i), axis=int(_host(axis)))),
    "Concat": lambda ly, *xs: _concat(list(xs), int(ly.attrs["axis"])),
    "Unsqueeze": lambda ly, x, axes: _unsqueeze(x, _host(axes)),
    "Squeeze": lambda ly, x, axes: _squeeze(x, _host(axes)),
    "Reshape": lambda ly, x, shape: _reshape(x, _host(shape), _flag(ly, "special_zero")),
    "Broadcast": lambda ly, x, shape: _broadcast(x, _host(shape), ly.attrs.get("mode", "numpy")),
    "Tile": lambda ly, x, reps: _tile(x, _host(reps)),
    "VariadicSplit": lambda ly, x, axis, lengths: _split(x, _host(axis), _host(lengths)),
}


def _check_supported(layers: Sequence[Layer]) -> None:
    """Refuse at load time, by name, what the ops above do not implement: a wrong picture from
    a half-understood graph would otherwise show up only when someone looks at it."""
    unknown = sorted({ly.type for ly in layers} - set(_OPS) - {"Parameter", "Const", "Result"})
    if unknown:
        raise IRError(f"the generator graph uses ops this reader does not implement: {', '.join(unknown)}")
    for ly in layers:
        unsupported = (
            (ly.type == "Gather" and ly.attrs.get("batch_dims", "0") != "0")
            or (ly.type == "Broadcast" and ly.attrs.get("mode", "numpy") not in ("numpy", "bidirectional"))
            or (ly.type in _CONVOLUTIONS and len(ly.inputs) != 2)
        )
        if unsupported:
            raise IRError(f"{ly.type} layer {ly.name} uses attributes or inputs not implemented here")
        if ly.type in _CONVOLUTIONS:
            _pads(ly.attrs)


class IRNetwork(nn.Module):
    """One IR graph as a torch module: one float input, one output.

    Float constants are non-persistent buffers: they follow ``.to(device)`` but stay out of
    ``state_dict``, so a checkpoint of a model that contains the generator (an encoder's training
    state, say) never carries a copy of its non-commercial weights. Integer constants stay on the
    host as numpy arrays. Gradients flow to the input; the weights are fixed.
    """

    def __init__(self, xml: bytes, weights: bytes, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.layers = parse_ir(xml)
        _check_supported(self.layers)
        params = [ly for ly in self.layers if ly.type == "Parameter"]
        results = [ly for ly in self.layers if ly.type == "Result"]
        if len(params) != 1 or len(results) != 1:
            raise IRError(f"expected one input and one output, found {len(params)} and {len(results)}")
        self.host: dict[int, np.ndarray] = {}
        self.buffer_names: dict[int, str] = {}
        for ly in self.layers:
            if ly.type != "Const":
                continue
            arr = self._const(ly, weights)
            if arr.dtype.kind == "f":
                name = f"const_{ly.id}"
                self.register_buffer(name, torch.from_numpy(arr).to(device), persistent=False)
                self.buffer_names[ly.id] = name
            else:
                self.host[ly.id] = arr
        self._consumers = self._last_use()

    @staticmethod
    def _const(ly: Layer, weights: bytes) -> np.ndarray:
        etype = ly.attrs.get("element_type", "")
        if etype not in _ELEMENT_TYPES:
            raise IRError(f"constant {ly.name} has element type {etype!r}, not implemented")
        dtype = np.dtype(_ELEMENT_TYPES[etype])
        shape = _shape(ly.attrs.get("shape", ""))
        offset, size = int(ly.attrs["offset"]), int(ly.attrs["size"])
        if offset + size > len(weights) or size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise IRError(f"constant {ly.name} does not fit the weights file")
        return np.frombuffer(weights, dtype, size // dtype.itemsize, offset).reshape(shape).copy()

    def _last_use(self) -> dict[int, int]:
        """For each layer, the position of the last layer that reads it: values are dropped after
        it so a 1024 px forward pass holds only the activations still needed (autograd keeps what
        backward needs by itself)."""
        last: dict[int, int] = {}
        for pos, ly in enumerate(self.layers):
            for src, _ in ly.inputs:
                last[src] = pos
        return last

    def forward(self, x: Tensor, until: str | None = None) -> Tensor:
        """The graph's result, or with ``until`` the output of the layer of that name."""
        values: dict[int, Value | list[Value]] = {}
        out: Tensor | None = None
        for pos, ly in enumerate(self.layers):
            if ly.type == "Parameter":
                values[ly.id] = x
                continue
            if ly.type == "Const":
                name = self.buffer_names.get(ly.id)
                values[ly.id] = getattr(self, name) if name is not None else self.host[ly.id]
                continue
            args = [_pick(values[src], i) for src, i in ly.inputs]
            if ly.type == "Result":
                out = args[0]
            else:
                values[ly.id] = _OPS[ly.type](ly, *args)
                if ly.name == until:
                    return values[ly.id]
            for src, _ in ly.inputs:
                if self._consumers[src] == pos:
                    del values[src]
        if until is not None:
            raise IRError(f"the graph has no layer named {until!r}")
        assert isinstance(out, Tensor)
        return out.contiguous()


def _pick(v: Value | list[Value], index: int) -> Any:
    return v[index] if isinstance(v, list) else v


def load_ir(stem: str, data_dir: Path | None = None, device: torch.device | str = "cpu") -> IRNetwork:
    """``stem``.xml and ``stem``.bin from ``data_dir`` (default: where random-face put them),
    checked against the pinned SHA-256s as they are read."""
    folder = data_dir if data_dir is not None else model_dir()
    xml = read_checked(folder / f"{stem}.xml", PINNED_SHA256[f"{stem}.xml"])
    weights = read_checked(folder / f"{stem}.bin", PINNED_SHA256[f"{stem}.bin"])
    return IRNetwork(xml, weights, device)


class _InFloat64(nn.Module):
    """``net`` run in float64, float32 in and out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.double()).to(x.dtype)


class MobileStyleGAN(nn.Module):
    """random-face's 1024 px MobileStyleGAN in torch.

    ``mapping(z)``: latent z (N, 512), standard normal, to style w (N, 512).
    ``synthesis(w)`` (also ``forward``): style to an RGB image (N, 3, 1024, 1024) in about [-1, 1]
    (not clamped, as OpenVINO returns it). Differentiable in w on any device.

    The mapping runs in float64 (a few ms): the synthesis amplifies a style's float32 rounding
    (~5e-6) to ~1e-3 on some pixels, so two float32 engines computing z -> image differ by up
    to 1.1e-3 on 32 test latents, each ~5e-4 from the float64 result; with the style exact to
    float32, torch stays within 5.4e-4 of OpenVINO on those latents.
    """

    def __init__(self, device: torch.device | str = "cpu", data_dir: Path | None = None) -> None:
        super().__init__()
        self.mapping = _InFloat64(load_ir("MappingNetwork", data_dir, device))
        self.synthesis = load_ir("SynthesisNetwork", data_dir, device)

    def forward(self, style: Tensor) -> Tensor:
        return self.synthesis(style)


class TorchEngine:
    """``generator.Engine`` (numpy in, numpy out) on torch, on ``device``: the OpenVINO engine's
    drop-in for GPU machines. For gradients use :class:`MobileStyleGAN` itself."""

    def __init__(self, device: torch.device | str = "cpu", data_dir: Path | None = None) -> None:
        self.device = torch.device(device)
        self.net = MobileStyleGAN(self.device, data_dir)

    @torch.no_grad()
    def styles(self, z: np.ndarray) -> np.ndarray:
        """(n, 512) float32 latents -> (n, 512) styles."""
        w = self.net.mapping(torch.as_tensor(np.asarray(z, np.float32), device=self.device))
        return w.cpu().numpy()

    @torch.no_grad()
    def images(self, styles: np.ndarray, begun: Begun | None = None) -> np.ndarray:
        """(n, 512) styles -> (n, 3, 1024, 1024) RGB in about [-1, 1], one face at a time so that
        memory does not grow with n (a face's forward pass peaks at a few hundred MB). ``begun``
        is not read: the port has no entry in mid-graph, and the image is the same without it."""
        w = torch.as_tensor(np.asarray(styles, np.float32), device=self.device)
        return np.stack([self.net(w[i : i + 1])[0].cpu().numpy() for i in range(len(w))])

    @torch.no_grad()
    def features(self, styles: np.ndarray, node: str) -> np.ndarray:
        """(n, 512) styles -> the synthesis network's output at the layer named ``node``."""
        w = torch.as_tensor(np.asarray(styles, np.float32), device=self.device)
        return np.stack([self.net.synthesis(w[i : i + 1], node)[0].cpu().numpy() for i in range(len(w))])
