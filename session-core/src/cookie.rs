//! The session cookie: [`CookiePolicy`] builds `Set-Cookie` values with
//! secure defaults and reads the session ID from `Cookie` headers only.

use std::time::Duration;

use cookie::{Cookie, SameSite};

use crate::id::SessionId;
use crate::policy::ConfigError;

/// Most session IDs taken from one request's cookies (a browser sends
/// several only when cookies of the same name were set for different paths
/// or domains); each costs a store read until one names a live session.
pub const MAX_SESSION_ID_CANDIDATES: usize = 4;

/// How long the browser keeps the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieLifetime {
    /// `Max-Age` runs to the session's absolute deadline (default). The
    /// server still enforces the idle timeout.
    UntilAbsoluteDeadline,
    /// No `Max-Age`: the browser drops the cookie when it closes.
    BrowserSession,
}

/// The cookie name of [`CookiePolicy::local_development`]: the default name
/// without its `__Host-` prefix.
pub const LOCAL_DEVELOPMENT_COOKIE_NAME: &str = "session";

/// Attributes of the session cookie.
///
/// Defaults: name `__Host-session`, `Secure`, `HttpOnly`, `SameSite=Lax`,
/// `Path=/`, no `Domain`, `Max-Age` up to the absolute deadline. The
/// `__Host-` prefix makes browsers refuse the cookie unless it is Secure,
/// host-only and `Path=/`, which defeats cookie injection from sibling
/// subdomains.
///
/// # Local development over plain HTTP
///
/// A `Secure` cookie is never sent over `http://`. Some browsers make an
/// exception for `http://localhost` and `http://127.0.0.1` (Chromium,
/// Firefox, curl), others do not (Safari), and none does for a LAN address
/// or a container's host name. For a development server on plain HTTP use
/// [`CookiePolicy::local_development`] (or
/// [`CookiePolicyBuilder::insecure_local_http`], or the manager builder's
/// `insecure_local_http()`): the cookie is then named
/// [`session`](LOCAL_DEVELOPMENT_COOKIE_NAME), without `Secure`, and a
/// warning is logged. Never use it in production.
///
/// ```
/// use session_core::CookiePolicy;
///
/// let policy = CookiePolicy::local_development();
/// assert_eq!(policy.name(), "session");
/// assert!(!policy.is_secure());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    name: String,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    path: String,
    domain: Option<String>,
    lifetime: CookieLifetime,
}

impl Default for CookiePolicy {
    fn default() -> Self {
        Self {
            name: "__Host-session".to_owned(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            lifetime: CookieLifetime::UntilAbsoluteDeadline,
        }
    }
}

impl CookiePolicy {
    /// A builder starting from the secure defaults.
    pub fn builder() -> CookiePolicyBuilder {
        CookiePolicyBuilder(Self::default())
    }

    /// The policy for a development server on plain HTTP: the secure
    /// defaults except that the cookie is named `session` (a `__Host-` or
    /// `__Secure-` name requires `Secure`) and has no `Secure` attribute, so
    /// browsers send it over `http://` on any host name or address. Logs a
    /// warning (target `session_core`), since anyone on the network path can
    /// read such a cookie. See the type's docs.
    #[must_use]
    pub fn local_development() -> Self {
        Self::builder()
            .insecure_local_http()
            .build()
            .expect("the local development policy is valid")
    }

    /// The cookie name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the cookie carries the `Secure` attribute.
    #[must_use]
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The `Set-Cookie` that hands `id` to the browser. `max_age` is the time
    /// left until the absolute deadline (ignored for
    /// [`CookieLifetime::BrowserSession`]).
    #[must_use]
    pub fn session_cookie(&self, id: &SessionId, max_age: Duration) -> Cookie<'static> {
        let mut c = self.base(id.expose());
        if self.lifetime == CookieLifetime::UntilAbsoluteDeadline {
            let secs = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            c.set_max_age(time::Duration::seconds(secs));
        }
        c
    }

