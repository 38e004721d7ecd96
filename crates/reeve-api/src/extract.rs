//! Extractors whose rejections speak the API's JSON error shape.
//!
//! axum's own `Json`, `Query` and `Path` answer plain text with their own
//! statuses; these wrappers turn every rejection into an [`ApiError`] that
//! names the field when one can be named.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use reeve_core::JobId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::{ApiError, AppState};

/// A JSON body: `Content-Type: application/json` (or `+json`), at most
/// `max_request_bytes`, deserialized with the path of any error kept.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// An optional JSON body: no body (or an empty one) is `T::default()`;
/// anything else is read as [`ApiJson`] reads it, so a body without a JSON
/// `Content-Type` is refused (415), never silently taken for no body.
#[derive(Debug)]
pub(crate) struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let declared_empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|len| len.trim() == "0");
        if declared_empty {
            return Ok(OptionalJson(T::default()));
        }
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return ApiJson::from_request(req, state)
                .await
                .map(|ApiJson(v)| OptionalJson(v));
        }
        // No content type: only an empty body means "no body".
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            Ok(OptionalJson(T::default()))
        } else {
            Err(not_json())
        }
    }
}

fn not_json() -> ApiError {
    ApiError::UnsupportedMediaType("expected a body with Content-Type: application/json".into())
}

/// The whole body, at most `max_request_bytes`.
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.max_request_bytes,
            }
        } else {
            ApiError::InvalidJson {
                message: rejection.body_text(),
                field: None,
            }
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Deserializes a JSON body; errors become `invalid_json` with serde's
/// message and, when it can be told, the field at fault (`jobs[1].kind`).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| ApiError::InvalidJson {
        message: e.to_string(),
        field: None,
    })?;
    Ok(value)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let message = err.inner().to_string();
    let base = (path != "." && !path.contains('?')).then_some(path);
    let field = match (base, named_field(&message)) {
        (Some(base), Some(name)) if base == name || base.ends_with(&format!(".{name}")) => {
            Some(base)
        }
        (Some(base), Some(name)) => Some(format!("{base}.{name}")),
        (None, Some(name)) => Some(name.to_string()),
        (base, None) => base,
    };
    let message = match &field {
        Some(f) => format!("{f}: {message}"),
        None => message,
    };
    ApiError::InvalidJson { message, field }
}

/// The field serde names in "unknown field `x`", "missing field `x`" or
/// "duplicate field `x`".
fn named_field(message: &str) -> Option<&str> {
    ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .filter(|name| !name.is_empty())
}

/// A query string parsed into a `deny_unknown_fields` struct; an unknown or
/// repeated parameter is `invalid_input` naming it.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|rejection| {
                let text = rejection.body_text();
                let message = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                // "PATH: serde message" when the error has a path.
                let (path, message) = match message.split_once(": ") {
                    Some((path, rest)) if !path.is_empty() && !path.contains(' ') => {
                        (Some(path), rest)
                    }
                    _ => (None, message),
                };
                let field = named_field(message).or(path).unwrap_or("query");
                ApiError::input(field, message)
            })
    }
}

/// The single path parameter of a route, as text.
async fn path_param(parts: &mut Parts, field: &str) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, &())
        .await
        .map(|Path(v)| v)
        .map_err(|rejection| ApiError::input(field, rejection.body_text()))
}

/// `{id}` of a job route: a positive integer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobIdParam(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let raw = path_param(parts, "id").await?;
        match raw.parse::<JobId>() {
            Ok(id) if id > 0 => Ok(JobIdParam(id)),
            _ => Err(ApiError::input(
                "id",
                format!("expected a positive integer job id, got {raw:?}"),
            )),
        }
    }
}

/// `{name}` of a queue route (validated by the store as a queue name).
#[derive(Debug, Clone)]
pub(crate) struct QueueNameParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for QueueNameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let name = path_param(parts, "queue").await?;
        reeve_core::validate::name("queue", &name)?;
        Ok(QueueNameParam(name))
    }
}

/// A path's one text parameter (a schedule name, a worker id, a pressure
/// source), its rejections (bad UTF-8) in the API's JSON error shape.
#[derive(Debug)]
pub(crate) struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        path_param(parts, "path").await.map(PathText)
    }
}

/// For `Option<Option<T>>` fields with `#[serde(default)]`: absent → `None`,
/// `null` → `Some(None)`, a value → `Some(Some(v))`.
pub(crate) fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reeve_core::job::EnqueueRequest;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        jobs: Vec<EnqueueRequest>,
    }

    fn field_of<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> Option<String> {
        match parse_json::<T>(body.as_bytes()).unwrap_err() {
            ApiError::InvalidJson { field, .. } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(
            field_of::<EnqueueRequest>(r#"{"kind":"x","prio":3}"#).as_deref(),
            Some("prio")
        );
        assert_eq!(
            field_of::<EnqueueRequest>(r#"{"queue":"q"}"#).as_deref(),
            Some("kind")
        );
        assert_eq!(
            field_of::<EnqueueRequest>(r#"{"kind":5}"#).as_deref(),
            Some("kind")
        );
        assert_eq!(
            field_of::<Batch>(r#"{"jobs":[{"kind":"a"},{"kind":"b","prio":1}]}"#).as_deref(),
            Some("jobs[1].prio")
        );
        assert_eq!(
            field_of::<Batch>(r#"{"jobs":[{"kind":"a"},{}]}"#).as_deref(),
            Some("jobs[1].kind")
        );
        assert_eq!(field_of::<EnqueueRequest>("not json"), None);
        assert_eq!(field_of::<EnqueueRequest>(r#"{"kind":"x"} trailing"#), None);
    }
}
