"""The face generator new people are drawn from: MobileStyleGAN (FFHQ, 1024 px), run by OpenVINO.

The ``random-face`` wheel ships the generator as OpenVINO IR (``random_face/data/``:
``MappingNetwork`` z (1, 512) -> style (1, 512); ``SynthesisNetwork`` style -> RGB image
(1, 3, 1024, 1024) in about [-1, 1]). Its own engine calls an OpenVINO API that no longer
exists, so the wheel is installed without dependencies (dev.sh, NO_DEPS), never imported,
and its four files are found by the package's import spec, checked against pinned SHA-256s
(another release could be another generator: its people, and every remembered patient's
new person, would change) and run here with ``openvino.Core``.

The engine sits behind ``Engine`` (``styles(z)`` and ``images(styles)``), so a port of the
same IR to torch (a GPU, gradients) is a swap of one object. Truncation pulls each style
towards the mean style: the IR does not hold one, so it is the mean over ``MEAN_SAMPLES``
styles of a fixed seed, the same on every machine.

Licence: the package is Apache-2.0, the weights are distilled from NVIDIA's StyleGAN2-FFHQ
(non-commercial): docs/generator-card.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

PACKAGE = "random-face==2021.7.21.1"
_MODULE = "random_face"
# The files every figure in docs/research/generated-identities.md was measured with.
PINNED_SHA256 = {
    "MappingNetwork.xml": "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b",
    "MappingNetwork.bin": "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305",
    "SynthesisNetwork.xml": "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd",
    "SynthesisNetwork.bin": "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645",
}
STYLE_DIM = 512
RESOLUTION = 1024
MEAN_SAMPLES = 4096
_MEAN_SEED = 20210721


class GeneratorUnavailable(RuntimeError):
    """The generator's files are missing, changed or cannot run; the message says how to fix it.
    A route that draws its new people from it holds its photos (``method-unavailable``)."""


# A folder holding the four files instead of the installed wheel (a GPU host that has torch alone
# and the files copied): they are checked against the same pins.
DIR_ENV = "DICOM_ANON_GENERATOR_DIR"


def model_dir() -> Path:
    """Where the wheel put its IR files, found by spec, not import: its ``__init__`` imports the
    OpenVINO API that no longer exists. ``$DICOM_ANON_GENERATOR_DIR`` overrides it."""
    if folder := os.environ.get(DIR_ENV):
        return Path(folder)
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorUnavailable(
            f"the Python package {PACKAGE.split('==')[0]!r} is not installed (./dev.sh installs {PACKAGE})"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def verified_files(folder: Path | None = None) -> dict[str, Path]:
    """The four IR files, each checked against its pinned SHA-256."""
    folder = model_dir() if folder is None else folder
    files = {}
    for name, want in PINNED_SHA256.items():
        path = folder / name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise GeneratorUnavailable(
                f"{path} is unreadable ({exc.strerror}); reinstall {PACKAGE}"
            ) from None
        if digest != want:
            raise GeneratorUnavailable(
                f"{path}: checksum {digest[:16]}... is not the pinned generator's; reinstall {PACKAGE}"
            )
        files[name] = path
    return files


class Begun(NamedTuple):
    """A synthesis already run up to ``node`` (its output ``features``, one row per style)."""

    node: str
    features: np.ndarray


class Engine(Protocol):
    """What runs the two networks: OpenVINO here, a torch port of the same IR later."""

    def styles(self, z: np.ndarray) -> np.ndarray:
        """(n, 512) float32 latents -> (n, 512) styles."""
        ...

    def images(self, styles: np.ndarray, begun: Begun | None = None) -> np.ndarray:
        """(n, 512) styles -> (n, 3, 1024, 1024) RGB in about [-1, 1]; ``begun``, the synthesis
        network's output at a node for these styles (a preview's ``features``), may spare the
        part of the network that made it. The image is the same either way."""
        ...

    def features(self, styles: np.ndarray, node: str) -> np.ndarray:
        """(n, 512) styles -> the synthesis network's output at ``node`` (the preview reads it)."""
        ...


