"""A Redis store (issue 12): ``RedisStorage``, the first store that is not SQL.

::

    from taskpipe.redis import RedisStorage, connect

    client = connect("redis://127.0.0.1:6379/0")   # a redis.Redis (bytes, retries on)
    RedisStorage.setup(client)                       # records the layout; idempotent
    storage = RedisStorage(client, queue="emails")   # or taskpipe.open_storage(url, queue=…)

Every atomic step is one Lua script (run by ``EVALSHA``, loaded again after a
``NOSCRIPT``): an insert (a whole ``push_bulk`` is one script call: all or nothing),
a claim (due tasks are promoted from the delayed set inside it), an ack with its
follow-ups, an ack with the worker's next claim (``ack_and_claim``: one round trip for
both, the worker's usual write), a beat with its recoveries, and each introspection
write. Times are
``taskpipe.clock.timestamp()`` values passed *into* the scripts (never Redis
``TIME``), so a frozen clock rules them as it rules the other stores.

The hot scripts are shaped for speed (issue 12): rows, claimed tasks and outcomes
travel as a few strings whatever the batch size (a head of comma-separated numbers
and a blob of the bytes they measure), because redis-py parses and packs RESP in
Python, element by element; index writes of a batch are one variadic call per key;
a claim reads and writes each task's hash once, an ack writes it once, and a batch of
acks is fenced by one ``HMGET`` on the queue's running hash. ``push`` and ``push_bulk``
(plain values: no id, key, meta or priority) use standalone scripts of their own
(``push`` a straight-line one), without the general insert's row parsing, and write
no key per task: each task is a
field of ``{p}:new`` (its queue, creation time and payload) plus its two index
entries, and its hash is made when it is first claimed (in the claim's one ``HSET``),
killed or otherwise written; readers look in ``{p}:new`` when a task has no hash. A
bulk push is then about 3 µs of Lua a task (the raw ceiling's: 1.5), half what a hash
per task cost.

Keys. Everything lives under ``{prefix}:`` (default ``taskpipe``; ``prefix=`` or
``?prefix=`` in the URL), so several applications share one Redis::

    {p}:layout               the layout version (``setup``)
    {p}:ids                  INCR counter for task ids (one sequence for every queue)
    {p}:maxid                the greatest explicit id pushed (INCR skips taken ids)
    {p}:t:{id}               hash: the task (payload, priority, run_at, status, lease…)
    {p}:new                  hash id → "created_at len(queue):queue" + payload of each
                             task of push/push_bulk not claimed yet (it has no hash)
    {p}:e:{id}  {p}:r:{id}   lists: its errors, its recovery records (JSON)
    {p}:keys  {p}:keyidx     hash key → id, and a lexical index of keys (``last_key``,
                             ``tasks_with_key_prefix``)
    {p}:join:{key}           hash: a join's ``slots`` and how many parts ``arrived``
    {p}:join:{key}:parts     hash slot → value: its recorded parts (``join_parts``)
    {p}:queues               set of queue names
    {p}:paused               set of the queues paused (``pause_queue``)
    {p}:q:{queue}:ready      zset of due tasks: score −priority, member "<run_at µs,
                             17 digits><letter: a for a 1-digit id, b for 2…><id>", so
                             ZPOPMIN gives priority, then due time, then id
    {p}:q:{queue}:iso        the same for tasks that must run alone
    {p}:q:{queue}:later      zset run_at → id: waiting, not due when last looked at
    {p}:q:{queue}:wait       zset run_at → id: every waiting task but the due ones of
                             priority 0, found by their score 0 in ready and iso
                             (``next_due``: the earliest of the three)
    {p}:q:{queue}:s:{status} zset id → id per status but Running (listing, counts)
    {p}:q:{queue}:running    hash id → "started_at len(run) run lease" of each Running
                             task: an ack counts only while its lease is there
    {p}:q:{queue}:fin:{done|dead}  zset done_at → id (retention, purge, rates)
    {p}:q:{queue}:errs  :rt  failures of the last day; Done run-time sum and count
    {p}:runs {p}:seen {p}:held:{run} {p}:orphans   worker runs, last beats, held tasks
    {p}:tok:{token}          a write's result for 5 minutes (replays after a reconnect)
    {p}:limit:{key}          a rate limit's last reserved start (``take_slot``); it
                             expires a minute after the slot after it is past
    {p}:wake                 pub/sub channel: a push publishes its queue name

Priorities are exact up to 2**53 in magnitude (a zset score is a double). Run times
are ordered to the microsecond; ids up to 20 digits (non-negative).

Big batches: a ``push_bulk`` is one script, and Redis runs nothing else meanwhile
(about 1 s for 100,000 tasks on a small machine); past ``busy-reply-threshold``
(5 s) other clients get ``BUSY`` errors. ``push_stream``/``push_all`` write batches of
1,000, each one script call.

Retention: finished tasks are kept for introspection and ``wait_for``, at most
``keep_finished`` Done and ``keep_finished`` Dead tasks per queue (default 10,000
each); finishing one more forgets the oldest (its key becomes free again). ``purge``
deletes older ones on demand. A join (workflows' fan-in, ``{p}:join:{key}``) is
deleted with the task keyed by its key (a workflow's join row is) when that task is
forgotten, evicted or purged; a join that never completed (its run failed before its
last part), or whose row has another key, stays until ``drop``. Memory: about 500 bytes per finished record (Redis
7.0, a 17-character prefix, no-op tasks: 1,000,000 Done records at
``keep_finished=1_000_000`` took 492 B each by ``INFO memory`` used_memory before and
after, 451 B summing ``MEMORY USAGE key SAMPLES 0``: the task's hash about 260 B, its
entries in ``s:done`` and ``fin:done`` 94 B each; measured by ``python
benchmarks/redis_bench.py --memory 1000000``), plus the payload and result beyond a
few bytes. The default keeps up to 10,000 Done and 10,000 Dead per queue: about 10 MB.
A task waiting after ``push``/``push_bulk`` takes about 340 bytes (1,000,000 of them:
342 B each by used_memory; its field in ``{p}:new`` and its two index entries).
Size ``keep_finished`` (and Redis' ``maxmemory``) with it: Redis holds everything in
memory, and a Redis out of memory refuses pushes (``OOM``, raised as ``PushError``).

Wake-ups: every insert publishes the queue's name on ``{p}:wake``; while a worker of
this process waits, one listener thread per client subscribes and wakes the workers
of that queue. Pub/sub is not durable: a publish missed during a reconnect is made up
by the worker's timed poll (and the listener wakes every watched queue when it
reconnects).

Connections: ``connect`` makes a client that retries a command after a connection
error or a timeout, reconnecting first. Each write script carries a token and leaves
its result under it for 5 minutes, so a write whose reply was lost is answered from
that record when replayed instead of being done twice: a push is not duplicated, a
claim returns the tasks it took (none is left running under a live worker without
being run), an ack is not applied twice.

Durability. Redis acknowledges a write once it is in memory. What a Redis crash (or
restart, or failover) loses therefore depends on its persistence settings, not on
taskpipe:

- no persistence (``save ""``, ``appendonly no``, as in the benchmarks): everything.
  Every pending and delayed task, every record, every key of ``Task(key=…)`` (so a
  cron tick may be enqueued again), the layout (``check_setup`` fails until ``setup``
  runs again). Workers keep running and find an empty queue;
- RDB snapshots only (Redis' default ``save`` rules): everything written since the
  last snapshot, which is minutes;
- AOF with ``appendfsync everysec`` (the usual choice): up to about one second of
  writes. A lost push is gone although ``push`` returned. A lost claim puts its tasks
  back to Pending: they run again although a worker may have run them. A lost ack
  leaves its tasks Running under their worker's run: they run again once that run
  stops or stops beating (recovered, see ``beat``). Results and errors of that second
  are lost with their acks: at-least-once, never lost-and-done;
- AOF with ``appendfsync always``: nothing that was acknowledged, at the cost of an
  fsync per write (each script call: a ``push_bulk`` is one), which bounds pushes by
  the disk's fsync rate.

A replica does not help: replication is asynchronous, so a failover can lose recent
writes like ``everysec`` does (``WAIT`` is not used). When a push that returned must
never be lost, use PostgreSQL (``taskpipe.open_storage("postgresql://…")``, stock
``synchronous_commit``) or SQLite on a local disk.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from . import clock
from .codec import encode_many
from .config import Config
from .context import WorkerContext
from .errors import OutcomeRefused, PushError, SetupError, StorageError, TaskNotFound
from .expose import DAY, HOUR, Bucket, ExposeMixin, QueueInfo, WorkerInfo, _empty_stats
from .store import Capabilities, Claim, Outcome, OutcomeKind, Row, Store, safe_text
from .task import AttemptError, Recovery, Status, TaskId, TaskInfo
from .wakeups import WakeRegistry

__all__ = ["RedisStorage", "connect", "open_storage", "LAYOUT_VERSION", "DEFAULT_PREFIX"]

log = logging.getLogger("taskpipe.redis")

#: The key layout this module writes; ``setup`` records it under ``{prefix}:layout``.
LAYOUT_VERSION = "1"
DEFAULT_PREFIX = "taskpipe"
#: How many tasks that became due one claim moves into the ready set at most.
PROMOTE_PER_CLAIM = 1000
#: Batch size of ``retry_dead`` and ``purge`` (each batch is one script call).
BATCH = 500
TOKEN_TTL = 300  # seconds a write's result is kept for a replay after a reconnect
_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Lua ------------------------------------------------------------------------------------
# How a waiting task is written, for every script that writes or reads one (the prelude,
# and the standalone push scripts that go without it).
_FORMATS = r"""
local function micros(t)  -- a time in whole µs (0 at the least)
  local us = math.floor(tonumber(t) * 1000000)
  if us < 0 then return 0 end
  return us
end
-- a task's member in ready or iso is member_head(run_at µs, #id) .. id: 17 digits of
-- µs, then a letter saying how many digits the id has (a for 1, b for 2…), so that
-- members sort as (run_at, id) do
local function member_head(us, digits)
  return string.format('%017d', us) .. string.char(96 + digits)
end
-- a task of push/push_bulk (pending, priority 0, due when made) waits as one field of
-- {p}:new, id -> new_head(created_at, queue) .. payload, until it is claimed or
-- touched; its hash is made then (parse_new reads it back)
local function new_head(ca, q)
  return ca .. ' ' .. #q .. ':' .. q
end
"""

_PRELUDE = (
    _FORMATS
    + r"""
local P = ARGV[1]
local function tk(id) return P .. ':t:' .. id end
local QK = {}  -- key names made once per call (a Lua string is hashed when made)
local function qk(q, name)
  local t = QK[q]
  if not t then
    t = {}
    QK[q] = t
  end
  local k = t[name]
  if not k then
    k = P .. ':q:' .. q .. ':' .. name
    t[name] = k
  end
  return k
end

