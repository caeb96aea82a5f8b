"""The raw ceiling on Redis: redis-py and three small Lua scripts doing the job of a
job queue with nothing around it (the minimal design of shared/PERFORMANCE.md).

Keys under a prefix of its own: ``ids`` (INCR), ``ready`` (zset, score −priority·10¹³
+ run_at in ms, member the id), ``delayed`` (zset by run_at ms), ``payload`` (hash id →
payload), ``inflight:{consumer}`` (hash id → lease deadline in ms) and ``wake`` (a
one-token list that idle consumers BLPOP).

- push: one script call (INCR, HSET, ZADD, a wake token);
- bulk: one script call (INCRBY, then HSET and ZADD 1,000 at a time);
- claim: one script call promoting due delayed ids, ZPOPMIN up to 32, HMGET their
  payloads and record each lease (HSET on the consumer's in-flight hash);
- ack: one pipeline per claimed batch (HDEL the payloads and the leases).

There is no record of finished tasks, no attempts, no retries, no introspection, no
replay after a lost reply, no recovery of a dead consumer's leases: it is the floor
under what any durable queue on Redis costs, not a usable queue.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import msgspec
import redis

LEASE_MS = 60_000

_PUSH = """
local P = ARGV[1]
local id = redis.call('INCR', P .. ':ids')
redis.call('HSET', P .. ':payload', id, ARGV[2])
if tonumber(ARGV[4]) <= tonumber(ARGV[5]) then
  redis.call('ZADD', P .. ':ready', -tonumber(ARGV[3]) * 1e13 + tonumber(ARGV[4]), id)
  if redis.call('LLEN', P .. ':wake') == 0 then redis.call('RPUSH', P .. ':wake', 1) end
else
  redis.call('ZADD', P .. ':delayed', ARGV[4], id)
end
return id
"""

_BULK = """
local P, now, n = ARGV[1], ARGV[2], #ARGV - 2
local last = redis.call('INCRBY', P .. ':ids', n)
local first = last - n + 1
for i = 1, n, 500 do
  local j = math.min(i + 499, n)
  local h, z = {}, {}
  for k = i, j do
    local id = first + k - 1
    h[#h + 1] = id
    h[#h + 1] = ARGV[k + 2]
    z[#z + 1] = now
    z[#z + 1] = id
  end
  redis.call('HSET', P .. ':payload', unpack(h))
  redis.call('ZADD', P .. ':ready', unpack(z))
end
if redis.call('LLEN', P .. ':wake') == 0 then redis.call('RPUSH', P .. ':wake', 1) end
return first
"""

_CLAIM = """
local P, consumer, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
if #due > 0 then
  local ids = {}
  for i = 1, #due, 2 do
    redis.call('ZADD', P .. ':ready', due[i + 1], due[i])
    ids[#ids + 1] = due[i]
  end
  redis.call('ZREM', P .. ':delayed', unpack(ids))
end
local popped = redis.call('ZPOPMIN', P .. ':ready', limit)
if #popped == 0 then return {} end
local ids, leases = {}, {}
local deadline = now + tonumber(ARGV[5])
for i = 1, #popped, 2 do
  ids[#ids + 1] = popped[i]
  leases[#leases + 1] = popped[i]
  leases[#leases + 1] = deadline
end
local payloads = redis.call('HMGET', P .. ':payload', unpack(ids))
redis.call('HSET', P .. ':inflight:' .. consumer, unpack(leases))
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = payloads[i]
end
return out
"""


class RawQueue:
    """The raw ceiling's queue under a fresh prefix (``drop()`` deletes its keys)."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.prefix = f"raw-bench-{uuid.uuid4().hex[:10]}"
        self.push_script = self.client.register_script(_PUSH)
        self.bulk_script = self.client.register_script(_BULK)
        self.claim_script = self.client.register_script(_CLAIM)

    def push(self, value: Any, priority: int = 0) -> int:
        now = int(time.time() * 1000)
        return self.push_script(
            keys=[], args=[self.prefix, msgspec.json.encode(value), priority, now, now]
        )

    def push_bulk(self, values: Any) -> int:
        now = int(time.time() * 1000)
        payloads = [msgspec.json.encode(v) for v in values]
        return self.bulk_script(keys=[], args=[self.prefix, now, *payloads])

    def claim(self, consumer: str, limit: int = 32) -> list[tuple[bytes, bytes]]:
        reply = self.claim_script(
            keys=[], args=[self.prefix, consumer, int(time.time() * 1000), limit, LEASE_MS]
        )
        return list(zip(reply[::2], reply[1::2], strict=True))

    def ack(self, consumer: str, ids: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(f"{self.prefix}:payload", *ids)
        pipe.hdel(f"{self.prefix}:inflight:{consumer}", *ids)
        pipe.execute()

    def consume(self, handler: Any, consumer: str, *, block: float = 0.0) -> int:
        """Claim, run and ack until the queue is empty (``block`` 0), or forever,
        waiting on the wake list up to ``block`` seconds at a time."""
        done = 0
        while True:
            batch = self.claim(consumer)
            if not batch:
                if not block:
                    return done
                self.client.blpop([f"{self.prefix}:wake"], timeout=block)
                continue
            for _, payload in batch:
                handler(msgspec.json.decode(payload))
            self.ack(consumer, [task_id for task_id, _ in batch])
            done += len(batch)

    def drain(self, handler: Any, threads: int) -> int:
        """Run ``consume`` in ``threads`` threads until the queue is empty."""
        counts = [0] * threads

        def run(k: int) -> None:
            counts[k] = self.consume(handler, f"c{k}")

        pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        return sum(counts)

    def drop(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            self.client.unlink(*keys)
        self.client.close()
