//! The server-side Lua scripts.
//!
//! Each is sent once (`SCRIPT LOAD`, done by [`redis::Script`] on the first
//! `NOSCRIPT` reply) and then invoked by its SHA-1 with `EVALSHA`, so a call
//! carries only keys and arguments. After a server restart or `SCRIPT FLUSH`
//! the first call gets `NOSCRIPT` again and the script is reloaded
//! transparently.
//!
//! Every script reads the fixed record header with `GETRANGE` (see
//! [`crate::codec`]) and judges liveness against the caller's clock (`now`
//! argument) as well as the server's TTL, so a record past its deadline is
//! dead for `update` and `touch` even if Redis has not evicted it yet.
//!
//! A record is live for a script only if its format byte is 1: the moved
//! and ended markers (see [`crate::codec`]) share the header but are never
//! live, so `update`, `touch` and a rotation from a moved key find nothing.
//!
//! On a cluster each script gets one key, and touches only that key. The
//! combined forms (session key plus index key) are used only against a
//! single server, where they keep the index consistent atomically. Two
//! single-server scripts go further and touch keys they compute rather than
//! declare, which a standalone server allows (a cluster would not, as those
//! keys may live on other nodes): `CREATE_WITH` reads the sessions listed
//! in the user's index (`<prefix>:s:{<member>}`) to count and evict them,
//! and `DELETE` follows moved markers to the keys they name.

use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind};

use crate::connection::Conn;

/// Helpers shared by every script.
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
local function live(h, now)
  return #h >= 46 and string.byte(h, 1) == 1 and now < math.min(i64(h, 27), i64(h, 35))
end
local function is_format(h, f)
  return #h >= 46 and string.byte(h, 1) == f
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
/// KEYS: session, [index]. ARGV: value, now, ttl ms, member, index ttl ms.
/// Returns 1 when stored, 0 when a live record exists, 2 when an ended
/// marker holds the key (cluster: the rotation writing it was ended).
const CREATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[2])
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
if live(h, now) then return 0 end
if is_format(h, 3) then return 2 end
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
-- The record under `key` (header `h`, read to 40 + #seg) may move if it is
-- live at `version` and anonymous or bound to the user of `seg`.
-- 1 yes, -1 not found, -2 conflict.
local function check_old(h, now, version, seg)
  if not live(h, now) then return -1 end
  if string.sub(h, 3, 10) ~= version then return -2 end
  if string.byte(h, 2) == 1 and string.sub(h, 2, 2) .. string.sub(h, 43) ~= seg then return -2 end
  return 1
end
-- Replaces the record under `key` with `marker`, carrying its deadlines and
-- living as long as it would have.
local function retire(key, h, now, marker)
  local ttl = math.min(i64(h, 27), i64(h, 35)) - now
  if ttl > 3153600000000 then ttl = 3153600000000 end
  -- Byte 2 keeps the old record's has-user flag, so a user's index entry
  -- never leads a delete_user to an anonymous session.
  marker = string.sub(marker, 1, 1) .. string.sub(h, 2, 2) .. string.sub(marker, 3, 26)
    .. string.sub(h, 27, 42) .. string.sub(marker, 43)
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
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
if #h >= 46 and string.byte(h, 2) == 1 and u32(h, 43) > 0 then
  h = h .. redis.call('GETRANGE', KEYS[1], 46, 45 + u32(h, 43))
end
local c = check_old(h, now, ARGV[2], ARGV[3])
if c ~= 1 then return {c, 0, ''} end
retire(KEYS[1], h, now, ARGV[4])
if string.byte(h, 2) == 1 then return {1, 1, string.sub(h, 47)} end
return {1, 0, ''}
"#
);

/// Compare-and-set on the version.
///
/// KEYS: session, [index]. ARGV: expected version (8 bytes), now, value,
/// ttl ms, user segment, new absolute deadline, index ttl ms, index ready
/// ("1" when the caller already extended the index), member.
/// Returns 1 stored, 0 not found, -1 conflict, -2 user differs, -3 the index
/// must be extended first (cluster only).
const UPDATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[2])
local seg = ARGV[5]
local h = redis.call('GETRANGE', KEYS[1], 0, 40 + #seg)
if not live(h, now) then return 0 end
if string.sub(h, 3, 10) ~= ARGV[1] then return -1 end
if string.sub(h, 2, 2) .. string.sub(h, 43) ~= seg then return -2 end
if string.byte(h, 2) == 1 and tonumber(ARGV[6]) > i64(h, 35) then
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
end
return 1
"#
);

/// Moves last access and idle deadline in place, and the TTL.
///
/// KEYS: session. ARGV: now, 16 bytes (last access, idle deadline), idle
/// deadline. Returns 1 touched, 0 not found.
const TOUCH: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[1])
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
if not live(h, now) then return 0 end
local expires = math.min(tonumber(ARGV[3]), i64(h, 35))
if expires <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
local ttl = expires - now
if ttl > 3153600000000 then ttl = 3153600000000 end
redis.call('SETRANGE', KEYS[1], 18, ARGV[2])
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
return 1
"#
);

