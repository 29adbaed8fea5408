//! The server-side Lua scripts.
//!
//! On Redis 7+ they are one function library (see `Library`), loaded
//! with `FUNCTION LOAD` when the store connects, and each call is an
//! `FCALL`: the shared helpers are then created once per load instead of
//! once per call. Where functions are refused (Redis 6, an ACL without
//! them) each script is sent once (`SCRIPT LOAD`, done by [`redis::Script`]
//! on the first `NOSCRIPT` reply) and invoked by its SHA-1 with `EVALSHA`.
//! Either way a call carries only keys and arguments, and after a server
//! restart, `FUNCTION FLUSH` or `SCRIPT FLUSH` the first call finds its
//! code missing and loads it again transparently (see `run`).
//!
//! Every script reads the fixed record header with `GETRANGE` (see
//! [`crate::codec`]) at offsets it takes from Lua locals that
//! `layout_lua` generates from core's [`session_core::codec::layout`], and judges liveness against the caller's clock (`now`
//! argument) as well as the server's TTL, so a record past its deadline is
//! dead for `update` and `touch` even if Redis has not evicted it yet.
//!
//! A record is live for a script only if its format byte is 1 or 5 (a
//! record with a label): the moved, ended and pending markers (see
//! [`crate::codec`]) share the header but are never live, so `update`,
//! `touch` and a rotation from a moved key find nothing. The label sits
//! after the user id, so no script that compares users or moves headers
//! needs to know about it; only `LIST_USER` reads it, for the summaries.
//!
//! On a cluster each script gets one key, and touches only that key. The
//! combined forms (session key plus index key) are used only against a
//! single server, where they keep the index consistent atomically. Two
//! single-server scripts go further and touch keys they compute rather than
//! declare, which a standalone server allows (a cluster would not, as those
//! keys may live on other nodes): `CREATE_WITH` reads the sessions listed
//! in the user's index (`<prefix>:s:{<member>}`) to count and evict them,
//! and `DELETE` follows moved markers to the keys they name.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind};

use crate::connection::Conn;

/// The record layout as Lua locals, generated from
/// [`session_core::codec::layout`] so that no script hard-codes an offset:
/// `AT_*` are 1-based positions for `string.byte`/`string.sub` (a
/// `GETRANGE` offset is the position minus one), `HEADER` the fixed
/// header's length, `F_*` the format bytes of records and markers.
pub(crate) fn layout_lua() -> String {
    use crate::codec::{FORMAT_ENDED, FORMAT_MOVED, FORMAT_PENDING};
    use session_core::codec::layout as l;
    format!(
        "local HEADER, WORD, SEG_FIXED = {header}, {word}, {seg_fixed}
local AT_FORMAT, AT_USER_FLAG, AT_VERSION = {format}, {flag}, {version}
local AT_CREATED, AT_LAST_ACCESS, AT_IDLE, AT_ABSOLUTE = {created}, {last}, {idle}, {absolute}
local AT_USER_LEN, AT_USER = {user_len}, {user}
local F_RECORD, F_MOVED, F_ENDED, F_PENDING, HAS_USER = {f_record}, {f_moved}, {f_ended}, {f_pending}, {has_user}
local F_LABELLED, LABEL_LEN = {f_labelled}, {label_len}
",
        header = l::HEADER_LEN,
        word = l::WORD,
        // The user segment: the flag byte and the length before the id.
        seg_fixed = 1 + (l::HEADER_LEN - l::USER_LEN),
        format = l::FORMAT + 1,
        flag = l::USER_FLAG + 1,
        version = l::VERSION + 1,
        created = l::CREATED_AT + 1,
        last = l::LAST_ACCESS + 1,
        idle = l::IDLE_DEADLINE + 1,
        absolute = l::ABSOLUTE_DEADLINE + 1,
        user_len = l::USER_LEN + 1,
        user = l::HEADER_LEN + 1,
        f_record = l::FORMAT_RECORD,
        f_moved = FORMAT_MOVED,
        f_ended = FORMAT_ENDED,
        f_pending = FORMAT_PENDING,
        has_user = l::HAS_USER,
        f_labelled = l::FORMAT_RECORD_LABELLED,
        label_len = l::LABEL_LEN_SIZE,
    )
}

// The scripts rely on these adjacencies: touch writes last access and idle
// deadline as one 16-byte run, a rotation copies both deadlines as one, and
// the user segment is the flag followed (after the words) by the length.
const _: () = {
    use session_core::codec::layout as l;
    assert!(l::LAST_ACCESS + l::WORD == l::IDLE_DEADLINE);
    assert!(l::IDLE_DEADLINE + l::WORD == l::ABSOLUTE_DEADLINE);
    assert!(l::ABSOLUTE_DEADLINE + l::WORD == l::USER_LEN);
    assert!(l::USER_LEN + 4 == l::HEADER_LEN);
};

/// Helpers shared by every script (after [`layout_lua`]).
macro_rules! prelude {
    () => {
        r#"
local function i64(s, i)
  local a, b, c, d, e, f, g, h = string.byte(s, i, i + 7)
  local n = ((((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f) * 256 + g) * 256 + h
  if a >= 128 then n = n - 18446744073709551616 end
  return n
end
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function is_format(h, f)
  return #h >= HEADER and string.byte(h, AT_FORMAT) == f
end
-- A session record, with or without a label.
local function is_record(h)
  return is_format(h, F_RECORD) or is_format(h, F_LABELLED)
end
local function live(h, now)
  return is_record(h) and now < math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE))
end
-- The user segment of a header read with its user id: flag, length, id.
local function user_seg(h)
  return string.sub(h, AT_USER_FLAG, AT_USER_FLAG) .. string.sub(h, AT_USER_LEN)
end
-- The last offset to read for a header and the user id of segment `seg`.
local function seg_end(seg)
  return HEADER - 1 + #seg - SEG_FIXED
end
local function has_user(h)
  return string.byte(h, AT_USER_FLAG) == HAS_USER
end
local function index_add(idx, member, now, ttl)
  redis.call('ZADD', idx, now, member)
  if redis.call('PTTL', idx) < tonumber(ttl) then redis.call('PEXPIRE', idx, ttl) end
end
"#
    };
}

