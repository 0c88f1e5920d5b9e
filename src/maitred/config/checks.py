"""Rules that span several fields of a configuration.

They read plain data (the raw YAML, or ``Config.model_dump()``) and tolerate any
shape: a value of the wrong type is the field validators' business and is simply
skipped here. That way the loader can report these problems *together with* the
field errors instead of only once everything else is fixed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from maitred.config.scalars import Address

Loc = tuple[str | int, ...]

# Validation-context flag: the caller has already applied these rules itself.
SKIP_CROSS_CHECKS = "maitred_skip_cross_checks"

_POOL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True)
class Issue:
    """A problem located by its key path (not yet by line)."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{path_text(self.loc)}: {self.message}"


def path_text(loc: Loc) -> str:
    """``('pools', 'web', 'servers', 1)`` -> ``pools.web.servers[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when ``word`` looks like a typo of a choice, else ``""``."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def unknown_choice(kind: str, word: str, choices: Sequence[str]) -> str:
    """``unknown pool 'wbe'; did you mean 'web'? Valid: api, web``."""
    valid = ", ".join(choices) if choices else "(none defined)"
    suggestion = did_you_mean(word, choices)
    return f"unknown {kind} {word!r}{suggestion or '.'} Valid: {valid}"


def cross_field_issues(raw: object) -> list[Issue]:
    if not isinstance(raw, Mapping):
        return []
    pools = raw.get("pools")
    pool_names = {name for name in pools if isinstance(name, str)} if _is_map(pools) else None
    issues: list[Issue] = []
    if _is_map(pools):
        issues += _pool_issues(pools)
    listeners = raw.get("listeners")
    if _is_list(listeners):
        issues += _listener_issues(listeners, pool_names)
        issues += _bind_issues(raw.get("admin"), listeners)
    return issues


def _pool_issues(pools: Mapping[object, object]) -> Iterator[Issue]:
    for name, pool in pools.items():
        if isinstance(name, str) and not _POOL_NAME.fullmatch(name):
            yield Issue(("pools", name), "pool names may only use letters, digits, '_' and '-'")
        if not _is_map(pool) or not isinstance(name, str):
            continue
        servers = pool.get("servers")
        if not _is_list(servers):
            continue
        first_index: dict[Address, int] = {}
        for index, server in enumerate(servers):
            address = _address(server.get("address")) if _is_map(server) else None
            if address is None:
                continue
            if address in first_index:
                yield Issue(
                    ("pools", name, "servers", index, "address"),
                    f"duplicate server {address} (also servers[{first_index[address]}])",
                )
            else:
                first_index[address] = index


def _listener_issues(listeners: Sequence[object], pool_names: set[str] | None) -> Iterator[Issue]:
    first_with_name: dict[str, int] = {}
    for index, listener in enumerate(listeners):
        if not _is_map(listener):
            continue
        here: Loc = ("listeners", index)
        name = listener.get("name")
        if isinstance(name, str):
            if name in first_with_name:
                yield Issue(
                    (*here, "name"),
                    f"duplicate listener name {name!r} (also listeners[{first_with_name[name]}])",
                )
            else:
                first_with_name[name] = index
        protocol = listener.get("protocol", "http")
        routes = listener.get("routes")
        has_routes = _is_list(routes) and len(routes) > 0
        pool = listener.get("pool")
        if protocol == "tcp" and has_routes:
            yield Issue((*here, "routes"), "routes are only allowed on http listeners")
        redirects = listener.get("redirect_https") is True
        if protocol == "http" and pool is None and not has_routes and not redirects:
            yield Issue(here, "an http listener needs a 'pool' or 'routes'")
        if redirects:
            yield from _redirect_issues(here, protocol, listener.get("tls"))
        if protocol == "tcp" and pool is None:
            yield Issue(here, "a tcp listener needs a 'pool'")
        if protocol == "tcp":
            yield from _tcp_rate_limit_issues(here, listener.get("rate_limit"))
        if pool_names is not None:
            yield from _unknown_pool((*here, "pool"), pool, pool_names)
            if _is_list(routes):
                for route_index, route in enumerate(routes):
                    if _is_map(route):
                        loc = (*here, "routes", route_index, "pool")
                        yield from _unknown_pool(loc, route.get("pool"), pool_names)


def _redirect_issues(here: Loc, protocol: object, tls: object) -> Iterator[Issue]:
    if protocol == "tcp":
        yield Issue((*here, "redirect_https"), "only http listeners can redirect to https")
    elif tls is not None:
        yield Issue((*here, "redirect_https"), "this listener already speaks https (it has tls)")


def _tcp_rate_limit_issues(here: Loc, rate_limit: object) -> Iterator[Issue]:
    if _is_map(rate_limit):
        key = rate_limit.get("key")
        if isinstance(key, str) and key.startswith("header:"):
            yield Issue((*here, "rate_limit", "key"), "header keys need an http listener")


def _unknown_pool(loc: Loc, pool: object, pool_names: set[str]) -> Iterator[Issue]:
    if isinstance(pool, str) and pool not in pool_names:
        yield Issue(loc, unknown_choice("pool", pool, sorted(pool_names)))


def _bind_issues(admin: object, listeners: Sequence[object]) -> Iterator[Issue]:
    binds: list[tuple[Loc, Address]] = []
    for index, listener in enumerate(listeners):
        address = _address(listener.get("bind")) if _is_map(listener) else None
        if address is not None:
            binds.append((("listeners", index), address))
    if _is_map(admin):
        address = _address(admin.get("bind"))
        if address is not None:
            binds.append((("admin",), address))
    for position, (loc, address) in enumerate(binds):
        for earlier_loc, earlier in binds[:position]:
            if _binds_collide(address, earlier):
                yield Issue(
                    (*loc, "bind"),
                    f"{address} collides with {earlier} of {path_text(earlier_loc)}",
                )
                break


def _binds_collide(first: Address, second: Address) -> bool:
    # Port 0 asks the OS for a fresh port each time, so it never collides.
    if first.port == 0 or first.port != second.port:
        return False
    return (
        first.host == second.host or first.host in _WILDCARD_HOSTS or second.host in _WILDCARD_HOSTS
    )


def _address(value: object) -> Address | None:
    if isinstance(value, Address):
        return value
    if isinstance(value, str):
        try:
            return Address.parse(value)
        except ValueError:
            return None
    return None


def _is_map(value: object) -> TypeGuard[Mapping[Any, Any]]:
    return isinstance(value, Mapping)


def _is_list(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)
