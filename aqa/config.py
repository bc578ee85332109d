"""Typed configuration saved beside every output, so a run can be repeated from its folder."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

from aqa.errors import UserError
from aqa.files import atomic_write_bytes

ConfigT = TypeVar("ConfigT")


def to_dict(config) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass; paths become strings."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): plain(item) for key, item in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(config)


def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str | os.PathLike | None = None) -> ConfigT:
    """Rebuild a dataclass from :func:`to_dict` output; unknown fields are an error."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}", source)
    values = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, source)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temporary file, then rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"not readable JSON ({error})", path) from None


def save_config(config, path: str | os.PathLike) -> Path:
    return write_json(path, to_dict(config))


def load_config(cls: type[ConfigT], path: str | os.PathLike) -> ConfigT:
    return from_dict(cls, read_json(path), path)
