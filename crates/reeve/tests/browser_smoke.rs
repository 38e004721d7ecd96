//! Smoke test of the headless-browser harness (tests/common/browser.rs): a
//! real Chromium, through chromedriver, against a real `reeve serve` on
//! loopback. Skipped with a message when Chromium is not installed, except
//! under CI (CI set) with Chromium present, where any failure fails.

mod common;

use std::path::PathBuf;

use common::Daemon;
use common::browser::Browser;

fn browser() -> Option<Browser> {
    common::browser::start_or_skip()
}

fn screenshot_dir() -> PathBuf {
    common::browser::screenshot_dir()
}

#[test]
fn a_headless_browser_reads_healthz_and_takes_a_screenshot() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "a", &dir.path().join("reeve.db"), "");

    b.goto(&format!("{}/healthz", d.url)).unwrap();
    assert!(b.url().unwrap().ends_with("/healthz"));
    let body = b.text("body").unwrap();
    // Chromium shows JSON as text (under a "Pretty-print" toggle).
    assert!(body.contains(r#""status":"ok""#), "healthz page: {body:?}");
    assert_eq!(
        b.execute("return document.readyState", vec![]).unwrap(),
        "complete"
    );

    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("smoke.png");
    b.screenshot(&png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &bytes[..bytes.len().min(16)]
    );
    d.stop();
}

#[test]
fn a_headless_browser_handles_an_alert() {
    let Some(b) = browser() else { return };
    b.goto("data:text/html,<button onclick=\"alert('hi')\">x</button>")
        .unwrap();
    b.click("button").unwrap();
    assert_eq!(b.alert_text().unwrap(), "hi");
    b.accept_alert().unwrap();
    // The dialog is gone: the page answers scripts again.
    assert_eq!(b.execute("return 1 + 1", vec![]).unwrap(), 2);
    assert_eq!(b.text("button").unwrap(), "x");
}

#[test]
fn base64_decoding_matches_known_vectors() {
    use common::browser::base64_decode;
    for (enc, dec) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("Zm9vYg==", "foob"),
        ("Zm9vYmE=", "fooba"),
        ("Zm9vYmFy", "foobar"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
    }
    assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
    assert!(base64_decode("Zm9v!").is_err());
}

/// The rest of the harness's API, so that dashboard tests can rely on it.
#[test]
fn the_browser_harness_api_works() {
    use std::time::Duration;
    let Some(b) = browser() else { return };
    let page = "data:text/html,<title>T</title><input id=i value=a>\
        <p class=p>one</p><p class=p>two</p><span id=s></span>\
        <button id=c onclick=\"document.getElementById('s').textContent=confirm('sure?')\">c</button>\
        <script>setTimeout(()=>document.getElementById('s').textContent='late',300)</script>";
    b.goto(page).unwrap();
    assert_eq!(b.title().unwrap(), "T");
    assert_eq!(b.find_all(".p").unwrap().len(), 2);
    assert!(b.find_all(".none").unwrap().is_empty());
    assert!(b.find("#missing").unwrap_err().contains("no such element"));
    assert_eq!(b.text(".p").unwrap(), "one");
    b.wait_for_text("#s", "late", Duration::from_secs(5))
        .unwrap();
    let err = b
        .wait_for_text("#s", "never", Duration::from_millis(300))
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    b.wait_for("#i", Duration::from_secs(1)).unwrap();
    assert!(b.wait_for("#nope", Duration::from_millis(200)).is_err());
    b.type_into("#i", "bc").unwrap();
    assert_eq!(b.property("#i", "value").unwrap().as_deref(), Some("abc"));
    assert_eq!(b.attribute("#i", "value").unwrap().as_deref(), Some("a"));
    assert_eq!(b.attribute("#i", "id").unwrap().as_deref(), Some("i"));
    assert_eq!(b.attribute("#i", "data-x").unwrap(), None);
    assert_eq!(
        b.execute(
            "return arguments[0] + arguments[1]",
            vec![2.into(), 3.into()]
        )
        .unwrap(),
        5
    );
    b.click("#c").unwrap();
    assert_eq!(b.alert_text().unwrap(), "sure?");
    b.dismiss_alert().unwrap();
    assert_eq!(b.text("#s").unwrap(), "false");
    b.set_window_size(800, 600).unwrap();
    assert_eq!(b.execute("return window.outerWidth", vec![]).unwrap(), 800);

    // Cookies need an http origin.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), "a", &dir.path().join("reeve.db"), "");
    b.goto(&format!("{}/healthz", d.url)).unwrap();
    b.add_cookie("reeve_test", "v1").unwrap();
    assert_eq!(
        b.execute("return document.cookie", vec![]).unwrap(),
        "reeve_test=v1"
    );
    b.delete_cookies().unwrap();
    assert_eq!(b.execute("return document.cookie", vec![]).unwrap(), "");
    d.stop();
}
