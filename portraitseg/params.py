"""How every command gets its settings: a dataclass default, under the params.yaml section, under a given option.

Each command that reads params.yaml reads one section into one frozen dataclass, the only place
its defaults live:

    config = load_section(params_path, "evaluate", EvaluateConfig, {"threads": threads})

`load_section` reads the section (all defaults when the file or the section is absent), lays the
overrides over it (None = not given; a mapping such as `{"loss_weights": {"dice": 0.5}}` changes
those keys and keeps the others) and rejects unknown keys and wrong types, so a typo in
params.yaml fails before any work instead of being silently ignored.

Command-line options that set such a value, or a value of a data-side options dataclass, default
to None ("not given"): `DefaultFrom` shows the dataclass's default in `--help` without the
command's module being imported at start-up, and `given` keeps only the options that were given.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params section or override that does not describe a valid run; names the key and the file."""


def read_params_section(params_path: str | Path, name: str) -> dict[str, Any]:
    """The `name:` section of a params YAML file ({} when absent); a file that cannot be read as a
    YAML mapping, or a section that is not one, is a ConfigError naming the file."""
    fix = "fix it or pass another --params"
    try:
        params = yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{params_path} is not valid YAML ({where}{error.problem}); {fix}") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{params_path} cannot be read as YAML ({error}); {fix}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path} holds a YAML {type(params).__name__}, not a mapping of sections; {fix}")
    section = params.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{params_path}: {name} must be a mapping, got {type(section).__name__}")
    return section


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["epochs=2", "loss_weights.dice=0.5"]` -> nested dict; values are parsed as YAML scalars."""
    parsed: dict[str, Any] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {override!r} is not key=value")
        value = yaml.safe_load(raw) if raw else ""
        target = parsed
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r} conflicts with another override of {parent}")
        target[leaf] = value
    return parsed


def build_section(
    config_type: type[T], section_name: str, section: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> T:
    """Validate a section mapping plus overrides (None values = not given) into `config_type`."""
    merged = dict(section)
    defaults = {field.name: field for field in dataclasses.fields(config_type)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        # `loss_weights.dice=0.5` changes one weight and keeps the others (from params or defaults).
        base = merged.get(key, field_default(defaults[key]) if key in defaults else None)
        merged[key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    hints = typing.get_type_hints(config_type)
    unknown = sorted(set(merged) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown {section_name} key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(defaults))}"
        )
    checked = {key: check_type(f"{section_name}.{key}", value, hints[key]) for key, value in merged.items()}
    return config_type(**checked)


def load_section(
    params_path: str | Path | None,
    section_name: str,
    config_type: type[T],
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """The `section_name:` section of `params_path` as `config_type`, overrides laid over it.

    `params_path` None means no params file: the dataclass defaults plus the overrides.
    """
    section = read_params_section(params_path, section_name) if params_path is not None else {}
    return build_section(config_type, section_name, section, overrides)


def check_type(key: str, value: Any, expected: Any) -> Any:
    """Return `value` converted to `expected` where that is lossless (int -> float), else raise."""
    origin = typing.get_origin(expected)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        _, value_type = typing.get_args(expected)
        return {str(k): check_type(f"{key}.{k}", v, value_type) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):  # `val_sources=people-dev` on the command line: a one-item list
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        (item_type,) = typing.get_args(expected)
        return [check_type(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    if expected is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # e.g. `size: int | list[int]`: the first alternative that fits
        alternatives = typing.get_args(expected)
        for alternative in alternatives:
            try:
                return check_type(key, value, alternative)
            except ConfigError:
                continue
        names = " or ".join(getattr(alternative, "__name__", str(alternative)) for alternative in alternatives)
        raise ConfigError(f"{key} must be {names}, got {type(value).__name__} {value!r}")
    if expected is str and value is None:  # `reference:` left empty in YAML
        return ""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass: `epochs: true` must not pass as 1.
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def field_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def default_of(target: str, name: str) -> Any:
    """The default of field `name` of a dataclass, or of parameter `name` of a function, named
    "module:Name" (imported here, so only when it is asked for)."""
    module, _, attribute = target.partition(":")
    owner = getattr(importlib.import_module(module), attribute)
    if dataclasses.is_dataclass(owner):
        return field_default(next(field for field in dataclasses.fields(owner) if field.name == name))
    return inspect.signature(owner).parameters[name].default


def given(**values: Any) -> dict[str, Any]:
    """The options that were given (not None): what a command passes on to its dataclass or function."""
    return {key: value for key, value in values.items() if value is not None}


class DefaultFrom(click.Option):
    """An option that defaults to None ("not given") and shows in `--help` the default that lives
    elsewhere: field `field` (default: the option's name) of the dataclass, or parameter of the
    function, `defaults` ("module:Name"); with `params_key`, the params.yaml key read before it.

        @click.option("--crops", cls=DefaultFrom, defaults="datatool.backgrounds:BackgroundOptions", ...)
    """

    def __init__(
        self, *param_decls: str, defaults: str, field: str | None = None, params_key: str | None = None, **attrs: Any
    ):
        super().__init__(*param_decls, default=None, **attrs)
        self.defaults, self.field, self.params_key = defaults, field or self.name, params_key

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        default = default_of(self.defaults, self.field)
        if isinstance(default, (tuple, list)):
            shown = " ".join(map(str, default)) or "[]"
        else:
            shown = str(default).replace("None", "none")
        extra["default"] = f"{self.params_key} of --params, else {shown}" if self.params_key else shown
        return extra