    /// The `Set-Cookie` that makes the browser forget the session cookie
    /// (empty value, `Max-Age=0`, an expiry in the past, same attributes).
    #[must_use]
    pub fn removal_cookie(&self) -> Cookie<'static> {
        let mut c = self.base(String::new());
        c.make_removal();
        c
    }

    /// Finds the session ID in the values of the request's `Cookie` headers:
    /// the first of [`CookiePolicy::session_id_candidates`].
    #[must_use]
    pub fn find_session_id<I>(&self, cookie_headers: I) -> Option<SessionId>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.session_id_candidates(cookie_headers)
            .into_iter()
            .next()
    }

    /// The well-formed session IDs under this policy's cookie name in the
    /// request's `Cookie` header values, in order, without duplicates, at
    /// most [`MAX_SESSION_ID_CANDIDATES`].
    ///
    /// Only `Cookie` headers are consulted (never the URL). The header is
    /// read as the bytes it is: pairs are split on `;`, names and values
    /// trimmed of ASCII whitespace, and a pair that is not `name=value`, has
    /// another name, or holds bytes that are not a strictly parsed ID is
    /// skipped on its own. So another cookie with non-ASCII or control
    /// bytes, several `Cookie` lines, or a malformed duplicate of ours never
    /// hides a valid ID. Malformed input gives no candidate, never an error.
    /// The work is linear in the header bytes and stops at the cap.
    #[must_use]
    pub fn session_id_candidates<I>(&self, cookie_headers: I) -> Vec<SessionId>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let name = self.name.as_bytes();
        let mut found: Vec<SessionId> = Vec::new();
        for header in cookie_headers {
            for pair in header.as_ref().split(|&b| b == b';') {
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if pair[..eq].trim_ascii() != name {
                    continue;
                }
                let Ok(value) = std::str::from_utf8(pair[eq + 1..].trim_ascii()) else {
                    continue;
                };
                if let Ok(id) = SessionId::parse(value) {
                    if !found.contains(&id) {
                        found.push(id);
                        if found.len() == MAX_SESSION_ID_CANDIDATES {
                            return found;
                        }
                    }
                }
            }
        }
        found
    }

    fn base(&self, value: String) -> Cookie<'static> {
        let mut c = Cookie::new(self.name.clone(), value);
        c.set_secure(self.secure);
        c.set_http_only(self.http_only);
        c.set_same_site(self.same_site);
        c.set_path(self.path.clone());
        if let Some(d) = &self.domain {
            c.set_domain(d.clone());
        }
        c
    }
}

/// Builder for [`CookiePolicy`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CookiePolicyBuilder(CookiePolicy);

