"""Typed configuration saved beside every output, so a run can be repeated from its folder."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
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


class ConfigValueError(UserError):
    """A configuration value of the wrong type or out of range; ``field`` is its dotted path
    (``optim.lr``), so the message says which value of which file is wrong."""

    def __init__(self, field: str, detail: str, path: str | os.PathLike | None = None):
        self.field = field
        self.detail = detail
        super().__init__(f"{field}: {detail}" if field else detail, path)

    def within(self, section: str, path: str | os.PathLike | None = None) -> ConfigValueError:
        """The same error seen from the enclosing ``section`` (``epochs`` -> ``optim.epochs``)."""
        field = ".".join(part for part in (section, self.field) if part)
        return ConfigValueError(field, self.detail, self.path if path is None else path)


def require(ok: bool, field: str, detail: str) -> None:
    """Raise :class:`ConfigValueError` for ``field`` unless ``ok`` (for range checks in configs)."""
    if not ok:
        raise ConfigValueError(field, detail)


class CheckedConfig:
    """Base of configuration dataclasses that check their own values whenever one is made.

    Subclasses override :meth:`check` (ranges, choices that depend on each other) and raise
    with :func:`require`; types are checked by :func:`from_dict` before the dataclass is built.
    """

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigValueError` naming the field whose value is out of range."""


def validate(config, section: str = "") -> None:
    """Re-run :meth:`CheckedConfig.check` of ``config`` and of every nested section (after a
    field was changed in place); errors name the field's full dotted path."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, ".".join(part for part in (section, item.name) if part))
    if isinstance(config, CheckedConfig):
        try:
            config.check()
        except ConfigValueError as error:
            raise error.within(section) from None


def shown(value: Any) -> str:
    """A value as JSON writes it (null, true, 'text', 3.5), shortened for a one-line message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_type(hint) -> str:
    """What a type hint asks for, in words (for "expected ..., got ...")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args) if len(args) > 1 else repr(args[0])
    if origin in _UNION_ORIGINS:
        return " or ".join(describe_type(arg) for arg in args)
    if origin in (tuple, list) or hint in (tuple, list):
        return "a list"
    if dataclasses.is_dataclass(hint):
        return "an object (a section of fields)"
    if origin is dict or hint is dict:
        return "an object"
    return str(hint)


_UNION_ORIGINS = (typing.Union, getattr(__import__("types"), "UnionType", typing.Union))


def check_value(value: Any, hint, field: str) -> Any:
    """``value`` checked against the type hint ``hint``; returns it converted the way the
    dataclass holds it (ints to floats where a float is wanted, lists to tuples, objects to
    nested dataclasses) or raises :class:`ConfigValueError` naming ``field``.

    Understood hints: Any, None, bool, int, float (finite; ints allowed), str, unions and
    Optional, Literal, tuple[X, ...] and fixed tuples, list[X], dict, nested dataclasses.
    Booleans are never integers here: ``"epochs": true`` is a mistake, not 1 epoch.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def wrong() -> ConfigValueError:
        return ConfigValueError(field, f"expected {describe_type(hint)}, got {shown(value)}")

    if hint is Any:
        return value
    if hint is type(None):
        if value is not None:
            raise wrong()
        return None
    if origin in _UNION_ORIGINS:
        if value is None and type(None) in args:
            return None
        for alternative in args:
            if alternative is type(None):
                continue
            try:
                return check_value(value, alternative, field)
            except ConfigValueError:
                continue
        raise wrong()
    if origin is typing.Literal:
        # `True in (1,)` is true in Python; compare types too so that true is not 1.
        if not any(value == choice and type(value) is type(choice) for choice in args):
            raise wrong()
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong()
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise wrong()
        try:
            number = float(value)
        except OverflowError:
            raise ConfigValueError(field, f"{shown(value)} is out of range for a number") from None
        if not math.isfinite(number):
            raise ConfigValueError(field, f"expected a finite number, got {shown(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigValueError(field, f"expected a list of {len(args)}, got {shown(value)}")
        if not args:
            items = list(value)
        elif origin is tuple and args[-1] is not Ellipsis:
            items = [check_value(item, item_hint, f"{field}[{index}]")
                     for index, (item, item_hint) in enumerate(zip(value, args))]
        else:
            items = [check_value(item, args[0], f"{field}[{index}]") for index, item in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise wrong()
        return from_dict(hint, value, section=field)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise wrong()
        return value
    raise TypeError(f"{field}: check_value does not understand the type hint {hint!r}")


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[ConfigT], data: dict[str, Any], source: str | os.PathLike | None = None,
              section: str = "") -> ConfigT:
    """Rebuild a dataclass from :func:`to_dict` output (e.g. a saved ``config.json``).

    Every value is checked against its field's type hint (:func:`check_value`), then the
    dataclass checks its own ranges when it is built (:class:`CheckedConfig`). Unknown or missing
    fields, a wrong type and a value out of range are each one :class:`~aqa.errors.UserError`
    naming ``source`` and the field's dotted path, e.g. ``optim.lr: expected a number, got 'fast'``.
    ``section`` is the dotted path of ``data`` itself when it is nested.
    """
    try:
        if not isinstance(data, dict):
            raise ConfigValueError(section, f"expected an object (a section of fields), got {shown(data)}")
        hints = _type_hints(cls)
        accepted = [item for item in dataclasses.fields(cls) if item.init]
        names = {item.name for item in accepted}
        unknown = sorted(str(name) for name in data if name not in names)
        if unknown:
            raise ConfigValueError(section, f"unknown {cls.__name__} field(s): {', '.join(unknown)} "
                                            f"(fields here: {', '.join(sorted(names))})")
        missing = [item.name for item in accepted if item.name not in data
                   and item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigValueError(section, f"missing {cls.__name__} field(s): {', '.join(missing)}")
        values = {name: check_value(value, hints[name], ".".join(part for part in (section, name) if part))
                  for name, value in data.items()}
        try:
            return cls(**values)
        except ConfigValueError as error:  # from the dataclass's own checks: name the field fully
            raise error.within(section) from None
    except UserError as error:
        if source is None or error.path is not None:
            raise
        if isinstance(error, ConfigValueError):
            raise ConfigValueError(error.field, error.detail, source) from None
        raise UserError(error.problem, source) from None


def json_safe(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``.

    JSON has no NaN or infinity: Python's ``json`` would write ``NaN``/``Infinity``, which other
    readers reject. A measure that is undefined (a constant prediction's Spearman, an R-l2 beyond
    float range) is stored as ``null`` instead, so a long run never dies at its last write.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temporary file, then rename): readers never see half a file.
    Non-finite floats are written as ``null`` (:func:`json_safe`)."""
    path = Path(path)
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("file not found", path) from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"not readable JSON ({error})", path) from None