/// Deletes a session, following moved markers.
///
/// KEYS: session. ARGV: moves to follow within this call (single server:
/// 64; cluster: 0, the caller follows them across slots), now, session key prefix (`<prefix>:s:{`), ended-marker TTL ms
/// (cluster, when this key was reached by following a move: a key holding
/// no record gets the ended marker for that long; else 0), ended marker.
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
  local h = redis.call('GETRANGE', key, 0, 45)
  if is_format(h, 2) then
    local n = u32(h, 43)
    local to = ''
    if n > 0 then to = redis.call('GETRANGE', key, 46, 45 + n) end
    local untl = math.min(i64(h, 27), i64(h, 35))
    redis.call('DEL', key)
    if untl <= now or #to == 0 then return {0, '', member, 0} end
    if i == hops then return {2, '', to, untl - now} end
    key, member = ARGV[3] .. to .. '}', to
  elseif is_format(h, 3) then
    return {0, '', member, 0}
  elseif #h == 0 or (block > 0 and not live(h, now)) then
    if block > 0 then
      redis.call('SET', key, ARGV[5], 'PX', ARGV[4])
      return {3, '', member, 0}
    end
    return {0, '', member, 0}
  else
    local flags, user = 0, ''
    if live(h, now) then flags = 1 end
    if is_format(h, 1) and string.byte(h, 2) == 1 then
      flags = flags + 2
      local n = u32(h, 43)
      if n > 0 then user = redis.call('GETRANGE', key, 46, 45 + n) end
    end
    redis.call('DEL', key)
    return {1, user, member, flags}
  end
end
return {0, '', member, 0}
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
local h = redis.call('GETRANGE', KEYS[1], 0, 40 + #seg)
if #h == 0 then return {0, '', 0} end
if is_format(h, 2) and string.byte(h, 2) ~= 1 then return {-1, '', 0} end
if is_format(h, 2) then
  local n = u32(h, 43)
  local to = ''
  if n > 0 then to = redis.call('GETRANGE', KEYS[1], 46, 45 + n) end
  local untl = math.min(i64(h, 27), i64(h, 35))
  redis.call('DEL', KEYS[1])
  if untl <= now or #to == 0 then return {1, '', 0} end
  return {3, to, untl - now}
end
if not is_format(h, 1) or string.sub(h, 2, 2) .. string.sub(h, 43) ~= seg then return {-1, '', 0} end
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
  oh = redis.call('GETRANGE', old, 0, 40 + #seg)
  local c = check_old(oh, now, ARGV[7], seg)
  if c ~= 1 then return {c, {}} end
end
if live(redis.call('GETRANGE', KEYS[1], 0, 45), now) then return {0, {}} end
local evicted, stays = {}, true
local max = tonumber(ARGV[11])
if max > 0 and idx then
  local others = {}
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
    if m ~= member and m ~= old_member then
      local h = redis.call('GETRANGE', ARGV[13] .. m .. '}', 0, 40 + #seg)
      if live(h, now) and string.sub(h, 2, 2) .. string.sub(h, 43) == seg then
        others[#others + 1] = {i64(h, 11), m}
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
if is_format(redis.call('GETRANGE', KEYS[1], 0, 45), 4) then
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
/// KEYS: index. ARGV: session key head (`<prefix>:s:{`), last header byte
/// to read. Returns a flat array: member, score, header, member, ...
const LIST_USER: &str = r#"
local out = {}
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local m = entries[i]
  out[#out + 1] = m
  out[#out + 1] = entries[i + 1]
  out[#out + 1] = redis.call('GETRANGE', ARGV[1] .. m .. '}', 0, tonumber(ARGV[2]))
end
return out
"#;

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

/// The compiled scripts (their SHA-1s are computed once, at construction).
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) index_add: Script,
    pub(crate) update: Script,
    pub(crate) touch: Script,
    pub(crate) delete: Script,
    pub(crate) delete_if_user: Script,
    pub(crate) create_with: Script,
    pub(crate) rotate: Script,
    pub(crate) drop_pending: Script,
    pub(crate) list_user: Script,
    pub(crate) unindex_if_gone: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            create: Script::new(CREATE),
            index_add: Script::new(INDEX_ADD),
            update: Script::new(UPDATE),
            touch: Script::new(TOUCH),
            delete: Script::new(DELETE),
            delete_if_user: Script::new(DELETE_IF_USER),
            create_with: Script::new(CREATE_WITH),
            rotate: Script::new(MOVE),
            drop_pending: Script::new(DROP_PENDING),
            list_user: Script::new(LIST_USER),
            unindex_if_gone: Script::new(UNINDEX_IF_GONE),
        }
    }
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

/// Starts an `EVALSHA` of `script` declaring `keys` keys; append the keys,
/// then the arguments. `bytes` is the length of the large ones (key names,
/// the record) so that the command's buffer is allocated once: appending a
/// record to an empty command would reallocate it several times per write.
///
/// Building the command directly (rather than through
/// [`redis::ScriptInvocation`]) copies each argument, the record included,
/// once instead of twice.
pub(crate) fn evalsha(script: &Script, keys: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(16, "EVALSHA".len() + 40 + bytes + SMALL_ARGS);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    cmd
}

/// Sends `cmd` (built by [`evalsha`] for `script`); on `NOSCRIPT` (server
/// restarted, `SCRIPT FLUSH`, failover to a node that never saw it) loads
/// the script and sends it once more.
pub(crate) async fn run<T: FromRedisValue>(
    script: &Script,
    cmd: &Cmd,
    conn: &mut Conn,
) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            tracing::debug!(target: "session_redis", "script cache was empty; reloading");
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}
