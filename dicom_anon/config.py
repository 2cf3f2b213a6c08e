"""Settings and rules: the YAML a records officer edits, validated with pydantic.

Errors name the file, the line and what to write instead, because the person who
reads them edits YAML, not Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .headers.options import PIXEL_OPTIONS, Option, parse_options

DEFAULT_DATA_DIR = Path("/var/lib/dicom-anon")


class ConfigError(Exception):
    """A settings file that cannot be used; the message is one line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeidSettings(_Strict):
    """Header de-identification used by ``dicom-anon deid`` when no --option is given."""

    options: frozenset[Option] = Field(default_factory=frozenset)

    @field_validator("options", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> frozenset[Option]:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            value = [value]
        opts = parse_options([str(v) for v in value])
        pixel = sorted(o.value for o in opts & PIXEL_OPTIONS)
        if pixel:
            raise ValueError(
                f"{', '.join(pixel)} describe pixel work; set them on a photo route, not in deid.options"
            )
        return opts


class Settings(_Strict):
    """The whole settings file. Sections are added as the service grows."""

    data_dir: Path = DEFAULT_DATA_DIR
    secret_file: Path | None = None
    deid: DeidSettings = Field(default_factory=DeidSettings)

    @property
    def secret_path(self) -> Path:
        """The site secret lives in the data dir unless the file says otherwise."""
        return self.secret_file if self.secret_file is not None else self.data_dir / "site.key"


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    lines = {}
    for key_node, value_node in node.value:
        lines[key_node.value] = (key_node.start_mark.line + 1, value_node.start_mark.line + 1)
    mapping["__lines__"] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__lines__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _line_of(raw: Any, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest part of ``loc`` that exists in the YAML."""
    line = None
    node = raw
    for part in loc:
        if isinstance(node, dict):
            lines = node.get("__lines__", {})
            if part in lines:
                line = lines[part][1]
            if part not in node:
                break
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            item = node[part]
            if isinstance(item, dict) and item.get("__lines__"):
                line = min(k for k, _ in item["__lines__"].values())
            node = item
        else:
            break
    return line


def read_yaml(path: Path) -> Any:
    """Parse YAML keeping key lines; raise ConfigError with file and line on syntax errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the settings file ({exc.strerror})") from None
    try:
        return yaml.load(text, Loader=_LineLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}; check indentation and quoting") from None


def validate(model: type[BaseModel], raw: Any, path: Path) -> Any:
    """Validate parsed YAML against ``model``; every problem becomes 'file:line: where: what'."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}:1: the file must be a mapping of settings (key: value), not a list or text"
        )
    try:
        return model.model_validate(_strip_lines(raw))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(raw, loc)
            where = f"{path}:{line}" if line else str(path)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown setting '{loc[-1]}'; check the spelling against config/dicom-anon.yaml"
            lines.append(f"{where}: {dotted}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_settings(path: Path | None) -> Settings:
    """Settings from ``path``, or the built-in defaults when no file is given."""
    if path is None:
        return Settings()
    return validate(Settings, read_yaml(path), path)
