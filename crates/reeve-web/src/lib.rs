//! reeve's dashboard (SPEC §11): the pages an operator keeps open, served by
//! the daemon on its own listener and behind the API's auth.
//!
//! **What it owns.** The routes `/`, `/jobs`, `/jobs/{id}`, `/schedules`,
//! `/schedules/{name}`, `/timeline`, `/charts`, `/workers`, `/audit`, and
//! the embedded assets under `/ui/` (one stylesheet, one small script; no
//! CDN, no build step). Pages are rendered on the server from the same
//! [`Store`](reeve_store::Store) calls the API makes; charts are SVG
//! rendered here (`svg`). Actions (cancel, retry, pause, resume, run now,
//! force) are buttons whose script calls the JSON API, so the dashboard can
//! do nothing the API cannot, and a 429 shows its ETA.
//!
//! **Invariants.** Every value from the store or the request is escaped
//! (`html::esc`). No page shows a token or a secret: pages render jobs,
//! schedules and settings, never the configuration's credentials. A page
//! asked for with `X-Reeve-Partial: 1` answers only its `<main>` (the live
//! refresh). Each page is a bounded number of indexed store reads, so it
//! stays fast with 100k jobs (`reeve bench --dashboard`).

mod html;
mod pages;
mod svg;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use reeve_api::AppState;

pub use pages::PAGES;

const APP_CSS: &str = include_str!("../assets/app.css");
const APP_JS: &str = include_str!("../assets/app.js");

/// The dashboard's routes, to be served behind the API's auth
/// (`reeve_api::router_with`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/jobs", get(pages::jobs::list))
        .route("/jobs/{id}", get(pages::jobs::detail))
        .route("/schedules", get(pages::schedules::list))
        .route("/schedules/{name}", get(pages::schedules::detail))
        .route("/timeline", get(pages::timeline::page))
        .route("/charts", get(pages::charts::page))
        .route("/workers", get(pages::workers::page))
        .route("/audit", get(pages::audit::page))
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A rendered page: its title, its place in the navigation, its `main`,
/// and whether it refreshes itself.
pub(crate) struct Page {
    pub title: String,
    pub nav: &'static str,
    pub main: String,
    pub live_ms: Option<u32>,
}

impl Page {
    /// The whole document, or only `main` for a live refresh.
    pub fn respond(self, headers: &HeaderMap) -> Response {
        let partial = headers
            .get("x-reeve-partial")
            .is_some_and(|v| v.as_bytes() == b"1");
        let body = if partial {
            self.main
        } else {
            html::layout(&self.title, self.nav, &self.main, self.live_ms)
        };
        ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
    }
}

/// Why a page could not be rendered. Database text never reaches the page
/// (the API's error mapping logs it).
#[derive(Debug)]
pub(crate) enum PageError {
    NotFound(String),
    BadRequest(String),
    Unavailable,
    Internal,
}

impl From<reeve_api::ApiError> for PageError {
    fn from(e: reeve_api::ApiError) -> Self {
        match e {
            reeve_api::ApiError::NotFound(m) => PageError::NotFound(m),
            reeve_api::ApiError::InvalidInput(i) => PageError::BadRequest(i.to_string()),
            reeve_api::ApiError::DatabaseUnavailable => PageError::Unavailable,
            _ => PageError::Internal,
        }
    }
}

impl From<reeve_store::StoreError> for PageError {
    fn from(e: reeve_store::StoreError) -> Self {
        reeve_api::ApiError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            PageError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The database is unavailable; this page works again when it is back.".into(),
            ),
            PageError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "Something went wrong; the daemon's log says what.".into(),
            ),
        };
        let main = format!("<h1>{}</h1><p>{}</p>", html::esc(title), html::esc(&text));
        (status, Html(html::layout(title, "", &main, None))).into_response()
    }
}

pub(crate) type PageResult = Result<Response, PageError>;
