"""Where the TLS files named in a configuration are, and reading PEM keys safely."""

from __future__ import annotations

import ssl
from pathlib import Path


def resolve(path: str, base_dir: Path) -> Path:
    """``path`` as written in the configuration; relative ones are read from ``base_dir``
    (the directory of the configuration file)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _refuse_passphrase() -> str:
    # Without a password callback OpenSSL would prompt on the terminal and block the loop.
    raise ValueError("the private key is encrypted; maitred needs an unencrypted key")


def load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """``context.load_cert_chain`` that fails (never prompts) on a passphrase-protected key."""
    context.load_cert_chain(cert, key, password=_refuse_passphrase)
