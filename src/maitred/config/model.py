"""The typed, immutable model of a maitred configuration.

These classes mirror the YAML of CONTRACT.md one to one: every mapping in the
file is a frozen pydantic model that forbids unknown keys, lists become tuples,
``pools`` becomes a read-only mapping, durations become float seconds and
``HOST:PORT`` strings become :class:`Address` values. Validating a ``Config``
checks each field on its own (ranges, enumerations, formats) and then the rules
that span fields (a route naming an existing pool, unique listener names and
binds, ...) from :mod:`maitred.config.checks`. Nothing here reads files or knows
about line numbers; :mod:`maitred.config.loader` does that and turns validation
errors into ``path: message (line N)`` problems. Because a ``Config`` can never
change after it is built, a reload builds a new one and swaps it in whole.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    WrapSerializer,
    model_validator,
)
from pydantic import SerializerFunctionWrapHandler as SerializeNext

from maitred.config.checks import SKIP_CROSS_CHECKS, cross_field_issues, unknown_choice
from maitred.config.http2_settings import Http2Settings
from maitred.config.scalars import (
    Address,
    BindAddress,
    Duration,
    PositiveDuration,
    ServerAddress,
    format_duration,
    parse_duration,
    parse_key_spec,
)
from maitred.config.tls_settings import CertificateFiles, PoolTls, TlsSettings

__all__ = [
    "ALGORITHMS",
    "AccessLog",
    "Address",
    "AdminConfig",
    "CertificateFiles",
    "ClusterSettings",
    "Config",
    "ConnectionPoolSettings",
    "Duration",
    "HealthCheck",
    "Listener",
    "OutlierDetection",
    "QueueSettings",
    "Retries",
    "ListenerLimits",
    "ListenerTimeouts",
    "Pool",
    "PoolTimeouts",
    "PoolTls",
    "PositiveDuration",
    "RateLimit",
    "RateLimitStore",
    "Route",
    "RouteMatch",
    "ServerConfig",
    "Sticky",
    "TlsSettings",
    "format_duration",
    "parse_duration",
]

ALGORITHMS: tuple[str, ...] = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "weighted_least_connections",
    "ip_hash",
    "consistent_hash",
    "least_response_time",
    "power_of_two",
    "random",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _parse_workers(value: object) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("must be >= 1")
        return value
    raise ValueError("must be an integer >= 1 or 'auto'")


def _parse_zero_copy(value: object) -> bool | Literal["auto"]:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("must be true, false or 'auto'")


def _known_algorithm(name: str) -> str:
    if name in ALGORITHMS:
        return name
    raise ValueError(unknown_choice("algorithm", name, ALGORITHMS))


def _absolute_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError("must start with '/'")
    return path


def _route_host(host: str) -> str:
    host = host.strip().lower()
    if not host or any(char.isspace() or char in ":/" for char in host):
        raise ValueError("must be a host name (without port or path)")
    return host


def _sticky_mode(mode: str) -> str:
    return parse_key_spec(mode, plain=("cookie", "ip"), prefixed=("header",))


def _rate_limit_key(key: str) -> str:
    return parse_key_spec(key, plain=("client_ip",), prefixed=("header",))


def _trusted_network(value: object) -> IPv4Network | IPv6Network:
    if not isinstance(value, str):
        raise ValueError("must be an address or a CIDR, e.g. 10.0.0.0/8")
    try:
        # Host bits set (10.0.0.1/8) are forgiven, as NGINX's set_real_ip_from does.
        return ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an address or a CIDR, e.g. 10.0.0.0/8") from None


def _redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return url


def _redis_key_prefix(prefix: str) -> str:
    if not prefix or any(char.isspace() for char in prefix):
        raise ValueError("must be a non-empty name without spaces, e.g. maitred:cluster")
    return prefix


def _hash_on(key: str) -> str:
    return parse_key_spec(key, plain=("client_ip",), prefixed=("header", "cookie"))


def _read_only(pools: Mapping[str, Pool]) -> Mapping[str, Pool]:
    return MappingProxyType(dict(pools))


def _as_plain_dict(pools: Mapping[str, Pool], next_serializer: SerializeNext) -> Any:
    return next_serializer(dict(pools))


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
TrustedNetwork = Annotated[
    IPv4Network | IPv6Network, PlainValidator(_trusted_network), PlainSerializer(str)
]


# --- listeners ---------------------------------------------------------------


class RouteMatch(_Frozen):
    """What a request must look like for a route to apply (all given parts must match)."""

    host: Annotated[str, AfterValidator(_route_host)] | None = None
    path_prefix: AbsolutePath | None = None

    @model_validator(mode="after")
    def _needs_a_condition(self) -> RouteMatch:
        if self.host is None and self.path_prefix is None:
            raise ValueError("needs 'host' and/or 'path_prefix'")
        return self


class Route(_Frozen):
    match: RouteMatch
    pool: str
    #: Applies in addition to the listener's rate_limit; all must admit a request.
    rate_limit: RateLimit | None = None


class RateLimit(_Frozen):
    """A token bucket per key: ``rate`` requests per ``per``, bursting to ``burst``."""

    key: Annotated[str, AfterValidator(_rate_limit_key)] = "client_ip"
    rate: int = Field(ge=1)
    per: PositiveDuration = 1.0
    burst: int = Field(default=1, ge=1)
    #: Send RateLimit-Policy / RateLimit headers (the 429's Retry-After is always sent).
    headers: bool = True
    #: Keys tracked in memory per limit; past it the least recently used is forgotten.
    max_keys: int = Field(default=1_000_000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _burst_defaults_to_rate(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "burst" not in data:
            rate = data.get("rate")
            if isinstance(rate, int) and not isinstance(rate, bool) and rate >= 1:
                return {**data, "burst": rate}
        return data


class ListenerTimeouts(_Frozen):
    client_header: PositiveDuration = 10.0
    #: Longest silence while a request body is being received (→ 408 and close).
    client_body: PositiveDuration = 30.0
    #: Minimum data rate of a request body, in bytes per second (None: no minimum):
    #: past the grace period a body must keep up with it (→ 408 and close).
    client_body_min_rate: int | None = Field(default=None, ge=1)
    #: Time a body has before the minimum rate applies; each byte then earns 1/rate s.
    client_body_min_rate_grace: PositiveDuration = 10.0
    idle: PositiveDuration = 60.0
    #: Longest silence on an upgraded connection (WebSocket tunnel).
    tunnel: PositiveDuration = 3600.0


class ListenerLimits(_Frozen):
    """Request size limits; ``max_header_size`` covers the whole request head."""

    max_header_size: int = Field(default=16384, ge=1)
    max_headers: int = Field(default=100, ge=1)
    max_uri_length: int = Field(default=8192, ge=1)
    max_body_size: int | None = Field(default=None, ge=0)
    #: Open client connections the listener accepts at once (None: no limit).
    max_connections: int | None = Field(default=None, ge=1)
    #: Open connections one client address may hold (slowloris from one address).
    max_connections_per_client: int | None = Field(default=None, ge=1)


class AccessLog(_Frozen):
    """One line per request: ``combined`` (Apache/NGINX) or ``json``; ``path: -`` is stdout."""

    format: Literal["combined", "json"] = "combined"
    path: str = Field(default="-", min_length=1)


class Listener(_Frozen):
    name: str = Field(min_length=1)
    bind: BindAddress
    protocol: Literal["http", "tcp"] = "http"
    tls: TlsSettings | None = None
    #: A plain http listener that answers every request with 308 to https://.
    redirect_https: bool = False
    routes: tuple[Route, ...] = ()
    pool: str | None = None
    rate_limit: RateLimit | None = None
    timeouts: ListenerTimeouts = ListenerTimeouts()
    limits: ListenerLimits = ListenerLimits()
    proxy_protocol: bool = False
    #: tcp listeners: relay bytes with splice(2) through a pipe instead of copying them
    #: through Python. auto: wherever the platform has splice (it measured faster).
    zero_copy: Annotated[bool | Literal["auto"], PlainValidator(_parse_zero_copy)] = "auto"
    access_log: AccessLog | None = None
    #: Peers whose X-Forwarded-For is believed (CIDRs): the client is the last untrusted hop.
    trusted_proxies: tuple[TrustedNetwork, ...] = ()
    #: HTTP/2: offered by ALPN on TLS listeners; h2c (prior knowledge) when asked for.
    http2: Http2Settings = Http2Settings()


# --- pools -------------------------------------------------------------------


class ServerConfig(_Frozen):
    address: ServerAddress
    weight: int = Field(default=1, ge=1, le=1000)
    backup: bool = False
    max_connections: int | None = Field(default=None, ge=1)
    #: This server's active-check path; overrides the pool's health_check.path and,
    #: in a pool without health_check, checks this server with the default settings.
    health_check_path: AbsolutePath | None = None


def _status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """``[200, "300-399"]`` or ``"200-399"`` → ``((200, 200), (300, 399))``."""
    items = value if isinstance(value, list | tuple) else [value]
    ranges = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError("must be status codes or ranges like 200-399")
        if isinstance(item, int):
            low = high = item
        elif isinstance(item, str) and item.replace("-", "", 1).strip().isdigit():
            low_text, _, high_text = item.partition("-")
            low = int(low_text)
            high = int(high_text) if high_text else low
        elif isinstance(item, list | tuple) and len(item) == 2:
            low, high = int(item[0]), int(item[1])
        else:
            raise ValueError("must be status codes or ranges like 200-399")
        if not 100 <= low <= high <= 599:
            raise ValueError(f"{item!r} is not a status or range within 100-599")
        ranges.append((low, high))
    if not ranges:
        raise ValueError("must name at least one status")
    return tuple(ranges)


StatusRanges = Annotated[
    tuple[tuple[int, int], ...],
    PlainValidator(_status_ranges),
    PlainSerializer(lambda ranges: [list(r) for r in ranges], return_type=list),
]


class HealthCheck(_Frozen):
    type: Literal["http", "tcp"] = "http"
    path: AbsolutePath = "/health"
    host: str | None = None
    expect_status: StatusRanges = ((200, 399),)
    interval: PositiveDuration = 5.0
    #: Interval while a server is failing, unhealthy or recovering (default interval / 3).
    fall_interval: PositiveDuration | None = None
    #: The state a server starts in, before any check ran.
    initial_state: Literal["healthy", "unhealthy"] = "healthy"
    timeout: PositiveDuration = 3.0
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)


class OutlierDetection(_Frozen):
    """Passive checks: eject a server after consecutive failures on real traffic."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_time: PositiveDuration = 300.0
    max_ejected_percent: int = Field(default=50, ge=0, le=100)


