"""Command-line overrides of a run config: ``--config.KEY=VALUE`` parsed as the type of the value it replaces.

Validation lives with the jobs (``wmtp_jax.jobs``): each job checks its own sections.
"""

from __future__ import annotations

import ast

import ml_collections
from ml_collections.config_flags import config_path

from wmtp_jax.schema import ConfigError

__all__ = ["ConfigError", "apply_overrides"]


def _parse_value(text: str, current):
    """``text`` parsed as the type of ``current`` (bool, int, float, str, tuple); raises ValueError."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError("expected true or false")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (tuple, list)):
        value = ast.literal_eval(text) if text.strip() else ()
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return value
    return text


def apply_overrides(
    c: ml_collections.ConfigDict, overrides: list[str], free_form: dict | None = None, presets: dict | None = None
) -> list[str]:
    """Applies ``KEY=VALUE`` overrides (from ``--config.KEY=VALUE``); returns one problem per unknown key or
    value of the wrong type instead of stopping at the first. ``free_form``: the maps that take new keys
    (``run_config.FREE_FORM``: dotted prefix -> None for string values, or the defaults of a new entry).
    ``presets``: selector keys (``run_config.PRESETS``: ``"eval.protocol"`` -> {name: {key: value}}); a selector
    override is applied first and writes its preset's keys into its section, so the other overrides win."""
    out = []
    selectors = [item for item in overrides if item.partition("=")[0] in (presets or {})]
    for item in selectors:
        key, _, name = item.partition("=")
        choices = presets[key]
        if name not in choices:
            out.append(f"{key}={name!r}: expected one of {list(choices)}")
            continue
        try:
            section = config_path.get_value(key.rpartition(".")[0], c) if "." in key else c
        except (KeyError, AttributeError):
            out.append(f"{key}: unknown config key (this config has no {key.rpartition('.')[0]} section)")
            continue
        section.update({**choices[name], key.rpartition(".")[2]: name})
    for item in overrides:
        if item in selectors:
            continue
        key, sep, text = item.partition("=")
        if not sep:
            out.append(f"--config.{key}: expected --config.{key}=VALUE")
            continue
        try:
            current = config_path.get_value(key, c)
        except (KeyError, AttributeError, IndexError, ValueError):
            current = _new_free_form_key(c, key, free_form or {})
            if current is None:
                out.append(f"{key}: unknown config key")
                continue
        if hasattr(current, "items"):
            out.append(f"{key}: is a group of keys, not a value")
            continue
        try:
            config_path.set_value(key, c, _parse_value(text, current))
        except (ValueError, SyntaxError) as e:
            out.append(f"{key}={text!r}: expected a {type(current).__name__} ({e})")
    return out


def _new_free_form_key(c: ml_collections.ConfigDict, key: str, free_form: dict):
    """Adds ``key`` to the free-form map it lies in (a prefix of ``free_form``) and returns its default value, whose
    type the override's text is parsed as; None when ``key`` is not inside a free-form map of ``c``."""
    for prefix, entry in free_form.items():
        if not key.startswith(prefix + "."):
            continue
        try:
            group = config_path.get_value(prefix, c)
        except (KeyError, AttributeError, IndexError, ValueError):
            return None
        rest = key[len(prefix) + 1 :].split(".")
        if entry is None and len(rest) == 1:  # a new tag: a string
            group[rest[0]] = ""
            return ""
        if entry is not None and len(rest) == 2 and rest[1] in entry:  # a new entry's field: the entry's defaults
            if rest[0] not in group:
                group[rest[0]] = ml_collections.ConfigDict(dict(entry))
            return group[rest[0]][rest[1]]
    return None
