//! The HTTP API against a real SQLite store in a temp dir, called in-process
//! with `tower::ServiceExt::oneshot` (no server, no mocks of the store); the
//! harness is `common`.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::*;
use reeve_api::ApiConfig;
use reeve_core::Job;
use reeve_store::{Finish, Outcome, Store};
use serde_json::{Value, json};

#[tokio::test]
async fn enqueue_get_list_and_page() {
    let h = Harness::new().await;
    let r = h
        .post(
            "/v1/jobs",
            json!({"queue": "agents", "kind": "research", "payload": {"topic": "x"}, "priority": 5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.headers["x-reeve-created"], "true");
    let job: Job = serde_json::from_value(r.json.clone()).unwrap();
    assert_eq!(job.queue, "agents");
    assert_eq!(job.kind, "research");
    assert_eq!(job.payload, json!({"topic": "x"}));
    assert_eq!(r.json["state"], "available");

    let got = h.get(&format!("/v1/jobs/{}", job.id)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json["id"], job.id);
    assert_eq!(got.json["priority"], 5);

    for i in 0..4 {
        h.enqueue(json!({"kind": if i % 2 == 0 { "echo" } else { "sleep" }}))
            .await;
    }
    let all = h.get("/v1/jobs").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json["items"].as_array().unwrap().len(), 5);
    assert!(all.json["next_before_id"].is_null());

    let agents = h.get("/v1/jobs?queue=agents").await;
    assert_eq!(agents.json["items"].as_array().unwrap().len(), 1);
    let echo = h.get("/v1/jobs?kind=echo&state=available").await;
    assert_eq!(echo.json["items"].as_array().unwrap().len(), 2);
    let running = h.get("/v1/jobs?state=running").await;
    assert_eq!(running.json["items"].as_array().unwrap().len(), 0);

    // Keyset paging: newest first, two at a time, no job seen twice.
    let mut seen = Vec::new();
    let mut uri = "/v1/jobs?limit=2".to_string();
    loop {
        let page = h.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.json["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|j| j["id"].as_i64().unwrap()));
        match page.json["next_before_id"].as_i64() {
            Some(before) => uri = format!("/v1/jobs?limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
}

#[tokio::test]
async fn unique_key_dedups_with_200() {
    let h = Harness::new().await;
    let body = json!({"kind": "review", "unique_key": "pr-42"});
    let first = h.post("/v1/jobs", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.headers["x-reeve-created"], "true");
    let second = h.post("/v1/jobs", body).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.headers["x-reeve-created"], "false");
    assert_eq!(second.json["id"], first.json["id"]);
    assert_eq!(h.total_jobs().await, 1);
}

#[tokio::test]
async fn batch_enqueue_is_all_or_nothing() {
    let h = Harness::new().await;
    let r = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "a"}, {"kind": "b", "unique_key": "u"}, {"kind": "c", "queue": "q2"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let jobs = r.json["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["created"] == true));
    assert_eq!(jobs[2]["job"]["queue"], "q2");
    assert_eq!(h.total_jobs().await, 3);
    let before = h.store.status().await.unwrap();

    // One invalid element: named with its index, nothing enqueued.
    let bad = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"kind": "not a kind"}, {"kind": "ok2"}]}),
        )
        .await;
    assert_field(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "jobs[1].kind",
    );
    let bad = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"kind": "x", "max_run_duration": "-5s"}]}),
        )
        .await;
    assert_field(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "jobs[1].max_run_duration",
    );
    let bad = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "ok"}, {"kind": "x", "prio": 1}]}),
        )
        .await;
    assert_field(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "jobs[1].prio",
    );
    let empty = h.post("/v1/jobs/batch", json!({"jobs": []})).await;
    assert_field(&empty, StatusCode::BAD_REQUEST, "invalid_input", "jobs");
    assert_eq!(h.store.status().await.unwrap(), before);

    // A duplicate unique key inside a later batch answers created: false.
    let again = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "b", "unique_key": "u"}]}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json["jobs"][0]["created"], false);
    assert_eq!(again.json["jobs"][0]["job"]["id"], jobs[1]["job"]["id"]);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let h = Harness::with_config(ApiConfig {
        max_payload_bytes: 1024,
        max_request_bytes: 16 * 1024,
        ..ApiConfig::default()
    })
    .await;

    let r = h.raw(Method::POST, "/v1/jobs", "{\"kind\": ").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    let r = h.raw(Method::POST, "/v1/jobs", "not json at all").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");

    let r = h.post("/v1/jobs", json!({"kind": "x", "prio": 3})).await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "prio");
    assert!(r.json["message"].as_str().unwrap().contains("prio"));

    let r = h.post("/v1/jobs", json!({"queue": "q"})).await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "kind");

    let r = h.post("/v1/jobs", json!({"kind": 12})).await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "kind");

    let r = h
        .post(
            "/v1/jobs",
            json!({"kind": "x", "payload": "y".repeat(2000)}),
        )
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "payload");

    let r = h
        .post("/v1/jobs", json!({"kind": "x", "max_run_duration": "-5s"}))
        .await;
    assert_field(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "max_run_duration",
    );
    assert!(r.json["message"].as_str().unwrap().contains("negative"));

    // Body over max_request_bytes.
    let big = json!({"kind": "x", "payload": "z".repeat(20 * 1024)}).to_string();
    let r = h.raw(Method::POST, "/v1/jobs", big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Wrong or missing content type.
    let r = h
        .send(
            h.request(Method::POST, "/v1/jobs")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"kind":"x"}"#))
                .unwrap(),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let r = h
        .send(
            h.request(Method::POST, "/v1/jobs")
                .body(Body::from(r#"{"kind":"x"}"#))
                .unwrap(),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );

    assert_eq!(h.total_jobs().await, 0);

    // Query strings.
    let r = h.get("/v1/jobs?state=exploded").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "state");
    let msg = r.json["message"].as_str().unwrap();
    assert!(
        msg.contains("available") && msg.contains("cancelled"),
        "{msg}"
    );
    let r = h.get("/v1/jobs?limit=abc").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "limit");
    let r = h.get("/v1/jobs?limit=5000").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "limit");
    let r = h.get("/v1/jobs?before=-3").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "before");
    let r = h.get("/v1/jobs?colour=blue").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "colour");

    // Path parameters.
    let r = h.get("/v1/jobs/abc").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "id");
}

