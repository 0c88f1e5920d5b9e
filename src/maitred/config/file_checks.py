"""Loading a configuration file *and* checking the files it names (TLS material).

:func:`maitred.config.load_config` only validates the YAML itself; starting,
reloading and ``maitred check`` also need the certificates, keys and CA files
to be usable. Their problems are reported like any other, ``path.to.key:
message (line N)``; warnings (a certificate expiring soon) do not fail.
"""

from __future__ import annotations

from pathlib import Path

from maitred.config.checks import Issue, path_text
from maitred.config.loader import ConfigError, Problem, load_config
from maitred.config.model import Config
from maitred.config.yaml_source import YamlDocument, YamlSyntaxError, read_yaml

WARNING_PREFIX = "warning: "


def base_dir_of(path: str | Path) -> Path:
    """Where relative file paths of the configuration at ``path`` are read from."""
    return Path(path).resolve().parent


def load_checked_config(path: str | Path) -> tuple[Config, list[Problem]]:
    """Read and validate the configuration at ``path`` and the files it names.

    Raises :class:`ConfigError` listing every error; returns the configuration and
    its warnings (messages start with ``warning: ``).
    """
    from maitred.tls.checks import tls_file_issues  # the TLS package imports config

    config = load_config(path)
    report = tls_file_issues(config, base_dir_of(path))
    if not report.errors and not report.warnings:
        return config, []
    document = _document(path)
    errors = [_problem(issue, document) for issue in report.errors]
    if errors:
        raise ConfigError(errors)
    return config, [_problem(issue, document, WARNING_PREFIX) for issue in report.warnings]


def _document(path: str | Path) -> YamlDocument | None:
    try:
        return read_yaml(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YamlSyntaxError):
        return None  # changed since it was loaded: no line numbers then


def _problem(issue: Issue, document: YamlDocument | None, prefix: str = "") -> Problem:
    line = document.line_of(issue.loc) if document is not None else None
    return Problem(path_text(issue.loc), prefix + issue.message, line)
