//! The demo's flows over real TLS with a real HTTP client.

mod common;

use common::{shared, start};

fn session_value(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

#[tokio::test]
async fn the_session_cookie_has_secure_attributes() {
    let s = shared();
    let r = s.login_with(None, "alice", "pw-alice").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location.as_deref(), Some("/profile"));
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    assert_eq!(r.set_cookie.len(), 1);
    let attrs: Vec<&str> = r.set_cookie[0].split(';').map(str::trim).collect();
    let (name, value) = attrs[0].split_once('=').unwrap();
    assert_eq!(name, "__Host-session");
    assert_eq!(value.len(), 43, "256-bit ID, base64url");
    for needed in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attrs.contains(&needed), "{needed} missing: {attrs:?}");
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "host-only cookie: {attrs:?}"
    );
    let cookie = r.cookie();
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
    let profile = s.get("/profile", Some(&cookie)).await;
    assert_eq!(profile.cache_control.as_deref(), Some("no-store"));
    assert!(
        profile.set_cookie.is_empty(),
        "no new cookie on ordinary requests"
    );
}

#[tokio::test]
async fn wrong_credentials_get_401_and_no_cookie() {
    let s = shared();
    for (user, pw) in [("alice", "pw-bob"), ("mallory", "pw-alice"), ("", "")] {
        let r = s.login_with(None, user, pw).await;
        assert_eq!(r.status, 401, "{user}");
        assert!(r.set_cookie.is_empty());
        assert!(r.body.contains("Wrong username or password"));
    }
    assert_eq!(s.get("/profile", None).await.status, 401);
}

