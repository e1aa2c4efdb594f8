//! The web client as the server serves it: the page and its hashed assets
//! with their security and cache headers (always), and the browser tests in
//! `web/test/` (JS unit tests against the shared vectors, then Playwright
//! driving Debian's Chromium against real server processes) when Node, the
//! `web/node_modules` from `npm ci` and Chromium are here. Without them
//! that part prints `SKIP web:` unless `CHAT_TEST_REQUIRE_BROWSER` is set
//! (CI sets it, so a missing browser fails there instead of hiding).

mod common;

use std::path::Path;
use std::process::Command;

use common::{http_get, http_get_with, TestServer};
use e2ee_chat::web::CONTENT_SECURITY_POLICY;

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap();
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_page_and_its_assets_carry_the_security_and_cache_headers() {
    let t = TestServer::new();
    let page = http_get(&t.http("/")).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_eq!(
        header(&page, "content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&page, "referrer-policy"), Some("no-referrer"));
    assert_eq!(header(&page, "cache-control"), Some("no-cache"));
    assert_eq!(
        header(&page, "content-type"),
        Some("text/html; charset=utf-8")
    );
    // No inline script: the page loads one hashed module and one stylesheet.
    assert!(!page.contains("<script>") && page.contains("<script type=\"module\" src=\"/assets/"));

    // A revalidation with the ETag is a 304 without a body.
    let etag = header(&page, "etag").expect("an ETag").to_owned();
    let again = http_get_with(&t.http("/"), &format!("If-None-Match: {etag}\r\n")).await;
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");

    // Every asset the page names is served, cached for a year.
    let names: Vec<&str> = page
        .split("\"/assets/")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(names.len(), 2, "{page}");
    for name in names {
        let asset = http_get(&t.http(&format!("/assets/{name}"))).await;
        assert!(asset.starts_with("HTTP/1.1 200"), "{name}: {asset:.200}");
        assert_eq!(
            header(&asset, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(header(&asset, "x-content-type-options"), Some("nosniff"));
        let kind = if name.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(header(&asset, "content-type").unwrap().starts_with(kind));
    }
    for missing in [
        "/assets/nope.js",
        "/assets/..%2Findex.html",
        "/assets/.hidden",
    ] {
        let r = http_get(&t.http(missing)).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{missing}: {r:.200}");
    }
    // Other responses are not sniffed either.
    let health = http_get(&t.http("/healthz")).await;
    assert_eq!(header(&health, "x-content-type-options"), Some("nosniff"));
    t.stop().await;
}

/// Why the browser tests cannot run here, if they cannot.
fn browser_missing(web: &Path) -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !web.join("node_modules/playwright-core").is_dir() {
        return Some("web/node_modules is missing (run `npm ci` in web/)".into());
    }
    let chromium =
        std::env::var("CHAT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing (apt-get install chromium)"));
    }
    None
}

#[test]
fn browser_tests_in_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    if let Some(why) = browser_missing(&web) {
        if std::env::var_os("CHAT_TEST_REQUIRE_BROWSER").is_some() {
            panic!("CHAT_TEST_REQUIRE_BROWSER is set but {why}");
        }
        println!("SKIP web: {why}");
        return;
    }
    let out = Command::new("node")
        // Node 20 has WebSocket (the interop test's) behind this flag.
        .args([
            "--experimental-websocket",
            "--test",
            "--test-concurrency=1",
            "test/unit/",
            "test/e2e/",
        ])
        .current_dir(&web)
        .env("E2E_SERVER_BIN", env!("CARGO_BIN_EXE_e2ee-chat-server"))
        .env("E2E_CLI_BIN", env!("CARGO_BIN_EXE_e2ee-chat"))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok ") || l.starts_with("# "))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "browser tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