class Retries(_Frozen):
    """Retry a request that failed before any answer byte on another server."""

    attempts: int = Field(default=2, ge=0, le=10)
    #: Retries may add at most this share of extra load (a retry budget).
    budget_percent: float = Field(default=20.0, ge=0, le=100)
    #: Retries always allowed per second, so a quiet pool can still retry.
    min_per_second: int = Field(default=3, ge=0)


class QueueSettings(_Frozen):
    """Requests waiting for a server below its max_connections."""

    size: int = Field(default=0, ge=0)
    timeout: PositiveDuration = 5.0


_COOKIE_NAME_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_COOKIE_DOMAIN_CHARS = frozenset(".-0123456789abcdefghijklmnopqrstuvwxyz")
_SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


def _cookie_name(name: str) -> str:
    if not name or not set(name) <= _COOKIE_NAME_CHARS:
        raise ValueError(f"{name!r} is not a valid cookie name (letters, digits, !#$%&'*+-.^_`|~)")
    return name


def _cookie_path(path: str) -> str:
    # Anything else would end the attribute early or break the header line.
    if not path.startswith("/") or any(char == ";" or not " " < char < "\x7f" for char in path):
        raise ValueError("must start with '/' and hold no spaces, ';' or control characters")
    return path


def _cookie_domain(domain: str) -> str:
    domain = domain.lower()
    if not domain.strip(".") or not set(domain) <= _COOKIE_DOMAIN_CHARS:
        raise ValueError("must be a host name such as example.com")
    return domain


