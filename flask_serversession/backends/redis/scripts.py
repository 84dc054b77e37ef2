from __future__ import annotations

import hashlib

# Lua scripts of the Redis backend. Each runs atomically on one server, so a
# write either happens whole or not at all. Redis refuses a script (READONLY,
# OOM) only at its first write, and every script does its checks first, so
# none stops half-way.

# Adds a session to a user's set and makes the set live at least until the
# deadline (ms since the epoch): its TTL only ever moves forward, so it
# outlives every session indexed in it. A key of another type in its place
# is damage and is replaced.
_INDEX_FUNCTION = """
local function index(set, member, deadline)
  if redis.replicate_commands then redis.replicate_commands() end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local kind = redis.call('TYPE', set).ok
  if kind ~= 'set' and kind ~= 'none' then redis.call('DEL', set) end
  redis.call('SADD', set, member)
  local ttl = redis.call('PTTL', set)
  if ttl < 0 or now_ms + ttl < tonumber(deadline) then
    redis.call('PEXPIREAT', set, deadline)
  end
end
"""

# KEYS: the user's set. ARGV: member, deadline_ms.
INDEX = (
    _INDEX_FUNCTION
    + """
index(KEYS[1], ARGV[1], ARGV[2])
return 1
"""
)

# Creates a session hash, and indexes it first in its user's set when KEYS[2]
# names that set (a session with a user, where one script can write both:
# not on a cluster). One script rather than a MULTI block: the same single
# round trip, with one reply for the client to parse instead of five.
# KEYS: hash[, the user's set]. ARGV: the numbers drop_at_ms, deadline_ms,
# created_us and expires_us in one space-separated argument (as UPDATE's),
# then a JSON array (see codec.packed) of the member and the hash's other
# field/value pairs.
_NUMBERS = """
local num = {}
for v in string.gmatch(ARGV[1], '%S+') do num[#num + 1] = v end
"""

_CREATE_BODY = """
local args = cjson.decode(ARGV[2])
if KEYS[2] then index(KEYS[2], args[1], num[2]) end
-- DEL only when needed: out of memory, Redis refuses a script at its first
-- write that may grow memory, and lets one that began with a DEL go on.
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DEL', KEYS[1]) end
local size, keys = 0, 0
for i = 2, #args, 2 do
  if string.sub(args[i], 1, 2) == 'd:' then
    size, keys = size + #args[i] - 2 + #args[i + 1], keys + 1
  end
end
-- Up to 500 fields per HSET: unpack's results must fit Lua's stack. The
-- first also writes the times and the total.
redis.call('HSET', KEYS[1], 'created_us', num[3], 'expires_us', num[4],
  'size', string.format('%d', size), 'keys', string.format('%d', keys),
  unpack(args, 2, math.min(1001, #args)))
for i = 1002, #args, 1000 do
  redis.call('HSET', KEYS[1], unpack(args, i, math.min(i + 999, #args)))
end
redis.call('PEXPIREAT', KEYS[1], num[1])
return 1
"""

CREATE = _INDEX_FUNCTION + _NUMBERS + _CREATE_BODY

# Whether KEYS[1] holds a session live at now_us that reads as one: a hash
# laid out as codec.parse expects (the checks of UPDATE), unexpired.
_LIVE_FUNCTION = """
local function live(key, now_us)
  if redis.call('TYPE', key).ok ~= 'hash' then return false end
  local function whole(v) return v and #v <= 17 and string.match(v, '^%d+$') and tonumber(v) end
  local meta = redis.call('HMGET', key, 'created_us', 'expires_us', 'user', 'indexed_us')
  local expires = whole(meta[2])
  if not whole(meta[1]) or not expires or expires <= tonumber(now_us) then return false end
  if (meta[3] and not whole(meta[4])) or (meta[4] and not meta[3]) then return false end
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) ~= 'd:' and f ~= 'created_us' and f ~= 'expires_us'
        and f ~= 'user' and f ~= 'indexed_us' and f ~= 'size' and f ~= 'keys' then
      return false
    end
  end
  return true
end
"""

# CREATE, unless KEYS[1] holds a live session: then it writes nothing (not
# even the user's set) and returns 0. ARGV as CREATE's, with now_us as a
# fifth number.
ADD = (
    _INDEX_FUNCTION
    + _LIVE_FUNCTION
    + _NUMBERS
    + "if live(KEYS[1], num[5]) then return 0 end\n"
    + _CREATE_BODY
)

