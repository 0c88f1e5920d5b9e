"""The worker's TLS state: listener contexts by listener name, server-side client
contexts by pool settings, and reloading both from their files."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from maitred.config.tls_settings import PoolTls, TlsSettings
from maitred.tls import client
from maitred.tls.server import ListenerTls

log = logging.getLogger("maitred.tls")


class TlsRuntime:
    def __init__(self, base_dir: Path | None = None) -> None:
        #: Relative file paths of the configuration are read from here.
        self.base_dir = base_dir or Path.cwd()
        self.listeners: dict[str, ListenerTls] = {}
        self._clients: dict[PoolTls, ssl.SSLContext] = {}
        self._previous_clients: dict[PoolTls, ssl.SSLContext] = {}

    # -- listeners ---------------------------------------------------------------

    def server_context(
        self, name: str, settings: TlsSettings | None, offer_h2: bool = False
    ) -> ssl.SSLContext | None:
        """The context to create listener ``name``'s server with (None: plain http).

        Raises :class:`maitred.tls.server.TlsLoadError` when its files cannot be loaded.
        """
        self.listeners.pop(name, None)
        if settings is None:
            return None
        listener = ListenerTls(name, settings, self.base_dir, offer_h2)
        self.listeners[name] = listener
        return listener.front

    def refresh_listener(
        self, name: str, settings: TlsSettings, offer_h2: bool | None = None
    ) -> None:
        """A listener that stays bound: re-read its files, keeping the old ones on failure."""
        self.listeners[name].reload(settings, offer_h2)

    def serves_tls(self, name: str) -> bool:
        return name in self.listeners

    def forget_listener(self, name: str) -> None:
        self.listeners.pop(name, None)

    # -- connections to servers --------------------------------------------------

    def begin_generation(self) -> None:
        """A new configuration: client contexts are built afresh (files re-read) on first use."""
        self._previous_clients, self._clients = self._clients, {}

    def client_context(self, settings: PoolTls | None) -> ssl.SSLContext | None:
        if settings is None:
            return None
        context = self._clients.get(settings)
        if context is None:
            try:
                context = client.client_context(settings, self.base_dir)
            except (OSError, ssl.SSLError) as error:
                context = self._previous_clients.get(settings)
                if context is None:
                    raise
                log.error("TLS to servers: keeping the previous certificates: %s", error)
            self._clients[settings] = context
        return context

    # -- files -------------------------------------------------------------------

    def reload_files(self) -> None:
        """Files changed on disk: reload every listener's certificates and every client
        context; whatever fails to load keeps its previous version."""
        for listener in self.listeners.values():
            listener.reload()
        self.begin_generation()
        for settings in list(self._previous_clients):
            self.client_context(settings)
        self._previous_clients = {}

    def files(self) -> list[Path]:
        paths = [path for listener in self.listeners.values() for path in listener.files()]
        for settings in self._clients:
            paths += client.files(settings, self.base_dir)
        return list(dict.fromkeys(paths))
