"""The cluster's state in Redis: keys, the publishing script, snapshots, heartbeats.

Under ``key_prefix`` (default ``maitred:cluster``):

- ``<prefix>:version``: the cluster version, one counter for all changes;
- ``<prefix>:state``: a hash, subject → ``{"v": version, "value": ...}``
  (``"value": null`` once a subject holds no change any more; kept, so that an
  older write cannot bring it back);
- ``<prefix>:changes``: the pub/sub channel, one message per publication:
  ``{"v": version, "node": "...", "changes": {subject: value}}``;
- ``<prefix>:nodes``: a sorted set of node ids scored by their last heartbeat
  (wall-clock seconds), for the peer list.

One Lua script takes the next version, stores the subjects and publishes the
message atomically, so the order of versions is the order of the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.retry import Retry

from maitred.config.model import ClusterSettings
from maitred.control.cluster_sync import (
    ChangeMessage,
    Changes,
    Snapshot,
    decode_entry,
    decode_message,
    encode_changes,
)
from maitred.policies.rate_limit_redis import redacted

log = logging.getLogger("maitred.cluster")

#: KEYS: version counter, state hash. ARGV: channel, node (JSON string), the changes
#: (JSON object), then per subject its key and its value as JSON ("null": cleared).
#: Values are spliced in as text: decoding and re-encoding them in Lua (cjson)
#: would turn an empty list into {}.
PUBLISH_SCRIPT = """
local version = redis.call('INCR', KEYS[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], '{"v":' .. version .. ',"value":' .. ARGV[i + 1] .. '}')
end
redis.call('PUBLISH', ARGV[1],
  '{"v":' .. version .. ',"node":' .. ARGV[2] .. ',"changes":' .. ARGV[3] .. '}')
return version
"""


class ClusterStore:
    def __init__(self, settings: ClusterSettings) -> None:
        prefix = settings.key_prefix
        self.version_key = f"{prefix}:version"
        self.state_key = f"{prefix}:state"
        self.nodes_key = f"{prefix}:nodes"
        self.channel = f"{prefix}:changes"
        self.where = redacted(settings.redis)
        self._timeout = settings.timeout
        # Fail fast (no retries inside redis-py): the link decides when to try again.
        self._client = Redis.from_url(
            settings.redis,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        # The subscription waits for messages as long as it takes; heartbeats on
        # the other client find out when Redis stops answering.
        self._listener = Redis.from_url(
            settings.redis,
            socket_timeout=None,
            socket_connect_timeout=settings.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._publish = self._client.register_script(PUBLISH_SCRIPT)

    async def close(self) -> None:
        await self._client.aclose()
        await self._listener.aclose()

    async def publish(self, node: str, changes: Changes) -> int:
        """Store and announce ``changes``; the version they were given."""
        args: list[str] = [self.channel, json.dumps(node), encode_changes(changes)]
        for key, value in changes.items():
            args += [key, json.dumps(value, separators=(",", ":"))]
        version = await self._publish(keys=[self.version_key, self.state_key], args=args)
        return int(version)

    async def snapshot(self) -> Snapshot:
        """The version and every subject, read in one transaction (a consistent cut)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self.version_key)
            pipe.hgetall(self.state_key)
            raw_version, raw_entries = await pipe.execute()
        entries = {}
        for raw_key, raw in raw_entries.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            try:
                entries[key] = decode_entry(raw)
            except ValueError:
                log.error("cluster: unreadable subject %s in %s ignored", key, self.state_key)
        return Snapshot(int(raw_version or 0), entries)

    async def heartbeat(self, node: str, now: float, ttl: float) -> tuple[int, list[str]]:
        """Say this node is alive; the cluster version and the nodes seen within ``ttl``."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.nodes_key, {node: now})
            pipe.zremrangebyscore(self.nodes_key, "-inf", now - ttl)
            pipe.zrange(self.nodes_key, 0, -1)
            pipe.get(self.version_key)
            _, _, raw_nodes, raw_version = await pipe.execute()
        nodes = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_nodes]
        return int(raw_version or 0), nodes

    async def leave(self, node: str) -> None:
        await self._client.zrem(self.nodes_key, node)

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[PubSub]:
        pubsub = self._listener.pubsub()
        try:
            # The listening client has no read timeout; a Redis that accepts and never
            # answers must not hang the start.
            async with asyncio.timeout(self._timeout):
                await pubsub.subscribe(self.channel)
            yield pubsub
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def next_message(self, pubsub: PubSub) -> ChangeMessage | bytes:
        """The next change message; the raw data when it cannot be read (logged by the caller)."""
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message.get("type") != "message":
                continue
            data: bytes = message["data"]
            try:
                return decode_message(data)
            except ValueError:
                return data