# Applies a delta to a live session and returns 1 (a number: a table costs
# Redis more to reply), or {1, old user} when the delta changed the user
# from that one. Returns {0}, writing nothing, when the hash is gone
# (destroyed, regenerated, expired), its stored expiry has passed by the
# app's clock, or it is not laid out as a session. With a
# size limit and keys to set it also returns {-1, before, after}, writing
# nothing, when the merged data would pass the limit and grow (the rule of
# check_size); sizes count the bytes of each name without "d:" plus its
# value, as data_size does.
#
# The size: ``size`` holds that count for the stored data and ``keys`` how
# many "d:" fields there are, so a save reads the length of the fields it
# sets or deletes only, and checks with HLEN that the hash holds nothing
# else. A hash without them (written before 0.3), with one that is not a
# whole number, or whose HLEN disagrees is read whole once, as before: every
# name checked, every length summed; the save then stores both.
#
# The user: ``user`` names it and ``indexed_us`` is a time until which the
# user's set is sure to live (its TTL only grows). The op "set" gives the
# session ARGV user (indexing it here when KEYS[2], the user's set, is
# given; on a cluster the caller has indexed it before), "clear" removes the
# user, "keep" leaves it alone, and "reindex" is "set" if the stored user is
# still ARGV user, else "keep". A "keep" that would move the expiry past
# ``indexed_us`` returns {2, user}, writing nothing: the caller pushes the
# set's TTL forward first and tries again with "reindex", so the set never
# expires before a session in it.
#
# ARGV: the numbers now_us, expires_us, drop_at_ms, max_size (-1: none),
# n_set and deadline_ms in one space-separated argument, then a JSON array
# (see codec.packed) of op, user, member, n_set field/value pairs and the
# fields to delete. Each argument costs the client more than the script's
# splitting or decoding. A compare-and-set (Delta.expect) adds a field and
# "=" + the value it must hold, or "-" for no such field; the script returns
# {3}, writing nothing, when it holds something else.
UPDATE = (
    _INDEX_FUNCTION
    + """
local key = KEYS[1]
-- Every redis.call costs the server more than the command itself: a key
-- of another type is told by HMGET's error rather than by a TYPE first.
local meta = redis.pcall('HMGET', key, 'created_us', 'expires_us', 'user', 'indexed_us',
  'size', 'keys')
if meta.err then return {0} end
local now_us, expires_us, drop_at, limit, n_set, deadline =
  string.match(ARGV[1], '^(%d+) (%d+) (%d+) (%-?%d+) (%d+) (%d+)$')
local function whole(v) return v and #v <= 17 and string.match(v, '^%d+$') and tonumber(v) end
local stored = whole(meta[2])
if not whole(meta[1]) or not stored or stored <= tonumber(now_us) then return {0} end
local user, indexed = meta[3], whole(meta[4])
if (user and not indexed) or (meta[4] and not user) then return {0} end
if ARGV[3] and ARGV[3] ~= '' then
  local held = redis.call('HGET', key, ARGV[3])
  if held then held = '=' .. held else held = '-' end
  if held ~= ARGV[4] then return {3} end
end
limit = tonumber(limit)
local args = cjson.decode(ARGV[2])
local first = 4
local last = first - 1 + 2 * tonumber(n_set)
-- sizes: what each field of the delta counts now, false when absent.
local size, keys, sizes, whole_read = whole(meta[5]), whole(meta[6]), {}, false
local own = 4
if user then own = 6 end
if not size or not keys or redis.call('HLEN', key) ~= own + keys then
  size, keys, whole_read = 0, 0, true
  for _, f in ipairs(redis.call('HKEYS', key)) do
    if string.sub(f, 1, 2) == 'd:' then
      sizes[f] = #f - 2 + redis.call('HSTRLEN', key, f)
      size, keys = size + sizes[f], keys + 1
    elseif f ~= 'created_us' and f ~= 'expires_us' and f ~= 'user' and f ~= 'indexed_us'
        and f ~= 'size' and f ~= 'keys' then
      return {0}
    end
  end
end
local function held(f)
  local n = sizes[f]
  if n == nil then
    n = false
    if not whole_read then
      local length = redis.call('HSTRLEN', key, f)
      if length > 0 or redis.call('HEXISTS', key, f) == 1 then n = #f - 2 + length end
    end
  end
  return n
end
local before = size
for i = last + 1, #args do
  local n = held(args[i])
  if n then size, keys = size - n, keys - 1 end
  sizes[args[i]] = false
end
for i = first, last, 2 do
  local n = held(args[i])
  if n then size = size - n else keys = keys + 1 end
  sizes[args[i]] = #args[i] - 2 + #args[i + 1]
  size = size + sizes[args[i]]
end
if limit >= 0 and last >= first and size > limit and size > before then
  return {-1, before, size}
end
local op, new_user, member = args[1], args[2], args[3]
if op == 'reindex' then
  if user == new_user then op = 'set' else op = 'keep' end
end
if op == 'keep' and user and tonumber(expires_us) > indexed then return {2, user} end
if op == 'set' then
  if KEYS[2] then index(KEYS[2], member, deadline) end
  local mark = deadline .. '000'
  if user == new_user and indexed > tonumber(mark) then mark = meta[4] end
  redis.call('HSET', key, 'user', new_user, 'indexed_us', mark)
elseif op == 'clear' and user then
  redis.call('HDEL', key, 'user', 'indexed_us')
end
-- Up to 1,000 names per HDEL and 500 fields per HSET: unpack's results
-- must fit Lua's stack. The last HSET also writes the expiry and the total.
for i = last + 1, #args, 1000 do
  redis.call('HDEL', key, unpack(args, i, math.min(i + 999, #args)))
end
local from = first
while last - from >= 1000 do
  redis.call('HSET', key, unpack(args, from, from + 999))
  from = from + 1000
end
redis.call('HSET', key, 'expires_us', expires_us, 'size', string.format('%d', size),
  'keys', string.format('%d', keys), unpack(args, from, last))
redis.call('PEXPIREAT', key, drop_at)
if user and (op == 'clear' or (op == 'set' and user ~= new_user)) then return {1, user} end
return 1
"""
)

