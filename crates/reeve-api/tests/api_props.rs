//! Property tests of the HTTP JSON inputs: every operation of `openapi.json`
//! that takes a JSON body (POST, PUT, PATCH, DELETE), fed arbitrary JSON
//! values (nested objects with the documented field names holding right and
//! wrong types, nulls, huge numbers, long strings, non-objects), arbitrary
//! bytes, and a valid body with exactly one field of the wrong type.
//!
//! Properties: never a 5xx; every 4xx is the API's JSON error shape; a
//! body with one wrong field is refused naming that field; and a refused
//! request leaves every row of the store as it was (`Snapshot`). The
//! harness and the world the operations run in are `common`'s.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// One JSON-body operation of the document.
#[derive(Debug, Clone)]
struct Operation {
    id: String,
    method: Method,
    template: String,
    /// Top-level fields: name → the JSON types the document allows (empty
    /// when it does not say, e.g. an arbitrary payload).
    fields: Vec<(String, BTreeSet<String>)>,
}

/// `value`, or what it refers to when it is a `$ref`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).expect("a local $ref"),
        None => value,
    }
}

/// The JSON types a schema allows, when it says (`type`, or the `type`s of
/// every `anyOf`/`oneOf` branch).
fn types_of(doc: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, schema);
    match &schema["type"] {
        Value::String(t) => return [t.clone()].into(),
        Value::Array(ts) => {
            return ts
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect();
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[key].as_array() {
            let mut all = BTreeSet::new();
            for b in branches {
                let t = types_of(doc, b);
                if t.is_empty() {
                    return BTreeSet::new();
                }
                all.extend(t);
            }
            return all;
        }
    }
    BTreeSet::new()
}

async fn json_operations(h: &Harness) -> Vec<Operation> {
    let doc = h
        .call(Some(ADMIN), Method::GET, "/v1/openapi.json", None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let doc = doc.json;
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let Some(schema) = op
                .pointer("/requestBody/content/application~1json/schema")
                .map(|s| resolve(&doc, s))
            else {
                continue;
            };
            let fields = schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, s)| (name.clone(), types_of(&doc, s)))
                .collect();
            ops.push(Operation {
                id: op["operationId"].as_str().expect("an operationId").into(),
                method: method.to_uppercase().parse().expect("a method"),
                template: path.clone(),
                fields,
            });
        }
    }
    ops
}

/// Any JSON value, with the field names the API knows among the keys.
fn any_json(names: Vec<String>) -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => proptest::sample::select(names),
        1 => "[a-z_]{1,12}",
        1 => ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        // Small numbers, where limits, epochs, ids and sizes have their edges.
        (-2i64..200).prop_map(|n| json!(n)),
        prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN),
            Just(1e-300),
            Just(-0.0),
            any::<f64>().prop_filter("finite", |f| f.is_finite())
        ]
        .prop_map(|f| json!(f)),
        prop_oneof![
            Just(i64::MAX as f64 * 8.0),
            Just(-1.0),
            Just(0.5),
            Just(1e20)
        ]
        .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        (
            1usize..3,
            proptest::sample::select(vec!['a', 'é', '\0', '\n', '漢'])
        )
            .prop_map(|(k, c)| Value::String(c.to_string().repeat(k * 40_000))),
        prop_oneof![
            Just("1s"),
            Just("0ms"),
            Just("99999999999d"),
            Just("agent"),
            Just("default"),
            Just("* * * * *"),
            Just("error"),
            Just("key=value"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value of a JSON type outside `allowed`.
fn wrong_values(allowed: &BTreeSet<String>) -> Vec<Value> {
    let has = |t: &str| allowed.contains(t);
    let mut out = Vec::new();
    if !has("null") {
        out.push(Value::Null);
    }
    if !has("boolean") {
        out.push(json!(true));
    }
    if !has("integer") && !has("number") {
        out.push(json!(12345));
    }
    if has("integer") && !has("number") {
        out.push(json!(1.5));
    }
    if !has("string") {
        out.push(json!("text"));
    }
    if !has("array") {
        out.push(json!([1, 2]));
    }
    if !has("object") {
        out.push(json!({"nested": 1}));
    }
    out
}

/// What a case sends.
#[derive(Debug, Clone)]
enum Input {
    Json(Value),
    Bytes(Vec<u8>),
    /// A valid body with `field` set to a value of a type it does not take.
    OneWrong {
        field: String,
        body: Value,
    },
    /// JSON under another content type (or none).
    WrongType(Option<&'static str>, Value),
}

fn request(w: &World, op: &Operation, input: &Input) -> Request<Body> {
    let path = concrete_path(&op.template, &op.id, w);
    let b = Request::builder()
        .method(op.method.clone())
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
    let (b, body) = match input {
        Input::Json(v) | Input::OneWrong { body: v, .. } => (
            b.header(header::CONTENT_TYPE, "application/json"),
            Body::from(claim_without_wait(op, v).to_string()),
        ),
        Input::Bytes(bytes) => (
            b.header(header::CONTENT_TYPE, "application/json"),
            Body::from(bytes.clone()),
        ),
        Input::WrongType(Some(ct), v) => (
            b.header(header::CONTENT_TYPE, *ct),
            Body::from(v.to_string()),
        ),
        Input::WrongType(None, v) => (b, Body::from(v.to_string())),
    };
    b.body(body).unwrap()
}

/// A claim long-polls for up to 30 s when told to and no work is there; the
/// properties are about the inputs, so a claim that would wait is asked
/// not to.
fn claim_without_wait(op: &Operation, v: &Value) -> Value {
    let mut v = v.clone();
    if op.id == "claim"
        && let Some(wait) = v.get_mut("wait_ms")
        && wait.is_u64()
    {
        *wait = json!(0);
    }
    v
}

/// Sends `input` to `op` and checks the properties.
async fn check(w: &World, op: &Operation, input: &Input) -> Result<(), TestCaseError> {
    let before = w.h.snapshot().await;
    let r = w.h.send(request(w, op, input)).await;
    let what = format!("{} {} ({}) with {input:?}", op.method, op.template, op.id);
    let what = if what.len() > 600 {
        format!("{}…", &what[..what.floor_char_boundary(600)])
    } else {
        what
    };
    prop_assert!(
        !r.status.is_server_error(),
        "{what}: {} {}",
        r.status,
        r.text
    );
    if let Input::OneWrong { field, .. } = input {
        prop_assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}: {}", what, r.text);
        // The field itself, or a path inside it (`on_success[0]`).
        let named = r.json["field"].as_str().unwrap_or("");
        prop_assert!(
            named == field
                || named.starts_with(&format!("{field}["))
                || named.starts_with(&format!("{field}.")),
            "{what}: names {named:?}: {}",
            r.text
        );
        prop_assert!(
            r.json["message"]
                .as_str()
                .is_some_and(|m| m.contains(field.as_str())),
            "{}: {}",
            what,
            r.text
        );
    }
    if let Input::WrongType(..) = input {
        prop_assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{}: {}",
            what,
            r.text
        );
    }
    if r.status.is_client_error() {
        prop_assert!(
            r.json["error"].is_string() && r.json["message"].is_string(),
            "{what}: not the error shape: {}",
            r.text
        );
        prop_assert!(
            r.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap_or("")
                .starts_with("application/json"),
            "{what}: content type"
        );
        let after = w.h.snapshot().await;
        prop_assert!(
            after == before,
            "{what}: a refused request changed the store"
        );
    }
    Ok(())
}

/// Runs `cases` cases of `strategy` against `ops` in one world.
fn run(cases: u32, make: impl Fn(&[Operation]) -> BoxedStrategy<(usize, Input)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world());
    let ops = rt.block_on(json_operations(&w.h));
    assert!(ops.len() >= 15, "only {} JSON-body operations", ops.len());
    let strategy = make(&ops);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    runner
        .run(&strategy, |(i, input)| {
            rt.block_on(check(&w, &ops[i], &input))
        })
        .unwrap();
}

