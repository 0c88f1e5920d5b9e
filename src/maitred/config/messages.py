"""Turning pydantic's validation errors into short, human problem messages."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from maitred.config.checks import Issue, Loc, did_you_mean

_PLAIN_MESSAGES = {
    "missing": "required",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "dict_type": "must be a mapping (key: value)",
    "mapping_type": "must be a mapping (key: value)",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "iterable_type": "must be a list",
}

_COMPARISONS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def issues_from_validation_error(error: ValidationError, root: type[BaseModel]) -> list[Issue]:
    details = error.errors()
    return [_issue(detail, root) for detail in details if not _is_consequence(detail, details)]


def _issue(detail: ErrorDetails, root: type[BaseModel]) -> Issue:
    loc = tuple(detail["loc"])
    # Pydantic marks a bad mapping key (say `pools: {1: ...}`) with a "[key]" step.
    if len(loc) >= 2 and loc[-1] == "[key]":
        return Issue((*loc[:-2], str(loc[-2])), f"name {describe(detail, root)} (quote it)")
    return Issue(loc, describe(detail, root))


def _is_consequence(detail: ErrorDetails, details: Sequence[ErrorDetails]) -> bool:
    """True for a length error that only exists because items inside failed.

    Pydantic counts the items that validated, so one bad listener also yields
    "listeners: must have at least 1 item"; the item's own error says it all.
    """
    if detail["type"] != "too_short":
        return False
    loc = detail["loc"]
    return any(
        len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in details
    )


def describe(detail: ErrorDetails, root: type[BaseModel]) -> str:
    kind = detail["type"]
    context: Mapping[str, Any] = detail.get("ctx") or {}
    if kind in _PLAIN_MESSAGES:
        return _PLAIN_MESSAGES[kind]
    if kind == "extra_forbidden":
        return _unknown_key(tuple(detail["loc"]), root)
    if kind in _COMPARISONS:
        symbol, bound = _COMPARISONS[kind]
        return f"must be {symbol} {_number(context[bound])}"
    if kind == "literal_error":
        return f"must be {context['expected']}"
    if kind in ("value_error", "assertion_error"):
        return str(context["error"])
    if kind == "too_short":
        return f"must have at least {_items(context['min_length'])}"
    if kind == "too_long":
        return f"must have at most {_items(context['max_length'])}"
    if kind == "string_too_short":
        return "must not be empty" if context["min_length"] == 1 else detail["msg"]
    message = detail["msg"]
    return message[:1].lower() + message[1:]


def _number(value: object) -> str:
    # Bounds declared as floats (gt=0.0) read better without the ".0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _unknown_key(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(loc[:-1], root)
    key = loc[-1]
    if model is None or not isinstance(key, str):
        return "unknown key"
    known = list(model.model_fields)
    suggestion = did_you_mean(key, known)
    if suggestion:
        return "unknown key" + suggestion
    return "unknown key; expected one of: " + ", ".join(known)


def _model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model class that validates the mapping found at ``loc``."""
    annotation: Any = root
    for part in loc:
        annotation = _child_annotation(_unwrap(annotation), part)
        if annotation is None:
            return None
    model = _unwrap(annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _child_annotation(annotation: Any, part: str | int) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if isinstance(part, int) and origin in (tuple, list, Sequence) and args:
        return args[0]
    if isinstance(part, str) and origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the type that holds the data."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