class OpenVinoEngine:
    """Both networks compiled for OpenVINO's CPU plugin, in float32.

    float32 is asked for explicitly: on CPUs with bf16 units OpenVINO's default precision is
    bf16, and one patient's new person would then differ from machine to machine.
    """

    def __init__(self, files: dict[str, Path]) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise GeneratorUnavailable(
                f"openvino is not installed ({exc}); install the 'faces' extra"
            ) from None
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        try:
            mapping = core.read_model(files["MappingNetwork.xml"], files["MappingNetwork.bin"])
            mapping.reshape({0: ov.PartialShape([-1, STYLE_DIM])})
            synthesis = core.read_model(files["SynthesisNetwork.xml"], files["SynthesisNetwork.bin"])
            self._mapping = core.compile_model(mapping, "CPU", config)
            self._synthesis = core.compile_model(synthesis, "CPU", config)
        except RuntimeError as exc:
            raise GeneratorUnavailable(f"OpenVINO cannot load the generator: {exc}") from None
        self._ov, self._core, self._config, self._graph = ov, core, config, synthesis
        self._cut: dict[str, object] = {}
        self._rest: dict[str, object] = {}
        # A compiled model's infer requests are not to be shared by threads at once.
        self._lock = threading.Lock()

    def styles(self, z: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self._mapping(np.ascontiguousarray(z, np.float32))[0])

    def images(self, styles: np.ndarray, begun: Begun | None = None) -> np.ndarray:
        out = []
        styles = np.ascontiguousarray(styles, np.float32)
        with self._lock:
            if begun is None:
                for style in styles:
                    out.append(np.asarray(self._synthesis(style[None])[0])[0])
            else:
                rest = self._rest_after(begun.node)
                for style, features in zip(styles, np.asarray(begun.features, np.float32), strict=True):
                    out.append(np.asarray(rest([style[None], features[None]])[0])[0])
        return np.stack(out)

    def features(self, styles: np.ndarray, node: str) -> np.ndarray:
        with self._lock:
            if node not in self._cut:
                # The synthesis graph cut after ``node``: OpenVINO leaves out what it does not need.
                found = self._node(self._graph, node)
                cut = self._ov.Model(
                    [self._ov.opset13.result(found.output(0))], self._graph.get_parameters(), node
                )
                self._cut[node] = self._core.compile_model(cut, "CPU", self._config)
            run = self._cut[node]
            return np.stack([np.asarray(run(style[None])[0])[0] for style in styles])

    def _rest_after(self, node: str) -> object:
        """The synthesis network from ``node`` on, compiled (once): inputs the style and ``node``'s
        output. On the pinned IR its images are bit for bit the whole network's
        (tests/faces/test_preview.py), so a face previewed and then rendered is the face a
        restart renders in one go."""
        if node not in self._rest:
            # A copy of the graph, rewired: ``node``'s consumers read a new input instead.
            graph = self._graph.clone()
            out = self._node(graph, node).output(0)
            given = self._ov.opset13.parameter(out.get_partial_shape(), out.get_element_type(), name="begun")
            for consumer in list(out.get_target_inputs()):
                consumer.replace_source_output(given.output(0))
            rest = self._ov.Model(graph.get_results(), [*graph.get_parameters(), given], f"after {node}")
            self._rest[node] = self._core.compile_model(rest, "CPU", self._config)
        return self._rest[node]

    @staticmethod
    def _node(graph: object, node: str) -> object:
        found = [op for op in graph.get_ordered_ops() if op.get_friendly_name() == node]
        if len(found) != 1:
            raise GeneratorUnavailable(f"the generator has no node {node!r}; reinstall {PACKAGE}")
        return found[0]


class FaceGenerator:
    """Latents to truncated styles to RGB faces."""

    def __init__(self, engine: Engine, psi: float) -> None:
        self.engine = engine
        self.psi = psi
        z = np.random.default_rng(_MEAN_SEED).standard_normal((MEAN_SAMPLES, STYLE_DIM)).astype(np.float32)
        self.mean_style = engine.styles(z).mean(axis=0)

    def raw_styles(self, z: np.ndarray) -> np.ndarray:
        """Untruncated styles of (n, 512) latents."""
        return self.engine.styles(z)

    def truncate(self, raw: np.ndarray, psi: float | None = None) -> np.ndarray:
        """``psi`` (default the generator's) of the way from the mean style to ``raw``."""
        return self.mean_style + (self.psi if psi is None else psi) * (raw - self.mean_style)

    def styles(self, z: np.ndarray) -> np.ndarray:
        """Truncated styles of (n, 512) latents."""
        return self.truncate(self.raw_styles(z))

    def faces(self, styles: np.ndarray, begun: Begun | None = None) -> np.ndarray:
        """(n, 1024, 1024, 3) uint8 RGB faces of (n, 512) truncated styles; ``begun`` as
        ``Engine.images`` takes it (the faces' previews' features: a quarter of a render spared)."""
        x = self.engine.images(styles, begun)
        return np.clip((x.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)

    def features(self, styles: np.ndarray, node: str) -> np.ndarray:
        """The synthesis network's output at ``node`` for (n, 512) truncated styles."""
        return self.engine.features(np.ascontiguousarray(styles, np.float32), node)


def load(psi: float, folder: Path | None = None) -> FaceGenerator:
    """The pinned generator, checked and compiled; ``GeneratorUnavailable`` otherwise."""
    return FaceGenerator(OpenVinoEngine(verified_files(folder)), psi)


@lru_cache(maxsize=2)
def get_generator(psi: float) -> FaceGenerator:
    """One generator per process and truncation: compiling and the mean style take ~0.5 s."""
    return load(psi)
