"""Building a :class:`Config` from a YAML file, YAML text or command-line flags.

Every problem found is reported at once, each as ``path.to.key: message (line N)``:
field errors from pydantic, rules that span fields, and duplicate YAML keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from maitred.config.checks import SKIP_CROSS_CHECKS, Issue, Loc, cross_field_issues, path_text
from maitred.config.messages import issues_from_validation_error
from maitred.config.model import Config
from maitred.config.yaml_source import YamlDocument, YamlSyntaxError, read_yaml

TEXT_SOURCE = "<file>"
FLAGS_NAME = "default"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration, located by key path and (for YAML) line."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        suffix = f" (line {self.line})" if self.line is not None else ""
        return f"{self.path}: {self.message}{suffix}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML file at ``path``; raises :class:`ConfigError`.

    Problems about the file as a whole (unreadable, not YAML) use the file's
    name as their path.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(source, "cannot read: not UTF-8 text")]) from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError([Problem(source, f"cannot read: {reason}")]) from None
    return parse_config_text(text, source=source)


def parse_config_text(text: str, *, source: str = TEXT_SOURCE) -> Config:
    """Validate YAML ``text``; ``source`` names it in problems about the whole text."""
    try:
        document = read_yaml(text)
    except YamlSyntaxError as error:
        raise ConfigError([Problem(source, f"invalid YAML: {error.message}", error.line)]) from None
    if document.data is None:
        raise ConfigError([Problem(source, "is empty; it needs at least 'listeners' and 'pools'")])
    if not isinstance(document.data, Mapping):
        raise ConfigError([Problem(source, "must be a mapping of settings (key: value)", 1)])

    problems = [
        Problem(path_text(issue.loc), issue.message, line) for issue, line in document.duplicates
    ]
    config, issues = _validate(document.data)
    problems += [_locate(issue, document, source) for issue in issues]
    if problems:
        raise ConfigError(_in_reading_order(problems))
    assert config is not None
    return config


def config_from_flags(
    listen: str,
    backends: Sequence[str],
    algorithm: str = "round_robin",
    admin: str | None = None,
) -> Config:
    """The ``maitred run --listen ... --backend ...`` form: one listener and one pool,
    both named ``default``. Problems are reported against the flag names."""
    raw: dict[str, object] = {
        "listeners": [{"name": FLAGS_NAME, "bind": listen, "pool": FLAGS_NAME}],
        "pools": {
            FLAGS_NAME: {
                "algorithm": algorithm,
                "servers": [{"address": backend} for backend in backends],
            }
        },
    }
    if admin is not None:
        raw["admin"] = {"bind": admin}
    config, issues = _validate(raw)
    if issues:
        raise ConfigError(
            Problem(_flag_path(issue.loc), _in_flag_terms(issue.message)) for issue in issues
        )
    assert config is not None
    return config


def _validate(raw: object) -> tuple[Config | None, list[Issue]]:
    issues = cross_field_issues(raw)
    try:
        config = Config.model_validate(raw, context={SKIP_CROSS_CHECKS: True})
    except ValidationError as error:
        return None, _unique(issues_from_validation_error(error, Config) + issues)
    return (None, issues) if issues else (config, [])


def _unique(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))


def _locate(issue: Issue, document: YamlDocument, source: str) -> Problem:
    return Problem(path_text(issue.loc) or source, issue.message, document.line_of(issue.loc))


def _in_reading_order(problems: list[Problem]) -> list[Problem]:
    # Problems without a line concern the file as a whole (e.g. a missing top-level
    # key), so they come first; the sort is stable, keeping rule order per line.
    return sorted(dict.fromkeys(problems), key=lambda problem: problem.line or 0)


def _in_flag_terms(message: str) -> str:
    # Cross-field messages point at the other party by key path; name the flag instead.
    return message.replace("of listeners[0]", "of --listen").replace("servers[", "--backend[")


def _flag_path(loc: Loc) -> str:
    if loc[:2] == ("listeners", 0):
        return "--listen"
    if loc[:3] == ("pools", FLAGS_NAME, "servers"):
        return f"--backend[{loc[3]}]" if len(loc) > 3 else "--backend"
    if loc[:3] == ("pools", FLAGS_NAME, "algorithm"):
        return "--algorithm"
    if loc[:1] == ("admin",):
        return "--admin"
    return path_text(loc) or "flags"
