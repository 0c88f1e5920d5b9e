"""The small value types of the configuration: addresses, durations, key specs.

Each parser raises ``ValueError`` with a short, human message; pydantic turns
that into a validation error at the offending key, and the loader shows the
message as-is.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from annotated_types import Ge, Gt
from pydantic import AfterValidator, BeforeValidator, GetCoreSchemaHandler
from pydantic_core import core_schema

_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")
ADDRESS_HINT = "must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"


@dataclass(frozen=True, slots=True)
class Address:
    """A host and a TCP port; ``str()`` gives ``HOST:PORT`` (``[::1]:8080`` for IPv6).

    Host names are lowercased and IPv6 literals compressed, so two spellings of
    the same address compare equal.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; the port may be 0..65535."""
        text = text.strip()
        if text.startswith("["):
            closing = text.find("]")
            if closing < 0 or text[closing + 1 : closing + 2] != ":":
                raise ValueError(ADDRESS_HINT)
            host = _normalise_ipv6(text[1:closing])
            port_text = text[closing + 2 :]
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(ADDRESS_HINT)
            if ":" in host:
                raise ValueError("IPv6 addresses need brackets, e.g. [::1]:8080")
            if not host:
                raise ValueError("host is missing; " + ADDRESS_HINT)
            if not _HOSTNAME.fullmatch(host):
                raise ValueError(f"invalid host {host!r}")
            host = host.lower()
        if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
            raise ValueError(f"port must be a number between 0 and 65535, not {port_text!r}")
        return cls(host, int(port_text))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _coerce_address,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


def _normalise_ipv6(text: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ValueError(f"invalid IPv6 address {text!r}") from None


def _coerce_address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError(ADDRESS_HINT)
    return Address.parse(value)


def _require_server_port(address: Address) -> Address:
    if address.port == 0:
        raise ValueError("port must be between 1 and 65535")
    return address


# Listener and admin binds may use port 0 (the OS picks one, handy in tests);
# a server to connect to never can.
BindAddress = Address
ServerAddress = Annotated[Address, AfterValidator(_require_server_port)]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)")
_BARE_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
DURATION_HINT = "must be a duration like 250ms, 5s, 1m, 1h or a number of seconds"


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``5s``, ``1m``, ``1h``, ``1m30s`` or a plain number."""
    if isinstance(value, bool):
        raise ValueError(DURATION_HINT)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value.strip())
    else:
        raise ValueError(DURATION_HINT)
    if not math.isfinite(seconds):
        raise ValueError(DURATION_HINT)
    return seconds


def _parse_duration_text(text: str) -> float:
    # A sign is accepted so "-5s" is reported as "must be >= 0", not as unreadable.
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if sign < 0 else text
    if _BARE_NUMBER.fullmatch(body):
        return sign * float(body)
    parts = list(_DURATION_PART.finditer(body))
    if not parts or "".join(part.group(0) for part in parts) != body:
        raise ValueError(DURATION_HINT)
    # Divide for milliseconds rather than multiply by 0.001 so "173ms" is exactly 0.173.
    total = sum(
        float(number) / 1000 if unit == "ms" else float(number) * _DURATION_UNITS[unit]
        for number, unit in (part.groups() for part in parts)
    )
    return sign * total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` in the units the parser reads."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        count = seconds / size
        if count == int(count):
            return f"{int(count)}{unit}"
    milliseconds = round(seconds * 1000)
    if milliseconds / 1000 == seconds:
        return f"{milliseconds}ms"
    return repr(float(seconds))


Duration = Annotated[float, BeforeValidator(parse_duration), Ge(0)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Gt(0)]


# RFC 9110 token characters: what a header or cookie name may contain.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def is_token(text: str) -> bool:
    return bool(_TOKEN.fullmatch(text))


def parse_key_spec(value: str, *, plain: tuple[str, ...], prefixed: tuple[str, ...]) -> str:
    """Validate ``plain`` words or ``PREFIX:NAME`` specs; header names are lowercased.

    Headers are case-insensitive, so ``header:X-Api-Key`` is stored as
    ``header:x-api-key`` and the data plane can compare without folding.
    """
    if value in plain:
        return value
    prefix, colon, name = value.partition(":")
    if colon and prefix in prefixed:
        if not name:
            raise ValueError(f"'{prefix}:' needs a name, e.g. {prefix}:X-Session")
        if not is_token(name):
            raise ValueError(f"{name!r} is not a valid {prefix} name")
        return f"header:{name.lower()}" if prefix == "header" else value
    choices = [*plain, *(f"{prefix}:NAME" for prefix in prefixed)]
    raise ValueError("must be " + ", ".join(choices[:-1]) + " or " + choices[-1])