/// Insert-only create.
///
/// KEYS: session, [index]. ARGV: value, now, ttl ms, member, index ttl ms,
/// [`"pending"` when `value` is a pending marker]. Returns 1 when stored, 0
/// when a live record exists, 2 when an ended marker holds the key
/// (cluster: the rotation writing it was ended), 3 (pending marker only)
/// when a moved marker holds the key: it still leads a `delete` of its old
/// session, so it stays until a record replaces it.
const CREATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[2])
local h = redis.call('GETRANGE', KEYS[1], 0, HEADER - 1)
if live(h, now) then return 0 end
if is_format(h, F_ENDED) then return 2 end
if ARGV[6] == 'pending' and is_format(h, F_MOVED) then return 3 end
if tonumber(ARGV[3]) <= 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
if KEYS[2] then index_add(KEYS[2], ARGV[4], ARGV[2], ARGV[5]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#
);

/// Adds an index entry (cluster: written before the session).
///
/// KEYS: index. ARGV: member, now, index ttl ms, snapshot ("1": also return
/// the entries present before this one). Returns {1 if the member is new
/// else 0, {member, score, ...}}.
const INDEX_ADD: &str = concat!(
    prelude!(),
    r#"
local before = {}
if ARGV[4] == '1' then before = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES') end
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {added, before}
"#
);

/// Lua shared by [`MOVE`] and [`CREATE_WITH`]: checking the record a
/// rotation moves, and replacing it with its moved marker.
macro_rules! rotation {
    () => {
        r#"
-- The record under `key` (header `h`, read to `seg_end(seg)`) may move if it is
-- live at `version` and anonymous or bound to the user of `seg`.
-- 1 yes, -1 not found, -2 conflict.
local function check_old(h, now, version, seg)
  if not live(h, now) then return -1 end
  if string.sub(h, AT_VERSION, AT_VERSION + WORD - 1) ~= version then return -2 end
  if has_user(h) and user_seg(h) ~= seg then return -2 end
  return 1
end
-- Replaces the record under `key` with `marker`, carrying its deadlines and
-- living as long as it would have.
local function retire(key, h, now, marker)
  local ttl = math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE)) - now
  if ttl > 3153600000000 then ttl = 3153600000000 end
  -- Byte 2 keeps the old record's has-user flag, so a user's index entry
  -- never leads a delete_user to an anonymous session.
  marker = string.sub(marker, 1, AT_USER_FLAG - 1) .. string.sub(h, AT_USER_FLAG, AT_USER_FLAG)
    .. string.sub(marker, AT_USER_FLAG + 1, AT_IDLE - 1)
    .. string.sub(h, AT_IDLE, AT_ABSOLUTE + WORD - 1) .. string.sub(marker, AT_ABSOLUTE + WORD)
  redis.call('SET', key, marker, 'PX', string.format('%d', ttl))
end
"#
    };
}

/// The first write of a rotation on a cluster: checks the old record and
/// replaces it with a moved marker, atomically on its slot.
///
/// KEYS: old session. ARGV: now, expected version (8 bytes), user segment
/// of the new record, moved marker. Returns {1, user segment of the old
/// record} when moved, {-1, ''} not found, {-2, ''} conflict.
const MOVE: &str = concat!(
    prelude!(),
    rotation!(),
    r#"
local now = tonumber(ARGV[1])
local h = redis.call('GETRANGE', KEYS[1], 0, HEADER - 1)
if #h >= HEADER and has_user(h) and u32(h, AT_USER_LEN) > 0 then
  h = h .. redis.call('GETRANGE', KEYS[1], HEADER, HEADER - 1 + u32(h, AT_USER_LEN))
end
local c = check_old(h, now, ARGV[2], ARGV[3])
if c ~= 1 then return {c, 0, ''} end
retire(KEYS[1], h, now, ARGV[4])
if has_user(h) then return {1, 1, string.sub(h, AT_USER)} end
return {1, 0, ''}
"#
);

/// Compare-and-set on the version.
///
/// KEYS: session, [index]. ARGV: expected version (8 bytes), now, value,
/// ttl ms, user segment, new absolute deadline, index ttl ms, index ready
/// ("1" when the caller already extended the index), member, track ("1" on
/// a near cache's tracking connection: the key is read back after the write).
/// Returns 1 stored, 0 not found, -1 conflict, -2 user differs, -3 the index
/// must be extended first (cluster only).
const UPDATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[2])
local seg = ARGV[5]
local h = redis.call('GETRANGE', KEYS[1], 0, seg_end(seg))
if not live(h, now) then return 0 end
if string.sub(h, AT_VERSION, AT_VERSION + WORD - 1) ~= ARGV[1] then return -1 end
if user_seg(h) ~= seg then return -2 end
if has_user(h) and tonumber(ARGV[6]) > i64(h, AT_ABSOLUTE) then
  if KEYS[2] then
    index_add(KEYS[2], ARGV[9], ARGV[2], ARGV[7])
  elseif ARGV[8] ~= '1' then
    return -3
  end
end
if tonumber(ARGV[4]) <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  -- Sent on a near cache's tracking connection: read the key back, so
  -- that the server tracks it again for the caller (its own write, not
  -- pushed to it, untracked it).
  if ARGV[10] == '1' then redis.call('EXISTS', KEYS[1]) end
