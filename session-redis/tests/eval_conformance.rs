//! The whole `session-core` conformance suite against a single Redis
//! server (`REDIS_URL`) as a user that may not use Redis functions: the
//! store calls its scripts with `EVALSHA`, as it does on Redis 6, which
//! has no functions (see the crate README).

use session_redis::RedisStore;
use session_test_support::servers::redis_url;

/// The ACL user the suite connects as: everything but functions.
const USER: &str = "session_eval_only";

/// `redis_url()` as [`USER`], after making sure the user exists.
async fn eval_only_url() -> String {
    let url = redis_url();
    let mut admin = redis::Client::open(url.as_str())
        .expect("REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to the test Redis failed (REDIS_URL, or run scripts/services.sh)");
    redis::cmd("ACL")
        .arg(&["SETUSER", USER, "on", ">eval-only", "~*", "&*", "+@all"])
        .arg(&["-function", "-fcall", "-fcall_ro"])
        .query_async::<()>(&mut admin)
        .await
        .expect("ACL SETUSER");
    let rest = url
        .strip_prefix("redis://")
        .expect("REDIS_URL starts with redis://");
    // Any credentials of REDIS_URL are replaced by the user's.
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("redis://{USER}:eval-only@{host}")
}

session_core::conformance_suite!(|namespace: String| async move {
    RedisStore::builder()
        .namespace(&namespace)
        .connect(&eval_only_url().await)
        .await
        .expect("connecting to the test Redis failed")
});