#[tokio::test]
async fn fenced_write_backs_refuse_stale_executors() {
    let h = Harness::new().await;
    let job = h.enqueue(json!({"kind": "agent"})).await;
    let running = h.claim().await;
    assert_eq!(running.id, job.id);
    assert_eq!(running.epoch, 1);

    // A stale complete changes nothing.
    let r = h
        .post(
            &format!("/v1/jobs/{}/complete", job.id),
            json!({"epoch": 7, "result": {"ok": true}}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "stale_epoch");
    assert_eq!(r.json["expected"], 1);
    assert_eq!(r.json["actual"], 7);
    assert_eq!(h.store.get_job(job.id).await.unwrap(), running);

    // A stale heartbeat is lease_lost.
    let r = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": 0}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "lease_lost");
    assert_eq!(r.json["reason"], "stale_epoch");
    assert_eq!(r.json["expected"], 1);
    assert_eq!(r.json["actual"], 0);

    // The current epoch heartbeats, with turns and progress.
    let r = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": 1, "turns": 3, "progress": "step 2 of 5"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "ok");
    assert_eq!(r.json["turns"], 3);
    assert!(r.json["lease_expires_at"].is_string());
    assert!(r.json["max_turns"].is_null());
    let r = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": 1, "turns": -1}),
        )
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "turns");

    let r = h
        .post(
            &format!("/v1/jobs/{}/complete", job.id),
            json!({"epoch": 1, "result": {"ok": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "succeeded");
    assert_eq!(r.json["result"], json!({"ok": true}));
    assert_eq!(r.json["progress"], "step 2 of 5");

    // Completing twice is refused: the run is over.
    let r = h
        .post(
            &format!("/v1/jobs/{}/complete", job.id),
            json!({"epoch": 1}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "not_running");
    assert_eq!(r.json["state"], "succeeded");
    let r = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": 1}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "lease_lost");
    assert_eq!(r.json["reason"], "not_running");
    assert_eq!(r.json["state"], "succeeded");

    // Unknown jobs.
    let r = h.post("/v1/jobs/999/heartbeat", json!({"epoch": 1})).await;
    assert_error(&r, StatusCode::CONFLICT, "lease_lost");
    assert_eq!(r.json["reason"], "not_found");
    let r = h.post("/v1/jobs/999/complete", json!({"epoch": 1})).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    // The history shows each transition.
    let r = h.get(&format!("/v1/jobs/{}/events", job.id)).await;
    assert_eq!(r.status, StatusCode::OK);
    let kinds: Vec<&str> = r.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["enqueued", "claimed", "succeeded"]);
}

#[tokio::test]
async fn fail_then_retry() {
    let h = Harness::new().await;
    let job = h.enqueue(json!({"kind": "agent"})).await;
    let run = h.claim().await;
    let r = h
        .post(
            &format!("/v1/jobs/{}/fail", job.id),
            json!({"epoch": run.epoch, "reason": "rate_limited", "error": "slow down"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "retryable");
    assert_eq!(r.json["failure_reason"], "rate_limited");
    assert_eq!(r.json["last_error"], "slow down");

    // A final reason fails for good; the reason is the executor's, even when
    // the text would classify differently.
    let job2 = h.enqueue(json!({"kind": "agent2"})).await;
    let run2 = h.claim().await;
    assert_eq!(run2.id, job2.id);
    let bad = h
        .post(
            &format!("/v1/jobs/{}/fail", job2.id),
            json!({"epoch": run2.epoch, "reason": "exploded"}),
        )
        .await;
    assert_field(&bad, StatusCode::BAD_REQUEST, "invalid_json", "reason");
    let none = h
        .post(
            &format!("/v1/jobs/{}/fail", job2.id),
            json!({"epoch": run2.epoch}),
        )
        .await;
    assert_field(&none, StatusCode::BAD_REQUEST, "invalid_input", "reason");
    let r = h
        .post(
            &format!("/v1/jobs/{}/fail", job2.id),
            json!({"epoch": run2.epoch, "reason": "auth_failed", "error": "HTTP 429"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "failed");
    assert_eq!(r.json["failure_reason"], "auth_failed");

    let r = h.post_empty(&format!("/v1/jobs/{}/retry", job2.id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "available");
    assert_eq!(r.json["attempt"], 0);
    assert_eq!(r.json["epoch"], run2.epoch);

    // Retrying a job that is not failed or cancelled is refused.
    let r = h.post_empty(&format!("/v1/jobs/{}/retry", job2.id)).await;
    assert_error(&r, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(r.json["state"], "available");

    // Without a reason, the error text is classified as a fallback.
    let run3 = h.claim().await;
    let r = h
        .post(
            &format!("/v1/jobs/{}/fail", run3.id),
            json!({"epoch": run3.epoch, "error": "HTTP 429 Too Many Requests"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["failure_reason"], "rate_limited");
}

#[tokio::test]
async fn cancel_waiting_and_running_jobs() {
    let h = Harness::new().await;
    let waiting = h.enqueue(json!({"kind": "a", "delay": "1h"})).await;
    assert_eq!(
        serde_json::to_value(waiting.state).unwrap(),
        json!("scheduled")
    );
    let r = h
        .post_empty(&format!("/v1/jobs/{}/cancel", waiting.id))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "cancelled");
    assert!(h.runtime.cancelled.lock().unwrap().is_empty());
    let r = h
        .post_empty(&format!("/v1/jobs/{}/cancel", waiting.id))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "invalid_state");
    assert_eq!(r.json["action"], "cancel");

    let job = h.enqueue(json!({"kind": "b"})).await;
    let run = h.claim().await;
    let r = h.post_empty(&format!("/v1/jobs/{}/cancel", job.id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["state"], "running");
    assert!(r.json["cancel_requested_at"].is_string());
    assert_eq!(*h.runtime.cancelled.lock().unwrap(), vec![job.id]);

    // The executor learns it at its next heartbeat.
    let r = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": run.epoch}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "cancel_requested");

    let r = h.post_empty("/v1/jobs/12345/cancel").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn output_live_and_stored() {
    let h = Harness::new().await;
    let job = h.enqueue(json!({"kind": "a"})).await;
    let run = h.claim().await;
    h.runtime
        .live
        .lock()
        .unwrap()
        .insert(job.id, b"hello world".to_vec());
    let r = h.get(&format!("/v1/jobs/{}/output?from=6", job.id)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"running": true, "data": "world", "next_offset": 11})
    );

    h.runtime.live.lock().unwrap().clear();
    let r = h.get(&format!("/v1/jobs/{}/output", job.id)).await;
    assert_eq!(
        r.json,
        json!({"running": false, "attempt": 1, "data": "", "next_offset": 0})
    );
    let done = h
        .store
        .finish(vec![Finish {
            job: job.id,
            epoch: run.epoch,
            outcome: Outcome::Succeeded { result: None },
            output: Some(b"line one\nline two\n".to_vec()),
        }])
        .await
        .unwrap();
    assert!(done[0].is_ok());
    let r = h.get(&format!("/v1/jobs/{}/output?from=9", job.id)).await;
    assert_eq!(
        r.json,
        json!({"running": false, "attempt": 1, "data": "line two\n", "next_offset": 18})
    );
    let r = h.get(&format!("/v1/jobs/{}/output?from=x", job.id)).await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "from");
    let r = h.get("/v1/jobs/4242/output").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn queues_and_limits() {
    let h = Harness::new().await;
    h.enqueue(json!({"kind": "a", "queue": "agents"})).await;

    let r = h
        .raw(Method::PATCH, "/v1/queues/agents", r#"{"concurrency": 2}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["name"], "agents");
    assert_eq!(r.json["concurrency"], 2);
    assert_eq!(r.json["paused"], false);
    assert_eq!(r.json["available"], 1);

    // Absent concurrency is left alone; null removes it.
    let r = h
        .raw(Method::PATCH, "/v1/queues/agents", r#"{"paused": true}"#)
        .await;
    assert_eq!(r.json["concurrency"], 2);
    assert_eq!(r.json["paused"], true);
    let r = h
        .raw(
            Method::PATCH,
            "/v1/queues/agents",
            r#"{"concurrency": null}"#,
        )
        .await;
    assert!(r.json["concurrency"].is_null(), "{}", r.text);
    assert_eq!(r.json["paused"], true);

    for bad in [
        r#"{"concurrency": -1}"#,
        r#"{"concurrency": 1.5}"#,
        r#"{"concurrency": "two"}"#,
    ] {
        let r = h.raw(Method::PATCH, "/v1/queues/agents", bad).await;
        assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "concurrency");
    }
    let r = h
        .raw(Method::PATCH, "/v1/queues/agents", r#"{"pause": true}"#)
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "pause");
    let r = h
        .raw(
            Method::PATCH,
            "/v1/queues/bad%20name",
            r#"{"paused": true}"#,
        )
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "queue");

    let r = h.post_empty("/v1/queues/agents/resume").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["paused"], false);
    let r = h.post_empty("/v1/queues/other/pause").await;
    assert_eq!(r.json["paused"], true);
    assert_eq!(r.json["name"], "other");

    let r = h.get("/v1/queues").await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<&str> = r.json["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agents", "other"]);

    let r = h.get("/v1/limits").await;
    assert_eq!(r.json, json!({"global": null}));
    let r = h.raw(Method::PUT, "/v1/limits", r#"{"global": 3}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json, json!({"global": 3}));
    assert_eq!(h.get("/v1/limits").await.json, json!({"global": 3}));
    let r = h.raw(Method::PUT, "/v1/limits", "{}").await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "global");
    let r = h.raw(Method::PUT, "/v1/limits", r#"{"global": -2}"#).await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "global");
    assert_eq!(h.get("/v1/limits").await.json, json!({"global": 3}));
    let r = h
        .raw(Method::PUT, "/v1/limits", r#"{"global": null}"#)
        .await;
    assert_eq!(r.json, json!({"global": null}));
}

#[tokio::test]
async fn status_and_metrics() {
    let h = Harness::new().await;
    h.enqueue(json!({"kind": "a", "queue": "agents"})).await;
    h.enqueue(json!({"kind": "b", "queue": "agents"})).await;
    h.claim().await;
    h.raw(Method::PATCH, "/v1/queues/agents", r#"{"concurrency": 4}"#)
        .await;
    h.raw(Method::PUT, "/v1/limits", r#"{"global": 8}"#).await;

    let r = h.get("/v1/status").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["backend"], "sqlite");
    assert_eq!(r.json["worker_id"], "test-worker-1");
    assert_eq!(r.json["running"], 1);
    assert_eq!(r.json["by_state"]["available"], 1);
    assert_eq!(r.json["by_state"]["running"], 1);
    assert_eq!(r.json["limits"], json!({"global": 8}));
    assert_eq!(r.json["queues"][0]["name"], "agents");
    assert_eq!(r.json["executor"]["slots"], 4);
    assert_eq!(r.json["executor"]["heartbeats_total"], 42);

    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = &r.text;
    for line in [
        "reeve_running_jobs 1",
        r#"reeve_jobs{queue="agents",state="running"} 1"#,
        r#"reeve_jobs{queue="agents",state="available"} 1"#,
        r#"reeve_queue_concurrency_limit{queue="agents"} 4"#,
        r#"reeve_queue_paused{queue="agents"} 0"#,
        "reeve_global_concurrency_limit 8",
        "reeve_leader 1",
        "reeve_executor_slots 4",
        "reeve_executor_busy 1",
        "reeve_claimed_total 7",
        "reeve_finished_total 5",
        "reeve_refused_writebacks_total 1",
        "reeve_reaped_total 2",
        "reeve_heartbeats_total 42",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

// Who may call what (none, garbage, admin, worker and job tokens on every
// operation) is the matrix of tests/token_matrix.rs.
#[tokio::test]
async fn healthz_answers_without_a_token_and_names_the_backend() {
    let h = Harness::with_config(ApiConfig {
        admin_token: Some("s3cret-token".into()),
        ..ApiConfig::default()
    })
    .await;
    let r = h
        .send(
            Request::builder()
                .uri("/healthz")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json, json!({"status": "ok", "backend": "sqlite"}));
}

#[tokio::test]
async fn unknown_routes_and_jobs_are_json_404() {
    let h = Harness::new().await;
    let r = h.get("/v1/nope").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h.get("/").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h.get("/v1/jobs/777").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h.get("/v1/jobs/777/events").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h.post_empty("/v1/jobs/777/retry").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = h
        .send(
            h.request(Method::DELETE, "/v1/jobs")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn database_failures_never_leak_their_text() {
    let h = Harness::new().await;
    h.enqueue(json!({"kind": "a"})).await;
    h.store.close().await;
    for r in [
        h.get("/v1/jobs").await,
        h.get("/v1/jobs/1").await,
        h.post("/v1/jobs", json!({"kind": "b"})).await,
        h.get("/metrics").await,
    ] {
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable");
        let lower = r.text.to_lowercase();
        assert!(
            !lower.contains("pool") && !lower.contains("sqlite") && !lower.contains("closed"),
            "{}",
            r.text
        );
    }
}

/// Runs `n` jobs of kind `k` to completion, each lasting `ms` on the store's
/// clock, so the schedule's typical duration is known.
async fn finish_runs(h: &Harness, schedule: &str, n: usize, ms: u64) {
    for _ in 0..n {
        let r = h
            .post(
                &format!("/v1/schedules/{schedule}/run"),
                json!({"force": true}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let job = h.claim().await;
        h.store.advance_clock(std::time::Duration::from_millis(ms));
        h.store
            .finish(vec![Finish {
                job: job.id,
                epoch: job.epoch,
                outcome: Outcome::Succeeded { result: None },
                output: None,
            }])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn run_now_honors_the_cap_with_an_eta_and_force_is_audited() {
    let h = Harness::new().await;
    let apply = h
        .post(
            "/v1/schedules/apply",
            json!({"schedules": [
                {"name": "review", "every": "1h", "job": {"kind": "review"}},
                {"name": "other", "every": "1h", "job": {"kind": "other"}}
            ]}),
        )
        .await;
    assert_eq!(apply.status, StatusCode::OK, "{}", apply.text);
    // Observed: review runs take 2 minutes.
    finish_runs(&h, "review", 3, 120_000).await;

    // With room, a manual run fires at once.
    let r = h.post_empty("/v1/schedules/other/run").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["outcome"], "manual");
    let other = r.json["job"]["id"].as_i64().unwrap();
    let c = h.post_empty(&format!("/v1/jobs/{other}/cancel")).await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.text);

    // Full: the global cap is 1 and a review run has been going for 30s.
    let r = h
        .post("/v1/schedules/review/run", json!({"force": true}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    h.claim().await;
    h.store.advance_clock(std::time::Duration::from_secs(30));
    let put = h
        .raw(Method::PUT, "/v1/limits", json!({"global": 1}).to_string())
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let before = h.total_jobs().await;
    let r = h.post_empty("/v1/schedules/review/run").await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "capacity_full");
    assert_eq!(r.json["running"], 1);
    assert_eq!(r.json["limit"], 1);
    assert_eq!(r.json["scope"], "global");
    // The running review run typically takes 2 minutes and has run 30s.
    let eta = r.json["slot_eta_seconds"].as_u64().expect("an ETA");
    assert!(
        (85..=91).contains(&eta),
        "ETA from typical durations: {}",
        r.text
    );
    assert_eq!(
        h.total_jobs().await,
        before,
        "a refused run changes nothing"
    );

    // Forced: runs anyway and leaves an audit record naming who and what was full.
    let r = h
        .post(
            "/v1/schedules/review/run",
            json!({"force": true, "by": "ana"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["outcome"], "forced");
    assert_eq!(r.json["was_full"]["scope"], "global");
    let forced_id = r.json["job"]["id"].as_i64().unwrap();
    let audit = h.get("/v1/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    let rows = audit.json["audit"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|a| a["detail"]["job_id"] == forced_id)
        .expect("an audit row for the forced run");
    assert_eq!(row["action"], "force_run");
    assert_eq!(row["actor"], "operator:ana");
    assert_eq!(row["target"], "schedule:review");
    assert_eq!(row["detail"]["full"]["limit"], 1);
    // It is claimed past the full cap.
    let claimed = h.claim().await;
    assert_eq!(claimed.id, forced_id);

    // History and metrics of the schedule.
    let hist = h.get("/v1/schedules/review/history?limit=10").await;
    assert_eq!(hist.status, StatusCode::OK, "{}", hist.text);
    let firings = hist.json["firings"].as_array().unwrap();
    assert_eq!(firings.len(), 5);
    let about_two_minutes = |v: &Value| (120_000..121_000).contains(&v.as_i64().unwrap_or(0));
    assert!(
        firings[2..]
            .iter()
            .all(|f| about_two_minutes(&f["duration_ms"])),
        "{}",
        hist.text
    );
    let m = h.get("/v1/schedules/review/metrics").await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    assert!(
        about_two_minutes(&m.json["duration_ms"]["p50"]),
        "{}",
        m.text
    );
    assert_eq!(m.json["by_outcome"]["forced"], 5);
    let bad = h.get("/v1/schedules/review/history?at=yesterday").await;
    assert_field(&bad, StatusCode::BAD_REQUEST, "invalid_input", "at");
    let missing = h.post_empty("/v1/schedules/nope/run").await;
    assert_error(&missing, StatusCode::NOT_FOUND, "not_found");
    let list = h.get("/v1/schedules").await;
    let review = list.json["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "review")
        .unwrap()
        .clone();
    assert!(
        about_two_minutes(&review["recent"]["avg_duration_ms"]),
        "{review}"
    );
}

#[tokio::test]
async fn pressure_signals_and_the_forecast() {
    let h = Harness::new().await;
    let r = h
        .post("/v1/pressure", json!({"source": "ide", "ttl_seconds": 600}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["source"], "ide");
    let bad = h
        .post("/v1/pressure", json!({"source": "ide", "ttl_seconds": 0}))
        .await;
    assert_field(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "ttl_seconds",
    );
    let unknown = h
        .post(
            "/v1/pressure",
            json!({"source": "x", "ttl_seconds": 5, "extra": 1}),
        )
        .await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "invalid_json");
    let list = h.get("/v1/pressure").await;
    assert_eq!(list.json["pressure"].as_array().unwrap().len(), 1);
    let cleared = h
        .send(
            h.request(Method::DELETE, "/v1/pressure/ide")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    let again = h
        .raw(
            Method::DELETE,
            "/v1/pressure",
            json!({"source": "ide"}).to_string(),
        )
        .await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");

    // Five schedules at the same minute against a cap of 2: the forecast
    // predicts the waits and the apply warns about the collision.
    let put = h
        .raw(Method::PUT, "/v1/limits", json!({"global": 2}).to_string())
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let specs: Vec<Value> = (0..5)
        .map(|i| json!({"name": format!("s{i}"), "cron": "0 9 * * *", "job": {"kind": "k"}}))
        .collect();
    let apply = h
        .post("/v1/schedules/apply", json!({"schedules": specs}))
        .await;
    assert_eq!(apply.status, StatusCode::OK, "{}", apply.text);
    let warnings = apply.json["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 5, "one per saved schedule: {}", apply.text);
    assert_eq!(warnings[0]["peak_load"], 5);
    assert_eq!(warnings[0]["cap"], 2);
    let again = h
        .post(
            "/v1/schedules/apply",
            json!({"schedules": (0..5)
        .map(|i| json!({"name": format!("s{i}"), "cron": "0 9 * * *", "job": {"kind": "k"}}))
        .collect::<Vec<_>>()}),
        )
        .await;
    assert!(
        again.json["warnings"].as_array().unwrap().is_empty(),
        "an unchanged apply saves nothing to warn about"
    );
    let f = h.get("/v1/forecast?hours=24").await;
    assert_eq!(f.status, StatusCode::OK, "{}", f.text);
    let schedules = f.json["schedules"].as_array().unwrap();
    assert_eq!(schedules.len(), 5);
    let waited: u64 = schedules
        .iter()
        .map(|s| s["waited"].as_u64().unwrap())
        .sum();
    assert_eq!(waited, 3, "two run, three wait: {}", f.text);
    assert!(!f.json["suggestions"].as_array().unwrap().is_empty());
    let bad = h.get("/v1/forecast?hours=0").await;
    assert_field(&bad, StatusCode::BAD_REQUEST, "invalid_input", "hours");
}

#[tokio::test]
async fn a_pause_leaves_one_ledger_row_for_the_times_it_skipped() {
    let h = Harness::new().await;
    let apply = h
        .post(
            "/v1/schedules/apply",
            json!({"schedules": [{"name": "tick", "every": "1m", "job": {"kind": "k"}}]}),
        )
        .await;
    assert_eq!(apply.status, StatusCode::OK, "{}", apply.text);
    assert_eq!(
        h.post_empty("/v1/schedules/tick/pause").await.status,
        StatusCode::OK
    );
    h.store
        .advance_clock(std::time::Duration::from_secs(5 * 60 + 30));
    let r = h.post_empty("/v1/schedules/tick/resume").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "active");
    let hist = h.get("/v1/schedules/tick/history").await;
    let rows = hist.json["firings"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", hist.text);
    assert_eq!(rows[0]["outcome"], "skipped_paused");
    let from = reeve_core::Timestamp::parse(rows[0]["nominal_at"].as_str().unwrap()).unwrap();
    let until = reeve_core::Timestamp::parse(rows[0]["nominal_until"].as_str().unwrap()).unwrap();
    let times = (until.0 - from.0) / 60_000 + 1;
    assert!(
        (5..=6).contains(&times),
        "every skipped fire time in one row: {times}"
    );
    // The history explains any instant in the range.
    let mid = reeve_core::Timestamp(from.0 + 120_000);
    let why = h.get(&format!("/v1/schedules/tick/history?at={mid}")).await;
    assert_eq!(
        why.json["covering"]["outcome"], "skipped_paused",
        "{}",
        why.text
    );
    let audit = h.get("/v1/audit").await;
    assert_eq!(audit.json["audit"][0]["action"], "resume");
}

#[tokio::test]
async fn a_heartbeat_past_the_turn_budget_ends_the_run() {
    let h = Harness::new().await;
    let job = h.enqueue(json!({"kind": "agent", "max_turns": 3})).await;
    let run = h.claim().await;
    assert_eq!(run.id, job.id);
    let ok = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": run.epoch, "turns": 3}),
        )
        .await;
    assert_eq!(ok.json["status"], "ok", "{}", ok.text);
    let over = h
        .post(
            &format!("/v1/jobs/{}/heartbeat", job.id),
            json!({"epoch": run.epoch, "turns": 4}),
        )
        .await;
    assert_eq!(over.status, StatusCode::OK, "{}", over.text);
    assert_eq!(over.json["status"], "turn_limit_exceeded");
    let after = h.get(&format!("/v1/jobs/{}", job.id)).await;
    assert_eq!(after.json["state"], "failed", "{}", after.text);
    assert_eq!(after.json["failure_reason"], "turn_limit_exceeded");
    let late = h
        .post(
            &format!("/v1/jobs/{}/complete", job.id),
            json!({"epoch": run.epoch}),
        )
        .await;
    assert_error(&late, StatusCode::CONFLICT, "not_running");
}

#[tokio::test]
async fn a_remote_worker_registers_claims_heartbeats_checkpoints_reads_mail_and_completes() {
    let h = fleet_harness().await;
    let id = h
        .register(json!({"name": "host-a", "kinds": ["agent"], "slots": 2}))
        .await;
    let again = h
        .register(json!({"name": "host-a", "kinds": ["agent"], "slots": 2}))
        .await;
    assert_ne!(id, again, "a fresh identity at every registration");
    let other_kind = h
        .call(
            Some(WORKER),
            Method::POST,
            "/v1/workers/register",
            Some(json!({"name": "x", "kinds": ["other"], "slots": 1})),
        )
        .await;
    assert_error(&other_kind, StatusCode::FORBIDDEN, "forbidden");
    let bad = h
        .call(
            Some(WORKER),
            Method::POST,
            "/v1/workers/register",
            Some(json!({"name": "x", "kinds": ["agent"], "slots": 0})),
        )
        .await;
    assert_field(&bad, StatusCode::BAD_REQUEST, "invalid_input", "slots");

    let job = h
        .call(
            Some(ADMIN),
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "agent"})),
        )
        .await;
    assert_eq!(job.status, StatusCode::CREATED, "{}", job.text);
    h.call(
        Some(ADMIN),
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "other"})),
    )
    .await;
    let runs = h.worker_claim(&id).await;
    assert_eq!(runs.len(), 1, "only its kinds");
    let (run, token) = runs.into_iter().next().unwrap();
    assert_eq!(run.kind, "agent");
    assert_eq!(run.claimed_by.as_deref(), Some(id.as_str()));

    // Heartbeat through the worker endpoint.
    let beat = h
        .call(
            Some(WORKER),
            Method::POST,
            &format!("/v1/workers/{id}/heartbeat"),
            Some(json!({"runs": [{"job": run.id, "epoch": run.epoch, "turns": 2}]})),
        )
        .await;
    assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
    assert_eq!(beat.json["runs"][0]["status"], "ok");
    assert!(beat.json["runs"][0]["lease_remaining_ms"].as_i64().unwrap() > 60_000);
    assert_eq!(beat.json["runs"][0]["unread_mail"], 0);

    // A checkpoint with the job token, read back.
    let put = h
        .send(
            Request::builder()
                .method(Method::PUT)
                .uri(format!("/v1/jobs/{}/checkpoint", run.id))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from("step=3"))
                .unwrap(),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.json["size"], 6);
    let got = h
        .call(
            Some(&token),
            Method::GET,
            &format!("/v1/jobs/{}/checkpoint", run.id),
            None,
        )
        .await;
    assert_eq!((got.status, got.text.as_str()), (StatusCode::OK, "step=3"));

    // Mail from an operator; the run sees it counted and reads it once.
    let sent = h
        .call(
            Some(ADMIN),
            Method::POST,
            &format!("/v1/jobs/{}/mail", run.id),
            Some(json!({"subject": "hint", "body": "try the cache"})),
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    let beat = h
        .call(
            Some(&token),
            Method::POST,
            &format!("/v1/jobs/{}/heartbeat", run.id),
            Some(json!({"epoch": run.epoch})),
        )
        .await;
    assert_eq!(beat.json["unread_mail"], 1, "{}", beat.text);
    let mail = h
        .call(
            Some(&token),
            Method::GET,
            &format!("/v1/jobs/{}/mail", run.id),
            None,
        )
        .await;
    assert_eq!(mail.json["mail"][0]["subject"], "hint", "{}", mail.text);
    assert!(
        mail.json["mail"][0]["read_at"].is_null(),
        "new when read the first time"
    );
    let again = h
        .call(
            Some(&token),
            Method::GET,
            &format!("/v1/jobs/{}/mail", run.id),
            None,
        )
        .await;
    assert!(!again.json["mail"][0]["read_at"].is_null());
    let send_as_run = h
        .call(
            Some(&token),
            Method::POST,
            &format!("/v1/jobs/{}/mail", run.id),
            Some(json!({"subject": "x", "body": "y"})),
        )
        .await;
    assert_error(&send_as_run, StatusCode::FORBIDDEN, "forbidden");

    // Complete with the job token.
    let done = h
        .call(
            Some(&token),
            Method::POST,
            &format!("/v1/jobs/{}/complete", run.id),
            Some(json!({"epoch": run.epoch, "result": {"ok": true}, "output": "all done\n"})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.json["state"], "succeeded");
    let late = h
        .call(
            Some(&token),
            Method::POST,
            &format!("/v1/jobs/{}/complete", run.id),
            Some(json!({"epoch": run.epoch})),
        )
        .await;
    assert_error(&late, StatusCode::CONFLICT, "not_running");

    let fleet = h.call(Some(ADMIN), Method::GET, "/v1/workers", None).await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.text);
    assert_eq!(fleet.json["workers"].as_array().unwrap().len(), 2);
    let listed = h.call(Some(WORKER), Method::GET, "/v1/workers", None).await;
    assert_error(&listed, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_job_token_writes_only_at_its_own_epoch_and_an_old_one_is_stale() {
    let h = fleet_harness().await;
    let id = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 2}))
        .await;
    for _ in 0..2 {
        h.call(
            Some(ADMIN),
            Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "agent"})),
        )
        .await;
    }
    let runs = h.worker_claim(&id).await;
    assert_eq!(runs.len(), 2);
    let (a, ta) = &runs[0];
    // A's token on its own job with another epoch: forbidden.
    let r = h
        .call(
            Some(ta),
            Method::POST,
            &format!("/v1/jobs/{}/complete", a.id),
            Some(json!({"epoch": a.epoch + 1})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    // An old epoch's token after a retry: its writes are refused.
    h.fail_for_retry(a.id, a.epoch).await;
    let again = h.worker_claim(&id).await;
    let (a2, _) = again.iter().find(|(j, _)| j.id == a.id).expect("A again");
    assert_eq!(a2.epoch, a.epoch + 1);
    let r = h
        .call(
            Some(ta),
            Method::POST,
            &format!("/v1/jobs/{}/complete", a.id),
            Some(json!({"epoch": a2.epoch})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = h
        .call(
            Some(ta),
            Method::POST,
            &format!("/v1/jobs/{}/complete", a.id),
            Some(json!({"epoch": a.epoch})),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "stale_epoch");
}

#[tokio::test]
async fn workers_leave_or_die_and_their_runs_come_back() {
    let h = fleet_harness().await;
    // Deregistering releases the runs at once.
    let w = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 1}))
        .await;
    h.call(
        Some(ADMIN),
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "agent"})),
    )
    .await;
    let (run, _) = h.worker_claim(&w).await.remove(0);
    let r = h
        .call(
            Some(WORKER),
            Method::POST,
            &format!("/v1/workers/{w}/deregister"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["released"], json!([run.id]));
    let job = h.store.get_job(run.id).await.unwrap();
    assert_eq!(
        job.failure_reason,
        Some(reeve_core::FailureReason::WorkerShutdown)
    );
    assert_eq!(job.state, reeve_core::JobState::Retryable);
    let gone = h
        .call(
            Some(WORKER),
            Method::POST,
            &format!("/v1/workers/{w}/claim"),
            Some(json!({})),
        )
        .await;
    assert_error(&gone, StatusCode::NOT_FOUND, "not_found");

    // A heartbeating worker that dies right after its claim is reaped after
    // heartbeat_timeout, counted from the claim.
    let hb = h
        .register(json!({"name": "hb", "kinds": ["agent"], "slots": 1}))
        .await;
    h.store.advance_clock(std::time::Duration::from_secs(3600));
    h.store.promote_due(10).await.unwrap();
    let (run, _) = h.worker_claim(&hb).await.remove(0);
    h.store.advance_clock(std::time::Duration::from_secs(60));
    assert!(
        h.store.reap_expired(10).await.unwrap().is_empty(),
        "not before its timeout"
    );
    h.store.advance_clock(std::time::Duration::from_secs(31));
    let reaped = h.store.reap_expired(10).await.unwrap();
    assert_eq!(
        reaped.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![run.id]
    );
    assert_eq!(
        reaped[0].failure_reason,
        Some(reeve_core::FailureReason::HeartbeatLost)
    );

    // A worker that does not heartbeat is bounded by max_run_duration only.
    let quiet = h
        .register(json!({"name": "q", "kinds": ["agent"], "slots": 1, "heartbeats": false}))
        .await;
    h.call(
        Some(ADMIN),
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "agent", "max_run_duration": "10m"})),
    )
    .await;
    let (run, _) = h
        .worker_claim(&quiet)
        .await
        .into_iter()
        .find(|(j, _)| j.max_run_duration.as_secs() == 600)
        .expect("the 10m job");
    h.store
        .advance_clock(std::time::Duration::from_secs(5 * 60));
    assert!(
        h.store
            .reap_expired(10)
            .await
            .unwrap()
            .iter()
            .all(|j| j.id != run.id),
        "silence is not death for it"
    );
    h.store
        .advance_clock(std::time::Duration::from_secs(5 * 60 + 1));
    let reaped = h.store.reap_expired(10).await.unwrap();
    let it = reaped
        .iter()
        .find(|j| j.id == run.id)
        .expect("reaped at its hard cap");
    assert_eq!(it.failure_reason, Some(reeve_core::FailureReason::Timeout));
}

#[tokio::test]
async fn on_success_enqueues_the_follow_up_with_the_completion() {
    let h = Harness::new().await;
    let bad = h
        .post(
            "/v1/jobs",
            json!({"kind": "build", "on_success": {"kind": "not a kind"}}),
        )
        .await;
    assert_field(
        &bad,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "on_success.kind",
    );
    let typo = h
        .post(
            "/v1/jobs",
            json!({"kind": "build", "on_success": {"kind": "review", "delay": "5s"}}),
        )
        .await;
    assert_error(&typo, StatusCode::BAD_REQUEST, "invalid_json");
    assert_eq!(h.total_jobs().await, 0, "nothing enqueued");

    let parent = h
        .enqueue(json!({
            "kind": "build",
            "queue": "ci",
            "on_success": {"kind": "review", "queue": "reviews", "payload": {"pr": 7}}
        }))
        .await;
    let stored = h.get(&format!("/v1/jobs/{}", parent.id)).await;
    assert_eq!(
        stored.json["on_success"]["kind"], "review",
        "{}",
        stored.text
    );
    let run = h.claim().await;
    assert_eq!(run.id, parent.id);
    let answers = h
        .store
        .finish(vec![Finish {
            job: run.id,
            epoch: run.epoch,
            outcome: Outcome::Succeeded {
                result: Some(json!({"artifact": "a.tar"})),
            },
            output: None,
        }])
        .await
        .unwrap();
    assert!(answers[0].is_ok());

    let r = h.get("/v1/jobs?kind=review").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["queue"], "reviews");
    assert_eq!(items[0]["state"], "available");
    assert_eq!(
        items[0]["payload"],
        json!({"parent": parent.id, "result": {"artifact": "a.tar"}, "payload": {"pr": 7}})
    );
    assert_eq!(
        items[0]["unique_key"],
        json!(format!("followup:{}", parent.id))
    );
}

#[tokio::test]
async fn tokens_cannot_borrow_registrations_or_outlive_their_epoch() {
    let h = fleet_harness().await;
    // A registration for kinds beyond the worker token's (made by an admin)
    // cannot be driven with that worker token.
    let r = h
        .call(
            Some(ADMIN),
            Method::POST,
            "/v1/workers/register",
            Some(json!({"name": "big", "kinds": ["agent", "other"], "slots": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let big = r.json["worker"]["id"].as_str().unwrap().to_string();
    h.call(
        Some(ADMIN),
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "other"})),
    )
    .await;
    for (path, body) in [
        (format!("/v1/workers/{big}/claim"), Some(json!({}))),
        (
            format!("/v1/workers/{big}/heartbeat"),
            Some(json!({"runs": []})),
        ),
        (format!("/v1/workers/{big}/deregister"), None),
    ] {
        let r = h.call(Some(WORKER), Method::POST, &path, body).await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(
        h.store.list_jobs(Default::default()).await.unwrap().items[0].state,
        reeve_core::JobState::Available
    );

    // A worker heartbeat for an earlier attempt is refused with its reason.
    let w = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 1}))
        .await;
    h.call(
        Some(ADMIN),
        Method::POST,
        "/v1/jobs",
        Some(json!({"kind": "agent"})),
    )
    .await;
    let (run, _) = h.worker_claim(&w).await.remove(0);
    h.fail_for_retry(run.id, run.epoch).await;
    let (again, _) = h.worker_claim(&w).await.remove(0);
    assert_eq!(again.id, run.id);
    // A heartbeat for the old epoch answers lease_lost with a code.
    let beat = h
        .call(
            Some(WORKER),
            Method::POST,
            &format!("/v1/workers/{w}/heartbeat"),
            Some(json!({"runs": [{"job": run.id, "epoch": run.epoch}]})),
        )
        .await;
    assert_eq!(
        beat.json["runs"][0]["status"], "lease_lost",
        "{}",
        beat.text
    );
    assert_eq!(beat.json["runs"][0]["reason"], "stale_epoch");
    // A path that is not UTF-8 is a JSON error.
    let r = h
        .call(Some(ADMIN), Method::GET, "/v1/schedules/%FF", None)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_input");
}

#[tokio::test]
async fn bad_requirements_are_refused_naming_the_field_and_change_nothing() {
    let h = Harness::new().await;
    let r = h
        .post(
            "/v1/jobs",
            json!({"kind": "watch", "requires": ["device alice"]}),
        )
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "requires[0]");
    let r = h
        .post(
            "/v1/jobs",
            json!({"kind": "watch", "requires": ["device=alice-mac", "gpu="]}),
        )
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "requires[1]");
    let r = h
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [{"kind": "a"}, {"kind": "b", "requires": ["x"]}]}),
        )
        .await;
    assert_field(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "jobs[1].requires[0]",
    );
    let r = h
        .post(
            "/v1/jobs",
            json!({"kind": "a", "on_success": {"kind": "b", "requires": ["=x"]}}),
        )
        .await;
    assert_field(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_input",
        "on_success.requires[0]",
    );
    let r = h
        .post("/v1/jobs", json!({"kind": "watch", "requires": "device=a"}))
        .await;
    assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", "requires");
    assert_eq!(h.total_jobs().await, 0, "nothing was enqueued");

    // Accepted ones are kept in canonical order, and shown.
    let job = h
        .enqueue(json!({"kind": "watch", "requires": ["gpu=1", "device=alice-mac", "gpu=1"]}))
        .await;
    assert_eq!(job.requires, ["device=alice-mac", "gpu=1"]);
    let got = h.get(&format!("/v1/jobs/{}", job.id)).await;
    assert_eq!(got.json["requires"], json!(["device=alice-mac", "gpu=1"]));
    let plain = h.enqueue(json!({"kind": "watch"})).await;
    let got = h.get(&format!("/v1/jobs/{}", plain.id)).await;
    assert_eq!(got.json["requires"], json!([]));
    assert!(got.json.get("waiting_for").is_none(), "{}", got.text);
}

