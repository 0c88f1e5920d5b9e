"""The sticky-session cookie codec, the secret kept on disk, and the ``sticky`` keys."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.config import ConfigError, load_config
from maitred.config.loader import parse_config_text
from maitred.policies.sticky_cookie import ENCODED_LENGTH, StickyCookie, StickyCookieCodec
from maitred.policies.sticky_secret import (
    SECRET_FILE,
    load_or_create_secret,
    sticky_secret_for,
)

SECRET = b"correct horse battery staple"
NOW = 1_700_000_000.0
CODEC = StickyCookieCodec(SECRET, scope="web")
TOKEN = CODEC.server_token("127.0.0.1:9001")


# -- codec ------------------------------------------------------------------------


def test_round_trip_gives_back_the_token_and_expiry() -> None:
    value = CODEC.encode(TOKEN, NOW + 3600)
    assert CODEC.decode(value, NOW) == StickyCookie(TOKEN, int(NOW) + 3600)
    assert CODEC.decode(value.encode(), NOW) == StickyCookie(TOKEN, int(NOW) + 3600)


def test_value_is_a_short_cookie_safe_string_without_the_address() -> None:
    value = CODEC.encode(TOKEN, NOW + 3600)
    assert len(value) == ENCODED_LENGTH == 39
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(value + "=")
    for revealing in (b"127.0.0.1", b"9001", b"web"):
        assert revealing not in raw


def test_tokens_differ_per_server_per_scope_and_per_secret() -> None:
    other_server = CODEC.server_token("127.0.0.1:9002")
    other_scope = StickyCookieCodec(SECRET, scope="api").server_token("127.0.0.1:9001")
    other_secret = StickyCookieCodec(b"another secret!!", scope="web").server_token(
        "127.0.0.1:9001"
    )
    assert len({TOKEN, other_server, other_scope, other_secret}) == 4
    assert CODEC.server_token("127.0.0.1:9001") == TOKEN  # stable


def test_every_single_character_change_is_rejected() -> None:
    value = CODEC.encode(TOKEN, NOW + 3600)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for index in range(len(value)):
        for replacement in alphabet:
            if replacement == value[index]:
                continue
            tampered = value[:index] + replacement + value[index + 1 :]
            assert CODEC.decode(tampered, NOW) is None, (index, replacement)


def test_a_longer_expiry_or_another_token_cannot_be_spliced_in() -> None:
    raw = bytearray(base64.urlsafe_b64decode(CODEC.encode(TOKEN, NOW + 60) + "="))
    raw[1:5] = (int(NOW) + 10**6).to_bytes(4, "big")
    extended = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")
    assert CODEC.decode(extended, NOW) is None
    other = CODEC.encode(CODEC.server_token("127.0.0.1:9002"), NOW + 60)
    spliced = CODEC.encode(TOKEN, NOW + 60)[:17] + other[17:]
    assert CODEC.decode(spliced, NOW) is None


def test_expired_cookies_are_rejected() -> None:
    value = CODEC.encode(TOKEN, NOW + 10)
    assert CODEC.decode(value, NOW + 9) is not None
    assert CODEC.decode(value, NOW + 10) is None
    assert CODEC.decode(value, NOW + 86_400) is None


def test_wrong_secret_or_scope_is_rejected() -> None:
    value = CODEC.encode(TOKEN, NOW + 3600)
    assert StickyCookieCodec(b"another secret!!", scope="web").decode(value, NOW) is None
    assert StickyCookieCodec(SECRET, scope="api").decode(value, NOW) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "LB_SESSION",
        "=" * 39,
        "!" * 39,
        "é" * 39,
        "A" * 38,
        "A" * 40,
        "A" * 39,
        "\x00" * 39,
    ],
)
def test_garbage_is_rejected(garbage: str) -> None:
    assert CODEC.decode(garbage, NOW) is None


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        StickyCookieCodec(b"")


@given(
    server=st.text(min_size=1, max_size=60),
    lifetime=st.integers(min_value=1, max_value=10 * 365 * 86_400),
    secret=st.binary(min_size=1, max_size=64),
)
def test_any_server_and_lifetime_round_trips(server: str, lifetime: int, secret: bytes) -> None:
    codec = StickyCookieCodec(secret, scope="pool")
    token = codec.server_token(server)
    decoded = codec.decode(codec.encode(token, NOW + lifetime), NOW)
    assert decoded == StickyCookie(token, int(NOW) + lifetime)


@given(st.one_of(st.binary(max_size=80), st.text(max_size=80)))
def test_decoding_anything_never_raises(value: bytes | str) -> None:
    assert CODEC.decode(value, NOW) is None


@given(index=st.integers(min_value=0, max_value=28), flip=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_rejected(index: int, flip: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(CODEC.encode(TOKEN, NOW + 3600) + "="))
    raw[index] ^= flip
    assert CODEC.decode(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"="), NOW) is None


# -- secret kept in the state directory --------------------------------------------


def test_secret_is_created_once_with_mode_0600_and_then_kept(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "maitred"
    first = load_or_create_secret(state_dir)
    path = state_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64 and bytes.fromhex(first.decode())
    assert load_or_create_secret(state_dir) == first
    assert path.read_text().strip().encode() == first
    assert [entry.name for entry in state_dir.iterdir()] == [SECRET_FILE]  # no leftovers


def test_processes_racing_at_first_start_agree(tmp_path: Path) -> None:
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_secret(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1


def test_a_damaged_secret_file_is_reported_not_replaced(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("short\n")
    with pytest.raises(ValueError, match="does not hold a secret"):
        load_or_create_secret(tmp_path)
    assert (tmp_path / SECRET_FILE).read_text() == "short\n"


def config_text(sticky: str, extra: str = "") -> str:
    return f"""
{extra}listeners:
  - {{name: public, bind: 127.0.0.1:8080, pool: web}}