local function member(id, ra)
  return member_head(micros(ra), #id) .. id
end

local function id_of(m)
  return (string.match(m, '%a(%d+)$'))
end

local NEW = P .. ':new'
local function parse_new(v)  -- created_at, queue, payload of new_head(ca, q) .. payload
  local s = string.find(v, ' ', 1, true)
  local c = string.find(v, ':', s + 1, true)
  local n = tonumber(string.sub(v, s + 1, c - 1))
  return string.sub(v, 1, s - 1), string.sub(v, c + 1, c + n), string.sub(v, c + n + 1)
end
-- the hash of a task still in {p}:new is made, as insert_row makes a pending task's
local function materialize(id)
  local v = redis.call('HGET', NEW, id)
  if not v then return end
  local ca, q, p = parse_new(v)
  redis.call('HSET', tk(id), 'q', q, 'p', p, 'pr', '0', 'ra', ca, 'ca', ca, 'st', 'pending',
    'm', member(id, ca))
  redis.call('HDEL', NEW, id)
end
local function task_exists(id)
  return redis.call('EXISTS', tk(id)) == 1 or redis.call('HEXISTS', NEW, id) == 1
end

-- the zset score of a priority: its negation, exact as text
local function neg(pr)
  if pr == nil or pr == '0' then return '0' end
  if string.sub(pr, 1, 1) == '-' then return string.sub(pr, 2) end
  return '-' .. pr
end

-- one variadic command over a list, 1000 arguments a call (key nil: none before them)
local function many(cmd, key, list)
  local n = #list
  for i = 1, n, 1000 do
    local j = i + 999
    if j > n then j = n end
    if key then redis.call(cmd, key, unpack(list, i, j))
    else redis.call(cmd, unpack(list, i, j)) end
  end
end

-- a batch of index writes, applied together by apply(B): one variadic call per
-- (command, key) instead of one call per task
local function new_batch() return {ops = {}, order = {}, rt = {}, fin = {}} end
local function defer(B, cmd, key, a, b)
  local by_key = B.ops[cmd]
  if not by_key then
    by_key = {}
    B.ops[cmd] = by_key
  end
  local list = by_key[key]
  if not list then
    list = {}
    by_key[key] = list
    B.order[#B.order + 1] = {cmd, key, list}
  end
  list[#list + 1] = a
  if b ~= nil then list[#list + 1] = b end
end
-- the list of a deferred (command, key), to append to directly
local function deferred(B, cmd, key)
  local by_key = B.ops[cmd]
  if not by_key then
    by_key = {}
    B.ops[cmd] = by_key
  end
  local list = by_key[key]
  if not list then
    list = {}
    by_key[key] = list
    B.order[#B.order + 1] = {cmd, key, list}
  end
  return list
end
local function apply(B)
  for _, e in ipairs(B.order) do
    if #e[3] > 0 then many(e[1], e[2], e[3]) end
  end
  B.ops, B.order, B.q = {}, {}, nil
end

-- a waiting task (pending or failed) enters its queue; `wait` holds it unless it is
-- due with priority 0 (score 0 in ready or iso, where next_due finds it)
local function schedule(id, q, ra, now)
  local h = tk(id)
  if tonumber(ra) <= tonumber(now) then
    local m = member(id, ra)
    local v = redis.call('HMGET', h, 'iso', 'pr')
    local score = neg(v[2])
    if score ~= '0' then redis.call('ZADD', qk(q, 'wait'), ra, id) end
    redis.call('ZADD', qk(q, v[1] == '1' and 'iso' or 'ready'), score, m)
    redis.call('HSET', h, 'm', m)
  else
    redis.call('ZADD', qk(q, 'wait'), ra, id)
    redis.call('ZADD', qk(q, 'later'), ra, id)
  end
end

-- a waiting task leaves its queue
local function unschedule(id, q)
  local m = redis.call('HGET', tk(id), 'm')
  redis.call('ZREM', qk(q, 'later'), id)
  redis.call('ZREM', qk(q, 'wait'), id)
  if m and m ~= '' then
    redis.call('ZREM', qk(q, 'ready'), m)
    redis.call('ZREM', qk(q, 'iso'), m)
    redis.call('HDEL', tk(id), 'm')
  end
end

-- (Running tasks have no status zset: the queue's running hash is their index)
local function set_status(id, q, old, new)
  if old and old ~= 'running' then redis.call('ZREM', qk(q, 's:' .. old), id) end
  redis.call('ZADD', qk(q, 's:' .. new), id, id)
  redis.call('HSET', tk(id), 'st', new)
end

-- the value of a running task in its queue's running hash: "started_at len(run) run
-- lease"; an ack is accepted only while it is there with the ack's lease
local function held_value(sa, run, lease)
  return sa .. ' ' .. #run .. ' ' .. run .. lease
end
local function parse_held(v)  -- started_at, run, lease
  local sa, n, rest = string.match(v, '^(%S*) (%d+) (.*)$')
  if not sa then return nil end
  n = tonumber(n)
  return sa, string.sub(rest, 1, n), string.sub(rest, n + 1)
end

-- a running task stops running: out of the running hash and its run's held set
local function unhold(id, q, run)
  redis.call('HDEL', qk(q, 'running'), id)
  if run then redis.call('SREM', P .. ':held:' .. run, id) end
end

-- a finished task leaves for good (evicted or purged): its key is free again
local function forget(id)
  local h = tk(id)
  local v = redis.call('HMGET', h, 'q', 'st', 'k', 'sa', 'da')
  local q, st, k, sa, da = v[1], v[2], v[3], v[4], v[5]
  if not q then return end
  redis.call('ZREM', qk(q, 's:' .. st), id)
  redis.call('ZREM', qk(q, 'fin:' .. st), id)
  if st == 'done' and sa and da then
    redis.call('HINCRBYFLOAT', qk(q, 'rt'), 'sum', tostring(tonumber(sa) - tonumber(da)))
    redis.call('HINCRBY', qk(q, 'rt'), 'n', -1)
  end
  if k and redis.call('HGET', P .. ':keys', k) == id then
    redis.call('HDEL', P .. ':keys', k)
    redis.call('ZREM', P .. ':keyidx', k)
    redis.call('DEL', P .. ':join:' .. k, P .. ':join:' .. k .. ':parts')
  end
  redis.call('DEL', h, P .. ':e:' .. id, P .. ':r:' .. id)
end

-- forget many tasks listed in queue q's fin:{st} (st: done or dead), with one
-- variadic call per index; a task found elsewhere is forgotten alone
local function forget_many(q, st, ids)
  if #ids == 0 then return end
  local dels, sum, n = {}, 0, 0
  for _, id in ipairs(ids) do
    local h = tk(id)
    local v = redis.call('HMGET', h, 'q', 'st', 'k', 'sa', 'da')
    if v[1] == q and v[2] == st then
      if st == 'done' and v[4] and v[5] then
        sum, n = sum + (tonumber(v[4]) - tonumber(v[5])), n + 1
      end
      local k = v[3]
      if k and redis.call('HGET', P .. ':keys', k) == id then
        redis.call('HDEL', P .. ':keys', k)
        redis.call('ZREM', P .. ':keyidx', k)
        dels[#dels + 1] = P .. ':join:' .. k
        dels[#dels + 1] = P .. ':join:' .. k .. ':parts'
      end
      dels[#dels + 1] = h
      dels[#dels + 1] = P .. ':e:' .. id
      dels[#dels + 1] = P .. ':r:' .. id
    elseif v[1] then
      forget(id)
    end
  end
  many('ZREM', qk(q, 's:' .. st), ids)
  many('ZREM', qk(q, 'fin:' .. st), ids)
  many('DEL', nil, dels)
  if n > 0 then
    redis.call('HINCRBYFLOAT', qk(q, 'rt'), 'sum', string.format('%.6f', sum))
    redis.call('HINCRBY', qk(q, 'rt'), 'n', -n)
  end
end

local function trim(q, st, keep)
  local fin = qk(q, 'fin:' .. st)
  local excess = redis.call('ZCARD', fin) - tonumber(keep)
  if excess > 0 then forget_many(q, st, redis.call('ZRANGE', fin, 0, excess - 1)) end
end

-- a task becomes Done or Dead; the oldest beyond `keep` are forgotten (at once, or at
-- flush(B) when a batch is given: its index writes are deferred too); `sa` is its
-- started_at when the caller has it; `result` is written with the status
local function finish(id, q, old, st, now, keep, sa, B, result)
  local h = tk(id)
  if result then
    redis.call('HSET', h, 'da', now, 'iso', 0, 'st', st, 'r', result)
  else
    redis.call('HSET', h, 'da', now, 'iso', 0, 'st', st)
  end
  local fin = qk(q, 'fin:' .. st)
  if old == 'running' then old = nil end
  if B then
    if old then defer(B, 'ZREM', qk(q, 's:' .. old), id) end
    defer(B, 'ZADD', qk(q, 's:' .. st), id, id)
    defer(B, 'ZADD', fin, now, id)
  else
    if old then redis.call('ZREM', qk(q, 's:' .. old), id) end
    redis.call('ZADD', qk(q, 's:' .. st), id, id)
    redis.call('ZADD', fin, now, id)
  end
  if st == 'done' then
    if sa == nil then sa = redis.call('HGET', h, 'sa') end
    if sa then
      local rt, took = qk(q, 'rt'), tonumber(now) - tonumber(sa)
      if B then
        local e = B.rt[rt] or {0, 0}
        e[1], e[2] = e[1] + took, e[2] + 1
        B.rt[rt] = e
      else
        redis.call('HINCRBYFLOAT', rt, 'sum', tostring(took))
        redis.call('HINCRBY', rt, 'n', 1)
      end
    end
  end
  if B then B.fin[fin] = B.fin[fin] or {q, st} else trim(q, st, keep) end
end

local function flush(B, keep)
  apply(B)
  for rt, e in pairs(B.rt) do
    redis.call('HINCRBYFLOAT', rt, 'sum', string.format('%.6f', e[1]))
    redis.call('HINCRBY', rt, 'n', e[2])
  end
  for _, f in pairs(B.fin) do trim(f[1], f[2], keep) end
end

local function add_error(id, q, err, now)
  local n = redis.call('RPUSH', P .. ':e:' .. id, err)
  local errs = qk(q, 'errs')
  redis.call('ZADD', errs, now, id .. ':' .. n)
  redis.call('ZREMRANGEBYSCORE', errs, '-inf', '(' .. tostring(tonumber(now) - 86400))
end

-- Rows travel as two strings (see _encode_rows in Python): a head of one record per
-- row, "id,priority,run_at,max_attempts,created_at,len(queue),len(payload),len(meta),
-- len(key);" ('' is None), and a blob of queue, payload, meta and key bytes in order.
local ROW = '([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*);'

-- an iterator over the rows of (head, blob): a table per row, or (reuse) the same table
-- each time, filled with the next row; nil at the end
local function rows_of(head, blob, reuse)
  local it, pos, r = string.gmatch(head, ROW), 1, {}
  return function()
    local id, pr, ra, ma, ca, ql, pl, ml, kl = it()
    if id == nil then return nil end
    if not reuse then r = {} end
    r.id, r.pr, r.ra, r.ma, r.ca = id, pr, ra, ma, ca
    local e = pos + ql
    r.q = string.sub(blob, pos, e - 1)
    pos, e = e, e + pl
    r.p = string.sub(blob, pos, e - 1)
    pos = e
    if ml ~= '' then
      e = pos + ml
      r.me = string.sub(blob, pos, e - 1)
      pos = e
    else
      r.me = nil
    end
    if kl ~= '' then
      e = pos + kl
      r.k = string.sub(blob, pos, e - 1)
      pos = e
    else
      r.k = nil
    end
    return r
  end
end

-- the first explicit id of a row head that is taken (or repeated), else nil
local function taken_id(head, seen)
  if not (string.find(head, '^%d') or string.find(head, ';%d')) then return nil end
  for id in string.gmatch(head, '([^,;]*)[^;]*;') do
    if id ~= '' then
      if seen[id] or task_exists(id) then return id end
      seen[id] = true
    end
  end
  return nil
end

local explicit_max = nil  -- the greatest explicit id ever inserted ({p}:maxid)
local next_id, last_id = 0, -1  -- ids taken beforehand by one INCRBY (insert_rows)

-- a row is written; its index entries go into the batch B (written by apply(B))
local function insert_row(r, now, queues, B)
  local id, q, key = r.id, r.q, r.k
  if key then
    local existing = redis.call('HGET', P .. ':keys', key)
    if existing then return existing end
  end
  if explicit_max == nil then explicit_max = tonumber(redis.call('GET', P .. ':maxid') or '-1') end
  if id == '' then
    local n
    if next_id <= last_id then  -- taken beforehand, unless an explicit id took it
      n = next_id
      next_id = next_id + 1
      if n <= explicit_max and redis.call('EXISTS', tk(n)) == 1 then n = nil end
    end
    if not n then
      n = redis.call('INCR', P .. ':ids')
      while n <= explicit_max and redis.call('EXISTS', tk(n)) == 1 do
        n = redis.call('INCR', P .. ':ids')
      end
    end
    id = string.format('%d', n)
  elseif tonumber(id) > explicit_max then
    explicit_max = tonumber(id)
    redis.call('SET', P .. ':maxid', id)
  end
  local h, ra = tk(id), r.ra
  local due = tonumber(ra) <= tonumber(now)
  local m
  if due then m = member(id, ra) end
  -- absent fields read as their defaults: at, rc 0; iso, m, ma, me, k none
  if r.ma == '' and not r.me and not key then
    if due then
      redis.call('HSET', h, 'q', q, 'p', r.p, 'pr', r.pr, 'ra', ra, 'ca', r.ca, 'st', 'pending',
        'm', m)
    else
      redis.call('HSET', h, 'q', q, 'p', r.p, 'pr', r.pr, 'ra', ra, 'ca', r.ca, 'st', 'pending')
    end
  else
    local f = {'q', q, 'p', r.p, 'pr', r.pr, 'ra', ra, 'ca', r.ca, 'st', 'pending'}
    if due then f[#f + 1] = 'm'; f[#f + 1] = m end
    if r.ma ~= '' then f[#f + 1] = 'ma'; f[#f + 1] = r.ma end
    if r.me then f[#f + 1] = 'me'; f[#f + 1] = r.me end
    if key then
      f[#f + 1] = 'k'
      f[#f + 1] = key
      redis.call('HSET', P .. ':keys', key, id)
      redis.call('ZADD', P .. ':keyidx', 0, key)
    end
    redis.call('HSET', h, unpack(f))
  end
  local L = B.q and B.q[q]
  if not L then
    L = {pending = deferred(B, 'ZADD', qk(q, 's:pending')), wait = deferred(B, 'ZADD', qk(q, 'wait')),
         ready = deferred(B, 'ZADD', qk(q, 'ready')), later = deferred(B, 'ZADD', qk(q, 'later'))}
    B.q = B.q or {}
    B.q[q] = L
  end
  local list = L.pending
  list[#list + 1] = id
  list[#list + 1] = id
  local score = neg(r.pr)
  if not due or score ~= '0' then  -- (a due task of priority 0 is found in ready)
    list = L.wait
    list[#list + 1] = ra
    list[#list + 1] = id
  end
  if due then
    list = L.ready
    list[#list + 1] = score
    list[#list + 1] = m
  else
    list = L.later
    list[#list + 1] = ra
    list[#list + 1] = id
  end
  if not queues[q] then
    queues[q] = true
    redis.call('SADD', P .. ':queues', q)
  end
  return id
end

-- claimed tasks as two strings: "id,attempt,priority,max_attempts,iso,len(payload),
-- len(meta);" per task ('' is None), and the payloads and metas in order
local function field(v)  -- a stored number as a head field ('?' if it is none)
  if not v then return '' end
  if not tonumber(v) then return '?' end
  return v
end

local function claims_reply(out)
  if #out == 0 then return {} end
  local head, blob = {}, {}
  for i, t in ipairs(out) do
    local p, me = t[2] or '', t[6]
    head[i] = t[1] .. ',' .. field(t[3]) .. ',' .. field(t[4]) .. ',' .. field(t[5]) .. ','
      .. field(t[7]) .. ',' .. #p .. ',' .. (me and #me or '') .. ';'
    blob[#blob + 1] = p
    if me then blob[#blob + 1] = me end
  end
  return {table.concat(head), table.concat(blob)}
end

local function publish(queues)
  for q, _ in pairs(queues) do redis.call('PUBLISH', P .. ':wake', q) end
end

local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^,]+') do table.insert(out, part) end
  return out
end

local function requeue(id, q, st, now)
  if st == 'failed' then unschedule(id, q)
  elseif st == 'dead' then redis.call('ZREM', qk(q, 'fin:dead'), id)
  else return 0 end
  local h = tk(id)
  redis.call('HSET', h, 'ra', now, 'at', 0, 'iso', 0)
  redis.call('HDEL', h, 'r', 'da', 'sa', 'w')
  set_status(id, q, st, 'pending')
  schedule(id, q, now, now)
  return 1
end
"""
)

# ARGV: P, token, now, row head, row blob; returns the ids, comma-separated
_INSERT = r"""
local token, now, head, blob = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tok = P .. ':tok:' .. token
local got = redis.call('MGET', tok, P .. ':maxid')
if got[1] then return got[1] end
explicit_max = tonumber(got[2] or '-1')
local bad = taken_id(head, {})
if bad then return redis.error_reply('DUPLICATE a task with id ' .. bad .. ' already exists') end
-- no explicit id and no key (no row can be skipped): the ids are taken by one INCRBY
if not (string.find(head, '^%%d') or string.find(head, ';%%d') or string.find(head, '%%d;')) then
  local _, n = string.gsub(head, ';', ';')
  local last = redis.call('INCRBY', P .. ':ids', n)
  next_id, last_id = last - n + 1, last
end
local ids, queues, B = {}, {}, new_batch()
for r in rows_of(head, blob, true) do ids[#ids + 1] = insert_row(r, now, queues, B) end
apply(B)
local reply = table.concat(ids, ',')
redis.call('SET', tok, reply, 'EX', %(ttl)d)
publish(queues)
return reply
"""

# ARGV: P, token, now, queue, token ttl, payload sizes ("3,5,…"), payloads; returns the ids,
# comma-separated, or "first+n" when they are first, first+1, …, first+n (the usual case:
# no explicit id was in the way; see _ids). The push fast path (``push``, ``push_bulk``): plain rows (no id, meta,
# key or max_attempts; priority 0; due at ``now``) written as ``insert_row`` writes them,
# without its row parsing and batching; standalone (no prelude: a single push pays only for
# what it uses).
_PLAIN_ROWS = (
    _FORMATS
    + r"""
local P, token, now, q, ttl, sizes, blob = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local tok = P .. ':tok:' .. token
local got = redis.call('MGET', tok, P .. ':maxid')
if got[1] then return got[1] end
local maxid = tonumber(got[2] or '-1')
local us = micros(now)
local _, n = string.gsub(sizes, ',', ',')
n = n + 1
local T, Q, NEW = P .. ':t:', P .. ':q:' .. q .. ':', P .. ':new'
local pre = new_head(now, q)
local ids, pending, ready, new = {}, {}, {}, {}
local next_id = redis.call('INCRBY', P .. ':ids', n) - n + 1
local i, pos, gap, heads = 0, 1, false, {}
for size in string.gmatch(sizes, '%d+') do
  i = i + 1
  local id = next_id
  next_id = next_id + 1
  while id <= maxid and redis.call('EXISTS', T .. string.format('%d', id)) == 1 do
    id = redis.call('INCR', P .. ':ids')
    gap = true
  end
  local text = string.format('%d', id)
  local head = heads[#text]
  if not head then
    head = member_head(us, #text)
    heads[#text] = head
  end
  local m = head .. text
  local e = pos + tonumber(size)
  new[2 * i - 1] = text
  new[2 * i] = pre .. string.sub(blob, pos, e - 1)
  pos = e
  ids[i] = text
  pending[2 * i - 1] = text
  pending[2 * i] = text
  ready[2 * i - 1] = '0'
  ready[2 * i] = m
end
for j = 1, 2 * i, 1000 do
  local k = math.min(j + 999, 2 * i)
  redis.call('HSET', NEW, unpack(new, j, k))
  redis.call('ZADD', Q .. 's:pending', unpack(pending, j, k))
  redis.call('ZADD', Q .. 'ready', unpack(ready, j, k))
end
redis.call('SADD', P .. ':queues', q)
local reply
if gap or i == 1 then reply = table.concat(ids, ',') else reply = ids[1] .. '+' .. (i - 1) end
redis.call('SET', tok, reply, 'EX', ttl)
redis.call('PUBLISH', P .. ':wake', q)
return reply
"""
)

# ARGV: P, token, now, queue, token ttl, payload; returns the id. ``push``: what
# _PLAIN_ROWS writes for one task, in straight-line code (a single push pays for no
# loop, table or pattern: about 2 µs of the 11 µs of Lua).
_PUSH_ONE = (
    _FORMATS
    + r"""
local P, token, now, q, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local tok = P .. ':tok:' .. token
local got = redis.call('MGET', tok, P .. ':maxid')
if got[1] then return got[1] end
local maxid = tonumber(got[2] or '-1')
local id = redis.call('INCR', P .. ':ids')
while id <= maxid and redis.call('EXISTS', P .. ':t:' .. string.format('%d', id)) == 1 do
  id = redis.call('INCR', P .. ':ids')
end
local text = string.format('%d', id)
local Q = P .. ':q:' .. q .. ':'
redis.call('HSET', P .. ':new', text, new_head(now, q) .. payload)
redis.call('ZADD', Q .. 's:pending', text, text)
redis.call('ZADD', Q .. 'ready', 0, member_head(micros(now), #text) .. text)
redis.call('SADD', P .. ':queues', q)
redis.call('SET', tok, text, 'EX', ARGV[5])
redis.call('PUBLISH', P .. ':wake', q)
return text
"""
)

# A (ARGV, in _ACK_CLAIM too): P, lease, now, queue, limit, run, in_flight, promote
_CLAIM_STEP = r"""
local function claim_step(A)
local lease, now, q, limit, run = A[2], A[3], A[4], tonumber(A[5]), A[6]
local tok = P .. ':tok:' .. lease
local ids, out = {}, {}
local prev = redis.call('GET', tok)
if prev then
  local held = held_value(now, run, lease)
  for _, id in ipairs(split(prev)) do
    if redis.call('HGET', qk(q, 'running'), id) == held then
      local v = redis.call('HMGET', tk(id), 'p', 'at', 'pr', 'ma', 'me', 'iso')
      table.insert(out, {id, v[1], v[2] or '0', v[3], v[4], v[5], v[6]})
    end
  end
else
  local later = qk(q, 'later')
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', later, '-inf', now, 'LIMIT', 0, tonumber(A[8]))) do
    redis.call('ZREM', later, id)
    local h = tk(id)
    local v = redis.call('HMGET', h, 'ra', 'pr', 'iso')
    local m, score = member(id, v[1]), neg(v[2])
    redis.call('ZADD', qk(q, v[3] == '1' and 'iso' or 'ready'), score, m)
    redis.call('HSET', h, 'm', m)
    if score == '0' then redis.call('ZREM', qk(q, 'wait'), id) end
  end
  local popped
  if tonumber(A[7]) == 0 and redis.call('ZCARD', qk(q, 'iso')) > 0 then
    popped = redis.call('ZPOPMIN', qk(q, 'iso'), 1)
  else
    popped = redis.call('ZPOPMIN', qk(q, 'ready'), limit)
  end
  local B = new_batch()
  local popped_ids, made = {}, {}
  for j = 1, #popped, 2 do popped_ids[#popped_ids + 1] = id_of(popped[j]) end
  local fresh = {}  -- the {p}:new value of each popped task still there, else false
  for i = 1, #popped_ids, 1000 do
    for _, v in ipairs(redis.call('HMGET', NEW, unpack(popped_ids, i, math.min(i + 999, #popped_ids)))) do
      fresh[#fresh + 1] = v
    end
  end
  for j, id in ipairs(popped_ids) do
    local h = tk(id)
    if fresh[j] then  -- its hash is made Running: one HSET
      local ca, _, p = parse_new(fresh[j])
      redis.call('HSET', h, 'q', q, 'p', p, 'pr', '0', 'ra', ca, 'ca', ca, 'st', 'running',
        'w', run, 'sa', now, 'at', 1)
      defer(B, 'ZREM', qk(q, 's:pending'), id)
      made[#made + 1] = id
      ids[#ids + 1] = id
      out[#out + 1] = {id, p, '1', '0'}
    else
      local v = redis.call('HMGET', h, 'st', 'p', 'at', 'pr', 'ma', 'me', 'iso')
      local st = v[1]
      if st == 'pending' or st == 'failed' then
        local at = (tonumber(v[3]) or 0) + 1
        redis.call('HSET', h, 'w', run, 'sa', now, 'st', 'running', 'at', at, 'm', '')
        defer(B, 'ZREM', qk(q, 's:' .. st), id)
        if v[4] ~= '0' then defer(B, 'ZREM', qk(q, 'wait'), id) end
        ids[#ids + 1] = id
        out[#out + 1] = {id, v[2], tostring(at), v[4], v[5], v[6], v[7]}
      end
    end
  end
  if #made > 0 then many('HDEL', NEW, made) end
  if #ids > 0 then
    apply(B)
    local running, held = {}, held_value(now, run, lease)
    for j, id in ipairs(ids) do
      running[2 * j - 1] = id
      running[2 * j] = held
    end
    many('HSET', qk(q, 'running'), running)
    many('SADD', P .. ':held:' .. run, ids)
    redis.call('SET', tok, table.concat(ids, ','), 'EX', %(ttl)d)
    redis.call('ZADD', P .. ':seen', 'NX', now, run)
  end
end
return claims_reply(out)
end
"""
_CLAIM = _CLAIM_STEP + "return claim_step(ARGV)\n"

# A (ARGV; in _ACK_CLAIM, what follows the claim's): P, token, now, keep, queue, nleases,
# leases..., head, blob, follow-up row head,
# row blob, plain, join head, join blob, join row head, join row blob. head:
# "id,lease number,kind,len(result),len(error),run_at,follow-ups,join parts;" per
# outcome ('' is None); blob: the results and errors in order; the follow-ups are rows,
# in the order of their outcomes; plain: the Done outcomes with no result, no follow-up
# and no join part, "lease number=id,id,…;" per lease. Join parts, in the order of their
# outcomes: "len(key),slots,slot,len(value);" each, a blob of key and value bytes, and
# the row each part inserts when it completes its join. Returns one '1' (accepted) or
# '0' per outcome: those of head, then those of plain, in order.
_ACK_STEP = r"""
local function ack_step(A)
local token, now, keep, q, nl = A[2], A[3], A[4], A[5], tonumber(A[6])
local tok = P .. ':tok:' .. token
local prev = redis.call('GET', tok)
if prev then return prev end
local head, blob = A[7 + nl], A[8 + nl]
local rhead, rblob, plain = A[9 + nl], A[10 + nl], A[11 + nl]
local jhead, jblob, jrhead, jrblob = A[12 + nl], A[13 + nl], A[14 + nl], A[15 + nl]
local rows = {}
if rhead ~= '' then for r in rows_of(rhead, rblob) do rows[#rows + 1] = r end end
local jparts = {}
if jhead ~= '' then
  local jpos, n = 1, 0
  for kl, slots, slot, vl in string.gmatch(jhead, '(%%d+),(%%d+),(%%d+),(%%d+);') do
    local e = jpos + tonumber(kl)
    local k = string.sub(jblob, jpos, e - 1)
    jpos = e + tonumber(vl)
    n = n + 1
    jparts[n] = {k = k, slots = tonumber(slots), slot = tonumber(slot),
                 v = string.sub(jblob, e, jpos - 1), n = n}
  end
  n = 0
  for r in rows_of(jrhead, jrblob) do
    n = n + 1
    jparts[n].row = r
  end
end
local outcomes, used, seen, pos, fi, ji = {}, {}, {}, 1, 1, 1
for id, li, kind, rl, el, ra, nf, nj in string.gmatch(head,
    '([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*),([^,;]*);') do
  local o = {id = id, lease = A[6 + tonumber(li)], kind = kind, ra = ra,
             nf = tonumber(nf), fi = fi, nj = tonumber(nj), ji = ji}
  fi = fi + o.nf
  ji = ji + o.nj
  if rl ~= '' then
    o.result = string.sub(blob, pos, pos + tonumber(rl) - 1)
    pos = pos + tonumber(rl)
  end
  if el ~= '' then
    o.err = string.sub(blob, pos, pos + tonumber(el) - 1)
    pos = pos + tonumber(el)
  end
  outcomes[#outcomes + 1] = o
end
-- plain Done outcomes (the usual case) stay flat: an id and its lease each
local pids, pleases = {}, {}
for li, list in string.gmatch(plain, '(%%d+)=([^;]*);') do
  local lease = A[6 + tonumber(li)]
  for id in string.gmatch(list, '%%d+') do
    pids[#pids + 1] = id
    pleases[#pleases + 1] = lease
  end
end
local ids = {}
for i, o in ipairs(outcomes) do ids[i] = o.id end
local base = #ids
for k, id in ipairs(pids) do ids[base + k] = id end
local held = {}
for i = 1, #ids, 1000 do
  local part = redis.call('HMGET', qk(q, 'running'), unpack(ids, i, math.min(i + 999, #ids)))
  for j, v in ipairs(part) do held[i + j - 1] = v end
end
for i, o in ipairs(outcomes) do
  local sa, run, lease
  if held[i] then sa, run, lease = parse_held(held[i]) end
  o.ok = lease ~= nil and lease == o.lease and not used[o.id]
  if o.ok then
    used[o.id] = true
    o.q, o.w, o.sa = q, run, sa
    for r = o.fi, o.fi + o.nf - 1 do
      local rid = rows[r].id
      if rid ~= '' then
        if seen[rid] or task_exists(rid) then
          return redis.error_reply('DUPLICATE follow-up id ' .. rid .. ' is taken by another task')
        end
        seen[rid] = true
      end
    end
  end
end
-- the join parts of the accepted outcomes, in (key, slot) order: a new part counts (a
-- part recorded before, or twice in this batch, does not); the one that brings a join's
-- arrivals to its slots completes it (its row is inserted below, its id checked here)
local accepted = {}
for _, o in ipairs(outcomes) do
  if o.ok then
    for j = o.ji, o.ji + o.nj - 1 do accepted[#accepted + 1] = jparts[j] end
  end
end
table.sort(accepted, function(a, b)
  if a.k ~= b.k then return a.k < b.k end
  if a.slot ~= b.slot then return a.slot < b.slot end
  return a.n < b.n
end)
local arrivals, fresh = {}, {}
for _, part in ipairs(accepted) do
  local jk = P .. ':join:' .. part.k
  local join = arrivals[part.k]
  if not join then
    local v = redis.call('HMGET', jk, 'arrived', 'slots')
    join = {arrived = tonumber(v[1] or '0'), slots = tonumber(v[2] or part.slots), seen = {}}
    arrivals[part.k] = join
  end
  if not join.seen[part.slot] and redis.call('HEXISTS', jk .. ':parts', part.slot) == 0 then
    join.arrived = join.arrived + 1
    part.completes = join.arrived == join.slots
    fresh[#fresh + 1] = part
    local rid = part.row.id
    if part.completes and rid ~= '' then
      if seen[rid] or task_exists(rid) then
        return redis.error_reply('DUPLICATE join row id ' .. rid .. ' is taken by another task')
      end
      seen[rid] = true
    end
  end
  join.seen[part.slot] = true
end
local flags, queues, B = {}, {}, new_batch()
for _, o in ipairs(outcomes) do
  if o.ok then
    local id, h = o.id, tk(o.id)
    defer(B, 'HDEL', qk(q, 'running'), id)
    defer(B, 'SREM', P .. ':held:' .. o.w, id)
    if o.kind == 'done' then
      finish(id, q, 'running', 'done', now, keep, o.sa, B, o.result)
    elseif o.kind == 'dead' then
      add_error(id, q, o.err, now)
      finish(id, q, 'running', 'dead', now, keep, o.sa, B)
    elseif o.kind == 'release' then
      redis.call('HINCRBY', h, 'at', -1)
      redis.call('HDEL', h, 'w', 'sa')
      set_status(id, q, 'running', 'pending')
      schedule(id, q, redis.call('HGET', h, 'ra'), now)
      queues[q] = true
    else -- retry, interrupted
      add_error(id, q, o.err, now)
      redis.call('HSET', h, 'ra', o.ra)
      if o.kind == 'retry' then
        redis.call('HSET', h, 'iso', 0)
        set_status(id, q, 'running', 'failed')
      else
        redis.call('HDEL', h, 'w')
        set_status(id, q, 'running', 'pending')
      end
      schedule(id, q, o.ra, now)
    end
    for r = o.fi, o.fi + o.nf - 1 do insert_row(rows[r], now, queues, B) end
    flags[#flags + 1] = '1'
  else
    flags[#flags + 1] = '0'
  end
end
if #pids > 0 then  -- what finish() does for each, with the index writes batched
  local unheld, sdone = deferred(B, 'HDEL', qk(q, 'running')), deferred(B, 'ZADD', qk(q, 's:done'))
  local fin = qk(q, 'fin:done')
  local fdone, by_run = deferred(B, 'ZADD', fin), {}
  local took, n, t = 0, 0, tonumber(now)
  for k, id in ipairs(pids) do
    local sa, run, lease
    if held[base + k] then sa, run, lease = parse_held(held[base + k]) end
    if lease ~= nil and lease == pleases[k] and not used[id] then
      used[id] = true
      redis.call('HSET', tk(id), 'da', now, 'iso', 0, 'st', 'done')
      unheld[#unheld + 1] = id
      local list = by_run[run]
      if not list then
        list = deferred(B, 'SREM', P .. ':held:' .. run)
        by_run[run] = list
      end
      list[#list + 1] = id
      sdone[#sdone + 1] = id
      sdone[#sdone + 1] = id
      fdone[#fdone + 1] = now
      fdone[#fdone + 1] = id
      if tonumber(sa) then took, n = took + (t - tonumber(sa)), n + 1 end
      flags[#flags + 1] = '1'
    else
      flags[#flags + 1] = '0'
    end
  end
  if n > 0 then
    local rt = qk(q, 'rt')
    local e = B.rt[rt] or {0, 0}
    e[1], e[2] = e[1] + took, e[2] + n
    B.rt[rt] = e
  end
  B.fin[fin] = B.fin[fin] or {q, 'done'}
end
for _, part in ipairs(fresh) do
  local jk = P .. ':join:' .. part.k
  redis.call('HSET', jk .. ':parts', part.slot, part.v)
  redis.call('HSETNX', jk, 'slots', part.slots)
  redis.call('HINCRBY', jk, 'arrived', 1)
  if part.completes then insert_row(part.row, now, queues, B) end
end
flush(B, keep)
local reply = table.concat(flags)
redis.call('SET', tok, reply, 'EX', %(ttl)d)
publish(queues)
return reply
end
"""
_ACK = _ACK_STEP + "return ack_step(ARGV)\n"

# ARGV: P, the claim's (lease, now, queue, limit, run, in_flight, promote), then the ack's
# (token, now, keep, queue, nleases, …: see _ACK); returns {ack flags, claimed head, blob}.
# The ack is written first; an ack refused (an error reply) writes nothing and claims nothing.
_ACK_CLAIM = (
    _ACK_STEP
    + _CLAIM_STEP
    + r"""
local A = {}
for i = 9, #ARGV do A[i - 7] = ARGV[i] end
local flags = ack_step(A)
if type(flags) == 'table' then return flags end
local claimed = claim_step(ARGV)
return {flags, claimed[1] or '', claimed[2] or ''}
"""
)

# ARGV: P, run, now, cutoff, max_recoveries, info, keep
_BEAT = r"""
local run, now, cutoff, maxrec, keep = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[7]
redis.call('HSETNX', P .. ':runs', run, ARGV[6])
redis.call('ZADD', P .. ':seen', now, run)
local dead = redis.call('ZRANGEBYSCORE', P .. ':seen', '-inf', '(' .. cutoff)
for _, r in ipairs(redis.call('SMEMBERS', P .. ':orphans')) do table.insert(dead, r) end
local recovered = {}
for _, r in ipairs(dead) do
  if r ~= run then
    local last_seen = redis.call('ZSCORE', P .. ':seen', r)
    local mine = {}
    for _, id in ipairs(redis.call('SMEMBERS', P .. ':held:' .. r)) do
      local v = redis.call('HMGET', tk(id), 'st', 'w')
      if v[1] == 'running' and v[2] == r then table.insert(mine, id) end
    end
    local counted = #mine == 1
    local record = '[' .. cjson.encode(r) .. ',' .. (last_seen or 'null') .. ',' .. now .. ','
      .. (counted and 'true' or 'false') .. ']'
    for _, id in ipairs(mine) do
      local h = tk(id)
      local q = redis.call('HGET', h, 'q')
      redis.call('HDEL', qk(q, 'running'), id)
      local attempts = redis.call('HINCRBY', h, 'at', -1)
      redis.call('HDEL', h, 'w', 'sa')
      redis.call('HSET', h, 'iso', 1)
      redis.call('RPUSH', P .. ':r:' .. id, record)
      local rc = 0
      if counted then rc = redis.call('HINCRBY', h, 'rc', 1) end
      if counted and rc >= maxrec then
        local err = '[' .. (attempts + 1) .. ',' ..
          cjson.encode('its worker died ' .. rc .. ' times while running it') .. ',null,' .. now .. ']'
        add_error(id, q, err, now)
        finish(id, q, 'running', 'dead', now, keep)
      else
        set_status(id, q, 'running', 'pending')
        schedule(id, q, redis.call('HGET', h, 'ra'), now)
      end
      table.insert(recovered, id)
      table.insert(recovered, counted and '1' or '0')
      table.insert(recovered, redis.call('HGET', h, 'st'))
    end
    redis.call('DEL', P .. ':held:' .. r)
    redis.call('ZREM', P .. ':seen', r)
    redis.call('HDEL', P .. ':runs', r)
    redis.call('SREM', P .. ':orphans', r)
  end
end
return recovered
"""

# ARGV: P, queue; the earliest run_at of a waiting task (exact, as stored), or nil
_NEXT_DUE = r"""
local q = ARGV[2]
local best, best_ra = nil, nil
local head = redis.call('ZRANGE', qk(q, 'wait'), 0, 0, 'WITHSCORES')
if head[1] then best, best_ra = tonumber(head[2]), head[2] end
for _, name in ipairs({'ready', 'iso'}) do
  local first = redis.call('ZRANGEBYSCORE', qk(q, name), 0, 0, 'LIMIT', 0, 1)
  if first[1] then
    local id = id_of(first[1])
    local ra = redis.call('HGET', tk(id), 'ra')
    if not ra then
      local v = redis.call('HGET', NEW, id)
      if v then ra = parse_new(v) end
    end
    if ra and (best == nil or tonumber(ra) < best) then best, best_ra = tonumber(ra), ra end
  end
end
return best_ra
"""

# ARGV: P, run
_RETIRE = r"""
local run = ARGV[2]
redis.call('ZREM', P .. ':seen', run)
redis.call('HDEL', P .. ':runs', run)
if redis.call('SCARD', P .. ':held:' .. run) > 0 then redis.call('SADD', P .. ':orphans', run) end
return 1
"""

# ARGV: P, id, now, keep
_KILL = r"""
local id, now = ARGV[2], ARGV[3]
materialize(id)
local h = tk(id)
local v = redis.call('HMGET', h, 'st', 'q', 'w', 'at')
local st, q = v[1], v[2]
if not st then return -1 end
if st == 'pending' or st == 'failed' then unschedule(id, q)
elseif st == 'running' then unhold(id, q, v[3])
else return 0 end
add_error(id, q, '[' .. (v[4] or 0) .. ',"killed",null,' .. now .. ']', now)
finish(id, q, st, 'dead', now, ARGV[4])
return 1
"""

# ARGV: P, id, now
_RETRY = r"""
local id, now = ARGV[2], ARGV[3]
local v = redis.call('HMGET', tk(id), 'st', 'q')
if not v[1] then return task_exists(id) and 0 or -1 end
local done = requeue(id, v[2], v[1], now)
if done == 1 then publish({[v[2]] = true}) end
return done
"""

# ARGV: P, queue, now, batch
_RETRY_DEAD = r"""
local q, now = ARGV[2], ARGV[3]
local ids = redis.call('ZRANGE', qk(q, 's:dead'), 0, tonumber(ARGV[4]) - 1)
for _, id in ipairs(ids) do requeue(id, q, 'dead', now) end
if #ids > 0 then publish({[q] = true}) end
return #ids
"""

# ARGV: P, queue, status, cutoff, batch
_PURGE = r"""
local ids = redis.call('ZRANGEBYSCORE', qk(ARGV[2], 'fin:' .. ARGV[3]), '-inf', ARGV[4],
  'LIMIT', 0, tonumber(ARGV[5]))
forget_many(ARGV[2], ARGV[3], ids)
return #ids
"""

# ARGV: P, limit key, now, interval -> the reserved start. Not fenced by a token: a
# call replayed after a lost reply reserves one more slot, which only makes the
# limit stricter.
_TAKE_SLOT = r"""
local k = P .. ':limit:' .. ARGV[2]
local now, interval = tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('GET', k))
local start = now
if last and last + interval > now then start = last + interval end
local s = string.format('%%.17g', start)
redis.call('SET', k, s, 'PX', math.ceil((start + interval - now) * 1000) + 60000)
return s
"""

# ARGV: P, id
_DELETE = r"""
local id = ARGV[2]
local st = redis.call('HGET', tk(id), 'st')
if not st then return task_exists(id) and 0 or -1 end
if st ~= 'done' and st ~= 'dead' then return 0 end
forget(id)
return 1
"""

_SCRIPTS = {
    "insert": _INSERT,
    "claim": _CLAIM,
    "ack": _ACK,
    "ack_claim": _ACK_CLAIM,
    "beat": _BEAT,
    "retire": _RETIRE,
    "next_due": _NEXT_DUE,
    "kill": _KILL,
    "retry": _RETRY,
    "retry_dead": _RETRY_DEAD,
    "purge": _PURGE,
    "take_slot": _TAKE_SLOT,
    "delete": _DELETE,
}

_KINDS = {
    OutcomeKind.DONE: "done",
    OutcomeKind.RETRY: "retry",
    OutcomeKind.DEAD: "dead",
    OutcomeKind.RELEASE: "release",
    OutcomeKind.INTERRUPTED: "interrupted",
}


# Connecting ------------------------------------------------------------------------------
#: TCP options of every connection (Linux names; those the platform lacks are left out):
#: probes after 10 s idle, every 5 s, and a connection whose data or probes go
#: unacknowledged for 30 s fails (then the command is retried on a new connection).
_KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (
        ("TCP_KEEPIDLE", 10),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 30_000),
    )
    if hasattr(socket, name)
}


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 12)


def connect(url: str, **options: Any) -> redis.Redis:
    """A ``redis.Redis`` client for ``url`` (``redis://``, ``rediss://`` or
    ``unix://``), returning bytes, that retries a command after a connection error or
    a timeout (reconnecting first, with jittered backoff, about 15 s in all).

    A connection attempt gives up after 10 s. A command waits for its reply however long
    Redis takes (no read timeout: a 100,000-task ``push_bulk`` is one script call); a
    TCP peer that is gone is found by keepalive probes and by ``TCP_USER_TIMEOUT``
    (30 s; on Linux). Pass ``socket_timeout=`` for a hard bound on every command.

    Two query parameters of taskpipe's own: ``prefix`` (the key prefix of the stores
    opened on this client, default ``taskpipe``) and ``client_name`` (the name given to
    every connection, default ``taskpipe:<prefix>``: ``CLIENT LIST`` shows whose they
    are). ``options`` go to ``redis.Redis.from_url``."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"connect() takes a redis:// URL, got {url!r}")
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = query.pop("prefix", None) or DEFAULT_PREFIX
    _check_prefix(prefix)
    name = query.pop("client_name", None) or f"taskpipe:{prefix}"
    # (not urlunsplit: it writes unix:///path as unix:/path, which redis-py refuses)
    clean = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if query:
        clean += f"?{urlencode(query)}"
    options.setdefault("decode_responses", False)
    options.setdefault("retry", _retry())
    options.setdefault("retry_on_error", list(_ERRORS))
    options.setdefault("client_name", name.replace(" ", "_"))
    options.setdefault("socket_connect_timeout", 10.0)
    # No read timeout: with one, every send and receive waits in poll() first (about 3 %
    # of a push), and a big push_bulk is one long script call. A peer that is gone is
    # found by TCP instead (keepalive probes, unacknowledged data given up after 30 s).
    options.setdefault("socket_timeout", None)
    if parts.scheme != "unix":  # (a Unix socket has no TCP options)
        options.setdefault("socket_keepalive", True)
        options.setdefault("socket_keepalive_options", _KEEPALIVE)
    client = redis.Redis.from_url(clean, **options)
    client.taskpipe_prefix = prefix  # type: ignore[attr-defined]
    return client


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in " \n\r\t"):
        raise ValueError(f"a key prefix is a non-empty string without spaces, got {prefix!r}")


def _registry(client: redis.Redis, prefix: str) -> WakeRegistry:
    """One wake-up registry (and at most one listener thread) per client and prefix."""
    registries = client.__dict__.setdefault("_taskpipe_wakeups", {})
    registry = registries.get(prefix)
    if registry is None:
        channel = f"{prefix}:wake"

        def probe(reg: WakeRegistry) -> _WakeListener:
            return _WakeListener(reg, client, channel)

        registry = registries[prefix] = WakeRegistry(f"redis {channel}", probe=probe)
    return registry


class _WakeListener(threading.Thread):
    """Subscribes to ``{prefix}:wake`` while some worker of this process waits across
    processes, and wakes the workers of each queue named in a message."""

    def __init__(self, registry: WakeRegistry, client: redis.Redis, channel: str):
        super().__init__(name=f"taskpipe-redis-wake-{channel}", daemon=True)
        self.registry = registry
        self.client = client
        self.channel = channel
        self._nudged = threading.Event()

    def nudge(self) -> None:
        """Look again whether anyone still needs the listener."""
        self._nudged.set()

    def run(self) -> None:
        pause = 0.05
        pubsub = None
        try:
            while not self.registry.probe_may_stop(self):
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                        pubsub.subscribe(self.channel)
                        for queue in self.registry.watched_queues():  # pushes missed meanwhile
                            self.registry.wake_queue(queue)
                    message = pubsub.get_message(timeout=0.5)
                    pause = 0.05
                except Exception as exc:  # a lost connection: resubscribe after a pause
                    log.debug("redis wake listener: %s", exc)
                    if pubsub is not None:
                        _quietly(pubsub.close)
                    pubsub = None
                    time.sleep(pause)
                    pause = min(pause * 2, 2.0)
                    continue
                if message and message.get("type") == "message":
                    data = message["data"]
                    queue = (
                        data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                    )
                    self.registry.wake_queue(queue)
        finally:
            if pubsub is not None:
                _quietly(pubsub.close)


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception:  # closing a broken connection
        pass


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _bytes(value: Any) -> bytes:
    """An encoded value as bytes (a codec may return ``str`` or a buffer)."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _ids(reply: bytes) -> list[TaskId]:
    """The ids of a push script's reply: comma-separated, or ``first+n`` for the
    ``n + 1`` ids from ``first`` on."""
    first, plus, extra = reply.partition(b"+")
    if plus:
        start = int(first)
        return list(map(TaskId, range(start, start + int(extra) + 1)))
    return [TaskId(int(i)) for i in reply.split(b",")]


def _new_fields(value: bytes) -> dict[bytes, bytes]:
    """The hash fields of a task still in ``{p}:new`` (see ``parse_new`` in the Lua)."""
    created_at, _, rest = value.partition(b" ")
    size, _, rest = rest.partition(b":")
    n = int(size)
    return {
        b"q": rest[:n],
        b"p": rest[n:],
        b"pr": b"0",
        b"ra": created_at,
        b"ca": created_at,
        b"st": b"pending",
    }


def _encode_rows(rows: Sequence[Row]) -> tuple[bytes, bytes]:
    """Rows as the scripts read them: a head of one record per row, "id,priority,
    run_at,max_attempts,created_at,len(queue),len(payload),len(meta),len(key);"
    (sizes in bytes, '' for None), and a blob of queue, payload, meta and key bytes."""
    head: list[str] = []
    blob: list[bytes] = []
    queues: dict[str, bytes] = {}
    times: dict[float, str] = {}
    for row in rows:
        queue = queues.get(row.queue)
        if queue is None:
            queue = queues[row.queue] = row.queue.encode()
        payload = row.payload
        if not isinstance(payload, bytes):
            payload = payload.encode() if isinstance(payload, str) else bytes(payload)
        run_at = times.get(row.run_at)
        if run_at is None:
            run_at = times[row.run_at] = repr(float(row.run_at))
        created_at = times.get(row.created_at)
        if created_at is None:
            created_at = times[row.created_at] = repr(float(row.created_at))
        blob.append(queue)
        blob.append(payload)
        if row.id is None and row.meta is None and row.key is None and row.max_attempts is None:
            head.append(
                f",{int(row.priority)},{run_at},,{created_at},{len(queue)},{len(payload)},,;"
            )
            continue
        meta_size = key_size = ""
        if row.meta is not None:
            meta = row.meta.encode()
            blob.append(meta)
            meta_size = str(len(meta))
        if row.key is not None:
            key = row.key.encode()
            blob.append(key)
            key_size = str(len(key))
        head.append(
            f"{'' if row.id is None else int(row.id)},{int(row.priority)},{run_at},"
            f"{'' if row.max_attempts is None else int(row.max_attempts)},{created_at},"
            f"{len(queue)},{len(payload)},{meta_size},{key_size};"
        )
    return "".join(head).encode(), b"".join(blob)


# The store -------------------------------------------------------------------------------
class RedisStorage(ExposeMixin, Store):
    """Tasks in Redis (see the module docstring for the keys, retention, wake-ups and
    durability). ``client`` is a ``redis.Redis`` returning bytes (``connect(url)``);
    ``prefix`` defaults to the client's ``?prefix=`` or ``taskpipe``; at most
    ``keep_finished`` Done and as many Dead tasks are kept per queue."""

    capabilities = Capabilities(
        introspection=True,
        keys=True,
        wakeups=True,
        follow_ups=True,
        outcomes=True,
        recovery=True,
        joins=True,
        queues=True,
        rate_limits=True,
        pausing=True,
        overlapping_claims=True,
    )

    def __init__(
        self,
        client: redis.Redis,
        queue: str = "default",
        codec: Any = None,
        config: Config | None = None,
        *,
        prefix: str | None = None,
        keep_finished: int = 10_000,
    ):
        if not isinstance(client, redis.Redis):
            raise TypeError(
                f"RedisStorage takes a redis.Redis client (taskpipe.redis.connect), got {client!r}"
            )
        if client.get_encoder().decode_responses:
            raise ValueError(
                "RedisStorage needs a client with decode_responses=False (payloads are bytes)"
            )
        if not isinstance(keep_finished, int) or keep_finished < 0:
            raise ValueError(f"keep_finished must be a non-negative int, got {keep_finished!r}")
        prefix = prefix or getattr(client, "taskpipe_prefix", None) or DEFAULT_PREFIX
        _check_prefix(prefix)
        super().__init__(queue, codec, config)
        self.client = client
        self.prefix = prefix
        self.keep_finished = keep_finished
        self.wakeups = _registry(client, prefix)
        self._scripts = {
            name: client.register_script(_PRELUDE + source % {"ttl": TOKEN_TTL})
            for name, source in _SCRIPTS.items()
        }
        self._scripts["plain_rows"] = client.register_script(_PLAIN_ROWS)
        self._scripts["push_one"] = client.register_script(_PUSH_ONE)
        self._hostname = socket.gethostname()
        self._token_base = uuid.uuid4().hex[:16]
        self._tokens = itertools.count()

    def __repr__(self) -> str:
        return f"RedisStorage(queue={self.queue!r}, prefix={self.prefix!r})"

    def for_queue(self, queue: str) -> RedisStorage:
        """A ``RedisStorage`` for ``queue`` on the same client and prefix, with this
        store's codec, config and retention (this store itself for its own queue)."""
        if queue == self.queue:
            return self
        return RedisStorage(
            self.client,
            queue=queue,
            codec=self.codec,
            config=self.config,
            prefix=self.prefix,
            keep_finished=self.keep_finished,
        )

    # Setup -----------------------------------------------------------------------------
    @classmethod
    def setup(cls, client_or_store: Any, *, prefix: str | None = None) -> None:
        """Record the key layout version under ``{prefix}:layout`` (idempotent: safe at
        every start). Raises ``SetupError`` when the prefix holds another layout."""
        if isinstance(client_or_store, RedisStorage):
            client, prefix = client_or_store.client, client_or_store.prefix
        else:
            client = client_or_store
            prefix = prefix or getattr(client, "taskpipe_prefix", None) or DEFAULT_PREFIX
        try:
            client.set(f"{prefix}:layout", LAYOUT_VERSION, nx=True)
            found = client.get(f"{prefix}:layout")
        except _ERRORS as exc:
            raise StorageError(f"cannot reach Redis to set up prefix {prefix!r}: {exc}") from exc
        if _text(found) != LAYOUT_VERSION:
            raise SetupError(
                f"Redis prefix {prefix!r} holds key layout {_text(found)!r}, this taskpipe writes "
                f"{LAYOUT_VERSION!r}: use another prefix"
            )

    def check_setup(self) -> None:
        """Raise ``SetupError`` when ``setup`` never ran for this prefix."""
        found = self._do(self.client.get, f"{self.prefix}:layout")
        if found is None:
            raise SetupError(
                f"Redis prefix {self.prefix!r} is not set up: run RedisStorage.setup(client) once"
            )

    # Calls -----------------------------------------------------------------------------
    def _do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _ERRORS as exc:
            raise StorageError(f"Redis is unreachable ({exc}); retried and gave up") from exc

    def _run(self, name: str, *args: Any) -> Any:
        script = self._scripts[name]
        execute = self.client.execute_command
        try:
            try:
                return execute("EVALSHA", script.sha, 0, self.prefix, *args)
            except redis.exceptions.NoScriptError:  # the server lost its script cache
                script.sha = self.client.script_load(script.script)
                return execute("EVALSHA", script.sha, 0, self.prefix, *args)
        except _ERRORS as exc:
            raise StorageError(f"Redis is unreachable ({exc}); retried and gave up") from exc

    def _token(self) -> str:
        """A token naming one write (its result is kept under it for a replay): unique
        across processes (pid) and hosts (a random part per store)."""
        return f"{self._token_base}{os.getpid()}:{next(self._tokens)}"

    def _now(self) -> float:
        return clock.timestamp()

    # Pushing ---------------------------------------------------------------------------
    def push(self, args: Any) -> TaskId:
        """Encode ``args`` and enqueue it as one task (one script call); return its id."""
        payload = self.codec.encode(args)
        if type(payload) is not bytes:
            payload = _bytes(payload)
        return TaskId(int(self._plain_rows("push_one", payload)))

    def push_bulk(self, items: Iterable[Any]) -> list[TaskId]:
        """Enqueue many values in one script call: all or nothing. Returns their ids."""
        payloads = encode_many(self.codec, items)
        if not payloads:
            return []
        if any(type(p) is not bytes for p in payloads):
            payloads = [p if type(p) is bytes else _bytes(p) for p in payloads]
        sizes = ",".join([str(len(p)) for p in payloads])
        return _ids(self._plain_rows("plain_rows", sizes, b"".join(payloads)))

    def _plain_rows(self, script: str, *data: Any) -> bytes:
        """Write plain rows (what ``plain_row`` makes) with a lean script: ``push_one``
        (``data``: the payload) or ``plain_rows`` (the payloads' sizes, comma-separated,
        and the payloads); returns the ids as the script does."""
        now = repr(self._now())
        try:
            ids = self._run(script, self._token(), now, self.queue, TOKEN_TTL, *data)
        except (redis.exceptions.ResponseError, StorageError) as exc:
            raise PushError(f"push failed: {exc}") from exc
        self._after_push()
        return ids

    def insert(self, rows: Sequence[Row]) -> list[TaskId]:
        """Write ``rows`` in one script call: all or nothing (a taken explicit id
        rejects the batch), ids from INCR in order, keyed rows idempotent on the key."""
        if not rows:
            return []
        head, blob = _encode_rows(rows)
        try:
            ids = self._run("insert", self._token(), repr(self._now()), head, blob)
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if text.startswith("DUPLICATE"):
                raise PushError(f"push rejected: {text[len('DUPLICATE ') :]}") from None
            raise PushError(f"push failed: {text}") from exc
        except StorageError as exc:
            raise PushError(f"push failed: {exc}") from exc
        return [TaskId(int(i)) for i in ids.split(b",")]

    def last_key(self, prefix: str) -> str | None:
        """The greatest task key starting with ``prefix`` under this store's prefix."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"last_key() needs a non-empty prefix, got {prefix!r}")
        low = b"[" + prefix.encode()
        high = b"(" + prefix.encode() + b"\xff"
        found = self._do(
            self.client.zrevrangebylex, f"{self.prefix}:keyidx", high, low, start=0, num=1
        )
        return _text(found[0]) if found else None

    def tasks_with_key_prefix(
        self, prefix: str, *, limit: int = 1000, before: str | None = None
    ) -> list[tuple[str, TaskInfo]]:
        """The tasks whose key starts with ``prefix`` (and sorts below ``before``, in
        code point order), greatest key first, at most ``limit``: ``[(key, TaskInfo)]``.
        A range of the lexical key index, then the tasks' hashes."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"tasks_with_key_prefix() needs a non-empty prefix, got {prefix!r}")
        self._page(limit, 0)
        if limit == 0:
            return []
        low = b"[" + prefix.encode()
        high = prefix.encode() + b"\xff"  # UTF-8 has no 0xff byte: above every such key
        if before is not None:
            high = min(high, before.encode())  # UTF-8 bytes sort as code points do
        keys = self._do(
            self.client.zrevrangebylex, f"{self.prefix}:keyidx", b"(" + high, low, 0, limit
        )
        if not keys:
            return []
        ids = self._do(self.client.hmget, f"{self.prefix}:keys", keys)
        pairs = [(key, int(i)) for key, i in zip(keys, ids, strict=True) if i is not None]
        infos = {int(info.id): info for info in self._infos([i for _, i in pairs])}
        return [(_text(key) or "", infos[i]) for key, i in pairs if i in infos]

    # Joins (workflows' fan-in) ---------------------------------------------------------
    def join_parts(self, key: str) -> list[tuple[int, bytes]]:
        """The recorded parts of join ``key``, ``[(slot, value)]`` in slot order."""
        found = self._do(self.client.hgetall, f"{self.prefix}:join:{key}:parts")
        return sorted((int(slot), bytes(value)) for slot, value in found.items())

    # Rate limits -----------------------------------------------------------------------
    def take_slot(self, key: str, interval: float) -> float:
        """Reserve the next start of rate limit ``key`` (shared by every store under
        this prefix) in one script; return the seconds to wait for it."""
        now = self._now()
        start = float(self._run("take_slot", key, repr(now), repr(interval)))
        return max(0.0, start - now)

    # Pausing ---------------------------------------------------------------------------
    def set_paused(self, queue: str, paused: bool) -> None:
        """Add ``queue`` to (or remove it from) the set ``{p}:paused``: one command."""
        change = self.client.sadd if paused else self.client.srem
        self._do(change, f"{self.prefix}:paused", queue)

    def paused_queues(self) -> set[str]:
        """The members of ``{p}:paused``: one ``SMEMBERS``."""
        found = self._do(self.client.smembers, f"{self.prefix}:paused")
        return {_text(name) or "" for name in found}

    # Worker side -----------------------------------------------------------------------
    def claim(self, ctx: WorkerContext, limit: int) -> list[Claim]:
        """Take up to ``limit`` due tasks in one script (priority, then due time, then
        id); a task marked to run alone is taken alone and only when ``ctx`` runs nothing."""
        if limit < 1:
            return []
        args = self._claim_args(ctx, limit)
        reply = self._run("claim", *args)
        return self._claims(reply[0], reply[1], args[0]) if reply else []

    def ack_and_claim(
        self, outcomes: Sequence[Outcome], ctx: WorkerContext, limit: int
    ) -> list[Claim] | None:
        """``ack(outcomes)`` then ``claim(ctx, limit)`` in one script (one round trip):
        for outcomes without follow-ups or join parts (which the store may refuse), else
        None and nothing is done."""
        if not outcomes or limit < 1 or any(o.follow_ups or o.join_parts for o in outcomes):
            return None
        args = self._claim_args(ctx, limit)
        ack_args, ordered, wake = self._ack_args(outcomes)
        reply = self._run_ack("ack_claim", *args, *ack_args)
        self._accept(ordered, reply[0], wake)
        return self._claims(reply[1], reply[2], args[0]) if reply[1] else []

    def _claim_args(self, ctx: WorkerContext, limit: int) -> tuple[Any, ...]:
        """The claim script's arguments after the prefix (a fresh lease first)."""
        now = repr(self._now())
        in_flight = int(ctx.in_flight)
        return (ctx.new_lease(), now, self.queue, limit, ctx.run_id, in_flight, PROMOTE_PER_CLAIM)

    def _claims(self, head: bytes, blob: bytes, lease: str) -> list[Claim]:
        """The claims of a claim script's reply (see ``claims_reply`` in the Lua)."""
        claims = []
        pos = 0
        queue = self.queue
        for record in head[:-1].split(b";"):
            task_id, attempt, priority, max_attempts, iso, size, meta_size = record.split(b",")
            end = pos + int(size)
            claim = Claim(TaskId(int(task_id)), queue, blob[pos:end], int(attempt), lease)
            if meta_size:
                pos, end = end, end + int(meta_size)
                claim.defect = self._fill(claim, priority, max_attempts, iso, blob[pos:end])
            elif priority != b"0" or max_attempts or iso:
                claim.defect = self._fill(claim, priority, max_attempts, iso, None)
            pos = end
            claims.append(claim)
        return claims

    @staticmethod
    def _fill(
        claim: Claim, priority: bytes, max_attempts: bytes, iso: bytes, meta: bytes | None
    ) -> str | None:
        """Set a claim's less common fields; returns why the stored task is malformed."""
        claim.isolated = iso == b"1"
        try:
            claim.priority = int(priority or 0)
            claim.max_attempts = int(max_attempts) if max_attempts else None
            claim.meta = msgspec.json.decode(meta) if meta else {}
            if not isinstance(claim.meta, dict):
                raise ValueError("meta is not an object")
        except (ValueError, msgspec.DecodeError) as exc:
            return f"the stored task is malformed: {exc}"
        return None

    def next_due(self) -> float | None:
        """The earliest ``run_at`` of a waiting (Pending or Failed) task of this queue."""
        found = self._run("next_due", self.queue)
        return None if found is None else float(found)

    def ack(self, outcomes: Sequence[Outcome]) -> None:
        """Record outcomes, their follow-ups and their join parts in one script,
        lease-fenced, all or nothing (a follow-up or join row with a taken id rejects the
        whole batch)."""
        if not outcomes:
            return
        args, ordered, wake = self._ack_args(outcomes)
        self._accept(ordered, self._run_ack("ack", *args), wake)

    def _run_ack(self, name: str, *args: Any) -> Any:
        """Run an ack script; a follow-up or join row with a taken id is ``OutcomeRefused``."""
        try:
            return self._run(name, *args)
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if text.startswith("DUPLICATE "):  # a follow-up's id: writing again cannot help
                raise OutcomeRefused(f"ack rejected: {text.removeprefix('DUPLICATE ')}") from None
            raise StorageError(f"ack failed: {text}") from exc

    def _accept(self, ordered: list[Outcome], flags: bytes, wake: bool) -> None:
        """Set each outcome's ``accepted`` from the ack script's flags; wake this
        process's workers of the queues that got waiting tasks."""
        if len(flags) != len(ordered):
            raise StorageError(f"ack failed: {len(flags)} flags for {len(ordered)} outcomes")
        for o, flag in zip(ordered, flags, strict=True):
            o.accepted = flag == 49  # b"1"
        if wake:
            for queue in {
                self.queue,
                *(r.queue for o in ordered if o.accepted for r in o.follow_ups),
                *(p.row.queue for o in ordered if o.accepted for p in o.join_parts),
            }:
                self.wakeups.notify(queue)

    def _ack_args(self, outcomes: Sequence[Outcome]) -> tuple[list[Any], list[Outcome], bool]:
        """The ack script's arguments after the prefix, the outcomes in the order of its
        flags, and whether the ack makes tasks wait (a wake-up is due)."""
        now = self._now()
        leases: dict[str, int] = {}
        head: list[str] = []
        blob: list[bytes] = []
        rows: list[Row] = []
        detailed: list[Outcome] = []  # in head
        plain: dict[int, list[Outcome]] = {}  # Done, no result, no follow-up: by lease
        join_head: list[str] = []
        join_blob: list[bytes] = []
        join_rows: list[Row] = []
        wake = False
        for o in outcomes:
            claim, kind = o.claim, o.kind
            number = leases.setdefault(claim.lease, len(leases) + 1)
            if (
                kind is OutcomeKind.DONE
                and not o.follow_ups
                and not o.join_parts
                and o.encoded_result is None
            ):
                plain.setdefault(number, []).append(o)
                continue
            detailed.append(o)
            result_size = error_size = ""
            if kind is OutcomeKind.DONE and o.encoded_result is not None:
                result = o.encoded_result
                if isinstance(result, str):
                    result = result.encode()
                elif not isinstance(result, bytes):
                    result = bytes(result)
                blob.append(result)
                result_size = str(len(result))
            if kind in (OutcomeKind.RETRY, OutcomeKind.DEAD, OutcomeKind.INTERRUPTED):
                error = json.dumps(
                    [claim.attempt, safe_text(o.error or ""), safe_text(o.traceback), now]
                ).encode()
                blob.append(error)
                error_size = str(len(error))
            run_at = repr(now + float(o.delay or 0.0)) if kind is not OutcomeKind.DONE else ""
            head.append(
                f"{int(claim.id)},{number},{_KINDS[kind]},{result_size},{error_size},"
                f"{run_at},{len(o.follow_ups)},{len(o.join_parts)};"
            )
            rows.extend(o.follow_ups)
            for part in o.join_parts:
                key, value = part.key.encode(), bytes(part.value)
                join_head.append(f"{len(key)},{int(part.slots)},{int(part.slot)},{len(value)};")
                join_blob += (key, value)
                join_rows.append(part.row)
            wake = wake or bool(o.follow_ups) or bool(o.join_parts) or kind is not OutcomeKind.DONE
        row_head, row_blob = _encode_rows(rows) if rows else (b"", b"")
        join_row_head, join_row_blob = _encode_rows(join_rows) if join_rows else (b"", b"")
        plain_text = "".join(
            f"{number}={','.join([str(int(o.claim.id)) for o in group])};"
            for number, group in plain.items()
        )
        args = [self._token(), repr(now), self.keep_finished, self.queue, len(leases), *leases]
        args += ["".join(head), b"".join(blob), row_head, row_blob, plain_text]
        args += ["".join(join_head), b"".join(join_blob), join_row_head, join_row_blob]
        return args, detailed + [o for group in plain.values() for o in group], wake

    def beat(self, ctx: WorkerContext) -> None:
        """Record ``ctx``'s run as alive now and, in the same script, recover the
        running tasks of runs silent for ``reenqueue_orphaned_after`` or retired: a
        dead run's only task counts a recovery (Dead after ``max_recoveries``), tasks
        that ran beside others go back uncounted, to run alone. Each keeps a record."""
        now = self._now()
        cutoff = now - self.config.orphaned_after_seconds
        info = json.dumps(
            {
                "name": ctx.name,
                "queue": self.queue,
                "hostname": self._hostname,
                "pid": os.getpid(),
                "started_at": now,
            }
        )
        recovered = self._run(
            "beat",
            ctx.run_id,
            repr(now),
            repr(cutoff),
            self.config.max_recoveries,
            info,
            self.keep_finished,
        )
        for i in range(0, len(recovered), 3):
            task_id, counted, status = recovered[i : i + 3]
            log.warning(
                "task %s recovered (%s): its worker stopped beating",
                int(task_id),
                "dead" if status == b"dead" else "counted" if counted == b"1" else "to run alone",
            )
        if recovered:
            self.wakeups.notify(self.queue)

    def retire(self, ctx: WorkerContext) -> None:
        """The run stopped cleanly: forget it (anything it still held is recovered by
        the next beat of any run)."""
        try:
            self._run("retire", ctx.run_id)
        except StorageError as exc:
            log.warning("could not unregister worker %s: %s", ctx.run_id, exc)

    def drop(self) -> int:
        """Delete every key under this store's prefix (every queue, every task, the
        layout): for tests and for retiring an application. Returns how many keys."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self.prefix) + ":*"
        count = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                count += self._do(self.client.unlink, *batch)
                batch = []
        if batch:
            count += self._do(self.client.unlink, *batch)
        return count

    def close(self) -> None:
        """Close the client's connections (the store is unusable afterwards)."""
        self.client.close()

    # Introspection ---------------------------------------------------------------------
    def _qk(self, name: str, queue: str | None = None) -> str:
        return f"{self.prefix}:q:{queue or self.queue}:{name}"

    def _queues(self, queue: str | None) -> list[str]:
        if queue is not None:
            return [queue]
        return sorted(
            _text(q) or "" for q in self._do(self.client.smembers, f"{self.prefix}:queues")
        )

    def _infos(self, ids: Sequence[int]) -> list[TaskInfo]:
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            # {p}:new before the hash: a claim moving the task between them is seen
            pipe.hget(f"{self.prefix}:new", task_id)
            pipe.hgetall(f"{self.prefix}:t:{task_id}")
            pipe.lrange(f"{self.prefix}:e:{task_id}", 0, -1)
            pipe.lrange(f"{self.prefix}:r:{task_id}", 0, -1)
        replies = self._do(pipe.execute)
        out = []
        for n, task_id in enumerate(ids):
            new, fields, errors, recoveries = replies[4 * n : 4 * n + 4]
            if not fields and new is not None:
                fields = _new_fields(new)
            if fields:
                out.append(self._info(task_id, fields, errors, recoveries))
        return out

    def _info(
        self, task_id: int, f: dict[bytes, Any], errors: list[bytes], recoveries: list[bytes]
    ) -> TaskInfo:
        def get(name: str) -> Any:
            return f.get(name.encode())

        meta = get("me")
        return TaskInfo(
            id=TaskId(task_id),
            queue=_text(get("q")) or "",
            status=Status(_text(get("st"))),
            args=self._decoded(get("p")),
            priority=int(get("pr") or 0),
            run_at=clock.from_timestamp(_num(get("ra"))),
            attempts=int(get("at") or 0),
            max_attempts=None if get("ma") is None else int(get("ma")),
            result=self._decoded(get("r")),
            errors=tuple(
                AttemptError(int(a), e, tb, clock.from_timestamp(at))
                for a, e, tb, at in map(json.loads, errors)
            ),
            created_at=clock.from_timestamp(_num(get("ca"))),
            started_at=clock.from_timestamp(_num(get("sa"))),
            done_at=clock.from_timestamp(_num(get("da"))),
            worker=_text(get("w")),
            meta=msgspec.json.decode(meta) if meta else {},
            recoveries=tuple(
                Recovery(w, clock.from_timestamp(seen), clock.from_timestamp(at), bool(c))
                for w, seen, at, c in map(json.loads, recoveries)
            ),
        )

    def fetch_by_id(self, task_id: int) -> TaskInfo:
        """The task with this id (any queue of this prefix); raises ``TaskNotFound``."""
        task_id = self._task_id(task_id)
        found = self._infos([int(task_id)])
        if not found:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        return found[0]

    def list_tasks(
        self, queue: str | None = None, status: Any = None, limit: int = 50, offset: int = 0
    ) -> list[TaskInfo]:
        """A page of tasks, newest (highest id) first; reads at most ``offset + limit``
        ids from each (queue, status) index, then the page's tasks."""
        statuses = self._statuses(status) or tuple(Status)
        self._page(limit, offset)
        if limit == 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        for q in self._queues(queue):
            for s in statuses:
                if s is Status.RUNNING:  # a hash: as many as the workers hold
                    pipe.hkeys(self._qk("running", q))
                else:
                    pipe.zrevrange(self._qk(f"s:{s.value}", q), 0, offset + limit - 1)
        ids = sorted({int(m) for members in self._do(pipe.execute) for m in members}, reverse=True)
        return self._infos(ids[offset : offset + limit])

    def list_workers(self, limit: int = 100) -> list[WorkerInfo]:
        """The runs that beat under this prefix, newest first, with the tasks each holds."""
        self._page(limit, 0)
        runs = self._do(self.client.hgetall, f"{self.prefix}:runs")
        parsed = []
        for run_id, raw in runs.items():
            try:
                info = json.loads(raw)
            except ValueError:
                continue
            parsed.append((_text(run_id) or "", info))
        parsed.sort(key=lambda item: item[1].get("started_at") or 0, reverse=True)
        parsed = parsed[:limit]
        pipe = self.client.pipeline(transaction=False)
        for run_id, _ in parsed:
            pipe.zscore(f"{self.prefix}:seen", run_id)
            pipe.scard(f"{self.prefix}:held:{run_id}")
        replies = self._do(pipe.execute)
        return [
            WorkerInfo(
                name=info.get("name", ""),
                run_id=run_id,
                queues=(info.get("queue", ""),),
                hostname=info.get("hostname", ""),
                pid=int(info.get("pid") or 0),
                started_at=clock.from_timestamp(info.get("started_at")),
                last_heartbeat=clock.from_timestamp(_num(replies[2 * n])),
                tasks_held=int(replies[2 * n + 1]),
            )
            for n, (run_id, info) in enumerate(parsed)
        ]

    def _counts(self, queues: list[str]) -> list[dict[str, int]]:
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            for s in Status:
                if s is Status.RUNNING:
                    pipe.hlen(self._qk("running", q))
                else:
                    pipe.zcard(self._qk(f"s:{s.value}", q))
        replies = self._do(pipe.execute)
        n = len(Status)
        return [
            {s.value: int(replies[i * n + j]) for j, s in enumerate(Status)}
            for i in range(len(queues))
        ]

    def list_queues(self, *, done: bool = True) -> list[QueueInfo]:
        """Every queue of this prefix that holds tasks, with its counts per status
        (``done`` is ignored: each count is one ``ZCARD``/``HLEN``)."""
        queues = self._queues(None)
        return [
            QueueInfo(q, **c)
            for q, c in zip(queues, self._counts(queues), strict=True)
            if any(c.values())
        ]

    def stats(self, queue: str | None = None) -> dict[str, Any]:
        """Counts per status, Done and failed attempts in the last hour and day, the
        age of the oldest due waiting task (Pending, or Failed and due to retry) and
        the mean run time of the Done tasks kept."""
        stats = _empty_stats()
        queues = self._queues(queue)
        if not queues:
            return stats
        now = self._now()
        for counts in self._counts(queues):
            for key, value in counts.items():
                stats[key] += value
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zcount(self._qk("fin:done", q), now - HOUR, "+inf")
            pipe.zcount(self._qk("fin:done", q), now - DAY, "+inf")
            pipe.zcount(self._qk("errs", q), now - HOUR, "+inf")
            pipe.zcount(self._qk("errs", q), now - DAY, "+inf")
            pipe.hmget(self._qk("rt", q), "sum", "n")
        replies = self._do(pipe.execute)
        heads = [self._run("next_due", q) for q in queues]
        oldest: float | None = None
        total, count = 0.0, 0
        for i in range(len(queues)):
            dh, dd, fh, fd, (rt_sum, rt_n) = replies[5 * i : 5 * i + 5]
            head = None if heads[i] is None else float(heads[i])
            stats["done_last_hour"] += dh
            stats["done_last_day"] += dd
            stats["failed_last_hour"] += fh
            stats["failed_last_day"] += fd
            if head is not None and head <= now:
                oldest = head if oldest is None else min(oldest, head)
            if rt_n and int(rt_n) > 0:
                total += float(rt_sum or 0)
                count += int(rt_n)
        stats["oldest_pending_age"] = None if oldest is None else now - oldest
        stats["mean_run_time"] = max(0.0, total / count) if count else None
        return stats

    def retry(self, task_id: int) -> bool:
        """Make a Failed or Dead task Pending and due now with fresh attempts (one
        script); False in another status, ``TaskNotFound`` if unknown."""
        task_id = self._task_id(task_id)
        done = self._run("retry", str(int(task_id)), repr(self._now()))
        if done == -1:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        if done:
            self._after_push()
        return bool(done)

    def retry_dead(self, queue: str | None = None) -> int:
        """``retry`` every Dead task of ``queue`` (None: every queue), 500 per script."""
        count = 0
        for q in self._queues(queue):
            while True:
                n = self._run("retry_dead", q, repr(self._now()), BATCH)
                count += n
                if n < BATCH:
                    break
        if count:
            self._after_push()
        return count

    def kill(self, task_id: int) -> bool:
        """Make a Pending, Failed or Running task Dead (error "killed"), atomically;
        False if it had finished, ``TaskNotFound`` if unknown."""
        task_id = self._task_id(task_id)
        done = self._run("kill", str(int(task_id)), repr(self._now()), self.keep_finished)
        if done == -1:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        return bool(done)

    def delete(self, task_id: int) -> bool:
        """Delete a Done or Dead task (its errors, recoveries, key and join), in one
        script; False when it is still to run or running, ``TaskNotFound`` if unknown."""
        task_id = self._task_id(task_id)
        done = self._run("delete", str(int(task_id)))
        if done == -1:
            raise TaskNotFound(f"no task with id {int(task_id)}")
        return bool(done)

    def throughput(
        self, since: datetime | float, bucket: float, queue: str | None = None
    ) -> list[Bucket]:
        """Done tasks and failed attempts per bucket: one ``ZCOUNT`` per bucket on each
        queue's ``fin:done`` and ``errs`` indexes (pipelined). Only what Redis keeps:
        the last ``keep_finished`` Done tasks, and the failures of the last day."""
        start, width, count = self._buckets(since, bucket)
        queues = self._queues(queue)
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            for name in ("fin:done", "errs"):
                for i in range(count):
                    low = start + i * width
                    pipe.zcount(self._qk(name, q), low, f"({low + width!r}")
        replies = self._do(pipe.execute)
        done: dict[int, int] = {}
        failed: dict[int, int] = {}
        n = 0
        for _ in queues:
            for into in (done, failed):
                for i in range(count):
                    into[i] = into.get(i, 0) + int(replies[n])
                    n += 1
        return self._dense_buckets(start, width, count, done, failed)

    def purge(self, status: Any, older_than: Any, *, queue: str | None = None) -> int:
        """Delete Done and/or Dead tasks finished at least ``older_than`` ago, 500 per
        script call; returns how many."""
        statuses = self._purgeable(status)
        cutoff = self._now() - clock.seconds(older_than, name="older_than")
        count = 0
        for q in self._queues(queue):
            for s in statuses:
                while True:
                    n = self._run("purge", q, s.value, repr(cutoff), BATCH)
                    count += n
                    if n < BATCH:
                        break
        return count


def open_storage(
    client: redis.Redis, queue: str = "default", *, codec: Any = None, config: Config | None = None
) -> RedisStorage:
    """The ``RedisStorage`` of ``client`` for ``queue`` (what ``taskpipe.open_storage``
    calls for a ``redis://`` URL or a ``redis.Redis``)."""
    return RedisStorage(client, queue=queue, codec=codec, config=config)
