//! Names a device from its `User-Agent`: "Firefox on Linux", "Chrome on
//! Android". The name becomes the session's label at login, shown on the
//! devices page; it is a hint for the user, not a security property (any
//! client can send any `User-Agent`).

use session_core::label::fit_label;

/// The label for a login whose request carried `user_agent` (`None` when
/// it carried none): browser and operating system, `Unknown browser` /
/// `unknown system` for what it does not recognize. Always a valid label.
pub fn label_from_user_agent(user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or("");
    let has = |needle: &str| ua.contains(needle);
    let browser = if has("Edg/") || has("EdgA/") || has("EdgiOS/") {
        "Edge"
    } else if has("OPR/") || has("Opera") {
        "Opera"
    } else if has("SamsungBrowser/") {
        "Samsung Internet"
    } else if has("Firefox/") || has("FxiOS/") {
        "Firefox"
    } else if has("HeadlessChrome/") {
        "Headless Chromium"
    } else if has("Chromium/") {
        "Chromium"
    } else if has("Chrome/") || has("CriOS/") {
        "Chrome"
    } else if has("Safari/") && has("Version/") {
        "Safari"
    } else if has("curl/") {
        "curl"
    } else {
        "Unknown browser"
    };
    let system = if has("Android") {
        "Android"
    } else if has("iPhone") || has("iPad") || has("iPod") {
        "iOS"
    } else if has("CrOS") {
        "ChromeOS"
    } else if has("Windows") {
        "Windows"
    } else if has("Mac OS X") || has("Macintosh") {
        "macOS"
    } else if has("Linux") || has("X11") {
        "Linux"
    } else {
        "unknown system"
    };
    fit_label(&format!("{browser} on {system}")).unwrap_or_else(|| "Unknown device".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use session_core::label::validate_label;

    #[test]
    fn common_browsers_are_named() {
        for (ua, label) in [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36",
                "Headless Chromium on Linux",
            ),
            (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari on iOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari on macOS",
            ),
            ("curl/8.5.0", "curl on unknown system"),
        ] {
            assert_eq!(label_from_user_agent(Some(ua)), label, "{ua}");
        }
    }

    #[test]
    fn anything_else_still_makes_a_valid_label() {
        for ua in [
            None,
            Some(""),
            Some("\u{0}\n<script>"),
            Some(&*"x".repeat(10_000)),
        ] {
            let label = label_from_user_agent(ua);
            assert_eq!(label, "Unknown browser on unknown system");
            assert_eq!(validate_label(&label), Ok(()));
        }
    }
}
