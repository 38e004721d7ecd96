//! The dashboard's session: a login form that trades the admin token for an
//! HttpOnly, SameSite=Strict cookie, so a browser can use the pages and the
//! API without a bearer header.
//!
//! **Invariants.** The token is compared in constant time and never echoed:
//! not in the form, not in an error, not in a redirect, not in the cookie
//! (which holds `JobTokens::session`, a value derived from it). A cookie never
//! authorizes a cross-origin change (`same_origin`), and it is only ever
//! set after a correct token.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "reeve_session";

/// The token a `reeve_session` cookie carries, if any.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// Whether a browser request comes from this same origin: `Sec-Fetch-Site:
/// same-origin`, or an `Origin` whose host is the request's `Host`.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if get(header::HeaderName::from_static("sec-fetch-site")) == Some("same-origin") {
        return true;
    }
    match (get(header::ORIGIN), get(header::HOST)) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host),
        _ => false,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The login form; after login the browser goes back to `next`.
pub(crate) fn login_page(next: &str, status: StatusCode) -> Response {
    let next = if next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/"
    };
    let failed = if status == StatusCode::UNAUTHORIZED && next == "/login" {
        "<p class=\"error\" role=\"alert\">That token is not right.</p>"
    } else {
        ""
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>reeve · sign in</title>\
         <style>body{{font:15px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#1d232b}}\
         input{{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}}\
         button{{font:inherit;margin-top:.6rem;padding:.4rem 1rem}}.error{{color:#a3242f}}</style>\
         </head><body><h1>reeve</h1><p>This daemon needs its admin token.</p>{failed}\
         <form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label for=\"token\">Admin token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" autofocus required>\
         <button type=\"submit\">Sign in</button></form></body></html>",
        next = escape(next)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `GET /login`.
pub(crate) async fn login_form() -> Response {
    login_page("/", StatusCode::OK)
}

/// Reads `application/x-www-form-urlencoded` fields.
fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /login`: a form with `token` (and `next`). A right token sets the
/// session cookie and goes to `next`; a wrong one shows the form again.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let token = form_field(&body, "token").unwrap_or_default();
    let next = form_field(&body, "next").unwrap_or_else(|| "/".into());
    let Some(expected) = &state.config.admin_token else {
        return redirect(&next, None);
    };
    if !crate::token_matches(token.trim(), expected) || !same_origin_or_direct(&headers) {
        return login_page("/login", StatusCode::UNAUTHORIZED);
    }
    // The cookie holds a value derived from the token, so no response (and
    // no browser's cookie store) ever holds the admin token itself.
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        state.config.job_tokens.session()
    );
    redirect(&next, Some(cookie))
}

/// A login may come from this origin's form, or from a client with no
/// `Origin` at all (curl); never from another site's page.
fn same_origin_or_direct(headers: &HeaderMap) -> bool {
    headers.get(header::ORIGIN).is_none() || same_origin(headers)
}

/// `POST /logout`: clears the cookie.
pub(crate) async fn logout() -> Response {
    redirect(
        "/login",
        Some(format!(
            "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        )),
    )
}

fn redirect(next: &str, cookie: Option<String>) -> Response {
    let next = if next.starts_with('/') && !next.starts_with("//") {
        next
    } else {
        "/"
    };
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, next.to_string())],
    )
        .into_response();
    if let Some(cookie) = cookie
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        let mut value = value;
        value.set_sensitive(true);
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_forms_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; reeve_session=s3cr%t; b=2"),
        );
        assert_eq!(cookie_token(&h), Some("s3cr%t"));
        assert_eq!(
            form_field("next=%2Fjobs&token=a+b%21", "token").as_deref(),
            Some("a b!")
        );
        assert_eq!(form_field("next=%2Fjobs", "next").as_deref(), Some("/jobs"));
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7433"));
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7433"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }
}
