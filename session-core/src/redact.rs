//! Credentials out of messages: URLs, error texts and error chains.
//!
//! Connection URLs carry passwords (`redis://:pw@host`,
//! `postgres://user:pw@host/db?sslpassword=pw`), and driver errors may quote
//! the URL they failed on. Every backend prints URLs through
//! [`RedactedUrl`] / [`redact_url`] and wraps driver errors that may embed
//! one in a [`RedactedError`], so that neither `Display`, `Debug` nor any
//! error in a `source()` chain ever shows a credential.
//!
//! ```
//! use session_core::redact::{redact_url, RedactedUrl};
//!
//! let url = "redis://app:S3CRETPW@cache.internal:6379/0?password=S3CRETPW";
//! assert_eq!(redact_url(url), "redis://***:***@cache.internal:6379/0?password=***");
//! assert!(!RedactedUrl::new(url).to_string().contains("S3CRETPW"));
//! // Best effort on strings that are not URLs.
//! assert_eq!(redact_url("app:S3CRETPW@cache:6379"), "***:***@cache:6379");
//! ```
//!
//! What is replaced by `***`:
//!
//! - the user and password of a URL (everything between `://` and the last
//!   `@` of the URL, or before the last `@` of a string without `://`);
//! - the value of every query, fragment or `key=value` parameter whose name
//!   looks like a credential (it contains `pass`, `pwd`, `secret`, `token`,
//!   `auth`, `key`, `credential` or `sig`), and of `name: "value"` fields
//!   with such names;
//! - for a [`RedactedError`] built with [`RedactedError::with_url_secrets`],
//!   every literal occurrence of those URLs' passwords and credential
//!   parameters (raw and percent-decoded), wherever the message puts them.
//!
//! Redaction errs on the side of hiding too much: a `@` in a path or query
//! hides the part of the URL before it.

use std::borrow::Cow;
use std::error::Error;
use std::fmt;

use zeroize::Zeroizing;

use crate::store::BoxError;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Parameter names (lowercased) containing one of these are credentials.
const SECRET_NAMES: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "key",
    "credential",
    "sig",
];

/// Literal secrets shorter than this are not searched for in messages
/// (they would mask unrelated text and hide nothing worth hiding).
const MIN_LITERAL_SECRET: usize = 4;

/// Longest error chain a [`RedactedError`] copies.
const MAX_CHAIN: usize = 32;

/// A URL with its credentials replaced by `***`, safe to print and to keep
/// in errors.
///
/// Built by [`RedactedUrl::new`], which redacts at once: the original text
/// (and so the secret) is not kept. `Display` shows the redacted URL,
/// `Debug` the same text quoted.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// Redacts `url` (see [`redact_url`]).
    #[must_use]
    pub fn new(url: &str) -> Self {
        Self(redact_url(url))
    }

    /// The redacted text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl From<&str> for RedactedUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

/// `url` with its user, password and credential parameters replaced by
/// `***`; scheme, host, port and path stay readable.
///
/// Works on anything: a string that does not parse as a URL loses what is
/// before its last `@` (`user:pass@host:port` becomes `***:***@host:port`)
/// and the values of credential-like `key=value` parameters.
#[must_use]
pub fn redact_url(url: &str) -> String {
    if let Ok(parsed) = url::Url::parse(url) {
        if parsed.has_host() {
            let mut out = String::with_capacity(url.len());
            out.push_str(parsed.scheme());
            out.push_str("://");
            match (parsed.username().is_empty(), parsed.password().is_some()) {
                (true, false) => {}
                (true, true) => out.push_str(":***@"),
                (false, false) => out.push_str("***@"),
                (false, true) => out.push_str("***:***@"),
            }
            out.push_str(&redact_params(&parsed[url::Position::BeforeHost..]));
            // A second, textual pass for what a lenient parse may have left
            // in the path (an unencoded `/` or `@` inside a password).
            return redact_text(&out);
        }
    }
    if url.contains("://") {
        return redact_text(url);
    }
    let mut out = String::with_capacity(url.len());
    redact_url_body(url, &mut out);
    out
}

/// `text` (an error message, a log line) with every URL in it redacted as
/// by [`redact_url`], and the values of credential-like `key=value`
/// parameters and `name: "value"` fields replaced by `***`.
#[must_use]
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(rel) = text[at..].find("://") {
        let sep = at + rel;
        let scheme_start = text[..sep]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(sep, |(i, _)| i);
        let body_start = sep + 3;
        let body_end = text[body_start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(text.len(), |e| body_start + e);
        redact_plain(&text[at..scheme_start], &mut out);
        out.push_str(&text[scheme_start..body_start]);
        redact_url_body(&text[body_start..body_end], &mut out);
        at = body_end;
    }
    redact_plain(&text[at..], &mut out);
    out
}

