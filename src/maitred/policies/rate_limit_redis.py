"""Rate limit state in Redis: one limit for every worker and every instance.

Each request costs one EVALSHA of a Lua script that runs GCRA over all the
limits of the request atomically (check all, count only when all admit), on
Redis's own clock (``TIME``): the monotonic clocks of two hosts cannot be
compared, Redis's is the one they share. Keys expire when their TAT passes, so
Redis keeps only the keys that are not idle.

The data plane does not wait: a request's check is queued, and all checks
queued during one event-loop iteration go out as one pipeline (one write, one
round trip), up to ``MAX_IN_FLIGHT`` pipelines at a time; checks queued
meanwhile wait for the next. Each check's answer is handed to its callback.
When Redis fails or does not answer within ``timeout`` the callbacks get None
(the caller falls back), the store marks itself unavailable, logs it once, and
probes Redis every ``PROBE_INTERVAL`` until it answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from maitred.config import RateLimitStore

log = logging.getLogger("maitred.rate_limit")

#: Pipelines sent to Redis and not yet answered; more checks wait for the next.
MAX_IN_FLIGHT = 4
#: Seconds between attempts to reach an unavailable Redis.
PROBE_INTERVAL = 1.0

#: KEYS: one per limit. ARGV: per limit, its emission interval (µs) and burst.
#: Returns {admitted, then per limit: remaining, retry_after_us, reset_after_us}.
GCRA_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local admitted = 1
local tats = {}
local out = {0}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then
    tat = now
  elseif tat > now + capacity then
    tat = now + capacity
  end
  local new_tat = tat + interval
  local allow_at = new_tat - capacity
  if allow_at > now then
    admitted = 0
    out[#out + 1] = 0
    out[#out + 1] = allow_at - now
    out[#out + 1] = tat - now
  else
    out[#out + 1] = math.floor((now - allow_at) / interval)
    out[#out + 1] = 0
    out[#out + 1] = new_tat - now
  end
  tats[i] = new_tat
end
if admitted == 1 then
  for i = 1, #KEYS do
    local ttl = math.ceil((tats[i] - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
out[1] = admitted
return out
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()

#: Called with the script's answer, or None when Redis could not answer.
Reply = list[int] | None
Waiter = Callable[[Reply], None]
_Check = tuple[Sequence[bytes], Sequence[int], Waiter]


class RedisStore:
    def __init__(self, settings: RateLimitStore, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.on_failure = settings.on_store_failure
        self.available = True
        self.closed = False
        self._loop = loop
        self._timeout = settings.timeout
        self._client = Redis.from_url(
            settings.redis,
            # No per-read timeout (it costs a task per write): _send bounds each batch.
            socket_timeout=None,
            socket_connect_timeout=settings.timeout,
            # Failing fast is the point: the fallback decides while Redis is away.
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_IN_FLIGHT + 1,
        )
        self._queued: list[_Check] = []
        self._flush_scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        """The Redis URL without its password, for logs."""
        return redacted(self.settings.redis)

    def submit(self, keys: Sequence[bytes], args: Sequence[int], waiter: Waiter) -> None:
        """Queue one check; ``waiter`` is called later, from the event loop."""
        self._queued.append((keys, args, waiter))
        if not self._flush_scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def close(self) -> None:
        self.closed = True
        self.available = False
        if self._probe is not None:
            self._probe.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._answer(self._queued, None)
        self._queued = []
        await self._client.aclose()

    # -- sending -------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queued or self._in_flight >= MAX_IN_FLIGHT:
            return
        batch, self._queued = self._queued, []
        self._in_flight += 1
        task = self._loop.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Check]) -> None:
        replies: list[Reply] | None = None
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._run(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_away(exc)
        finally:
            self._in_flight -= 1
            if self._queued and not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        self._answer(batch, replies)

    async def _run(self, batch: list[_Check]) -> list[Reply]:
        replies = await self._pipeline(batch)
        missing = [index for index, reply in enumerate(replies) if reply is _NO_SCRIPT]
        if missing:
            # Redis restarted (or was flushed) since the script was loaded.
            await self._client.script_load(GCRA_SCRIPT)
            again = await self._pipeline([batch[index] for index in missing])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return [reply if isinstance(reply, list) else None for reply in replies]

    async def _pipeline(self, batch: list[_Check]) -> list[object]:
        """Send the batch's commands in one write and read their replies in order.

        Below redis-py's Pipeline (which costs tens of µs per command): commands
        are encoded here, and one timeout covers the whole batch (``_send``).
        """
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(
                b"".join(_evalsha(keys, args) for keys, args, _ in batch), check_health=False
            )
            replies: list[object] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except NoScriptError:
                    replies.append(_NO_SCRIPT)
                except ResponseError as exc:
                    log.error("rate limit script failed in Redis: %s", exc)
                    replies.append(None)
        except BaseException:
            # Replies may be left unread: this connection cannot be trusted again.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)
        return replies

    def _answer(self, batch: list[_Check], replies: list[Reply] | None) -> None:
        for index, (_, _, waiter) in enumerate(batch):
            try:
                waiter(replies[index] if replies is not None else None)
            except Exception:
                log.exception("rate limit decision failed")

    # -- availability --------------------------------------------------------------

    def _went_away(self, exc: BaseException) -> None:
        if not self.available or self.closed:
            return
        self.available = False
        reason = str(exc) or type(exc).__name__
        log.warning(
            "rate limit store %s unreachable (%s); deciding with: %s",
            self.where,
            reason,
            self.on_failure,
        )
        self._probe = self._loop.create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while not self.closed:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                async with asyncio.timeout(max(self._timeout, PROBE_INTERVAL)):
                    await self._client.script_load(GCRA_SCRIPT)
            except (RedisError, OSError, TimeoutError):
                continue
            self.available = True
            log.info("rate limit store %s reachable again", self.where)
            return


def _evalsha(keys: Sequence[bytes], args: Sequence[int]) -> bytes:
    """``EVALSHA <gcra> len(keys) *keys *args`` in RESP."""
    parts = [
        b"*%d\r\n" % (3 + len(keys) + len(args)),
        _EVALSHA_HEAD,
        b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys)),
    ]
    for key in keys:
        parts.append(b"$%d\r\n%s\r\n" % (len(key), key))
    for arg in args:
        text = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(text), text))
    return b"".join(parts)


_EVALSHA_HEAD = b"$7\r\nEVALSHA\r\n$40\r\n" + GCRA_SHA.encode() + b"\r\n"


class _NoScript:
    """Stands for a NOSCRIPT answer in a pipeline's replies."""


_NO_SCRIPT = _NoScript()


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
