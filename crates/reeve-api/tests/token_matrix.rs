//! Every operation of `openapi.json` × every kind of credential (SPEC §12):
//! none, a garbage token, a forged job token, the admin token under the
//! wrong scheme, the admin token, a worker token, the job token of the run,
//! the job token of another job, and the job token of an earlier attempt of
//! the run; plus the dashboard's session cookie sent cross-site.
//!
//! Each operation has one row of `ROWS` saying who may call it; the test fails when
//! the served document has an operation without a row (or a row names an
//! operation the document lacks), so a new endpoint must be classified here.
//! A refused cell must answer 401 (no valid credential) or 403 (a valid one
//! without the right) in the API's error shape, echo no token, and leave the
//! store exactly as it was. An allowed cell must get past auth without a
//! server error. Every row runs in a fresh world, so the changes an allowed
//! cell makes cannot leak into another row.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::*;
use serde_json::Value;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No credential needed (`/healthz`, the login form, logout).
    Public,
    /// The admin token or the session cookie only.
    Admin,
    /// The admin token and worker tokens (`GET /v1/openapi.json`).
    AdminOrWorker,
    /// The worker protocol on a registration the worker token covers.
    WorkerProtocol,
    /// One run's own endpoints: admin, worker tokens, and the job token of
    /// that run at its current epoch.
    RunWrite,
}

/// A credential a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    Garbage,
    ForgedJobToken,
    AdminAsBasic,
    CrossSiteCookie,
    Admin,
    Worker,
    JobToken,
    OtherJobToken,
    OldEpochToken,
}

const CREDENTIALS: [Credential; 10] = [
    Credential::None,
    Credential::Garbage,
    Credential::ForgedJobToken,
    Credential::AdminAsBasic,
    Credential::CrossSiteCookie,
    Credential::Admin,
    Credential::Worker,
    Credential::JobToken,
    Credential::OtherJobToken,
    Credential::OldEpochToken,
];

/// What a cell must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Unauthorized,
    Forbidden,
    /// 401 with the sign-in form again: a login posted from another site.
    LoginRefused,
}

fn expected(operation: &str, credential: Credential, method: &Method) -> Expect {
    use Credential as C;
    let access = access_of(operation).expect("a row");
    if access == Access::Public {
        // A login form posted from another site's page is refused, whatever
        // it carries, so no page can sign a browser in (login CSRF).
        return match (operation, credential) {
            ("login", C::CrossSiteCookie) => Expect::LoginRefused,
            _ => Expect::Allowed,
        };
    }
    match credential {
        C::None | C::Garbage | C::ForgedJobToken | C::AdminAsBasic => Expect::Unauthorized,
        // The cookie stands for the admin, but a change must come from the
        // same origin.
        C::CrossSiteCookie if method.is_safe() => Expect::Allowed,
        C::CrossSiteCookie => Expect::Unauthorized,
        C::Admin => Expect::Allowed,
        C::Worker => match access {
            Access::AdminOrWorker | Access::WorkerProtocol | Access::RunWrite => Expect::Allowed,
            _ => Expect::Forbidden,
        },
        C::JobToken => match access {
            Access::RunWrite => Expect::Allowed,
            _ => Expect::Forbidden,
        },
        C::OtherJobToken | C::OldEpochToken => Expect::Forbidden,
    }
}

/// Who may call each operation of the document, by operation id.
const ROWS: &[(&str, Access)] = {
    use Access::*;
    &[
        ("health", Public),
        ("loginForm", Public),
        ("login", Public),
        ("logout", Public),
        ("openapi", AdminOrWorker),
        ("metrics", Admin),
        ("status", Admin),
        ("listJobs", Admin),
        ("enqueue", Admin),
        ("enqueueBatch", Admin),
        ("getJob", Admin),
        ("jobEvents", Admin),
        ("jobOutput", Admin),
        ("cancelJob", Admin),
        ("retryJob", Admin),
        ("sendMail", Admin),
        ("listQueues", Admin),
        ("patchQueue", Admin),
        ("pauseQueue", Admin),
        ("resumeQueue", Admin),
        ("getLimits", Admin),
        ("putLimits", Admin),
        ("listSchedules", Admin),
        ("applySchedules", Admin),
        ("getSchedule", Admin),
        ("deleteSchedule", Admin),
        ("pauseSchedule", Admin),
        ("resumeSchedule", Admin),
        ("runSchedule", Admin),
        ("scheduleHistory", Admin),
        ("scheduleMetrics", Admin),
        ("listPressure", Admin),
        ("raisePressure", Admin),
        ("clearPressure", Admin),
        ("clearPressureNamed", Admin),
        ("listAudit", Admin),
        ("forecast", Admin),
        ("listWorkers", Admin),
        ("registerWorker", WorkerProtocol),
        ("claim", WorkerProtocol),
        ("heartbeatWorker", WorkerProtocol),
        ("completeWorkerRun", WorkerProtocol),
        ("failWorkerRun", WorkerProtocol),
        ("deregisterWorker", WorkerProtocol),
        ("heartbeatJob", RunWrite),
        ("completeJob", RunWrite),
        ("failJob", RunWrite),
        ("loadCheckpoint", RunWrite),
        ("saveCheckpoint", RunWrite),
        ("readMail", RunWrite),
    ]
};

fn access_of(operation: &str) -> Option<Access> {
    ROWS.iter()
        .find(|(id, _)| *id == operation)
        .map(|(_, a)| *a)
}

