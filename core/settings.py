"""The machinery behind ``config.py``: validated frozen dataclasses and the settings table.

A config dataclass derives from :class:`Validated`: its ``__post_init__`` checks every ``Literal``
field's choices and every range given as field metadata (:func:`num`), then ``_extra_checks``. A
:class:`Setting` binds a flat, user-facing name to one field of such a dataclass; everything about
it (type, choices, range, default, help) is read off the dataclass, the help from the docstring
under the field. ``config.py`` holds the dataclasses and the one table of settings; this module
holds no settings of its own.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo(Validated):
...     n: int = num(3, 1)
>>> Demo(n=0)
Traceback (most recent call last):
...
core.errors.SettingsError: n must be >= 1, got 0
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import SettingsError

__all__ = ["num", "check", "Validated", "choices_of", "Setting", "make_setting", "parse_focals", "parse_scale_from"]


def num(default: Any, lo: float | None = None, hi: float | None = None, *, above: float | None = None) -> Any:
    """A numeric field with its range: ``lo <= value <= hi``, or ``value > above``."""
    return field(default=default, metadata={"min": lo, "max": hi, "above": above})


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise SettingsError(msg)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices_of(cls: type, name: str) -> tuple | None:
    """The allowed values of a ``Literal`` field, or None."""
    hint = _hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _validate(obj: Any) -> None:
    """Check every field of a config dataclass against its Literal choices and metadata range."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = choices_of(type(obj), f.name)
        if allowed is not None:
            check(value in allowed, f"{f.name} must be one of {allowed}, got {value!r}")
        if _hints(type(obj))[f.name] is bool:
            check(isinstance(value, bool), f"{f.name} must be a bool, got {value!r}")
        meta = f.metadata
        if not meta:
            continue
        check(
            isinstance(value, (int, float)) and not isinstance(value, bool), f"{f.name} must be a number, got {value!r}"
        )
        check(math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        if meta.get("min") is not None:
            check(value >= meta["min"], f"{f.name} must be >= {meta['min']}, got {value}")
        if meta.get("max") is not None:
            check(value <= meta["max"], f"{f.name} must be <= {meta['max']}, got {value}")
        if meta.get("above") is not None:
            check(value > meta["above"], f"{f.name} must be > {meta['above']}, got {value}")


class Validated:
    """Mixin: ``__post_init__`` checks choices and ranges, then :meth:`_extra_checks`."""

    def __post_init__(self) -> None:
        _validate(self)
        self._extra_checks()

    def _extra_checks(self) -> None:
        """Checks that a range cannot say (overridden where needed)."""


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: a flat name bound to one config field."""

    name: str  # flat name: the API parameter and widget key; the CLI option is --name-with-dashes
    section: str  # AppConfig attribute holding the field ("alignment"), or "" for a top-level field
    field: str  # field name inside the section
    group: str  # where it is used (config.Group)
    type: Any  # Python type of the value as the user gives it (bool, int, float, str, Path)
    default: Any  # default, in the user's form
    help: str  # the field's docstring
    choices: tuple | None = None  # allowed values
    minimum: float | None = None
    maximum: float | None = None
    parse: Callable[[Any], Any] | None = None  # user value -> field value, where they differ (text forms)
    show: Callable[[Any], Any] | None = None  # field value -> user value (inverse of parse)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def to_field(self, value: Any) -> Any:
        """A user value -> the field's value, coerced to the field's type (raises SettingsError)."""
        if self.parse is not None:
            return self.parse(value)
        try:
            if self.type is bool:
                return _as_bool(value, self.name)
            if self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                return int(value)
            if self.type is float:
                return float(value)
        except (TypeError, ValueError) as e:
            raise SettingsError(f"{self.name} must be {self.type.__name__}, got {value!r}") from e
        return value if self.type is not Path else Path(value)


def _as_bool(value: Any, name: str) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, (bool, int, str)) and text in ("true", "false", "1", "0", "yes", "no"):
        return text in ("true", "1", "yes")
    raise SettingsError(f"{name} must be true or false, got {value!r}")


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it, read from the class source (one line)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def make_setting(root: type, name: str, where: str, group: str, parse=None, show=None, choices=None) -> Setting:
    """A :class:`Setting` for ``where`` (``"section.field"`` of the dataclass ``root``, or a top-level ``"field"``)."""
    section, _, fname = where.rpartition(".")
    cls = root if not section else _hints(root)[section]
    f = {f.name: f for f in dataclasses.fields(cls)}[fname]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    hint = _hints(cls)[fname]
    base = type(show(default)) if show else hint if hint in (bool, int, float, str, Path) else str
    return Setting(
        name=name,
        section=section,
        field=fname,
        group=group,
        type=base,
        default=show(default) if show else default,
        help=_field_docs(cls)[fname],
        choices=choices or choices_of(cls, fname),
        minimum=f.metadata["min"] if f.metadata.get("min") is not None else f.metadata.get("above"),
        maximum=f.metadata.get("max"),
        parse=parse,
        show=show,
    )


# Text forms of two settings (the page's text boxes and the CLI).


def parse_focals(text: str | float | tuple | None) -> tuple[float, ...] | None:
    """``"480"`` or ``"480,500"`` (pixels) -> a tuple; empty -> None (estimate).

    >>> parse_focals("480, 500"), parse_focals("")
    ((480.0, 500.0), None)
    """
    if text is None or isinstance(text, tuple):
        return text
    if isinstance(text, (int, float)):
        return (float(text),)
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError as e:
        raise SettingsError(
            f"known focal length must be a number or a comma list of numbers (pixels), got {text!r}"
        ) from e
    return values or None


def parse_scale_from(text: str) -> tuple[str, str, float] | None:
    """``"a.jpg, b.jpg, 12.5"`` -> ``("a.jpg", "b.jpg", 12.5)`` (two image names and metres); empty -> None.

    >>> parse_scale_from("a.jpg,b.jpg,12.5"), parse_scale_from("")
    (('a.jpg', 'b.jpg', 12.5), None)
    """
    if not isinstance(text, str):
        raise SettingsError(f"scale_from must be text 'nameA,nameB,metres', got {text!r}")
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        metres = float(parts[-1]) if len(parts) == 3 else math.nan
    except ValueError:
        metres = math.nan
    if len(parts) != 3 or not parts[0] or not parts[1] or not (math.isfinite(metres) and metres > 0):
        raise SettingsError(
            f"scale_from must be 'nameA,nameB,metres' (two image names and a distance > 0 in metres), got {text!r}"
        )
    if parts[0] == parts[1]:
        raise SettingsError(f"scale_from needs two different images, got {text!r}")
    return parts[0], parts[1], metres
