"""Typed configurations check their own fields: from_dict checks every value against its type
hint, the dataclass checks its ranges, and every problem is one line naming the file and the
field's dotted path. write_json never writes NaN or infinity (they are not JSON)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

import pytest

from aqa.config import CheckedConfig, ConfigValueError, from_dict, require, to_dict, validate, write_json
from aqa.errors import UserError


@dataclass
class Inner(CheckedConfig):
    count: int = 3
    share: float = 0.5
    names: tuple[str, ...] = ("a", "b")

    def check(self) -> None:
        require(self.count >= 0, "count", f"must not be negative, got {self.count!r}")
        require(0 < self.share < 1, "share", f"must be in (0, 1), got {self.share!r}")


@dataclass
class Outer(CheckedConfig):
    label: str = "x"
    flag: bool = False
    maybe: str | None = None
    rate: float | Literal["auto"] = 1.0
    kind: Literal["one", "two"] = "one"
    pair: tuple[int, float] = (1, 2.0)
    inner: Inner = field(default_factory=Inner)
    extra: dict = field(default_factory=dict)


SOURCE = "RUN/config.json"


def with_value(path: str, value) -> dict:
    data = json.loads(json.dumps(to_dict(Outer())))
    node = data
    *sections, name = path.split(".")
    for section in sections:
        node = node[section]
    node[name] = value
    return data


@pytest.mark.parametrize("path, value, message", [
    ("inner", 3, "inner: expected an object (a section of fields), got 3"),
    ("inner", [1, 2], "inner: expected an object (a section of fields), got a list of 2"),
    ("inner.share", "fast", "inner.share: expected a number, got 'fast'"),
    ("inner.share", None, "inner.share: expected a number, got null"),
    ("inner.share", True, "inner.share: expected a number, got true"),
    ("inner.share", float("nan"), "inner.share: expected a finite number, got nan"),
    ("inner.share", 10 ** 400, "inner.share: 1000"),
    ("inner.count", 2.5, "inner.count: expected an integer, got 2.5"),
    ("inner.count", True, "inner.count: expected an integer, got true"),
    ("inner.count", "3", "inner.count: expected an integer, got '3'"),
    ("inner.names", "ab", "inner.names: expected a list, got 'ab'"),
    ("inner.names", ["a", 2], "inner.names[1]: expected a string, got 2"),
    ("flag", 1, "flag: expected true or false, got 1"),
    ("label", None, "label: expected a string, got null"),
    ("maybe", 3, "maybe: expected a string or null, got 3"),
    ("rate", "fast", "rate: expected a number or 'auto', got 'fast'"),
    ("kind", "three", "kind: expected one of 'one', 'two', got 'three'"),
    ("pair", [1], "pair: expected a list of 2, got a list of 1"),
    ("pair", [1.5, 2], "pair[0]: expected an integer, got 1.5"),
    ("extra", [], "extra: expected an object, got a list of 0"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_file_and_the_field(path, value, message):
    with pytest.raises(UserError) as caught:
        from_dict(Outer, with_value(path, value), SOURCE)
    text = str(caught.value)
    assert text.startswith(f"{SOURCE}: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize("path, value, message", [
    ("inner.count", -1, "inner.count: must not be negative, got -1"),
    ("inner.share", 0, "inner.share: must be in (0, 1), got 0.0"),
    ("inner.share", 1.5, "inner.share: must be in (0, 1), got 1.5"),
])
def test_a_value_out_of_range_is_refused_by_the_dataclass_naming_the_field(path, value, message):
    with pytest.raises(ConfigValueError) as caught:
        from_dict(Outer, with_value(path, value), SOURCE)
    assert str(caught.value) == f"{SOURCE}: {message}"


@pytest.mark.parametrize("data, message", [
    ({"speed": 3}, "unknown Outer field(s): speed"),
    ({"inner": {"speed": 3}}, "inner: unknown Inner field(s): speed"),
    ([1, 2], "expected an object (a section of fields), got a list of 2"),
])
def test_unknown_fields_and_a_non_object_are_refused(data, message):
    with pytest.raises(UserError) as caught:
        from_dict(Outer, data, SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}: {message}")


def test_good_values_are_converted_to_what_the_dataclass_holds():
    data = with_value("inner", {"count": 0, "share": 0.25, "names": ["q"]})
    data.update(rate="auto", pair=[4, 5], maybe="m", flag=True)
    config = from_dict(Outer, data, SOURCE)
    assert config.inner == Inner(count=0, share=0.25, names=("q",))
    assert config.rate == "auto" and config.pair == (4, 5.0) and isinstance(config.pair[1], float)
    assert from_dict(Outer, to_dict(config)) == config
    assert isinstance(from_dict(Inner, {"share": 0.5}).share, float)


def test_a_field_changed_in_place_is_caught_by_validate_with_its_full_path():
    config = Outer()
    config.inner.count = -4
    with pytest.raises(ConfigValueError, match=r"^inner.count: must not be negative, got -4$"):
        validate(config)


@pytest.mark.parametrize("value, stored", [
    (math.nan, None), (math.inf, None), (-math.inf, None), ([1.0, math.nan], [1.0, None]),
    ({"deep": {"x": math.inf}}, {"deep": {"x": None}}), (0.25, 0.25),
])
def test_write_json_stores_nan_and_infinity_as_null_so_the_file_stays_json(tmp_path, value, stored):
    path = tmp_path / "metrics.json"
    write_json(path, {"rl2": value})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rl2": stored}
    assert sorted(item.name for item in tmp_path.iterdir()) == ["metrics.json"]