fn request(
    w: &World,
    credential: Credential,
    method: &Method,
    path: &str,
    body: &Payload,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, "reeve.test");
    let forged = format!("rjt_{}_{}_{}", w.a.id, w.a.epoch, "0".repeat(64));
    let bearer = match credential {
        Credential::None | Credential::AdminAsBasic | Credential::CrossSiteCookie => None,
        Credential::Garbage => Some("garbage-not-a-token"),
        Credential::ForgedJobToken => Some(forged.as_str()),
        Credential::Admin => Some(ADMIN),
        Credential::Worker => Some(WORKER),
        Credential::JobToken => Some(w.a_token.as_str()),
        Credential::OtherJobToken => Some(w.b_token.as_str()),
        Credential::OldEpochToken => Some(w.a_old_token.as_str()),
    };
    if let Some(t) = bearer {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match credential {
        Credential::AdminAsBasic => b = b.header(header::AUTHORIZATION, format!("Basic {ADMIN}")),
        Credential::CrossSiteCookie => {
            b = b
                .header(
                    header::COOKIE,
                    format!(
                        "reeve_session={}",
                        reeve_api::tokens::JobTokens::new(Some(ADMIN)).session()
                    ),
                )
                .header(header::ORIGIN, "http://elsewhere.test")
                .header("sec-fetch-site", "cross-site");
        }
        _ => {}
    }
    let body = match body {
        Payload::None => Body::empty(),
        Payload::Json(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        Payload::Form(f) => {
            b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(*f)
        }
        Payload::Bytes(bytes) => {
            b = b.header(header::CONTENT_TYPE, "application/octet-stream");
            Body::from(*bytes)
        }
    };
    b.body(body).unwrap()
}

/// The served document's operations: (method, path template, operationId).
async fn operations() -> Vec<(Method, String, String)> {
    let h = fleet_harness().await;
    let doc = h
        .call(Some(ADMIN), Method::GET, "/v1/openapi.json", None)
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    let mut ops = Vec::new();
    for (path, item) in doc.json["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                ops.push((m, path.clone(), id.to_string()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn every_operation_answers_each_credential_as_its_row_says_and_refusals_change_nothing() {
    let ops = operations().await;
    assert!(ops.len() >= 45, "only {} operations documented", ops.len());
    let missing: Vec<&str> = ops
        .iter()
        .filter(|(_, _, id)| access_of(id).is_none())
        .map(|(_, _, id)| id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "operations without a row in the token matrix: {missing:?}"
    );
    for (id, _) in ROWS {
        assert!(
            ops.iter().any(|(_, _, op)| op == id),
            "the matrix has a row for {id}, which openapi.json does not document"
        );
    }

    let tokens = [ADMIN, WORKER];
    let mut cells = 0;
    let mut refused = 0;
    for (method, template, operation) in &ops {
        let w = world().await;
        let body = payload(operation, &w);
        let path = concrete_path(template, operation, &w);
        let cell = |c: Credential| format!("{method} {template} ({operation}) with {c:?}");
        // Refusals first, each against the untouched world.
        let (deny, allow): (Vec<Credential>, Vec<Credential>) = CREDENTIALS
            .iter()
            .partition(|c| expected(operation, **c, method) != Expect::Allowed);
        for c in deny {
            let before = w.h.snapshot().await;
            let r = w.h.send(request(&w, c, method, &path, &body)).await;
            let want = match expected(operation, c, method) {
                Expect::Unauthorized | Expect::LoginRefused => StatusCode::UNAUTHORIZED,
                Expect::Forbidden => StatusCode::FORBIDDEN,
                Expect::Allowed => unreachable!(),
            };
            assert_eq!(r.status, want, "{}: {}", cell(c), r.text);
            match expected(operation, c, method) {
                Expect::Unauthorized => assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized"),
                Expect::Forbidden => assert_error(&r, StatusCode::FORBIDDEN, "forbidden"),
                Expect::LoginRefused => {
                    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", cell(c));
                    assert!(r.text.contains("<form"), "{}: {}", cell(c), r.text);
                    assert!(r.headers.get(header::SET_COOKIE).is_none(), "{}", cell(c));
                }
                Expect::Allowed => unreachable!(),
            }
            for secret in tokens.iter().copied().chain([
                w.a_token.as_str(),
                w.b_token.as_str(),
                w.a_old_token.as_str(),
            ]) {
                assert!(!r.text.contains(secret), "{}: echoed a token", cell(c));
            }
            assert_eq!(
                w.h.snapshot().await,
                before,
                "{} changed the store",
                cell(c)
            );
            refused += 1;
            cells += 1;
        }
        // Then the allowed ones: past auth, no server error. The admin goes
        // first, on the untouched world, and must succeed outright.
        for c in allow {
            let r = w.h.send(request(&w, c, method, &path, &body)).await;
            assert!(
                r.status != StatusCode::UNAUTHORIZED
                    && r.status != StatusCode::FORBIDDEN
                    && !r.status.is_server_error(),
                "{}: {} {}",
                cell(c),
                r.status,
                r.text
            );
            if c == Credential::None || c == Credential::Admin {
                assert!(
                    r.status.is_success() || r.status.is_redirection(),
                    "{}: {} {}",
                    cell(c),
                    r.status,
                    r.text
                );
            }
            cells += 1;
        }
    }
    assert_eq!(cells, ops.len() * CREDENTIALS.len());
    assert!(refused > ops.len() * 4, "only {refused} refused cells");
}
