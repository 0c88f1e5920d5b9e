"""Validating a configuration built at runtime, with the field to blame when it is refused.

Runtime changes produce configuration data (``Config.to_dict()`` plus the
change); it goes through the same model and the same cross-field rules as the
file, so the admin API can never install a configuration ``maitred check``
would refuse.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from maitred.config import Config
from maitred.config.checks import SKIP_CROSS_CHECKS, Issue, Loc, cross_field_issues, path_text
from maitred.config.messages import issues_from_validation_error

#: Keys whose values never leave the process through the admin API.
SECRET_KEYS = frozenset({"token", "secret"})
REDACTED = "<redacted>"


class ChangeRejected(Exception):
    """A change the admin API refuses: ``status`` (400, 404, 409) and the field to blame."""

    def __init__(self, message: str, field: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.problems: list[str] = []

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.problems:
            body["problems"] = self.problems
        return body


def redacted(data: Any) -> Any:
    """A copy of configuration data with tokens and secrets hidden."""
    if isinstance(data, dict):
        return {
            key: (REDACTED if key in SECRET_KEYS and value is not None else redacted(value))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redacted(item) for item in data]
    return data


def validate_config_data(data: dict[str, Any], *, blame: Loc = ()) -> Config:
    """Build a ``Config`` from ``data`` or raise :class:`ChangeRejected`.

    ``blame`` is where the changed object sits in the data (``("pools", "web",
    "servers", 3)``): a problem inside it names its field relative to it
    (``weight``), any other problem names its full path.
    """
    issues = cross_field_issues(data)
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={SKIP_CROSS_CHECKS: True})
    except ValidationError as error:
        issues = issues_from_validation_error(error, Config) + issues
    if not issues:
        assert config is not None
        return config
    issues = list(dict.fromkeys(issues))
    first = next((issue for issue in issues if _under(issue, blame)), issues[0])
    rejected = ChangeRejected(first.message, _field(first, blame))
    rejected.problems = [str(issue) for issue in issues]
    raise rejected


def _under(issue: Issue, blame: Loc) -> bool:
    return bool(blame) and issue.loc[: len(blame)] == blame


def _field(issue: Issue, blame: Loc) -> str:
    if _under(issue, blame):
        return path_text(issue.loc[len(blame) :]) or path_text(blame)
    return path_text(issue.loc) or "config"