/// Enqueues with the admin token; the new job's id.
async fn admin_enqueue(h: &Harness, body: Value) -> i64 {
    let r = h
        .call(Some(ADMIN), Method::POST, "/v1/jobs", Some(body))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json["id"].as_i64().unwrap()
}

/// `GET /v1/jobs/{id}` with the admin token.
async fn admin_job(h: &Harness, id: i64) -> Value {
    h.call(Some(ADMIN), Method::GET, &format!("/v1/jobs/{id}"), None)
        .await
        .json
}

#[tokio::test]
async fn worker_claims_honour_labels_and_a_pinned_job_says_what_it_waits_for() {
    let h = fleet_harness().await;
    let bad = h
        .call(
            Some(WORKER),
            Method::POST,
            "/v1/workers/register",
            Some(json!({"name": "x", "kinds": ["agent"], "slots": 1, "labels": ["device"]})),
        )
        .await;
    assert_field(&bad, StatusCode::BAD_REQUEST, "invalid_input", "labels[0]");

    let enqueue = |body: Value| admin_enqueue(&h, body);
    let get = |id: i64| admin_job(&h, id);
    let pinned = enqueue(json!({"kind": "agent", "requires": ["device=alice-mac"]})).await;
    assert_eq!(
        get(pinned).await["waiting_for"],
        "a worker with device=alice-mac",
        "no worker at all"
    );

    // A worker without the label never gets it; the unpinned job behind it
    // is its.
    let plain = h
        .register(json!({"name": "plain", "kinds": ["agent"], "slots": 5}))
        .await;
    let free = enqueue(json!({"kind": "agent"})).await;
    let runs = h.worker_claim(&plain).await;
    assert_eq!(
        runs.iter().map(|(j, _)| j.id).collect::<Vec<_>>(),
        [free],
        "only the unpinned job"
    );
    assert!(h.worker_claim(&plain).await.is_empty());
    assert_eq!(
        get(pinned).await["waiting_for"],
        "a worker with device=alice-mac",
        "a live worker without the label does not count"
    );

    // A worker with the label (and others): no longer waiting for one, and
    // it claims the job.
    let mac = h
        .register(json!({"name": "mac", "kinds": ["agent"], "slots": 5,
                         "labels": ["os=macos", "device=alice-mac"]}))
        .await;
    let view = get(pinned).await;
    assert!(view.get("waiting_for").is_none(), "{view}");
    assert_eq!(view["state"], "available");
    let runs = h.worker_claim(&mac).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].0.id, pinned);
    assert_eq!(runs[0].0.claimed_by.as_deref(), Some(mac.as_str()));
    assert!(
        get(pinned).await.get("waiting_for").is_none(),
        "a running job waits for nothing"
    );

    // Its worker goes silent past the staleness bound: a new pinned job
    // waits again (and a deregistered worker does not count either).
    let second = enqueue(json!({"kind": "agent", "requires": ["device=alice-mac"]})).await;
    assert!(get(second).await.get("waiting_for").is_none());
    h.store.advance_clock(std::time::Duration::from_secs(91));
    assert_eq!(
        get(second).await["waiting_for"],
        "a worker with device=alice-mac",
        "a stale worker does not count"
    );
    let again = h
        .register(json!({"name": "mac", "kinds": ["agent"], "slots": 5,
                         "labels": ["device=alice-mac"]}))
        .await;
    assert!(get(second).await.get("waiting_for").is_none());
    h.call(
        Some(WORKER),
        Method::POST,
        &format!("/v1/workers/{again}/deregister"),
        None,
    )
    .await;
    assert_eq!(
        get(second).await["waiting_for"],
        "a worker with device=alice-mac",
        "a deregistered worker does not count"
    );
}

