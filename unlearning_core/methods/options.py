"""Options of unlearning methods: one pydantic model per method, described from the model.

Every method names its options model (``UnlearningMethod.options_model``). The knobs all
methods share live in :class:`MethodOptions`; a method's model extends it with its own
knobs, each with its default, its bounds and a description, so that one model serves the
Python API, ``lethe unlearn --option``, ``POST /erasure-requests``' ``method_options`` and
``lethe methods`` alike. Models forbid unknown names: a misspelt option is an error, never
a silently ignored knob.

Validation against a method (which also knows the registry, to say which other methods
take an option a method does not) is :func:`unlearning_core.methods.base.validate_options`;
this module holds the models and what turns them into words.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from unlearning_core.errors import MethodError


class OptionError(MethodError):
    """Options that a method's model refuses; ``options`` names them (for a CLI flag hint)."""

    def __init__(self, message: str, *, method: str, options: Sequence[str]) -> None:
        super().__init__(message)
        self.method = method
        self.options = tuple(options)


class MethodOptions(BaseModel):
    """The knobs every method takes (a method may have no use for some, e.g. retraining
    ignores recovery: it says so in its details)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recovery_steps: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="SGD steps on retained data after unlearning (0: none), timed apart as "
        "recovery_seconds",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        description="seed of the method's own random draws (batches, flipped labels)",
    )


class PruneOptions(MethodOptions):
    """The layer-wise pruning knobs of the partial variants (``p_l`` from first to last layer)."""

    prune_first: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="pruning share of the first layer [default: the run's recorded share, "
        "else 0.99]",
    )
    prune_last: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="pruning share of the last layer [default: the run's recorded share, "
        "else 0.5]",
    )


# ---------------------------------------------------------------------------------------
# Turning validation errors and models into words
# ---------------------------------------------------------------------------------------

_UNKNOWN = {"extra_forbidden", "unexpected_keyword_argument"}


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(
    method: str,
    model: type[MethodOptions],
    error: ValidationError,
    *,
    taken_by: dict[str, list[str]] | None = None,
) -> OptionError:
    """One readable message for a refused set of options, naming each bad option.

    ``taken_by`` maps an option name to the other methods that take it, for the hint on an
    unknown option (``prune_first`` on ``label-flip``: ``partial-label-flip`` takes it).
    """
    known = ", ".join(model.model_fields)
    parts: list[str] = []
    names: list[str] = []
    for err in error.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        names.append(str(err.get("loc", ("?",))[0]))
        if err.get("type") in _UNKNOWN:
            if len(err.get("loc", ())) > 1:
                *outer, field_name = (str(p) for p in err["loc"])
                parts.append(
                    f"option {'.'.join(outer)!r} of method {method!r} has no field {field_name!r}"
                )
                continue
            others = (taken_by or {}).get(loc)
            hint = f" ({', '.join(others)} take{'s' if len(others) == 1 else ''} it)" if others else ""
            parts.append(f"method {method!r} has no option {loc!r}{hint}; its options: {known}")
        else:
            parts.append(
                f"option {loc!r} of method {method!r}: {err.get('msg')} "
                f"(got {_short(err.get('input'))})"
            )
    if len(error.errors()) > 5:
        parts.append(f"and {len(error.errors()) - 5} more")
    return OptionError("; ".join(parts), method=method, options=names)


def type_name(annotation: Any) -> str:
    """A JSON-ish name of an option's type: ``integer``, ``number | null``, ``"vote" | ...``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(annotation))
    if annotation is type(None):
        return "null"
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation in simple:
        return simple[annotation]
    if dataclasses.is_dataclass(annotation) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    ):
        return "object"
    return getattr(annotation, "__name__", str(annotation))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


_BOUNDS: tuple[tuple[type, str], ...] = (
    (annotated_types.Ge, "ge"),
    (annotated_types.Gt, "gt"),
    (annotated_types.Le, "le"),
    (annotated_types.Lt, "lt"),
    (annotated_types.MinLen, "min_length"),
    (annotated_types.MaxLen, "max_length"),
)


def _bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for kind, key in _BOUNDS:
            if isinstance(meta, kind):
                out[key] = getattr(meta, key)
    return out


def _fields_of(annotation: Any) -> list[dict[str, Any]] | None:
    """The fields of an object-valued option (a dataclass such as ``PruneSearch``)."""
    for candidate in (annotation, *get_args(annotation)):
        if dataclasses.is_dataclass(candidate) and isinstance(candidate, type):
            hints = get_type_hints(candidate)
            return [
                {
                    "name": f.name,
                    "type": type_name(hints.get(f.name, f.type)),
                    "default": _jsonable(f.default)
                    if f.default is not dataclasses.MISSING
                    else None,
                }
                for f in dataclasses.fields(candidate)
            ]
    return None


def describe_options(model: type[MethodOptions]) -> list[dict[str, Any]]:
    """Each option of ``model``: name, type, default, bounds, description (for ``lethe
    methods`` and any client that builds a form from it)."""
    out: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        entry: dict[str, Any] = {
            "name": name,
            "type": type_name(info.annotation),
            "default": None if info.is_required() else _jsonable(info.get_default()),
            "required": info.is_required(),
            "bounds": _bounds(info),
            "description": info.description or "",
        }
        fields = _fields_of(info.annotation)
        if fields is not None:
            entry["fields"] = fields
        out.append(entry)
    return out
