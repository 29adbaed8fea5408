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
//! Scripts only touch the keys they are given. On a cluster each script gets
//! one key; the combined forms (session key plus index key) are used only
//! against a single server, where they keep the index consistent atomically.

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
  return #h >= 46 and now < math.min(i64(h, 27), i64(h, 35))
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
/// Returns 1 when stored, 0 when a live record exists.
const CREATE: &str = concat!(
    prelude!(),
    r#"
local now = tonumber(ARGV[2])
if live(redis.call('GETRANGE', KEYS[1], 0, 45), now) then return 0 end
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
/// KEYS: index. ARGV: member, now, index ttl ms. Returns 1.
const INDEX_ADD: &str = concat!(
    prelude!(),
    r#"
index_add(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
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

/// Deletes a session and says whose it was.
///
/// KEYS: session. Returns {1, user id} for a record bound to a user,
/// {0, ''} otherwise.
const DELETE: &str = concat!(
    prelude!(),
    r#"
local h = redis.call('GETRANGE', KEYS[1], 0, 45)
if #h == 0 then return {0, ''} end
local has, user = 0, ''
if #h >= 46 and string.byte(h, 2) == 1 then
  has = 1
  local n = u32(h, 43)
  if n > 0 then user = redis.call('GETRANGE', KEYS[1], 46, 45 + n) end
end
redis.call('DEL', KEYS[1])
return {has, user}
"#
);

/// Deletes a session only if it belongs to the given user.
///
/// KEYS: session. ARGV: user segment, now. Returns 2 deleted a live record,
/// 1 deleted an expired one, 0 no record, -1 another user's record (kept).
const DELETE_IF_USER: &str = concat!(
    prelude!(),
    r#"
local seg = ARGV[1]
local h = redis.call('GETRANGE', KEYS[1], 0, 40 + #seg)
if #h == 0 then return 0 end
if #h < 46 or string.sub(h, 2, 2) .. string.sub(h, 43) ~= seg then return -1 end
local was_live = live(h, tonumber(ARGV[2]))
redis.call('DEL', KEYS[1])
if was_live then return 2 end
return 1
"#
);

/// The compiled scripts (their SHA-1s are computed once, at construction).
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) index_add: Script,
    pub(crate) update: Script,
    pub(crate) touch: Script,
    pub(crate) delete: Script,
    pub(crate) delete_if_user: Script,
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

/// Result codes of [`DELETE_IF_USER`].
pub(crate) mod delete_if_user {
    pub(crate) const DELETED_LIVE: i64 = 2;
    pub(crate) const DELETED_EXPIRED: i64 = 1;
    pub(crate) const MISSING: i64 = 0;
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