pools:
  web:
    servers: [{{address: 127.0.0.1:9001}}]
    sticky: {sticky}
"""


def test_the_secret_is_only_loaded_when_a_cookie_pool_needs_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for sticky in ("{mode: ip}", "{mode: cookie, secret: 0123456789abcdef}"):
        config = parse_config_text(config_text(sticky, f"state_dir: {state}\n"))
        assert sticky_secret_for(config) == b""
    assert not state.exists()
    config = parse_config_text(config_text("{mode: cookie}", f"state_dir: {state}\n"))
    secret = sticky_secret_for(config)
    assert secret == (state / SECRET_FILE).read_text().strip().encode()


def test_an_unusable_state_dir_falls_back_to_a_process_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = parse_config_text(config_text("{mode: cookie}", f"state_dir: {blocker}/sub\n"))
    secret = sticky_secret_for(config)
    assert len(secret) == 64
    assert "sticky cookies will not survive a restart" in caplog.text


# -- configuration keys --------------------------------------------------------------


def test_sticky_defaults() -> None:
    sticky = parse_config_text(config_text("{mode: cookie}")).pools["web"].sticky
    assert sticky is not None
    assert (sticky.cookie, sticky.max_age, sticky.strict, sticky.secret) == (
        "LB_SESSION",
        3600.0,
        False,
        None,
    )
    assert (sticky.path, sticky.domain, sticky.same_site, sticky.secure, sticky.http_only) == (
        "/",
        None,
        "Lax",
        None,
        True,
    )


def test_sticky_keys_are_read_and_normalized() -> None:
    sticky = (
        parse_config_text(
            config_text(
                "{mode: cookie, cookie: SRV, max_age: 10m, strict: true,"
                " secret: a-long-enough-secret, path: /app, domain: Example.COM,"
                " same_site: strict, secure: true,"
                " http_only: false}"
            )
        )
        .pools["web"]
        .sticky
    )
    assert sticky is not None
    assert (sticky.cookie, sticky.max_age, sticky.strict, sticky.secret) == (
        "SRV",
        600.0,
        True,
        "a-long-enough-secret",
    )
    assert (sticky.path, sticky.domain, sticky.same_site, sticky.secure, sticky.http_only) == (
        "/app",
        "example.com",
        "Strict",
        True,
        False,
    )
    assert "a-long-enough-secret" not in repr(sticky)


@pytest.mark.parametrize(
    ("sticky", "problem"),
    [
        ("{mode: cookie, cookie: 'a b'}", "pools.web.sticky.cookie: 'a b' is not a valid cookie"),
        ("{mode: cookie, cookie: 'x;y'}", "pools.web.sticky.cookie: 'x;y' is not a valid cookie"),
        ("{mode: cookie, secret: short}", "pools.web.sticky.secret:"),
        ("{mode: cookie, path: app}", "pools.web.sticky.path: must start with '/'"),
        ("{mode: cookie, path: '/a;b'}", "pools.web.sticky.path: must start with '/'"),
        ("{mode: cookie, same_site: sometimes}", "pools.web.sticky.same_site: must be Lax"),
        ("{mode: cookie, domain: 'a b'}", "pools.web.sticky.domain: must be a host name"),
        ("{mode: cookie, strict: maybe}", "pools.web.sticky.strict: must be true or false"),
        (
            "{mode: cookie, same_site: None, secure: false}",
            "pools.web.sticky: same_site None needs secure",
        ),
        ("{mode: cookie, max_age: 0}", "pools.web.sticky.max_age:"),
        ("{mode: cookie, colour: blue}", "pools.web.sticky.colour: unknown key"),
    ],
)
def test_bad_sticky_keys_are_named(tmp_path: Path, sticky: str, problem: str) -> None:
    path = tmp_path / "maitred.yaml"
    path.write_text(config_text(sticky))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = [str(item) for item in caught.value.problems]
    assert any(item.startswith(problem) for item in problems), problems


def test_secret_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_or_create_secret(tmp_path / "s")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "s" / SECRET_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