#[tokio::test]
async fn a_cookie_from_before_login_is_never_valid_after_it() {
    let s = shared();
    // An attacker plants a well-formed ID of their choosing.
    let planted = "__Host-session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = s.login_with(Some(planted), "alice", "pw-alice").await;
    let issued = r.cookie();
    assert_ne!(issued, planted);
    assert_eq!(s.whoami(planted).await, None);
    assert_eq!(s.whoami(&issued).await.as_deref(), Some("alice"));

    // An attacker plants their own real session, then the victim logs in.
    let attacker = s.login("bob").await;
    let r = s.login_with(Some(&attacker), "alice", "pw-alice").await;
    let victim = r.cookie();
    assert_ne!(session_value(&victim), session_value(&attacker));
    assert_eq!(
        s.whoami(&attacker).await,
        None,
        "the planted ID died at login"
    );
    assert_eq!(s.whoami(&victim).await.as_deref(), Some("alice"));

    // Logging in again, even as the same user, issues yet another ID.
    let again = s
        .login_with(Some(&victim), "alice", "pw-alice")
        .await
        .cookie();
    assert_ne!(again, victim);
    assert_eq!(s.whoami(&victim).await, None);
    assert_eq!(s.whoami(&again).await.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_cookie_replayed_after_logout_is_rejected() {
    let s = shared();
    let cookie = s.login("alice").await;
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
    let r = s.post("/logout", Some(&cookie), &[]).await;
    assert_eq!(r.status, 303);
    assert!(r.removes_cookie(), "{:?}", r.set_cookie);
    let removal = &r.set_cookie[0];
    for needed in ["Secure", "HttpOnly", "Path=/"] {
        assert!(removal.contains(needed), "{removal}");
    }
    assert_eq!(s.whoami(&cookie).await, None);
    assert_eq!(s.get("/sessions", Some(&cookie)).await.status, 401);
    assert_eq!(s.get("/transfer", Some(&cookie)).await.status, 401);
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_user_only() {
    let s = shared();
    // A user of its own, so parallel tests do not interfere.
    let s2 = start(&[]).await;
    let a1 = s2.login("alice").await;
    let a2 = s2.login("alice").await;
    let b = s2.login("bob").await;
    let r = s2
        .post("/logout-all", Some(&a1), &[("password", "pw-alice")])
        .await;
    assert_eq!(r.status, 303);
    assert!(r.removes_cookie());
    assert_eq!(s2.whoami(&a1).await, None);
    assert_eq!(
        s2.whoami(&a2).await,
        None,
        "the other device is logged out too"
    );
    assert_eq!(s2.whoami(&b).await.as_deref(), Some("bob"));
    let pw = [("password", "pw-alice")];
    assert_eq!(s2.post("/logout-all", Some(&a2), &pw).await.status, 401);
    assert_eq!(s.post("/logout-all", None, &pw).await.status, 401);
}

#[tokio::test]
async fn a_session_id_in_the_url_is_ignored() {
    let s = shared();
    let cookie = s.login("alice").await;
    let id = session_value(&cookie);
    for path in [
        format!("/profile?__Host-session={id}"),
        format!("/profile?session={id}&sid={id}"),
    ] {
        assert_eq!(s.get(&path, None).await.status, 401, "{path}");
    }
    assert_eq!(s.whoami(&cookie).await.as_deref(), Some("alice"));
}

#[tokio::test]
async fn the_session_list_shows_times_but_no_ids() {
    let s = start(&[]).await;
    // The first login's browser names itself: the session is labelled.
    let agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let r = common::Server::reply(
        s.client
            .post(format!("{}/login", s.base))
            .header("user-agent", agent)
            .form(&[("username", "alice"), ("password", "pw-alice")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 303, "{r:?}");
    let first = r.cookie();
    let second = s.login("alice").await;
    s.login("bob").await;
    let r = s.get("/sessions", Some(&second)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    for c in [&first, &second] {
        assert!(!r.body.contains(session_value(c)), "an ID leaked");
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["user"], "alice");
    let list = v["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for entry in list {
        let mut keys: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["created", "current", "expires", "key", "label", "last_seen"]
        );
        // The storage key names the session without being its ID.
        let key = entry["key"].as_str().unwrap();
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        for k in ["created", "expires", "last_seen"] {
            let t = entry[k].as_str().unwrap();
            assert!(t.len() >= 20 && t.contains('T'), "RFC 3339: {t}");
        }
    }
    let current: Vec<bool> = list
        .iter()
        .map(|e| e["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current, [false, true], "oldest first, this one last");
    let labels: Vec<Option<&str>> = list.iter().map(|e| e["label"].as_str()).collect();
    assert_eq!(
        labels,
        [
            Some("Firefox on Linux"),
            Some("Unknown browser on unknown system")
        ],
        "the label names the device from the User-Agent"
    );
    assert_eq!(s.get("/sessions", None).await.status, 401);
}

fn token_in(form: &str) -> String {
    let start = form.find("name=\"token\" value=\"").unwrap() + "name=\"token\" value=\"".len();
    let end = form[start..].find('"').unwrap() + start;
    form[start..end].to_owned()
}

#[tokio::test]
async fn the_transfer_token_works_exactly_once() {
    let s = shared();
    assert_eq!(s.get("/transfer", None).await.status, 401);
    assert_eq!(s.post("/transfer/new", None, &[]).await.status, 401);
    let cookie = s.login("alice").await;
    let form = s.post("/transfer/new", Some(&cookie), &[]).await;
    assert_eq!(form.status, 200);
    assert_eq!(form.cache_control.as_deref(), Some("no-store"));
    let token = token_in(&form.body);
    let fields = |t: &'static str| vec![("to", "<b>bob</b>"), ("amount", "10"), ("token", t)];

    assert_eq!(
        s.post("/transfer", Some(&cookie), &fields("")[..2])
            .await
            .status,
        403,
        "no token"
    );
    assert_eq!(
        s.post("/transfer", Some(&cookie), &fields("forged"))
            .await
            .status,
        403
    );
    // The token is bound to the session: another session of the same user cannot use it.
    let other = s.login("alice").await;
    let r = s
        .post(
            "/transfer",
            Some(&other),
            &[("to", "bob"), ("amount", "1"), ("token", &token)],
        )
        .await;
    assert_eq!(r.status, 403);

    let ok = s
        .post(
            "/transfer",
            Some(&cookie),
            &[("to", "<b>bob</b>"), ("amount", "10"), ("token", &token)],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        ok.body.contains("Sent 10 to &lt;b&gt;bob&lt;/b&gt;."),
        "{}",
        ok.body
    );
    let replay = s
        .post(
            "/transfer",
            Some(&cookie),
            &[("to", "bob"), ("amount", "10"), ("token", &token)],
        )
        .await;
    assert_eq!(replay.status, 403);
    assert_eq!(
        s.post("/transfer", None, &[("token", &token)]).await.status,
        401
    );
}

#[tokio::test]
async fn concurrent_transfers_with_one_token_succeed_once() {
    let s = shared();
    let cookie = s.login("bob").await;
    let token = token_in(&s.post("/transfer/new", Some(&cookie), &[]).await.body);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (s, cookie, token) = (s.clone(), cookie.clone(), token.clone());
        set.spawn(async move {
            let form = [("to", "carol"), ("amount", "5"), ("token", token.as_str())];
            s.post("/transfer", Some(&cookie), &form).await.status
        });
    }
    let statuses: Vec<u16> = set.join_all().await;
    assert_eq!(
        statuses.iter().filter(|&&st| st == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&st| st == 200 || st == 403),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let s = shared();
    let cookie = s.login("alice").await;
    let r = s
        .client
        .post(format!("{}/logout", s.base))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(
        s.whoami(&cookie).await.as_deref(),
        Some("alice"),
        "still logged in"
    );
    let same_origin = s
        .client
        .post(format!("{}/logout", s.base))
        .header("cookie", &cookie)
        .header("origin", &s.base)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status().as_u16(), 303);
    assert_eq!(s.whoami(&cookie).await, None);
}

#[tokio::test]
async fn pages_carry_protective_headers() {
    let s = shared();
    let r = s.client.get(format!("{}/", s.base)).send().await.unwrap();
    let h = r.headers();
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h.get("set-cookie").is_none(),
        "anonymous visitors get no cookie"
    );
}