fn all_names(ops: &[Operation]) -> Vec<String> {
    let names: BTreeSet<String> = ops
        .iter()
        .flat_map(|o| o.fields.iter().map(|(n, _)| n.clone()))
        .collect();
    names.into_iter().collect()
}

#[test]
fn arbitrary_json_bodies_never_get_a_server_error_and_refusals_change_nothing() {
    run(300, |ops| {
        let n = ops.len();
        let names = all_names(ops);
        let fields: Vec<Vec<String>> = ops
            .iter()
            .map(|o| o.fields.iter().map(|(n, _)| n.clone()).collect())
            .collect();
        let any = any_json(names.clone());
        // An object of the operation's own fields, each holding anything.
        let shaped = (0..n).prop_flat_map(move |i| {
            let own = if fields[i].is_empty() {
                names.clone()
            } else {
                fields[i].clone()
            };
            (
                Just(i),
                proptest::collection::vec(
                    (proptest::sample::select(own), any_json(names.clone())),
                    0..5,
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            )
        });
        prop_oneof![
            (0..n, any).prop_map(|(i, v)| (i, Input::Json(v))),
            shaped.prop_map(|(i, v)| (i, Input::Json(v))),
        ]
        .boxed()
    });
}

#[test]
fn arbitrary_bytes_and_wrong_content_types_never_get_a_server_error() {
    run(200, |ops| {
        let n = ops.len();
        prop_oneof![
            3 => (0..n, proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(i, b)| (i, Input::Bytes(b))),
            1 => (0..n, proptest::sample::select(vec![Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonx"), None]))
                .prop_map(|(i, ct)| (i, Input::WrongType(ct, json!({"kind": "agent"})))),
        ]
        .boxed()
    });
}

#[test]
fn one_field_of_the_wrong_type_is_refused_naming_it() {
    // Exhaustive: every documented top-level field of every operation that
    // has a valid body to start from, with each JSON type it does not take,
    // and an unknown field.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world());
    let ops = rt.block_on(json_operations(&w.h));
    let mut cases = 0;
    for op in &ops {
        let Payload::Json(Value::Object(valid)) = payload(&op.id, &w) else {
            continue;
        };
        let mut inputs = Vec::new();
        for (field, types) in &op.fields {
            for wrong in wrong_values(types)
                .into_iter()
                .filter(|_| !types.is_empty())
            {
                let mut body = valid.clone();
                body.insert(field.clone(), wrong);
                inputs.push((field.clone(), body));
            }
        }
        let mut body = valid.clone();
        body.insert("no_such_field".into(), json!(1));
        inputs.push(("no_such_field".into(), body));
        for (field, body) in inputs {
            let input = Input::OneWrong {
                field,
                body: Value::Object(body),
            };
            if let Err(e) = rt.block_on(check(&w, op, &input)) {
                panic!("{e}");
            }
            cases += 1;
        }
    }
    assert!(cases > 100, "only {cases} one-wrong-field cases");
}