end
return 1
"#
);

/// Moves last access and idle deadline in place, and the TTL.
///
/// KEYS: session. ARGV: now, 16 bytes (last access, idle deadline), idle
/// deadline, track ("1" on a near cache's tracking connection: the key is
/// read back after the write, as in [`UPDATE`]). Returns 1 touched, 2
/// deleted (its new deadline has passed), 0 not found.
const TOUCH: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local h = redis.call('GETRANGE', KEYS[1], 0, HEADER - 1)
if not live(h, now) then return 0 end
local expires = math.min(tonumber(ARGV[3]), i64(h, AT_ABSOLUTE))
if expires <= now then
  redis.call('DEL', KEYS[1])
  return 2
end
local ttl = expires - now
if ttl > 3153600000000 then ttl = 3153600000000 end
redis.call('SETRANGE', KEYS[1], AT_LAST_ACCESS - 1, ARGV[2])
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
if ARGV[4] == '1' then redis.call('EXISTS', KEYS[1]) end
return 1
"#
);

/// Deletes a session, following moved markers.
///
/// KEYS: session. ARGV: moves to follow within this call (single server:
/// 64; cluster: 0, the caller follows them across slots), now, session key
/// prefix (`<prefix>:s:{`), ended-marker TTL ms (cluster, when this key was
/// reached by following a move: a key holding the rotation's pending marker,
/// its record not written yet, gets the ended marker for that long; else
/// 0), ended marker.
///
/// Returns {code, user id, member, n}, member being the storage key where
/// it stopped ('' for the given key):
/// - {0, '', member, 0}: nothing to delete (missing, an ended marker, an
///   outdated moved marker);
/// - {1, user, member, flags}: a record deleted; flags: 1 it was live, 2 it
///   was bound to `user`;
/// - {2, '', next, ms}: a moved marker deleted, not followed (out of
///   moves): the session moved to `next`, and the marker had `ms` to live;
/// - {3, '', member, 0}: the ended marker written (cluster).
const DELETE: &str = concat!(
    prelude!(),
    r#"
local key, member = KEYS[1], ''
local hops, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local block = tonumber(ARGV[4])
for i = 0, hops do
  local h = redis.call('GETRANGE', key, 0, HEADER - 1)
  if is_format(h, F_MOVED) then
    local n = u32(h, AT_USER_LEN)
    local to = ''
    if n > 0 then to = redis.call('GETRANGE', key, HEADER, HEADER - 1 + n) end
    local untl = math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE))
    redis.call('DEL', key)
    if untl <= now or #to == 0 then return {0, '', member, 0} end
    if i == hops then return {2, '', to, untl - now} end
    key, member = ARGV[3] .. to .. '}', to
  elseif is_format(h, F_ENDED) or #h == 0 then
    return {0, '', member, 0}
  elseif block > 0 and is_format(h, F_PENDING) then
    redis.call('SET', key, ARGV[5], 'PX', ARGV[4])
    return {3, '', member, 0}
  else
    local flags, user = 0, ''
    if live(h, now) then flags = 1 end
    if is_record(h) and has_user(h) then
      flags = flags + 2
      local n = u32(h, AT_USER_LEN)
      if n > 0 then user = redis.call('GETRANGE', key, HEADER, HEADER - 1 + n) end
    end
    redis.call('DEL', key)
    return {1, user, member, flags}
  end
end
return {0, '', member, 0}
"#
);

/// "Log out everywhere" on a single server, in one atomic step: every
/// session of the user's index ends, following moved markers, and the
/// handled entries leave the index. Two calls for one user (or a call and
/// a login) cannot interleave, so the count is that of one of their orders.
///
/// KEYS: index. ARGV: user segment, now, session key head (`<prefix>:s:{`),
/// moves to follow per entry. Returns the number of live sessions ended
/// (a session reached both through its entry and a moved marker counts once).
const DELETE_USER: &str = concat!(
    prelude!(),
    r#"
local seg, now, head, hops = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local ended, count, gone = {}, 0, {}
local function ends(member)
  if not ended[member] then ended[member] = true; count = count + 1 end
end
-- The record (or marker) under `member`, reached through a moved marker:
-- as `delete` ends it, following later moves.
local function follow(member)
  for i = 0, hops do
    local key = head .. member .. '}'
    local h = redis.call('GETRANGE', key, 0, seg_end(seg))
    if is_format(h, F_MOVED) then
      local n = u32(h, AT_USER_LEN)
      local to = ''
      if n > 0 then to = redis.call('GETRANGE', key, HEADER, HEADER - 1 + n) end
      local untl = math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE))
      redis.call('DEL', key)
      if untl <= now or #to == 0 then return end
      member = to
    elseif is_format(h, F_ENDED) or #h == 0 then
      return
    else
      if live(h, now) then ends(member) end
      if is_record(h) and user_seg(h) == seg then table.insert(gone, member) end
      redis.call('DEL', key)
      return
    end
  end
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = head .. member .. '}'
  local h = redis.call('GETRANGE', key, 0, seg_end(seg))
  if #h == 0 then
    table.insert(gone, member)
  elseif is_format(h, F_MOVED) then
    if has_user(h) then
      local n = u32(h, AT_USER_LEN)
      -- The new key, then the user segment of the session that moved: an
      -- entry of another user (left by a create refused over this key)
      -- leads nowhere.
      local rest = redis.call('GETRANGE', key, HEADER, HEADER - 1 + n + #seg)
      local to, owner = string.sub(rest, 1, n), string.sub(rest, n + 1)
      if #owner == 0 or owner == seg then
        local untl = math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE))
        redis.call('DEL', key)
        table.insert(gone, member)
        if untl > now and #to > 0 then follow(to) end
      end
    end
  elseif is_record(h) and user_seg(h) == seg then
    if live(h, now) then ends(member) end
    redis.call('DEL', key)
    table.insert(gone, member)
  end