def _same_site(value: str) -> str:
    normalized = _SAME_SITE.get(value.lower())
    if normalized is None:
        raise ValueError("must be Lax, Strict or None")
    return normalized


class Sticky(_Frozen):
    """Session affinity: ``cookie``, ``ip`` or ``header:NAME`` (stored lowercased).

    ``strict`` applies to every mode; the other keys shape the ``cookie`` mode's
    cookie. ``secret`` signs it (default: generated once and kept in ``state_dir``);
    ``secure`` None means "on HTTPS listeners only".
    """

    mode: Annotated[str, AfterValidator(_sticky_mode)]
    cookie: Annotated[str, AfterValidator(_cookie_name)] = "LB_SESSION"
    max_age: PositiveDuration = 3600.0
    strict: bool = False
    secret: str | None = Field(default=None, min_length=16, repr=False)
    path: Annotated[str, AfterValidator(_cookie_path)] = "/"
    domain: Annotated[str, AfterValidator(_cookie_domain)] | None = None
    same_site: Annotated[str, AfterValidator(_same_site)] = "Lax"
    secure: bool | None = None
    http_only: bool = True

    @model_validator(mode="after")
    def _same_site_none_needs_secure(self) -> Sticky:
        if self.same_site == "None" and self.secure is False:
            raise ValueError("same_site None needs secure (browsers drop such cookies)")
        return self