impl CookiePolicyBuilder {
    /// Sets the cookie name (default `__Host-session`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.0.name = name.into();
        self
    }

    /// Sets `Secure` (default on). Turning it off is for plain-HTTP local
    /// development only and is refused for `__Host-`/`__Secure-` names,
    /// the default name included: use
    /// [`insecure_local_http`](Self::insecure_local_http), which also
    /// renames the cookie.
    pub fn secure(mut self, on: bool) -> Self {
        self.0.secure = on;
        self
    }

    /// For a development server on plain HTTP: turns `Secure` off and, if
    /// the name is still the default `__Host-session`, names the cookie
    /// [`session`](LOCAL_DEVELOPMENT_COOKIE_NAME). Logs a warning (target
    /// `session_core`) when called. Everything else keeps its secure
    /// default. See [`CookiePolicy`]'s "Local development over plain
    /// HTTP".
    pub fn insecure_local_http(mut self) -> Self {
        if self.0.name == CookiePolicy::default().name {
            self.0.name = LOCAL_DEVELOPMENT_COOKIE_NAME.to_owned();
        }
        self.0.secure = false;
        tracing::warn!(
            target: "session_core",
            cookie = %self.0.name,
            "session cookie without Secure, for local development over plain HTTP only: \
             never use this policy in production"
        );
        self
    }

    /// Sets `HttpOnly` (default on).
    pub fn http_only(mut self, on: bool) -> Self {
        self.0.http_only = on;
        self
    }

    /// Sets `SameSite` (default `Lax`; `None` requires `Secure`).
    pub fn same_site(mut self, s: SameSite) -> Self {
        self.0.same_site = s;
        self
    }

    /// Sets `Path` (default `/`; must be `/` for `__Host-` names).
    pub fn path(mut self, p: impl Into<String>) -> Self {
        self.0.path = p.into();
        self
    }

    /// Sets `Domain` (default none: host-only; refused for `__Host-` names).
    pub fn domain(mut self, d: impl Into<String>) -> Self {
        self.0.domain = Some(d.into());
        self
    }

    /// Sets the cookie lifetime (default until the absolute deadline).
    pub fn lifetime(mut self, l: CookieLifetime) -> Self {
        self.0.lifetime = l;
        self
    }

    /// Validates and returns the policy.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Cookie`] for an invalid name, or attributes that the
    /// name's prefix forbids (browsers would drop such a cookie silently).
    pub fn build(self) -> Result<CookiePolicy, ConfigError> {
        let p = self.0;
        let err = |m: &str| Err(ConfigError::Cookie(m.to_owned()));
        let token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if p.name.is_empty() || !p.name.chars().all(token_char) {
            return err("cookie name must be a non-empty HTTP token");
        }
        if !p.path.starts_with('/') || p.path.contains(';') {
            return err("cookie path must start with '/' and contain no ';'");
        }
        let insecure_hint = "; for local development over plain HTTP use \
             CookiePolicy::local_development() (builder: insecure_local_http()), \
             or a cookie name without the prefix, such as `session`";
        if p.name.starts_with("__Host-") {
            if !p.secure {
                return err(&format!(
                    "a __Host- cookie must be Secure (browsers drop it otherwise){insecure_hint}"
                ));
            }
            if p.path != "/" || p.domain.is_some() {
                return err("a __Host- cookie must have Path=/ and no Domain; \
                     for another path or a domain, use a name without the __Host- prefix");
            }
        } else if p.name.starts_with("__Secure-") && !p.secure {
            return err(&format!(
                "a __Secure- cookie must be Secure (browsers drop it otherwise){insecure_hint}"
            ));
        }
        if p.same_site == SameSite::None && !p.secure {
            return err("SameSite=None requires Secure");
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cookie_is_locked_down() {
        let id = SessionId::generate();
        let c = CookiePolicy::default().session_cookie(&id, Duration::from_secs(3600));
        let s = c.to_string();
        assert!(
            s.starts_with(&format!("__Host-session={}", id.expose())),
            "{s}"
        );
        for attr in [
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
        assert!(!s.contains("Domain"));
    }

    #[test]
    fn removal_cookie_expires_with_same_attributes() {
        let s = CookiePolicy::default().removal_cookie().to_string();
        assert!(s.starts_with("__Host-session=;"), "{s}");
        for attr in ["Max-Age=0", "Secure", "Path=/", "HttpOnly", "Expires="] {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
    }

    #[test]
    fn browser_session_lifetime_has_no_max_age() {
        let p = CookiePolicy::builder()
            .lifetime(CookieLifetime::BrowserSession)
            .build()
            .unwrap();
        let s = p
            .session_cookie(&SessionId::generate(), Duration::from_secs(5))
            .to_string();
        assert!(!s.contains("Max-Age"));
    }

    #[test]
    fn host_prefix_rules_are_enforced() {
        assert!(CookiePolicy::builder().secure(false).build().is_err());
        assert!(CookiePolicy::builder()
            .domain("example.com")
            .build()
            .is_err());
        assert!(CookiePolicy::builder().path("/app").build().is_err());
        assert!(CookiePolicy::builder()
            .name("__Secure-s")
            .secure(false)
            .build()
            .is_err());
        assert!(CookiePolicy::builder().name("bad name").build().is_err());
        assert!(CookiePolicy::builder().name("").build().is_err());
        assert!(CookiePolicy::builder()
            .name("dev")
            .secure(false)
            .same_site(SameSite::None)
            .build()
            .is_err());
        let dev = CookiePolicy::builder()
            .name("dev")
            .secure(false)
            .build()
            .unwrap();
        assert!(!dev
            .session_cookie(&SessionId::generate(), Duration::ZERO)
            .to_string()
            .contains("Secure"));
    }

    #[test]
    fn insecure_default_name_names_the_fix() {
        let e = CookiePolicy::builder()
            .secure(false)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("local_development()"), "{e}");
        assert!(e.contains("without the prefix"), "{e}");
    }

    #[test]
    fn local_development_is_named_session_without_secure() {
        let p = CookiePolicy::local_development();
        assert_eq!(p.name(), LOCAL_DEVELOPMENT_COOKIE_NAME);
        let s = p
            .session_cookie(&SessionId::generate(), Duration::from_secs(60))
            .to_string();
        assert!(s.starts_with("session="), "{s}");
        assert!(!s.contains("Secure"), "{s}");
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(s.contains(attr), "{attr} missing in {s}");
        }
        // A name chosen before is kept.
        let named = CookiePolicy::builder()
            .name("app")
            .insecure_local_http()
            .build()
            .unwrap();
        assert_eq!(named.name(), "app");
        assert!(!named.is_secure());
    }

    #[test]
    fn finds_the_id_among_other_cookies() {
        let p = CookiePolicy::default();
        let id = SessionId::generate();
        let header = format!("a=1; __Host-session={}; b=2", id.expose());
        assert_eq!(p.find_session_id([header.as_str()]), Some(id.clone()));
        // In a second Cookie header line.
        assert_eq!(
            p.find_session_id(["a=1", header.as_str()]),
            Some(id.clone())
        );
        // A malformed first duplicate does not hide a valid one.
        let dup = format!("__Host-session=garbage; __Host-session={}", id.expose());
        assert_eq!(p.find_session_id([dup.as_str()]), Some(id));
    }

    #[test]
    fn malformed_values_are_no_session() {
        let p = CookiePolicy::default();
        let good = SessionId::generate().expose();
        for bad in [
            String::new(),
            "__Host-session=".to_owned(),
            "__Host-session=abc".to_owned(),
            format!("__Host-session={}=", &good[..42]),
            format!("__Host-session=\"{good}\""),
            format!("session={good}"),
            format!("__host-session={good}"),
            "\u{0}\u{1}; ;;==".to_owned(),
        ] {
            assert_eq!(p.find_session_id([bad.as_str()]), None, "{bad:?}");
        }
    }

    #[test]
    fn odd_bytes_in_other_cookies_never_hide_the_id() {
        let p = CookiePolicy::default();
        let id = SessionId::generate();
        let ours = format!("__Host-session={}", id.expose());
        let lines: Vec<Vec<u8>> = vec![
            [b"x=\xc3\xa9; ".as_slice(), ours.as_bytes()].concat(),
            [b"x=\xff\xfe\x00; ".as_slice(), ours.as_bytes(), b"; y=\x80"].concat(),
            [b"\t ".as_slice(), ours.as_bytes(), b" \t;junk"].concat(),
            [b"novalue; ;;=; ".as_slice(), ours.as_bytes()].concat(),
        ];
        for line in &lines {
            assert_eq!(p.find_session_id([line]), Some(id.clone()), "{line:?}");
        }
        // Other cookies on a line of their own, even with bytes that are not
        // UTF-8.
        let odd: &[u8] = b"x=\xe9\xe9";
        assert_eq!(p.find_session_id([odd, ours.as_bytes()]), Some(id.clone()));
    }

    #[test]
    fn several_ids_under_our_name_are_all_candidates_in_order_up_to_the_cap() {
        let p = CookiePolicy::default();
        let ids: Vec<SessionId> = (0..6).map(|_| SessionId::generate()).collect();
        let header = ids
            .iter()
            .map(|id| format!("__Host-session={}", id.expose()))
            .collect::<Vec<_>>()
            .join("; ");
        let dup = format!("{header}; __Host-session={}", ids[0].expose());
        let got = p.session_id_candidates([dup.as_str()]);
        assert_eq!(got, ids[..MAX_SESSION_ID_CANDIDATES].to_vec());
    }
}