/// Text without `://`: a word shaped `user:password@host` loses what is
/// before its last `@`, credential parameters their values.
fn redact_plain(text: &str, out: &mut String) {
    let is_break = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '(');
    let mut copied = 0;
    let mut word_start = 0;
    let ends = text
        .char_indices()
        .filter(|(_, c)| is_break(*c))
        .map(|(i, c)| (i, i + c.len_utf8()))
        .chain(std::iter::once((text.len(), text.len())));
    for (end, next_start) in ends {
        let word = &text[word_start..end];
        let userinfo = word.rfind('@').map(|at| &word[..at]);
        if userinfo.is_some_and(|u| u.contains(':')) {
            out.push_str(&redact_params(&text[copied..word_start]));
            redact_url_body(word, out);
            copied = end;
        }
        word_start = next_start;
    }
    out.push_str(&redact_params(&text[copied..]));
}

/// The part of a URL after `scheme://` (or a scheme-less `user@host…`):
/// what precedes its last `@` is masked, credential parameters too.
fn redact_url_body(body: &str, out: &mut String) {
    match body.rfind('@') {
        Some(at) => {
            let userinfo = &body[..at];
            match userinfo.split_once(':') {
                Some(("", _)) => out.push_str(":***"),
                Some(_) => out.push_str("***:***"),
                None => out.push_str(MASK),
            }
            out.push('@');
            out.push_str(&redact_params(&body[at + 1..]));
        }
        None => out.push_str(&redact_params(body)),
    }
}

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| lower.contains(s))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// Replaces the values of `name=value` pairs and `name: "value"` fields
/// whose name looks like a credential.
fn redact_params(text: &str) -> Cow<'_, str> {
    if !text.contains(['=', ':']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        let c = bytes[i];
        if c != b'=' && c != b':' {
            i += 1;
            continue;
        }
        let name_start = text[..i]
            .char_indices()
            .rev()
            .take_while(|(_, ch)| is_name_char(*ch))
            .last()
            .map_or(i, |(j, _)| j);
        let name = &text[name_start..i];
        if name.is_empty() || !is_secret_name(name) {
            i += 1;
            continue;
        }
        let value = if c == b'=' {
            value_span(text, i + 1, true)
        } else {
            // `name: "value"` or `name: Some("value")`, as `Debug` prints.
            let rest = &text[i + 1..];
            let trimmed = rest.trim_start();
            let mut start = i + 1 + (rest.len() - trimmed.len());
            if text[start..].starts_with("Some(") {
                start += "Some(".len();
            }
            if text[start..].starts_with(['"', '\'']) {
                value_span(text, start, false)
            } else {
                None
            }
        };
        match value {
            Some((start, end)) if &text[start..end] != MASK => {
                out.push_str(&text[copied..start]);
                out.push_str(MASK);
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Where the value starting at `start` ends: a quoted value up to its
/// closing quote (the quotes stay), an unquoted one (only when `bare`) up
/// to whitespace or a separator. `None` for an empty value.
fn value_span(text: &str, start: usize, bare: bool) -> Option<(usize, usize)> {
    let rest = &text[start..];
    let quote = rest.chars().next().filter(|q| matches!(q, '"' | '\''));
    let (start, end) = match quote {
        Some(q) => {
            let inner = start + 1;
            let close = text[inner..].find(q).map_or(text.len(), |e| inner + e);
            (inner, close)
        }
        None if bare => {
            let end = rest
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '&' | ';' | ',' | '#' | ')' | ']' | '}' | '>')
                })
                .map_or(text.len(), |e| start + e);
            (start, end)
        }
        None => return None,
    };
    (end > start).then_some((start, end))
}

