//! Checks for the redaction rule: no credential in an error, anywhere in
//! its chain, or in a configuration's `Debug`.
//!
//! Every backend's `tests/redaction.rs` builds configurations and connects
//! with URLs carrying a distinctive password, then hands what it got to
//! these functions.

use std::error::Error;
use std::fmt::Debug;

/// Every way `err` can be printed: its `Display`, `Debug` and `{:#?}`, and
/// the same for every error in its `source()` chain (at most 64 deep).
#[must_use]
pub fn error_renderings(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut shown = Vec::new();
    let mut next = Some(err);
    let mut depth = 0;
    while let Some(e) = next {
        shown.push(e.to_string());
        shown.push(format!("{e:?}"));
        shown.push(format!("{e:#?}"));
        depth += 1;
        if depth == 64 {
            break;
        }
        next = e.source();
    }
    shown
}

/// Panics if any of `secrets` appears in `err`'s `Display` or `Debug`, or
/// in those of any error in its `source()` chain.
///
/// # Panics
///
/// When a secret shows, naming the rendering that showed it.
#[track_caller]
pub fn assert_error_hides(err: &(dyn Error + 'static), secrets: &[&str]) {
    assert_each_cause_once(err);
    for shown in error_renderings(err) {
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "a credential shows in an error rendering: {shown}"
            );
        }
    }
}

/// Panics if any of `secrets` appears in `value`'s `Debug` (plain or
/// `{:#?}`).
///
/// # Panics
///
/// When a secret shows.
#[track_caller]
pub fn assert_debug_hides(value: &dyn Debug, secrets: &[&str]) {
    for shown in [format!("{value:?}"), format!("{value:#?}")] {
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "a credential shows in a Debug rendering: {shown}"
            );
        }
    }
}

/// Panics if `err` repeats its cause in its own `Display`: the cause
/// belongs to `source()` only, or a chain printer (such as
/// [`ErrorChain`](crate::ErrorChain)) shows it twice ("unavailable:
/// refused: refused"). Only `err` itself is checked: the errors of client
/// crates further down the chain follow their own conventions.
///
/// # Panics
///
/// When `err`'s `Display` contains its source's `Display`.
#[track_caller]
pub fn assert_each_cause_once(err: &(dyn Error + 'static)) {
    if let Some(source) = err.source() {
        let (shown, cause) = (err.to_string(), source.to_string());
        assert!(
            cause.is_empty() || !shown.contains(&cause),
            "an error repeats its cause in its message: {shown:?} already contains {cause:?}"
        );
    }
}