# UPDATE, run only while the hash still holds what the caller read: ARGV[5]
# (after the compare-and-set's two, empty when it has none) is a JSON array of
# expires_us then each data field and its value. Returns
# {0} when it holds anything else (Backend.rewrite).
REWRITE = UPDATE.replace(
    "local now_us, expires_us,",
    """local want = cjson.decode(ARGV[5])
if redis.call('HGET', key, 'expires_us') ~= want[1] then return {0} end
local held = 0
for _, f in ipairs(redis.call('HKEYS', key)) do
  if string.sub(f, 1, 2) == 'd:' then held = held + 1 end
end
if held ~= (#want - 1) / 2 then return {0} end
for i = 2, #want, 2 do
  if redis.call('HGET', key, want[i]) ~= want[i + 1] then return {0} end
end
local now_us, expires_us,""",
    1,
)

# Removes the key and returns {type, fields}: the fields (flat name/value
# list) of a hash, none for another type; returns nil when there is no key.
TAKE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return false end
local fields = {}
if kind == 'hash' then fields = redis.call('HGETALL', KEYS[1]) end
redis.call('DEL', KEYS[1])
return {kind, fields}
"""

# Reads many session hashes in one go, for listing on a single server: one
# reply per key, '' for no key, the fields (flat name/value list) as a JSON
# array for a hash, the Redis type for another type. One string per key is
# parsed far faster by the client than a reply of every field.
READ = """
local out = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' then
    out[i] = cjson.encode(redis.call('HGETALL', key))
  elseif kind == 'none' then
    out[i] = ''
  else
    out[i] = kind
  end
end
return out
"""

# Removes members from a user's set. KEYS: the set, then the hashes of the
# first members; ARGV: user, then members. A member with a hash in KEYS
# stays when that hash names the user now (it changed hands back meanwhile);
# the others are removed whatever their hash holds. Returns how many went.
UNINDEX = """
local removed = 0
for i = 2, #ARGV do
  local drop = true
  if KEYS[i] and redis.call('TYPE', KEYS[i]).ok == 'hash' then
    drop = redis.call('HGET', KEYS[i], 'user') ~= ARGV[1]
  end
  if drop then removed = removed + redis.call('SREM', KEYS[1], ARGV[i]) end
end
return removed
"""

# Gives a key without a TTL the one in ARGV[1] (ms); 1 if it did, else 0.
# Plain PTTL + PEXPIRE works on servers older than PEXPIRE ... NX (7.0).
LIMIT = """
if redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""

_SHAS: dict[str, str] = {}


def sha(script: str) -> str:
    """Return the SHA1 that ``EVALSHA`` runs ``script`` by."""
    if script not in _SHAS:
        _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return _SHAS[script]
