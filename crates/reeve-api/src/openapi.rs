//! The OpenAPI 3.1 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! This module owns `openapi.json` (embedded at build time) and its handler.
//! The document describes every route [`crate::router_with`] registers: the
//! request bodies and query parameters of each handler, the main fields of
//! every answer, the one error shape with each code and status, the bearer
//! tokens (admin, worker, job) and the session cookie, and the raw-bytes
//! checkpoint bodies. It is the worker protocol's reference for other
//! languages and the input of contract tests (schemathesis), so it follows
//! the code, not the prose docs.
//!
//! **Invariants** (checked by the tests below): the document is JSON with
//! `openapi: 3.1.x`; every `.route(...)` of `router_with` in `lib.rs` appears
//! in `paths` with exactly its methods, and no other path or method does;
//! every `$ref` resolves; operation ids are unique and every path template
//! parameter is declared. Behind the same auth as the rest of the API; a
//! worker token may read it (`tokens::allows`).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /v1/openapi.json`.
pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;

    /// The methods axum's routing helpers are named after.
    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// The length of a call's arguments up to (not including) its closing
    /// parenthesis; `args` starts just after the opening one.
    fn call_len(args: &str) -> usize {
        let mut depth = 1;
        let mut in_string = false;
        let mut escaped = false;
        for (i, c) in args.char_indices() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced .route( call in lib.rs");
    }

    /// The methods a route's method router uses: `get(`, `.post(`,
    /// `axum::routing::patch(`, … as whole words.
    fn methods_in(expr: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for m in METHODS {
            let call = format!("{m}(");
            for (at, _) in expr.match_indices(&call) {
                let before = expr[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    found.insert(m.to_string());
                }
            }
        }
        found
    }

    /// axum's path syntax in OpenAPI's: `{id}` is shared; a wildcard
    /// `{*rest}` becomes `{rest}`.
    fn openapi_path(axum_path: &str) -> String {
        axum_path.replace("{*", "{")
    }

    /// Every route `router_with` registers, read from lib.rs's source:
    /// path → methods.
    fn registered_routes() -> BTreeMap<String, BTreeSet<String>> {
        let src = include_str!("lib.rs");
        let start = src
            .find("pub fn router_with(")
            .expect("router_with in lib.rs");
        let body = &src[start..];
        let body = &body[..body.find("\n}\n").expect("the end of router_with")];
        let mut routes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut rest = body;
        while let Some(at) = rest.find(".route(") {
            let args = &rest[at + ".route(".len()..];
            let len = call_len(args);
            let call = &args[..len];
            let open = call.find('"').expect("a route path literal");
            let close = open + 1 + call[open + 1..].find('"').expect("its end");
            let path = &call[open + 1..close];
            let methods = methods_in(&call[close + 1..]);
            assert!(!methods.is_empty(), "no method found for route {path}");
            routes
                .entry(openapi_path(path))
                .or_default()
                .extend(methods);
            rest = &args[len..];
        }
        routes
    }

    /// The documented operations: path → methods.
    fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
        doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .map(|(path, item)| {
                let methods = item
                    .as_object()
                    .expect("a path item")
                    .keys()
                    .filter(|k| METHODS.contains(&k.as_str()) || *k == "head" || *k == "options")
                    .cloned()
                    .collect();
                (path.clone(), methods)
            })
            .collect()
    }

    /// `value`, or what it refers to when it is a `$ref`.
    fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("{r} does not resolve")),
            None => value,
        }
    }

    #[test]
    fn is_openapi_3_1_json() {
        let doc = doc();
        let version = doc["openapi"].as_str().expect("an openapi version");
        assert!(version.starts_with("3.1"), "openapi is {version}");
        assert!(doc["info"]["title"].is_string());
        assert!(doc["components"]["securitySchemes"]["adminToken"].is_object());
    }

    #[test]
    fn scanner_reads_the_routes() {
        let routes = registered_routes();
        assert!(routes.len() >= 40, "only {} routes found", routes.len());
        let methods = |p: &str| routes.get(p).cloned().unwrap_or_default();
        let set = |ms: &[&str]| ms.iter().map(|m| m.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(methods("/v1/jobs"), set(&["get", "post"]));
        assert_eq!(methods("/v1/queues/{name}"), set(&["patch"]));
        assert_eq!(
            methods("/v1/pressure"),
            set(&["delete", "get", "post"]),
            "a method chain over several lines"
        );
        assert_eq!(methods("/v1/openapi.json"), set(&["get"]));
        assert_eq!(methods("/login"), set(&["get", "post"]));
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = doc();
        let registered = registered_routes();
        let documented = documented_routes(&doc);
        for (path, methods) in &registered {
            let Some(have) = documented.get(path) else {
                panic!("route {path} is not in openapi.json");
            };
            for m in methods {
                assert!(
                    have.contains(m),
                    "{} {path} is not in openapi.json",
                    m.to_uppercase()
                );
            }
        }
        for (path, methods) in &documented {
            let Some(have) = registered.get(path) else {
                panic!("openapi.json documents {path}, which router_with does not register");
            };
            for m in methods {
                assert!(
                    have.contains(m),
                    "openapi.json documents {} {path}, which router_with does not register",
                    m.to_uppercase()
                );
            }
        }
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(doc: &Value, v: &Value, seen: &mut usize) {
            match v {
                Value::Object(map) => {
                    if let Some(r) = map.get("$ref") {
                        let r = r.as_str().expect("$ref is a string");
                        let pointer = r
                            .strip_prefix('#')
                            .unwrap_or_else(|| panic!("{r} is not a local $ref"));
                        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(doc, v, seen));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v, seen)),
                _ => {}
            }
        }
        let doc = doc();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 100, "only {seen} $refs: is the document whole?");
    }

    #[test]
    fn operations_are_well_formed() {
        let doc = doc();
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let declared_in = |params: Option<&Value>| -> Vec<String> {
                params
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| resolve(&doc, p))
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().expect("a parameter name").to_string())
                    .collect()
            };
            let shared = declared_in(item.get("parameters"));
            let templated: Vec<&str> = path
                .split('{')
                .skip(1)
                .map(|s| s.split('}').next().expect("a closed template"))
                .collect();
            for (method, op) in item.as_object().expect("a path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let id = op["operationId"].as_str().expect("an operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} used twice");
                let mut declared = shared.clone();
                declared.extend(declared_in(op.get("parameters")));
                for name in &templated {
                    assert!(
                        declared.iter().any(|d| d == name),
                        "{method} {path}: path parameter {name} is not declared"
                    );
                }
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses
                        .keys()
                        .any(|s| s.starts_with('2') || s.starts_with('3')),
                    "{method} {path}: no success response"
                );
            }
        }
    }

    #[tokio::test]
    async fn served_as_json() {
        let response = document().await.into_response();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "content type"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body");
        assert_eq!(body, DOCUMENT.as_bytes());
    }
}