/// The passwords and credential parameter values of `url`, raw and
/// percent-decoded, for literal removal from messages.
fn url_secrets(url: &str, into: &mut Vec<Zeroizing<String>>) {
    let mut add = |s: Cow<'_, str>| {
        if s.chars().count() >= MIN_LITERAL_SECRET && !into.iter().any(|k| **k == *s) {
            into.push(Zeroizing::new(s.into_owned()));
        }
    };
    let body = url.split_once("://").map_or(url, |(_, b)| b);
    if let Some((userinfo, _)) = body.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            add(Cow::Borrowed(password));
            add(percent_decode(password));
        }
    }
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(password) = parsed.password() {
            add(Cow::Borrowed(password));
            add(percent_decode(password));
        }
        for (name, value) in parsed.query_pairs() {
            if is_secret_name(&name) {
                add(value);
            }
        }
    }
    for pair in body.split(['?', '&', '#', ';', ' ']) {
        if let Some((name, value)) = pair.split_once('=') {
            if is_secret_name(name) {
                add(Cow::Borrowed(value));
                add(percent_decode(value));
            }
        }
    }
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Redacts a message: URLs and credential parameters, then the literal
/// secrets.
fn redact_message(message: &str, secrets: &[Zeroizing<String>]) -> String {
    let mut out = redact_text(message);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// An error whose message, and the message of every error in its
/// `source()` chain, has its credentials redacted.
///
/// Wrap a driver error that may quote a connection URL (a parse error, a
/// failed connection) before it goes into an error type of your own:
/// `Display` is the inner error's message with every URL and
/// credential-like parameter redacted (see [`redact_text`]), `source()` is
/// the inner error's source redacted the same way, and `Debug` shows only
/// those redacted messages, never the inner error's `Debug`. An error-chain
/// printer thus never prints a credential.
///
/// The messages are redacted when the wrapper is built; the original error
/// stays available through [`RedactedError::get_ref`] (for downcasting;
/// do not print it).
///
/// ```
/// use session_core::redact::RedactedError;
///
/// let url = "postgres://app:S3CRETPW@db:5432/app";
/// let driver = std::io::Error::other(format!("cannot connect to {url}"));
/// let err = RedactedError::with_url_secrets(driver, [url]);
/// assert_eq!(err.to_string(), "cannot connect to postgres://***:***@db:5432/app");
/// assert!(!format!("{err:?}").contains("S3CRETPW"));
/// ```
pub struct RedactedError {
    message: String,
    source: Option<Box<RedactedError>>,
    inner: Option<BoxError>,
}

impl RedactedError {
    /// Wraps `err`, redacting URLs and credential-like parameters in its
    /// chain of messages.
    pub fn new(err: impl Into<BoxError>) -> Self {
        Self::with_url_secrets(err, std::iter::empty::<&str>())
    }

    /// Wraps `err` like [`new`](Self::new), and also removes every literal
    /// occurrence of the passwords and credential parameters found in
    /// `urls` (the URLs the failed operation was given), raw or
    /// percent-decoded, wherever the messages quote them.
    pub fn with_url_secrets<I, S>(err: impl Into<BoxError>, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut secrets = Vec::new();
        for url in urls {
            url_secrets(url.as_ref(), &mut secrets);
        }
        let inner: BoxError = err.into();
        let mut chain = Vec::new();
        let mut next: Option<&(dyn Error + 'static)> = inner.source();
        while let Some(e) = next {
            if chain.len() == MAX_CHAIN {
                break;
            }
            chain.push(redact_message(&e.to_string(), &secrets));
            next = e.source();
        }
        let source = chain.into_iter().rev().fold(None, |below, message| {
            Some(Box::new(RedactedError {
                message,
                source: below,
                inner: None,
            }))
        });
        Self {
            message: redact_message(&inner.to_string(), &secrets),
            source,
            inner: Some(inner),
        }
    }

    /// The wrapped error, unredacted: for downcasting to the driver's type.
    /// Its `Display` and `Debug` may hold credentials; do not print it.
    /// `None` for the errors of the redacted `source()` chain.
    #[must_use]
    pub fn get_ref(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.inner.as_deref()
    }

    /// The redacted message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RedactedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for RedactedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedactedError");
        d.field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl Error for RedactedError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "S3CRETPW";

    #[test]
    fn urls_keep_scheme_host_port_and_path() {
        for (url, shown) in [
            (
                "redis://:S3CRETPW@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "rediss://app:S3CRETPW@[::1]:6380",
                "rediss://***:***@[::1]:6380",
            ),
            ("redis://app@host", "redis://***@host"),
            (
                "postgres://u:S3CRETPW@db/app?sslmode=require&password=S3CRETPW",
                "postgres://***:***@db/app?sslmode=require&password=***",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=S3CRETPW",
                "redis+unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "memcache://127.0.0.1:11211?protocol=ascii",
                "memcache://127.0.0.1:11211?protocol=ascii",
            ),
            (
                "https://h/cb#access_token=S3CRETPW&x=1",
                "https://h/cb#access_token=***&x=1",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert_eq!(RedactedUrl::new(url).to_string(), shown);
            assert_eq!(format!("{:?}", RedactedUrl::new(url)), format!("{shown:?}"));
        }
    }

    #[test]
    fn malformed_urls_and_non_urls_are_redacted_too() {
        for url in [
            "redis://u:S3CRETPW@127.0.0.1:notaport",
            "memcache://u:S3CRETPW@host:11211:x",
            "u:S3CRETPW@127.0.0.1:1",
            "postgres://u:S3CRET/PW@host/db",
            "postgres://u:1234/S3CRETPW@host/db",
            "redis://u:S3C@RETPW@host",
            "redis://u:S3CRET#PW@host",
            "redis://u:S3CRET?PW@host",
            "host=db user=u password=S3CRETPW",
            "host=db password='S3CRET PW'",
            "::::@@@",
            "",
            "\u{a0}u:S3CRETPW@h\u{a0}ü u:S3CRETPW@h",
        ] {
            let shown = redact_url(url);
            for part in ["S3CRET", "PW@", "RETPW"] {
                if url.contains(part) {
                    assert!(!shown.contains(part), "{url} shown as {shown}");
                }
            }
            assert!(!redact_text(url).contains("S3CRET"), "{url}");
        }
    }

    #[test]
    fn text_redacts_every_url_and_parameter() {
        let text = "failed on redis://a:S3CRETPW@h1:1,redis://h2:2 (\"postgres://u:S3CRETPW@db\"); \
                    conninfo host=x password=S3CRETPW sslmode=off; field password: Some(\"S3CRETPW\")";
        let shown = redact_text(text);
        assert!(!shown.contains(PW), "{shown}");
        assert!(
            shown.contains("sslmode=off") && shown.contains("host=x"),
            "{shown}"
        );
        assert!(shown.contains("postgres://***:***@db"), "{shown}");
        assert_eq!(
            redact_text("no secrets: a=b, c: d"),
            "no secrets: a=b, c: d"
        );
    }

    #[derive(Debug)]
    struct Chain(String, Option<Box<Chain>>);
    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl Error for Chain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn errors_are_redacted_down_the_chain() {
        let url = "postgres://u:S3CRET%2FPW@db/app";
        let inner = Chain(
            "connecting failed".into(),
            Some(Box::new(Chain(
                "auth for S3CRET/PW refused at postgres://u:S3CRET%2FPW@db/app".into(),
                Some(Box::new(Chain("root: pass=S3CRET/PW".into(), None))),
            ))),
        );
        let err = RedactedError::with_url_secrets(inner, [url]);
        let mut shown = vec![format!("{err}"), format!("{err:?}"), format!("{err:#?}")];
        let mut next = err.source();
        let mut depth = 0;
        while let Some(e) = next {
            shown.push(format!("{e} {e:?}"));
            next = e.source();
            depth += 1;
        }
        assert_eq!(depth, 2);
        for s in &shown {
            assert!(!s.contains("S3CRET"), "{s}");
        }
        assert!(
            shown[3].contains("postgres://***:***@db/app"),
            "{}",
            shown[3]
        );
        assert!(err.get_ref().unwrap().downcast_ref::<Chain>().is_some());
        // Without the URL, only the patterns are redacted.
        let plain = RedactedError::new(std::io::Error::other("at redis://:S3CRETPW@h"));
        assert_eq!(plain.to_string(), "at redis://:***@h");
    }

    #[test]
    fn arbitrary_text_never_panics_and_never_shows_an_embedded_password() {
        // A small deterministic generator over an alphabet rich in the
        // characters the scanner cares about, multi-byte ones included.
        let alphabet: Vec<char> = "ab:/@?#&=;,.'\" <>()[]%-_+ \u{a0}é€passwordtoken"
            .chars()
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let len = usize::try_from(next() % 40).unwrap();
            let noise: String = (0..len)
                .map(|_| alphabet[usize::try_from(next()).unwrap() % alphabet.len()])
                .collect();
            let cut = noise
                .char_indices()
                .map(|(i, _)| i)
                .nth(usize::try_from(next() % 8).unwrap())
                .unwrap_or(noise.len());
            let _ = redact_url(&noise);
            let _ = redact_text(&noise);
            let text = format!("{} redis://u:{PW}@{}", &noise[..cut], &noise[cut..]);
            let shown = redact_text(&text);
            assert!(!shown.contains(PW), "{text:?} shown as {shown:?}");
            let err =
                RedactedError::with_url_secrets(std::io::Error::other(noise.clone()), [&noise]);
            let _ = format!("{err} {err:?}");
        }
    }
}
