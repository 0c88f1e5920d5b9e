"""The secret that signs sticky-session cookies, kept across restarts.

Cookies must survive a restart and be honoured by every instance, so the
secret cannot be drawn afresh at each start. It comes from ``sticky.secret``
in a pool's configuration, or else from the file ``sticky-secret`` in the
state directory, created at first start:

- ``state_dir`` from the configuration when set;
- else ``/var/lib/maitred`` when running as root or when it is a writable
  directory already;
- else ``$XDG_STATE_HOME/maitred`` (``~/.local/state/maitred``).

Not the configuration file's directory: that is often read-only (``/etc``) or
under version control, where a secret has no business being.

The file holds 64 hex characters and is used exactly like a ``sticky.secret``
string, so pasting its content into the configuration of other instances makes
them agree. It is written atomically with mode 0600 and never overwritten: two
processes starting at once end up with the same secret.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from maitred.config import Config

log = logging.getLogger("maitred.sticky")

SECRET_FILE = "sticky-secret"
SYSTEM_STATE_DIR = Path("/var/lib/maitred")
_SECRET_HEX_CHARS = 64


def default_state_dir() -> Path:
    """Where maitred keeps state when the configuration names no ``state_dir``."""
    if os.geteuid() == 0 or (SYSTEM_STATE_DIR.is_dir() and os.access(SYSTEM_STATE_DIR, os.W_OK)):
        return SYSTEM_STATE_DIR
    xdg_state = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg_state) if xdg_state else Path.home() / ".local" / "state"
    return base / "maitred"


def load_or_create_secret(state_dir: Path | str) -> bytes:
    """The secret kept in ``state_dir``, created (with the directory) on first use.

    Raises OSError when the directory or file cannot be read or created, and
    ValueError when the file exists but does not hold a secret.
    """
    path = Path(state_dir) / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = secrets.token_hex(_SECRET_HEX_CHARS // 2)
    temporary = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(fresh + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            # A hard link never replaces an existing file: whoever links first wins,
            # and a process that loses the race reads the winner's secret below.
            os.link(temporary, path)
        except FileExistsError:
            pass
        else:
            _sync_directory(path.parent)
            log.info("generated a sticky-session secret in %s", path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_secret(path)


def sticky_secret_for(config: Config) -> bytes:
    """The process-wide cookie secret ``config`` needs; b"" when no pool needs one.

    Only cookie-mode pools without their own ``secret`` need it. When the state
    directory cannot be used, cookies are signed with a secret that lives as
    long as the process, and a warning says so.
    """
    needs_secret = any(
        pool.sticky is not None and pool.sticky.mode == "cookie" and pool.sticky.secret is None
        for pool in config.pools.values()
    )
    if not needs_secret:
        return b""
    state_dir = Path(config.state_dir) if config.state_dir else default_state_dir()
    try:
        return load_or_create_secret(state_dir)
    except (OSError, ValueError) as exc:
        log.warning(
            "cannot keep the sticky-session secret in %s (%s): sticky cookies will not "
            "survive a restart; set state_dir or sticky.secret",
            state_dir,
            exc,
        )
        return secrets.token_hex(_SECRET_HEX_CHARS // 2).encode("ascii")


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if len(text) < 16:
        raise ValueError(f"{path} does not hold a secret (delete it to generate a new one)")
    return text.encode("ascii", errors="replace")


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