#[tokio::test]
async fn the_daemon_s_own_executor_counts_for_its_labels() {
    let h = Harness::with_config(ApiConfig {
        executor_labels: vec!["device=build-box".into()],
        ..ApiConfig::default()
    })
    .await;
    let mine = h
        .enqueue(json!({"kind": "k", "requires": ["device=build-box"]}))
        .await;
    let other = h
        .enqueue(json!({"kind": "k", "requires": ["device=build-box", "gpu=1"]}))
        .await;
    let r = h.get(&format!("/v1/jobs/{}", mine.id)).await;
    assert!(r.json.get("waiting_for").is_none(), "{}", r.text);
    let r = h.get(&format!("/v1/jobs/{}", other.id)).await;
    assert_eq!(
        r.json["waiting_for"],
        "a worker with device=build-box, gpu=1"
    );
}

#[tokio::test]
async fn a_login_sets_a_session_cookie_that_never_carries_the_admin_token() {
    let h = fleet_harness().await;
    let r = h
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={ADMIN}&next=%2Fjobs")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let set_cookie = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(!set_cookie.contains(ADMIN), "{set_cookie}");
    assert!(!r.text.contains(ADMIN));
    let value = set_cookie
        .strip_prefix("reeve_session=")
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    assert!(!value.is_empty(), "{set_cookie}");
    // The cookie signs the browser in; it is no bearer token.
    let with_cookie = |cookie: String| {
        Request::builder()
            .uri("/v1/status")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap()
    };
    let r = h.send(with_cookie(format!("reeve_session={value}"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = h.call(Some(value), Method::GET, "/v1/status", None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = h.send(with_cookie(format!("reeve_session={value}x"))).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn worker_write_backs_name_the_wrong_field_and_refuse_unknown_ones() {
    let h = fleet_harness().await;
    let w = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 1}))
        .await;
    admin_enqueue(&h, json!({"kind": "agent"})).await;
    let (job, _) = h.worker_claim(&w).await.remove(0);
    let before = h.snapshot().await;
    for (action, body, field) in [
        ("complete", json!({"job": job.id, "epoch": null}), "epoch"),
        (
            "complete",
            json!({"job": job.id, "epoch": job.epoch, "bogus": 1}),
            "bogus",
        ),
        ("fail", json!({"job": job.id, "epoch": "one"}), "epoch"),
        (
            "fail",
            json!({"job": job.id, "epoch": job.epoch, "reason": 3}),
            "reason",
        ),
        (
            "fail",
            json!({"job": job.id, "epoch": job.epoch, "bogus": 1}),
            "bogus",
        ),
        (
            "heartbeat",
            json!({"runs": [{"job": job.id, "epoch": "x"}]}),
            "runs[0].epoch",
        ),
        (
            "heartbeat",
            json!({"runs": [{"job": job.id, "epoch": job.epoch, "bogus": 1}]}),
            "runs[0].bogus",
        ),
    ] {
        let r = h
            .call(
                Some(WORKER),
                Method::POST,
                &format!("/v1/workers/{w}/{action}"),
                Some(body),
            )
            .await;
        assert_field(&r, StatusCode::BAD_REQUEST, "invalid_json", field);
        assert!(
            r.json["message"].as_str().unwrap().contains(field),
            "{}",
            r.text
        );
    }
    assert_eq!(h.snapshot().await, before, "refusals changed nothing");
}

#[tokio::test]
async fn an_optional_body_without_a_json_content_type_is_refused_not_ignored() {
    let h = Harness::new().await;
    h.post(
        "/v1/schedules/apply",
        json!({"schedules": [{"name": "s", "every": "1h", "job": {"kind": "k"}}]}),
    )
    .await;
    let before = h.snapshot().await;
    for uri in ["/v1/schedules/s/run", "/v1/schedules/s/resume"] {
        let r = h
            .send(
                h.request(Method::POST, uri)
                    .body(Body::from(r#"{"force": true}"#))
                    .unwrap(),
            )
            .await;
        assert_error(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    assert_eq!(h.snapshot().await, before);
    // No body at all is still "no options".
    let r = h.post_empty("/v1/schedules/s/run").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn a_claim_with_a_bad_limit_is_refused_naming_it_and_changes_nothing() {
    let h = fleet_harness().await;
    let w = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 1}))
        .await;
    admin_enqueue(&h, json!({"kind": "agent"})).await;
    let before = h.snapshot().await;
    h.store.advance_clock(std::time::Duration::from_secs(5));
    for limit in [0, 101] {
        let r = h
            .call(
                Some(WORKER),
                Method::POST,
                &format!("/v1/workers/{w}/claim"),
                Some(json!({"limit": limit})),
            )
            .await;
        assert_field(&r, StatusCode::BAD_REQUEST, "invalid_input", "limit");
    }
    assert_eq!(
        h.snapshot().await,
        before,
        "not even the worker's last_seen_at"
    );
}

#[tokio::test]
async fn a_refused_worker_write_back_does_not_move_the_worker_s_last_seen() {
    let h = fleet_harness().await;
    let w = h
        .register(json!({"name": "w", "kinds": ["agent"], "slots": 1}))
        .await;
    admin_enqueue(&h, json!({"kind": "agent"})).await;
    let (job, _) = h.worker_claim(&w).await.remove(0);
    let before = h.snapshot().await;
    h.store.advance_clock(std::time::Duration::from_secs(5));
    for (action, body, status, code) in [
        (
            "fail",
            json!({"job": job.id, "epoch": job.epoch}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "complete",
            json!({"job": job.id, "epoch": job.epoch + 7}),
            StatusCode::CONFLICT,
            "stale_epoch",
        ),
    ] {
        let r = h
            .call(
                Some(WORKER),
                Method::POST,
                &format!("/v1/workers/{w}/{action}"),
                Some(body),
            )
            .await;
        assert_error(&r, status, code);
    }
    assert_eq!(h.snapshot().await, before);
    // An accepted one does.
    let r = h
        .call(
            Some(WORKER),
            Method::POST,
            &format!("/v1/workers/{w}/complete"),
            Some(json!({"job": job.id, "epoch": job.epoch})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let seen = h.store.get_worker(&w).await.unwrap().last_seen_at;
    assert!(seen > h.store.get_worker(&w).await.unwrap().registered_at);
}
