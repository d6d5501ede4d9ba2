"""Config dataclasses: the checks every learner and agent config shares, presets, and building a config from values.

Every learner and agent has one config dataclass: a docstring per field (the ``--help`` text of ``metarl train NAME``)
and validation in ``__post_init__`` that raises :class:`ConfigError` (a ``ValueError``) with a message saying what
to do. The checks below are the only place those messages are written.

Presets are YAML mappings (``yaml.safe_load``) of field values; :func:`config_from_dict` builds a dataclass from
such a mapping, refusing an unknown key with the closest valid one (a renamed field's old key: naming the new one,
:func:`check_renamed_fields`), and turning YAML/JSON lists into the tuples a field declares. :func:`parse_overrides`
reads ``--set key=value`` pairs (values are YAML; ``a.b=v`` sets key ``b`` of the mapping field ``a``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and what to do (printed as one line)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              optional: bool = False) -> None:
    """``value`` is an integer in ``[minimum, maximum]`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if minimum is not None and maximum is not None:
        bounds = f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        bounds = f" >= {minimum}"
    elif maximum is not None:
        bounds = f" <= {maximum}"
    else:
        bounds = ""
    wanted = "an integer" + bounds + (" or None" if optional else "")
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be {wanted}, got {value!r}")


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """``value`` is a finite real number within the given bounds (open or closed), or None when ``optional``."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            wanted = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            wanted = f"{'<' if high_open else '<='} {high}"
        else:
            wanted = "a finite number"
        raise ConfigError(f"{name} must be {wanted}{' or None' if optional else ''}, got {value!r}")


def check_positive(value: Any, name: str, *, optional: bool = False) -> None:
    """``value`` is a finite number > 0 (or None when ``optional``)."""
    check_number(value, name, low=0, low_open=True, optional=optional)


def check_discounts(values: Any, name: str, *, exclude: Mapping[str, float] | None = None) -> list[float]:
    """``values`` is a list of distinct discounts in [0, 1], none equal to a value of ``exclude`` (the other
    discounts by field name); returns it as floats."""
    exclude = dict(exclude or {})
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list of discounts, got {values!r}")
    for value in values:
        check_number(value, f"each of {name}", low=0, high=1)
    discounts = [float(value) for value in values]
    if set(discounts) & set(exclude.values()) or len(set(discounts)) < len(discounts):
        raise ConfigError(f"{name} {discounts} must differ from each other"
                          + "".join(f" and from {field}" for field in exclude))
    return discounts


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``; the message offers the closest one."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}"
                          + _did_you_mean(value, choices))


def check_device(value: Any, name: str = "device") -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (resolved by :func:`metarl.core.device.resolve_device`)."""
    ok = isinstance(value, str) and (value in ("cpu", "cuda", "auto") or
                                     (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")


def check_mapping(value: Any, name: str) -> None:
    """``value`` is a mapping with string keys (e.g. keyword arguments for ``gymnasium.make``)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{name} must be a dict of names to values, got {value!r}")


def check_sizes(value: Any, name: str) -> None:
    """A non-empty sequence of integers >= 1 (hidden layer sizes)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value \
            or not all(_is_int(v) and v >= 1 for v in value):
        raise ConfigError(f"{name} must be a non-empty list of integers >= 1, got {value!r}")


def check_fields(config: Any, names: Iterable[str], check: Any, **bounds: Any) -> None:
    """``check(getattr(config, name), name, **bounds)`` for each field in ``names`` (one check, many fields)."""
    for name in names:
        check(getattr(config, name), name, **bounds)


@dataclass
class SeededConfig:
    """The two settings every learner and agent config starts with (subclass it; call ``super().__post_init__()``)."""

    seed: int = 0
    """seed of everything the learner or agent draws: initialisation, tasks, env resets, noise, batches"""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:N or auto (cuda where there is one)"""

    def __post_init__(self) -> None:
        check_int(self.seed, "seed")
        check_device(self.device)


def check_renamed_fields(cls: type, values: Mapping[str, Any], where: str | None = None) -> None:
    """One-line :class:`ConfigError` for a key ``cls`` used to have: ``cls.RENAMED_FIELDS`` maps old -> new names
    (a ``ClassVar``), so an old preset fails naming the new key instead of loading without it."""
    renamed = getattr(cls, "RENAMED_FIELDS", {})
    for key in values:
        if key in renamed:
            raise ConfigError(f"{where + ': ' if where else ''}{cls.__name__} field {key!r} is now called "
                              f"{renamed[key]!r}: rename the key")


def _did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(annotation: Any, value: Any) -> Any:
    """YAML/JSON values into what a field declares: lists into tuples, mappings into nested dataclasses."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _coerce(options[0], value)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return config_from_dict(annotation, value)
    if annotation is float and _is_int(value):
        return float(value)
    return value


def config_from_dict(cls: type, values: Mapping[str, Any], *, where: str | None = None) -> Any:
    """``cls(**values)`` after checking every key is a field of ``cls`` (an unknown key: one line naming the
    closest valid key) and coercing lists/mappings to the declared tuples/dataclasses. ``where`` names the source of
    the values in messages (a preset file, ``config.json``)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of {cls.__name__} fields, got "
                          f"{type(values).__name__}")
    check_renamed_fields(cls, values, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}: " if where else ""
    for key in values:
        if key not in fields:
            raise ConfigError(f"{prefix}unknown {cls.__name__} field {key!r}{_did_you_mean(key, fields)}; "
                              f"valid: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    try:
        return cls(**{key: _coerce(hints[key], value) for key, value in values.items()})
    except TypeError as err:  # a value of the wrong type deep inside a check
        raise ConfigError(f"{prefix}bad {cls.__name__}: {err}") from None


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A preset file: a YAML mapping (``yaml.safe_load``); one-line errors for a missing or malformed file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of config fields, got {type(data).__name__}")
    return data


def parse_overrides(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``["inner_lr=0.05", "hidden_sizes=[32, 32]", "env_kwargs.task_name=push-v3"]`` -> a nested dict.

    Values are YAML scalars, lists or mappings; ``-`` in keys reads as ``_``; a dotted key sets one entry of a
    mapping field (merged with the preset's mapping by :func:`merge_values`)."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"cannot parse the value of --set {pair!r} (values are YAML)") from None
        head, *rest = key.strip().split(".")
        head = head.replace("-", "_")
        if not head or any(not part for part in rest):
            raise ConfigError(f"--set expects key=value with a field name as key, got {pair!r}")
        if rest:
            target = result.setdefault(head, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {pair!r}: {head} was also set to a non-mapping value")
            for part in rest[:-1]:
                target = target.setdefault(part, {})
            target[rest[-1]] = value
        else:
            result[head] = value
    return result


def merge_values(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` on top; mappings are merged key by key (so a dotted ``--set`` keeps the rest), except
    that an empty mapping replaces: ``env_kwargs: {}`` over a preset's ``env_kwargs`` clears them."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and value and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged
