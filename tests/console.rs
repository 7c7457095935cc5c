//! The web console (`src/console.rs`): content types, security headers,
//! the `/` redirect, a page that loads only same-origin code and no inline
//! script, `AETHER_CONSOLE=false`, and no API key for the page while the
//! WebSocket still needs one.

mod support;

use support::{HttpResponse, TestHub};

const KEY: &str = "console-key";

const ASSETS: [(&str, &str); 5] = [
    ("/console", "text/html; charset=utf-8"),
    ("/console/", "text/html; charset=utf-8"),
    ("/console/console.css", "text/css; charset=utf-8"),
    ("/console/console.js", "text/javascript; charset=utf-8"),
    (
        "/console/aether-hub-client.js",
        "text/javascript; charset=utf-8",
    ),
];

fn assert_secured(path: &str, r: &HttpResponse) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self' ws: wss:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{path}: {directive} not in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{path}: {csp}");
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-cache"),
    ] {
        assert_eq!(r.header(name), Some(value), "{path}: {name}");
    }
}

#[tokio::test]
async fn every_asset_has_its_content_type_and_the_security_headers() {
    let hub = TestHub::start().await;
    for (path, content_type) in ASSETS {
        let r = hub.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert!(!r.body.is_empty(), "{path}: empty");
        assert_secured(path, &r);
    }
    // A query (the console's settings) is no different path.
    let r = hub.get("/console?group=g1&client=c1&autoconnect=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(ASSETS[0].1));
    // Nothing else under /console.
    assert_eq!(hub.get("/console/nope.js").await.status, 404);
    assert_eq!(hub.get("/console/../Cargo.toml").await.status, 404);
}

#[tokio::test]
async fn the_root_redirects_to_the_console_keeping_the_query() {
    let hub = TestHub::start().await;
    let r = hub.get("/").await;
    assert!(matches!(r.status, 302 | 308), "{}", r.status);
    assert_eq!(r.header("location"), Some("/console"));
    assert_secured("/", &r);
    let r = hub.get("/?group=g1&client=c1").await;
    assert_eq!(r.header("location"), Some("/console?group=g1&client=c1"));
}

#[tokio::test]
async fn the_page_loads_only_same_origin_code_and_has_no_inline_script() {
    let hub = TestHub::start().await;
    let html = hub.get("/console").await.body;
    let lower = html.to_ascii_lowercase();
    assert!(lower.contains("<!doctype html>"), "{html}");

    // Every <script> has a same-origin src and an empty body.
    let mut scripts = 0;
    for part in lower.split("<script").skip(1) {
        scripts += 1;
        let (tag, rest) = part.split_once('>').expect("a closed <script> tag");
        let src = attribute(tag, "src").unwrap_or_else(|| panic!("inline <script{tag}>"));
        assert!(src.starts_with("/console/"), "script from {src}");
        let body = rest.split("</script>").next().unwrap_or_default();
        assert!(body.trim().is_empty(), "inline script body: {body}");
    }
    assert!(scripts >= 1, "no script at all: {html}");

    // Stylesheets and any other reference: same origin only (or an inline
    // `data:` image, such as the empty icon that spares a favicon request).
    for attr in ["href", "src"] {
        for value in attributes(&lower, attr) {
            assert!(
                same_origin(&value) || value.starts_with("data:"),
                "{attr}={value}"
            );
        }
    }
    assert!(lower.contains("href=\"/console/console.css\""), "{html}");
    assert!(!lower.contains("<style"), "inline <style>");
    assert!(!lower.contains(" style="), "inline style attribute");
    assert!(!lower.contains("javascript:"), "javascript: URL");
    // No event-handler attributes (onclick=, onload=, ...).
    for (i, _) in lower.match_indices(" on") {
        let name: String = lower[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let after = lower[i + 1 + name.len()..].trim_start();
        assert!(
            !(after.starts_with('=') && in_tag(&lower, i)),
            "event handler attribute {name}="
        );
    }
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let hub = TestHub::with(|c| c.console = false).await;
    for path in ["/", "/console", "/console/", "/console/console.js"] {
        assert_eq!(hub.get(path).await.status, 404, "{path}");
    }
    assert_eq!(hub.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn the_page_needs_no_api_key_but_its_websocket_does() {
    let hub = TestHub::with(|c| c.api_keys = vec![KEY.into()]).await;
    for (path, _) in ASSETS {
        assert_eq!(hub.get(path).await.status, 200, "{path}");
    }
    assert_eq!(hub.get("/").await.status, 302);
    let socket = "/v3/ws/group/g1/client/alice";
    assert_eq!(hub.upgrade_status(socket, &[]).await.0, 401);
    let keyed = format!("{socket}?api_key={KEY}");
    assert_eq!(hub.upgrade_status(&keyed, &[]).await.0, 101);
}

/// The value of `name="…"` (or '…') in one tag's text.
fn attribute(tag: &str, name: &str) -> Option<String> {
    attributes(tag, name).into_iter().next()
}

/// Every value of attribute `name` in `html`.
fn attributes(html: &str, name: &str) -> Vec<String> {
    let needle = format!(" {name}=");
    html.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            let quote = rest.chars().next()?;
            if quote == '"' || quote == '\'' {
                rest[1..].split(quote).next().map(str::to_owned)
            } else {
                rest.split([' ', '>']).next().map(str::to_owned)
            }
        })
        .collect()
}

/// A relative reference, or an absolute path: never another host or scheme.
fn same_origin(url: &str) -> bool {
    !url.contains("//") && !url.contains(':')
}

/// Whether byte `at` of `html` is inside a tag (after a `<`, before its `>`).
fn in_tag(html: &str, at: usize) -> bool {
    let before = &html[..at];
    matches!((before.rfind('<'), before.rfind('>')), (Some(lt), gt) if gt.is_none_or(|gt| lt > gt))
}