end
for i = 1, #gone, 500 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 499, #gone)))
end
return count
"#
);

/// Deletes a session only if it belongs to the given user (or is the moved
/// marker of a logged-in session, which `delete_user` follows).
///
/// KEYS: session. ARGV: user segment, now. Returns {2, '', 0} deleted a
/// live record, {1, '', 0} deleted an expired one, {0, '', 0} no record,
/// {-1, '', 0} something else (kept), {3, next, ms} deleted a moved marker
/// that had `ms` to live: the session moved to `next`.
const DELETE_IF_USER: &str = concat!(
    prelude!(),
    r#"
local seg = ARGV[1]
local now = tonumber(ARGV[2])
local h = redis.call('GETRANGE', KEYS[1], 0, seg_end(seg))
if #h == 0 then return {0, '', 0} end
if is_format(h, F_MOVED) and not has_user(h) then return {-1, '', 0} end
if is_format(h, F_MOVED) then
  local n = u32(h, AT_USER_LEN)
  -- The new key, then the user segment of the session that moved: an entry
  -- of another user (left by a create refused over this key) leads nowhere.
  local rest = redis.call('GETRANGE', KEYS[1], HEADER, HEADER - 1 + n + #seg)
  local to, owner = string.sub(rest, 1, n), string.sub(rest, n + 1)
  if #owner > 0 and owner ~= seg then return {-1, '', 0} end
  local untl = math.min(i64(h, AT_IDLE), i64(h, AT_ABSOLUTE))
  redis.call('DEL', KEYS[1])
  if untl <= now or #to == 0 then return {1, '', 0} end
  return {3, to, untl - now}
end
if not is_record(h) or user_seg(h) ~= seg then return {-1, '', 0} end
local was_live = live(h, now)
redis.call('DEL', KEYS[1])
if was_live then return {2, '', 0} end
return {1, '', 0}
"#
);

/// The whole lifecycle step on a single server, atomically: rotation,
/// insert-only create, per-user limit, eviction.
///
/// KEYS: new session, [old session], [index]. ARGV:
/// 1 value, 2 now, 3 ttl ms, 4 member (new storage key), 5 index ttl ms,
/// 6 "1" when KEYS[2] is the old session, 7 expected version of the old
/// record (8 bytes), 8 user segment of the new record, 9 old member,
/// 10 moved marker, 11 limit (0: none), 12 strategy ("r" reject new, "e"
/// evict oldest), 13 session key prefix (`<prefix>:s:{`), 14 the new
/// record's created_at.
///
/// With a limit it reads every session in the user's index, keys it does
/// not declare: this needs a standalone server.
///
/// Returns {code, {evicted members}}: 1 done, 0 a live record holds the
/// new key, -1 the old record is not live, -2 conflict (version or user),
/// -3 the user is at the limit.
const CREATE_WITH: &str = concat!(
    prelude!(),
    rotation!(),
    r#"
local function after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
local function newest_first(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return after(a[2], b[2])
end
local now = tonumber(ARGV[2])
local seg, member, old_member = ARGV[8], ARGV[4], ARGV[9]
local old, idx, oh
local k = 2
if ARGV[6] == '1' then old = KEYS[2]; k = 3 end
idx = KEYS[k]
if old then
  oh = redis.call('GETRANGE', old, 0, seg_end(seg))
  local c = check_old(oh, now, ARGV[7], seg)
  if c ~= 1 then return {c, {}} end
end
if live(redis.call('GETRANGE', KEYS[1], 0, HEADER - 1), now) then return {0, {}} end
local evicted, stays = {}, true
local max = tonumber(ARGV[11])
if max > 0 and idx then
  local others = {}
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    if m ~= member and m ~= old_member then
      local h = redis.call('GETRANGE', ARGV[13] .. m .. '}', 0, seg_end(seg))
      if live(h, now) and user_seg(h) == seg then
        others[#others + 1] = {i64(h, AT_CREATED), m}
      end
    end
  end
  if ARGV[12] == 'r' then
    if #others >= max then return {-3, {}} end
  else
    others[#others + 1] = {tonumber(ARGV[14]), member}
    table.sort(others, newest_first)
    for i = max + 1, #others do
      evicted[#evicted + 1] = others[i][2]
      if others[i][2] == member then stays = false end
    end
  end
end
if old then
  retire(old, oh, now, ARGV[10])
  if idx then redis.call('ZREM', idx, old_member) end
end
for _, m in ipairs(evicted) do
  if m ~= member then
    redis.call('DEL', ARGV[13] .. m .. '}')
    redis.call('ZREM', idx, m)
  end
end
if stays then
  if tonumber(ARGV[3]) <= 0 then
    redis.call('DEL', KEYS[1])
  else
    if idx then index_add(idx, member, ARGV[2], ARGV[5]) end
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  end
end
return {1, evicted}
"#
);

/// Deletes a pending marker (a refused login's), nothing else.
///
/// KEYS: session. Returns 1 deleted, 0 not a pending marker.
const DROP_PENDING: &str = concat!(
    prelude!(),
    r#"
if is_format(redis.call('GETRANGE', KEYS[1], 0, HEADER - 1), F_PENDING) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#
);

/// A user's index entries with the header of each entry's session, read in
/// one step so a listing never sees a session between two states (single
/// server only: it reads session keys it is not given).
///
/// KEYS: index. ARGV: session key head (`<prefix>:s:{`), last byte to read
/// of every value: through the user id and the 4 bytes after it, which
/// hold a labelled record's label length. Of a labelled record the label is
/// read as well. Returns a flat array: member, score, value prefix, member,
/// ...
const LIST_USER: &str = concat!(
    prelude!(),
    r#"
local out = {}
local last = tonumber(ARGV[2])
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local m = entries[i]
  local key = ARGV[1] .. m .. '}'
  local h = redis.call('GETRANGE', key, 0, last)
  -- A labelled record of this user: its label length ends `h`.
  if #h == last + 1 and is_format(h, F_LABELLED) then
    local n = u32(h, last + 2 - LABEL_LEN)
    if n > 0 then h = h .. redis.call('GETRANGE', key, last + 1, last + n) end
  end
  out[#out + 1] = m
  out[#out + 1] = entries[i + 1]
  out[#out + 1] = h
end
return out
"#
);

/// Removes index entries whose session keys hold nothing, leaving those a
/// create wrote again since the caller saw them gone (it indexed them
/// itself): single server only, it reads keys it is not given.
///
/// KEYS: index. ARGV: session key head (`<prefix>:s:{`), then members.
/// Returns how many entries were removed.
const UNINDEX_IF_GONE: &str = r#"
local n = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i] .. '}') == 0 then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"#;

/// A script that reads every header field of the record under `KEYS[1]`
/// with the same layout locals and helpers the real scripts use, for the
/// test that checks them against core's encoder on a real server.
///
/// ARGV: the record's user segment, now (unix ms). Returns {format, user
/// flag, version (8 bytes), created, last access, idle, absolute (decimal
/// strings), user id length, user id, 1 if `user_seg` equals ARGV[1],
/// 1 if `live` at ARGV[2]}.
#[doc(hidden)]
#[must_use]
pub fn layout_probe() -> String {
    let body = concat!(
        prelude!(),
        r#"
local h = redis.call('GETRANGE', KEYS[1], 0, HEADER - 1)
local full = redis.call('GETRANGE', KEYS[1], 0, seg_end(ARGV[1]))
local function ms(at) return string.format('%d', i64(h, at)) end
local same, alive = 0, 0
if user_seg(full) == ARGV[1] then same = 1 end
if live(h, tonumber(ARGV[2])) then alive = 1 end
return {string.byte(h, AT_FORMAT), string.byte(h, AT_USER_FLAG),
  string.sub(h, AT_VERSION, AT_VERSION + WORD - 1), ms(AT_CREATED), ms(AT_LAST_ACCESS),
  ms(AT_IDLE), ms(AT_ABSOLUTE), u32(h, AT_USER_LEN), string.sub(full, AT_USER), same, alive}
"#
    );
    format!("{}{body}", layout_lua())
}

/// The Lua body of a script without the shared helpers it starts with,
/// for the function library, which defines the helpers once.
fn body(script: &'static str) -> &'static str {
    let s = script.strip_prefix(prelude!()).unwrap_or(script);
    s.strip_prefix(rotation!()).unwrap_or(s)
}

/// Whether a script may run when the server is over `maxmemory`: as a
/// function, Redis checks this before the call (an `EVAL` script is
/// checked at its first write that may grow memory, which is what the
/// store relied on before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Oom {
    /// Refused over `maxmemory`, like any write that may grow memory.
    Deny,
    /// Removes data (and may leave a small marker): allowed, so that a
    /// logout works on a full server.
    Allow,
    /// Reads only (`no-writes`).
    ReadOnly,
}

/// Every script: field name, Lua source (with the helpers), OOM policy.
const ALL: [(&str, &str, Oom); 12] = [
    ("create", CREATE, Oom::Deny),
    ("index_add", INDEX_ADD, Oom::Deny),
    ("update", UPDATE, Oom::Deny),
    ("touch", TOUCH, Oom::Deny),
    ("delete", DELETE, Oom::Allow),
    ("delete_if_user", DELETE_IF_USER, Oom::Allow),
    ("delete_user", DELETE_USER, Oom::Allow),
    ("create_with", CREATE_WITH, Oom::Deny),
    ("rotate", MOVE, Oom::Deny),
    ("drop_pending", DROP_PENDING, Oom::Allow),
    ("list_user_sessions", LIST_USER, Oom::ReadOnly),
    ("unindex_if_gone", UNINDEX_IF_GONE, Oom::Allow),
];

/// The scripts as one Redis function library (Redis 7+): loaded once per
/// server with `FUNCTION LOAD REPLACE`, then each script is an `FCALL`.
///
/// Why: an `EVALSHA` runs the whole chunk on every call, so every helper
/// function of the shared prelude is created again each time; a library
/// creates them once, when it is loaded. On Redis 7.0 this takes about
/// 1 µs of server time off every write (`update`: 5.2 → 4.3 µs at 200 B),
/// which is a fifth of the near cache's write path.
///
/// The library's name carries a hash of its code, so two versions of this
/// crate against one server (a rolling deploy) each call their own
/// functions. Where functions are unavailable (Redis 6, an ACL without
/// `FUNCTION`), the store keeps calling the same scripts with `EVALSHA`.
pub(crate) struct Library {
    /// `#!lua name=…` source registering every script.
    code: String,
    /// [`UNKNOWN`], [`ON`] (calls use `FCALL`) or [`OFF`] (the server
    /// refused functions: `EVALSHA`).
    state: AtomicU8,
    /// When (ms on [`Instant`] since `epoch`) a load may be tried again
    /// after one failed for a reason other than a refusal.
    next_try_ms: AtomicU64,
    epoch: Instant,
    /// One load at a time: calls that find the library missing together
    /// send one `FUNCTION LOAD` each, one after the other (the later ones
    /// answered "already exists", with nothing compiled or written).
    loading: tokio::sync::Mutex<()>,
}

/// Not loaded yet (calls use `EVALSHA`, and try to load it).
const UNKNOWN: u8 = 0;
/// Loaded: calls use `FCALL`.
const ON: u8 = 1;
/// Refused by the server: calls use `EVALSHA`.
const OFF: u8 = 2;
/// Least time between two load attempts that failed without a refusal
/// (a full or loading server, a demoted node, a lost connection).
const RETRY_LOAD_AFTER: Duration = Duration::from_secs(1);

impl Library {
    fn new(layout: &str) -> (Self, String) {
        let mut defs = String::new();
        for (name, source, oom) in ALL {
            let flags = match oom {
                Oom::Deny => "",
                Oom::Allow => ", flags={'allow-oom'}",
                Oom::ReadOnly => ", flags={'no-writes'}",
            };
            defs.push_str(&format!(
                "redis.register_function{{function_name=NAME .. '_{name}', callback=function(KEYS, ARGV)\n{}\nend{flags}}}\n",
                body(source)
            ));
        }
        let helpers = concat!(prelude!(), rotation!());
        let unnamed = format!("{layout}{helpers}{defs}");
        // A 64-bit prefix of the code's SHA-1 (the one `EVALSHA` uses): the
        // same name is the same code, so a library already there under it
        // is this one.
        let sha1 = Script::new(&unnamed).get_hash().to_owned();
        let name = format!("session_{}", &sha1[..16]);
        let code = format!("#!lua name={name}\nlocal NAME = '{name}'\n{unnamed}");
        (
            Self {
                code,
                state: AtomicU8::new(UNKNOWN),
                next_try_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                loading: tokio::sync::Mutex::new(()),
            },
            name,
        )
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a load may be tried now (not refused, and not within
    /// [`RETRY_LOAD_AFTER`] of a failed one).
    fn may_try(&self) -> bool {
        self.state.load(Ordering::Acquire) != OFF
            && self.now_ms() >= self.next_try_ms.load(Ordering::Acquire)
    }

    /// Loads the library on the server(s) behind `conn` (every primary of
    /// a cluster) with `FUNCTION LOAD`; a library already there under its
    /// name counts as loaded. Calls use `FCALL` once it is; on a refusal
    /// (Redis 6, an ACL without `FUNCTION`) they use `EVALSHA` from then
    /// on; any other failure is tried again by a call at least
    /// [`RETRY_LOAD_AFTER`] later.
    pub(crate) async fn load(&self, conn: &mut Conn) -> RedisResult<()> {
        let _one_at_a_time = self.loading.lock().await;
        let loaded = Cmd::new()
            .arg("FUNCTION")
            .arg("LOAD")
            .arg(&self.code)
            .query_async::<redis::Value>(conn)
            .await;
        match loaded {
            Err(e) if !already_exists(&e) => {
                if refused(&e) {
                    self.state.store(OFF, Ordering::Release);
                } else {
                    let retry = u64::try_from(RETRY_LOAD_AFTER.as_millis()).unwrap_or(u64::MAX);
                    self.next_try_ms
                        .store(self.now_ms().saturating_add(retry), Ordering::Release);
                }
                Err(e)
            }
            _ => {
                self.state.store(ON, Ordering::Release);
                Ok(())
            }
        }
    }

    /// Whether calls go out as `FCALL`.
    pub(crate) fn uses_functions(&self) -> bool {
        self.state.load(Ordering::Acquire) == ON
    }
}

/// One script: its `EVALSHA` form and its function in the [`Library`].
pub(crate) struct LuaScript {
    script: Script,
    function: String,
    library: Arc<Library>,
}

/// The compiled scripts (their SHA-1s are computed once, at construction).
pub(crate) struct Scripts {
    pub(crate) library: Arc<Library>,
    pub(crate) create: LuaScript,
    pub(crate) index_add: LuaScript,
    pub(crate) update: LuaScript,
    pub(crate) touch: LuaScript,
    pub(crate) delete: LuaScript,
    pub(crate) delete_if_user: LuaScript,
    pub(crate) delete_user: LuaScript,
    pub(crate) create_with: LuaScript,
    pub(crate) rotate: LuaScript,
    pub(crate) drop_pending: LuaScript,
    pub(crate) list_user_sessions: LuaScript,
    pub(crate) unindex_if_gone: LuaScript,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let layout = layout_lua();
        let (library, name) = Library::new(&layout);
        let library = Arc::new(library);
        let make = |field: &str| {
            let (_, source, _) = ALL
                .iter()
                .find(|(f, _, _)| *f == field)
                .expect("every field is listed in ALL");
            LuaScript {
                script: Script::new(&format!("{layout}{source}")),
                function: format!("{name}_{field}"),
                library: library.clone(),
            }
        };
        Self {
            create: make("create"),
            index_add: make("index_add"),
            update: make("update"),
            touch: make("touch"),
            delete: make("delete"),
            delete_if_user: make("delete_if_user"),
            delete_user: make("delete_user"),
            create_with: make("create_with"),
            rotate: make("rotate"),
            drop_pending: make("drop_pending"),
            list_user_sessions: make("list_user_sessions"),
            unindex_if_gone: make("unindex_if_gone"),
            library,
        }
    }
}

/// Result codes of [`TOUCH`].
pub(crate) mod touch {
    pub(crate) const TOUCHED: i64 = 1;
    pub(crate) const DELETED: i64 = 2;
}

/// Result codes of [`UPDATE`].
pub(crate) mod update {
    pub(crate) const STORED: i64 = 1;
    pub(crate) const NOT_FOUND: i64 = 0;
    pub(crate) const CONFLICT: i64 = -1;
    pub(crate) const USER_DIFFERS: i64 = -2;
    pub(crate) const NEEDS_INDEX: i64 = -3;
}

/// Result codes of [`CREATE`].
pub(crate) mod create {
    pub(crate) const STORED: i64 = 1;
    pub(crate) const EXISTS: i64 = 0;
    pub(crate) const ENDED: i64 = 2;
    pub(crate) const MOVED_HERE: i64 = 3;
}

/// Result codes of [`DELETE_IF_USER`].
pub(crate) mod delete_if_user {
    pub(crate) const DELETED_LIVE: i64 = 2;
    pub(crate) const DELETED_EXPIRED: i64 = 1;
    pub(crate) const MISSING: i64 = 0;
    pub(crate) const MOVED: i64 = 3;
}

/// Result codes of [`DELETE`].
pub(crate) mod delete {
    pub(crate) const RECORD: i64 = 1;
    pub(crate) const MOVED: i64 = 2;
    pub(crate) const ENDED: i64 = 3;
    pub(crate) const FLAG_LIVE: i64 = 1;
    pub(crate) const FLAG_USER: i64 = 2;
}

/// Result codes of [`CREATE_WITH`] and [`MOVE`].
pub(crate) mod lifecycle {
    pub(crate) const DONE: i64 = 1;
    pub(crate) const EXISTS: i64 = 0;
    pub(crate) const NOT_FOUND: i64 = -1;
    pub(crate) const CONFLICT: i64 = -2;
    pub(crate) const LIMIT: i64 = -3;
}

/// Room for the small arguments of a script call (numbers, flags, a
/// storage key) beyond the `bytes` its caller declares.
const SMALL_ARGS: usize = 192;

/// Starts a call of `script` declaring `keys` keys (`FCALL` of its
/// function once the [`Library`] is loaded, else `EVALSHA`); append the
/// keys, then the arguments. `bytes` is the length of the large ones (key
/// names, the record) so that the command's buffer is allocated once:
/// appending a record to an empty command would reallocate it several
/// times per write.
///
/// Building the command directly (rather than through
/// [`redis::ScriptInvocation`]) copies each argument, the record included,
/// once instead of twice.
pub(crate) fn evalsha(script: &LuaScript, keys: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(16, "EVALSHA".len() + 40 + bytes + SMALL_ARGS);
    if script.library.uses_functions() {
        cmd.arg("FCALL").arg(&script.function).arg(keys);
    } else {
        cmd.arg("EVALSHA").arg(script.script.get_hash()).arg(keys);
    }
    cmd
}

/// Whether `e` says the function called is not on the server (restarted
/// without persistence, `FUNCTION FLUSH`, a node that never saw the
/// library): the call did not run.
fn function_missing(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// Whether `e` answers `FUNCTION LOAD` of a library whose name is taken:
/// by this very code, as the name is its hash.
fn already_exists(e: &redis::RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("Library") && d.ends_with("already exists"))
}

/// Whether `e` refuses a function command itself (`FCALL`, `FUNCTION
/// LOAD`): Redis 6 does not know it, or an ACL forbids it. The command did
/// not run, and will not run on this server.
fn refused(e: &redis::RedisError) -> bool {
    let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
    match e.code() {
        Some("ERR") => {
            detail.starts_with("unknown command") || detail.starts_with("unknown subcommand")
        }
        // Its wording names the command ('fcall', 'function|load'); a key
        // the user may not touch reads otherwise.
        Some("NOPERM") => detail.contains("'fcall'") || detail.contains("'function"),
        _ => false,
    }
}

/// `cmd` (an `FCALL` built by [`evalsha`]) as the `EVALSHA` of the same
/// script with the same keys and arguments.
fn as_evalsha(script: &LuaScript, cmd: &Cmd) -> Cmd {
    let mut eval = Cmd::new();
    eval.arg("EVALSHA").arg(script.script.get_hash());
    for arg in cmd.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            eval.arg(bytes);
        }
    }
    eval
}

/// Sends an `EVALSHA`, loading the script once on `NOSCRIPT` (server
/// restarted, `SCRIPT FLUSH`, failover to a node that never saw it).
async fn eval<T: FromRedisValue>(script: &LuaScript, cmd: &Cmd, conn: &mut Conn) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            tracing::debug!(target: "session_redis", "script cache was empty; reloading");
            script.script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// Sends `cmd` (built by [`evalsha`] for `script`).
///
/// An `EVALSHA` answered `NOSCRIPT` loads its script and goes once more;
/// while the library has not been loaded, an `EVALSHA` first tries to
/// load it, so later calls use `FCALL`. An `FCALL` whose function is
/// missing loads the library and goes once more; if the library cannot be
/// loaded, or the server refuses `FCALL`, this call goes as `EVALSHA`.
/// None of these replies means the call ran, so sending it again runs it
/// at most once.
pub(crate) async fn run<T: FromRedisValue>(
    script: &LuaScript,
    cmd: &Cmd,
    conn: &mut Conn,
) -> RedisResult<T> {
    let library = &script.library;
    let fcall = cmd
        .args_iter()
        .next()
        .is_some_and(|a| matches!(a, redis::Arg::Simple(b"FCALL")));
    if !fcall {
        if library.state.load(Ordering::Acquire) == UNKNOWN && library.may_try() {
            if let Err(e) = library.load(conn).await {
                tracing::debug!(target: "session_redis", error = %e, "function library not loaded; calling scripts with EVALSHA");
            }
        }
        return eval(script, cmd, conn).await;
    }
    let refusal = match cmd.query_async(conn).await {
        Err(e) if function_missing(&e) => {
            tracing::debug!(target: "session_redis", "function library missing; loading it");
            if library.may_try() {
                match library.load(conn).await {
                    Ok(()) => return cmd.query_async(conn).await,
                    Err(e) => e,
                }
            } else {
                e
            }
        }
        Err(e) if refused(&e) => {
            library.state.store(OFF, Ordering::Release);
            e
        }
        other => return other,
    };
    if library.state.load(Ordering::Acquire) == OFF {
        tracing::warn!(target: "session_redis", error = %refusal, "the server refuses Redis functions; calling scripts with EVALSHA");
    } else {
        tracing::debug!(target: "session_redis", error = %refusal, "function library unavailable; this call goes as EVALSHA");
    }
    eval(script, &as_evalsha(script, cmd), conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a client gets for the reply line `-{line}`.
    fn reply(line: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .expect("an error reply parses")
            .extract_error()
            .expect_err("an error reply is an error")
    }

    /// The replies Redis 6.2, 7.0 and 7.2 give, word for word.
    #[test]
    fn function_replies_are_told_apart() {
        let missing = reply("ERR Function not found");
        assert!(function_missing(&missing) && !refused(&missing) && !already_exists(&missing));
        let exists = reply("ERR Library 'session_0123456789abcdef' already exists");
        assert!(already_exists(&exists) && !refused(&exists) && !function_missing(&exists));
        for refusal in [
            // Redis 6.2 knows neither command.
            "ERR unknown command `FCALL`, with args beginning with: `session_x_update`, `1`, ",
            "ERR unknown command 'FUNCTION', with args beginning with: 'LOAD' ",
            "ERR unknown subcommand 'LOAD'. Try FUNCTION HELP.",
            // ACLs, 7.0 and 7.2 wording.
            "NOPERM this user has no permissions to run the 'fcall' command",
            "NOPERM this user has no permissions to run the 'function|load' command",
            "NOPERM User evalonly has no permissions to run the 'fcall' command",
        ] {
            let e = reply(refusal);
            assert!(refused(&e), "{refusal}");
            assert!(!function_missing(&e) && !already_exists(&e), "{refusal}");
        }
        for other in [
            // A key the user may not touch, a full server, a demoted or
            // loading node: not a refusal of functions.
            "NOPERM this user has no permissions to access one of the keys used as arguments",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "ERR Error running script (call to f_123): @user_script:1: boom",
        ] {
            let e = reply(other);
            assert!(!refused(&e), "{other}");
            assert!(!function_missing(&e) && !already_exists(&e), "{other}");
        }
    }

    /// Every script is a function of the library, with its OOM flags.
    #[test]
    fn the_library_registers_every_script() {
        let scripts = Scripts::new();
        let code = &scripts.library.code;
        let name = code
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("#!lua name="))
            .expect("a library header");
        assert!(name.starts_with("session_") && name.len() == "session_".len() + 16);
        for (field, _, oom) in ALL {
            let at = code
                .find(&format!("NAME .. '_{field}'"))
                .unwrap_or_else(|| panic!("{field} is not registered"));
            let end = code[at..]
                .find("\nredis.register_function")
                .map_or(code.len(), |n| at + n);
            let registration = &code[at..end];
            let flags = match oom {
                Oom::Deny => None,
                Oom::Allow => Some("'allow-oom'"),
                Oom::ReadOnly => Some("'no-writes'"),
            };
            match flags {
                Some(f) => assert!(registration.contains(f), "{field} lacks {f}"),
                None => assert!(!registration.contains("flags="), "{field} has flags"),
            }
        }
        assert!(scripts.update.function.starts_with(name));
        assert!(!scripts.library.uses_functions(), "on before any load");
    }

    /// Record offsets come only from [`layout_lua`]: no script body names
    /// one as a number (the positions and `GETRANGE` offsets of the
    /// header's fields, the header's length and its last offset).
    #[test]
    fn scripts_take_every_offset_from_the_layout() {
        use session_core::codec::layout as l;
        let fields = [
            l::VERSION,
            l::CREATED_AT,
            l::LAST_ACCESS,
            l::IDLE_DEADLINE,
            l::ABSOLUTE_DEADLINE,
            l::USER_LEN,
            l::HEADER_LEN,
        ];
        let mut banned: Vec<String> = Vec::new();
        for f in fields {
            // 0-based offset, 1-based position, end of the previous field.
            banned.extend([f, f + 1, f - 1].map(|n| n.to_string()));
        }
        banned.retain(|n| n.parse::<usize>().unwrap() > 4);
        let prelude = prelude!();
        let rotation = rotation!();
        for (name, body) in [
            ("prelude", prelude),
            ("rotation", rotation),
            ("CREATE", CREATE),
            ("INDEX_ADD", INDEX_ADD),
            ("MOVE", MOVE),
            ("UPDATE", UPDATE),
            ("TOUCH", TOUCH),
            ("DELETE", DELETE),
            ("DELETE_IF_USER", DELETE_IF_USER),
            ("CREATE_WITH", CREATE_WITH),
            ("DROP_PENDING", DROP_PENDING),
            ("LIST_USER", LIST_USER),
            ("UNINDEX_IF_GONE", UNINDEX_IF_GONE),
        ] {
            let mut code: String = body
                .lines()
                .map(|line| line.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            // ARGV and KEYS indices are not offsets.
            for i in (1..=20).rev() {
                code = code
                    .replace(&format!("ARGV[{i}]"), "ARGV")
                    .replace(&format!("KEYS[{i}]"), "KEYS");
            }
            let numbers = code
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '.')
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
            for n in numbers {
                assert!(
                    !banned.contains(&n.to_owned()),
                    "{name} hard-codes {n}, a record offset: use the layout locals"
                );
            }
        }
    }

    #[test]
    fn layout_locals_are_positions_of_the_core_layout() {
        use session_core::codec::layout as l;
        let lua = layout_lua();
        for (name, offset) in [
            ("AT_VERSION", l::VERSION),
            ("AT_IDLE", l::IDLE_DEADLINE),
            ("AT_USER_LEN", l::USER_LEN),
        ] {
            assert!(lua.contains(name), "{name} missing");
            assert!(lua.contains(&(offset + 1).to_string()), "{name}");
        }
    }
}
