"""Tests of the dotted config overrides (pinsage_tf.config_overrides)."""

from __future__ import annotations

import dataclasses

import pytest

from pinsage_tf import config_overrides


@dataclasses.dataclass(frozen=True)
class _Inner:
  flag: bool = False
  width: int | None = None
  features: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class _Section:
  steps: int = 5
  rate: float = 0.1
  name: str = "a"
  inner: _Inner = dataclasses.field(default_factory=_Inner)

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"_Section.steps must be >= 1, got {self.steps}.")


@dataclasses.dataclass(frozen=True)
class _Root:
  section: _Section = dataclasses.field(default_factory=_Section)
  mode: str = "x"


def _override(*overrides: str) -> _Root:
  return config_overrides.apply(_Root(), config_overrides.parse(_Root, overrides))


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("1", True),
                                           ("0", False), ("TRUE", True)])
def test_bool(text, expected):
  assert _override(f"section.inner.flag={text}").section.inner.flag is expected


def test_int_float_str_and_last_repeat_wins():
  config = _override("section.steps=7", "section.rate=2", "section.name=b=c", "mode=y",
                     "section.steps=9")
  assert config.section.steps == 9
  assert config.section.rate == 2.0 and isinstance(config.section.rate, float)
  assert config.section.name == "b=c"  # the value is everything after the first "="
  assert config.mode == "y"


@pytest.mark.parametrize("text,expected", [("none", None), ("NULL", None), ("12", 12)])
def test_optional(text, expected):
  assert _override(f"section.inner.width={text}").section.inner.width == expected


def test_tuple_field_takes_json_lists_as_tuples():
  config = _override('section.inner.features=[["genre", 20], ["year", 7]]')
  assert config.section.inner.features == (("genre", 20), ("year", 7))


def test_nested_override_keeps_the_other_fields_and_the_input():
  base = _Root()
  config = config_overrides.apply(base, {"section.inner.width": 3})
  assert config == _Root(section=_Section(inner=_Inner(width=3)))
  assert base == _Root()  # frozen: a new config is returned


def test_unknown_key_lists_the_valid_keys_of_its_section():
  with pytest.raises(ValueError) as e:
    _override("section.inner.widht=3")
  assert str(e.value) == ("unknown key 'section.inner.widht': section.inner has features, "
                          "flag, width.")
  with pytest.raises(ValueError) as e:
    _override("sectoin.steps=3")
  assert str(e.value) == ("unknown key 'sectoin.steps': valid top-level keys are mode, "
                          "section.*.")
  with pytest.raises(ValueError, match=r"section.steps is a field, not a section"):
    _override("section.steps.x=1")
  with pytest.raises(ValueError, match=r"section.inner is a section, not a field; set one of "
                                       r"its fields: section.inner.features, "):
    _override("section.inner=1")


@pytest.mark.parametrize("override,message", [
    ("section.steps=2.5", "section.steps: expected an int, got '2.5'."),
    ("section.rate=fast", "section.rate: expected a float, got 'fast'."),
    ("section.inner.flag=yes", "section.inner.flag: expected true/false/1/0, got 'yes'."),
    ("section.inner.width=wide", "section.inner.width: expected an int or none, got 'wide'."),
    ("section.steps=none", "section.steps: expected an int, got 'none'."),
    ("section.steps", "override 'section.steps' is not of the form section.field=value."),
])
def test_bad_value_is_one_line_naming_the_key(override, message):
  with pytest.raises(ValueError) as e:
    _override(override)
  assert str(e.value) == message


def test_dataclass_validation_error_names_the_overrides():
  with pytest.raises(ValueError) as e:
    _override("section.steps=0", "section.inner.flag=true")
  assert str(e.value) == ("section.steps=0, section.inner.flag=true: _Section.steps must be "
                          ">= 1, got 0.")


@pytest.mark.parametrize("value", [None, True, False, 3, 0.25, "abc", (("a", 1),)])
def test_format_value_parses_back(value):
  field_type = {type(None): int | None, bool: bool, int: int, float: float, str: str,
                tuple: tuple[tuple[str, int], ...]}[type(value)]
  text = config_overrides.format_value(value)
  assert config_overrides.parse_value(field_type, text) == value