class PoolTimeouts(_Frozen):
    connect: PositiveDuration = 3.0
    response: PositiveDuration = 30.0


class ConnectionPoolSettings(_Frozen):
    """Idle keep-alive connections kept per server (``max_idle: 0`` disables reuse).

    ``min_idle`` connections are opened ahead of traffic to every available
    server (pool warm-up, :mod:`maitred.control.warmup`).
    """

    min_idle: int = Field(default=0, ge=0)
    max_idle: int = Field(default=64, ge=0)
    idle_timeout: PositiveDuration = 60.0
    #: Requests one server connection carries before it is closed (None: no limit).
    max_requests: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _min_idle_fits(self) -> ConnectionPoolSettings:
        if self.min_idle > self.max_idle:
            # Warmed connections above max_idle would be closed as soon as they open.
            raise ValueError(f"min_idle ({self.min_idle}) must be <= max_idle ({self.max_idle})")
        return self


class Pool(_Frozen):
    algorithm: Annotated[str, AfterValidator(_known_algorithm)] = "round_robin"
    # May be empty: servers can be added at runtime through the admin API.
    servers: tuple[ServerConfig, ...] = ()
    health_check: HealthCheck | None = None
    sticky: Sticky | None = None
    timeouts: PoolTimeouts = PoolTimeouts()
    connection_pool: ConnectionPoolSettings = ConnectionPoolSettings()
    send_proxy_protocol: Literal["v1", "v2"] | None = None
    hash_on: Annotated[str, AfterValidator(_hash_on)] | None = None
    balance_factor: float = Field(default=0.25, gt=0)
    slow_start: PositiveDuration | None = None
    outlier_detection: OutlierDetection = OutlierDetection()
    retries: Retries = Retries()
    queue: QueueSettings = QueueSettings()
    #: Speak TLS to the servers.
    tls: PoolTls | None = None


# --- the whole file ----------------------------------------------------------


class AdminConfig(_Frozen):
    bind: BindAddress
    token: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> AdminConfig:
        # Without a token anyone who reaches the admin API controls the balancer.
        if self.token is None and not _is_loopback(self.bind.host):
            raise ValueError(
                f"admin.bind {self.bind} is not a loopback address: set admin.token, "
                "or bind the admin API to 127.0.0.1, ::1 or localhost"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimitStore(_Frozen):
    """Rate limit state shared through Redis by every worker and every instance."""

    redis: Annotated[str, AfterValidator(_redis_url)]
    #: What decides while Redis is unreachable: the in-process limiter, or admit / refuse all.
    on_store_failure: Literal["local", "allow", "deny"] = "local"
    #: How long a request waits for Redis before the on_store_failure rule decides.
    timeout: PositiveDuration = 0.1


class ClusterSettings(_Frozen):
    """Active-active: runtime changes (admin API) shared with every instance through Redis."""

    redis: Annotated[str, AfterValidator(_redis_url)]
    #: Prefix of the Redis keys and of the change channel; instances sharing it form a cluster.
    key_prefix: Annotated[str, AfterValidator(_redis_key_prefix)] = "maitred:cluster"
    #: This instance's name among its peers (default: host name and process id).
    node_id: str | None = Field(default=None, min_length=1, max_length=200)
    #: Longest wait for one Redis command; beyond it Redis counts as unreachable.
    timeout: PositiveDuration = 2.0


class Config(_Frozen):
    workers: Annotated[int | Literal["auto"], PlainValidator(_parse_workers)] = 1
    admin: AdminConfig | None = None
    rate_limit_store: RateLimitStore | None = None
    cluster: ClusterSettings | None = None
    listeners: tuple[Listener, ...] = Field(min_length=1)
    pools: Annotated[
        Mapping[str, Pool],
        Field(min_length=1),
        AfterValidator(_read_only),
        WrapSerializer(_as_plain_dict),
    ]
    drain_timeout: Duration = 30.0
    state_dir: str | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self, info: ValidationInfo) -> Config:
        # The loader runs these rules itself on the raw YAML (so they are reported
        # together with field errors, at the right line) and asks to skip them here.
        if isinstance(info.context, Mapping) and info.context.get(SKIP_CROSS_CHECKS):
            return self
        issues = cross_field_issues(self.model_dump())
        if issues:
            raise ValueError("; ".join(str(issue) for issue in issues))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain JSON-able data (seconds, ``HOST:PORT``)."""
        return self.model_dump(mode="json")
