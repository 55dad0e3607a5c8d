"""Typed config sections: a frozen dataclass per config section, built from it by field name, that checks itself.

``ml_collections`` configs stay the user-facing format (files, ``--config.KEY=VALUE`` overrides); the code reads
typed, hashable sections (``Section.from_config(c.train)``), and each section's ``problems()`` names every bad
value at once, with its full key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """One or more invalid config values; ``problems`` lists them (key, value, what is allowed)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config:\n  " + "\n  ".join(problems))


class Checker:
    """Collects one line per bad value: ``{prefix}.{key}={value!r}: expected {what}`` (``key`` alone without a
    prefix). Values are attributes of ``values``; subclasses may look them up otherwise (``_value``)."""

    def __init__(self, values: Any, prefix: str = ""):
        self.values, self.prefix, self.found = values, prefix, []

    def _value(self, key: str):
        return getattr(self.values, key)

    def check(self, key: str, ok: Callable[[Any], bool], expected: str) -> None:
        name = f"{self.prefix}.{key}" if self.prefix else key
        try:
            value = self._value(key)
        except (KeyError, AttributeError):
            self.found.append(f"{name}: missing from the config")
            return
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            self.found.append(f"{name}={value!r}: expected {expected}")

    def one_of(self, key: str, allowed) -> None:
        self.check(key, lambda v: v in allowed, f"one of {list(allowed)}")

    def positive(self, key: str, integer: bool = True) -> None:
        self.check(
            key,
            lambda v: (isinstance(v, int) if integer else isinstance(v, (int, float))) and v > 0,
            "a positive " + ("integer" if integer else "number"),
        )

    def non_negative(self, key: str, integer: bool = True) -> None:
        self.check(
            key,
            lambda v: (isinstance(v, int) if integer else isinstance(v, (int, float))) and v >= 0,
            "a non-negative " + ("integer" if integer else "number"),
        )

    def fraction(self, key: str, lo: float = 0.0, hi: float = 1.0) -> None:
        self.check(key, lambda v: lo <= v <= hi, f"a number in [{lo}, {hi}]")


def get_path(config, key: str):
    """The value at dotted ``key`` (``"model.dtype"``, ``"study.arms.rho1.config"``) of a typed run config or a
    ConfigDict, through the free-form maps (plain dicts) too; raises AttributeError or KeyError for a missing key."""
    for name in key.split("."):
        config = config[name] if isinstance(config, dict) else getattr(config, name)
    return config


def replace_path(config, key: str, value):
    """A copy of the frozen dataclass tree ``config`` with the value at dotted ``key`` replaced (each section on
    the way is copied with ``dataclasses.replace``); raises AttributeError for a missing key."""
    name, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{name: value})
    return dataclasses.replace(config, **{name: replace_path(getattr(config, name), rest, value)})


class ConfigChecker(Checker):
    """``Checker`` over dotted keys of a whole config (``model.dtype``)."""

    def _value(self, key: str):
        return get_path(self.values, key)


def frozen(value):
    """Lists (at any depth, e.g. curriculum bins) as tuples."""
    return tuple(frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


class Section:
    """Mixin for frozen dataclasses that mirror one config section (field names are the section's keys)."""

    @classmethod
    def from_config(cls, section, **overrides):
        """The dataclass from the keys of ``section`` (a ConfigDict or mapping, or a typed section whose attributes
        include its fields, e.g. ``StepConfig.from_config(run.train)``) that name its fields; lists (at any depth)
        become tuples so the result stays hashable (it is part of jit cache keys)."""
        values = {}
        mapping = hasattr(section, "keys")
        for field in dataclasses.fields(cls):
            if field.name in section if mapping else hasattr(section, field.name):
                value = section[field.name] if mapping else getattr(section, field.name)
                values[field.name] = frozen(value)
        return cls(**{**values, **overrides})

    def checker(self, prefix: str) -> Checker:
        return Checker(self, prefix)

    def problems(self, prefix: str) -> list[str]:
        return []
