"""Model cards: what a generator is, where its weights come from, and under which licence.

A card is a small JSON file under ``<models dir>/generators/<name>.json``. Weights are never
committed and never downloaded: they are either inside an installed package
(``package:gan_face_generate/weights.tar``) or a file that ``dicom-anon models install`` copied
beside the card after checking its SHA-256. Loading checks the SHA-256 again, so a card always
describes exactly the bytes that run.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The repository's models/ folder, as the surrogate pool uses it (dicom_anon.faces.pool).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
GENERATORS_DIR = "generators"
PACKAGE_PREFIX = "package:"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class ModelCardError(Exception):
    """A model card or its weights cannot be used; the message says which and why."""


class GeneratorCard(BaseModel):
    """Everything needed to rebuild a generator and to judge whether a site may use it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["generator"] = "generator"
    architecture: Literal["dcgan", "stylegan2", "mobilestylegan"]
    resolution: int = Field(ge=8)
    latent_dim: int = Field(ge=1)
    latent_space: Literal["z", "w"]
    params: dict[str, int | float] = Field(default_factory=dict)
    weights: str
    state_key: str | None = None
    sha256: str
    licence: str
    source: str
    training_data: str = ""
    notes: str = ""
    # Where the ArcFace 112x112 template lies in the generator's images, as (scale, dx, dy) in
    # template units (see frame.template_in_frame); measured at install time by detecting landmarks
    # on samples of G. (1, 0, 0) for ArcFace-aligned training data such as DigiFace-1M.
    frame: tuple[float, float, float] = (1.0, 0.0, 0.0)

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r}: use lower-case letters, digits, '-', '_' or '.' (at most 64)")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return value


def card_path(models_dir: Path, name: str) -> Path:
    return models_dir / GENERATORS_DIR / f"{name}.json"


def read_card(path: Path) -> GeneratorCard:
    try:
        return GeneratorCard.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelCardError(f"no model card at {path}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelCardError(f"{path}: {problems}") from None


def load_card(models_dir: Path, name: str) -> GeneratorCard:
    """The card called ``name``, with the list of installed ones in the error if it is missing."""
    path = card_path(models_dir, name)
    if not path.is_file():
        known = ", ".join(c.name for c in list_cards(models_dir)) or "none"
        raise ModelCardError(
            f"no generator called {name!r} under {models_dir / GENERATORS_DIR} (installed: {known})"
        )
    return read_card(path)


def list_cards(models_dir: Path) -> list[GeneratorCard]:
    folder = models_dir / GENERATORS_DIR
    return [read_card(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def write_card(models_dir: Path, card: GeneratorCard) -> Path:
    path = card_path(models_dir, card.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card.model_dump(), indent=2) + "\n", encoding="utf-8")
    return path


def weights_path(models_dir: Path, card: GeneratorCard) -> Path:
    """The weights file a card points at: inside an installed package, or beside the card."""
    if card.weights.startswith(PACKAGE_PREFIX):
        package, _, member = card.weights[len(PACKAGE_PREFIX) :].partition("/")
        # find_spec locates the package without importing it (gan_face_generate's modules pull
        # in plotting and experiment-tracking libraries we never need).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelCardError(
                f"{card.name}: its weights come from the Python package {package!r}, which is not installed"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / member
    else:
        path = models_dir / GENERATORS_DIR / card.weights
    if not path.is_file():
        raise ModelCardError(f"{card.name}: weights file {path} is missing")
    return path
