//! Black-box tests of schedules: `reeve apply` (idempotent, all-or-nothing,
//! errors naming file, schedule and field), firing at the due instant, and
//! pause / resume / delete through the CLI.

mod common;

use std::time::Duration;

use common::{Daemon, cli, wait_until};
use serde_json::Value;

#[test]
fn apply_is_idempotent_all_or_nothing_and_schedules_fire() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "a",
        &dir.path().join("reeve.db"),
        "[executor]\nslots = 2\n",
    );
    let files = dir.path().join("schedules");
    std::fs::create_dir(&files).unwrap();
    // The shape of a recurring-job fixture: a named job every 3600 seconds.
    std::fs::write(
        files.join("heartbeat.json"),
        r#"{"name": "agent-heartbeat", "every": 3600, "job": {"kind": "heartbeat", "command": ["true"], "payload": {"agent": "a1"}}}"#,
    )
    .unwrap();
    std::fs::write(
        files.join("tick.toml"),
        "[[schedule]]\nname = \"tick\"\nevery = \"1s\"\n[schedule.job]\nkind = \"tick\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let dir_arg = files.to_str().unwrap();
    let (code, out, err) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("created    agent-heartbeat") && out.contains("created    tick"),
        "{out}"
    );
    let (code, out, _) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_eq!(code, 0);
    assert!(
        out.contains("unchanged  agent-heartbeat") && out.contains("unchanged  tick"),
        "a second apply changes nothing: {out}"
    );

    // The every-second schedule fires at each due instant, one job per second.
    wait_until("three firings", Duration::from_secs(20), || {
        let (_, body) = d.api("GET", "/v1/jobs?kind=tick&limit=100", None);
        body["items"].as_array().map_or(0, Vec::len) >= 3
    });
    let (_, body) = d.api("GET", "/v1/jobs?kind=tick&limit=100", None);
    let mut keys: Vec<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        body["items"].as_array().unwrap().len(),
        "one job per fire time"
    );
    assert!(keys.iter().all(|k| k.starts_with("tick@")));

    // A bad file anywhere: nothing at all is applied, and the error names
    // the file, the schedule and the field.
    std::fs::write(
        files.join("bad.toml"),
        "[[schedule]]\nname = \"broken\"\ncron = \"61 * * * *\"\n[schedule.job]\nkind = \"x\"\n",
    )
    .unwrap();
    std::fs::write(files.join("heartbeat.json"), r#"{"name": "agent-heartbeat", "every": 1800, "job": {"kind": "heartbeat", "command": ["true"]}}"#).unwrap();
    let (code, _, err) = cli(&d.url, &["apply", "-f", dir_arg]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.toml") && err.contains("broken") && err.contains("cron"),
        "{err}"
    );
    let (_, show) = d.api("GET", "/v1/schedules/agent-heartbeat", None);
    assert_eq!(
        show["schedule"]["spec"]["every"], 3600,
        "unchanged by the refused apply: {show}"
    );
    std::fs::remove_file(files.join("bad.toml")).unwrap();
    let (code, out, _) = cli(&d.url, &["apply", "-f", dir_arg, "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("changed    agent-heartbeat (every, job.payload)"),
        "{out}"
    );

    // Pause, resume, delete.
    assert_eq!(cli(&d.url, &["schedules", "pause", "tick"]).0, 0);
    let (_, out, _) = cli(&d.url, &["schedules", "list", "--json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let tick = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tick")
        .unwrap()
        .clone();
    assert_eq!(tick["status"], "paused");
    assert_eq!(cli(&d.url, &["schedules", "resume", "tick"]).0, 0);
    let (code, out, _) = cli(&d.url, &["schedules", "show", "tick"]);
    assert_eq!(code, 0);
    assert!(out.contains("every 1s") && out.contains("fired"), "{out}");
    assert_eq!(cli(&d.url, &["schedules", "delete", "tick"]).0, 0);
    let (code, _, err) = cli(&d.url, &["schedules", "show", "tick"]);
    assert_ne!(code, 0);
    assert!(err.contains("tick"), "{err}");
    d.stop();
}

/// Two daemon processes on one SQLite file fire the same every-second
/// schedule: each fire time makes exactly one job.
#[test]
fn two_processes_racing_make_one_job_per_fire_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reeve.db");
    let a = Daemon::start(dir.path(), "a", &db, "[executor]\nslots = 4\n");
    let b = Daemon::start(dir.path(), "b", &db, "[executor]\nslots = 4\n");
    let file = dir.path().join("race.toml");
    std::fs::write(
        &file,
        "[[schedule]]\nname = \"race\"\nevery = \"1s\"\noverlap = \"allow\"\n[schedule.job]\nkind = \"race\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let (code, _, err) = cli(&a.url, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    wait_until("eight firings", Duration::from_secs(30), || {
        let (_, body) = b.api("GET", "/v1/jobs?kind=race&limit=1000", None);
        body["items"].as_array().map_or(0, Vec::len) >= 8
    });
    assert_eq!(cli(&a.url, &["schedules", "pause", "race"]).0, 0);
    let (_, body) = a.api("GET", "/v1/jobs?kind=race&limit=1000", None);
    let jobs = body["items"].as_array().unwrap();
    let mut nominals: Vec<String> = jobs.iter().map(|j| j["nominal_at"].to_string()).collect();
    let all = nominals.len();
    nominals.sort();
    nominals.dedup();
    assert_eq!(nominals.len(), all, "one job per fire time: {nominals:?}");
    let (_, hist) = a.api("GET", "/v1/schedules/race/history?limit=1000", None);
    let fired = hist["firings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["outcome"] == "fired")
        .count();
    assert_eq!(fired, all, "one ledger row per job");
    a.stop();
    b.stop();
}

/// `schedules run` under a full cap exits 3 with the ETA, `--force` runs it
/// and `audit list` shows who forced what; pressure raise / list / clear;
/// history explains an instant; forecast and metrics answer.
#[test]
fn run_now_force_audit_pressure_and_forecast_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        "a",
        &dir.path().join("reeve.db"),
        "[executor]\nslots = 4\n[limits]\nglobal = 1\n",
    );
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "[[schedule]]\nname = \"slow\"\ncron = \"0 3 * * *\"\n[schedule.job]\nkind = \"slow\"\ncommand = [\"sleep\", \"30\"]\n\n\
         [[schedule]]\nname = \"other\"\ncron = \"0 3 * * *\"\n[schedule.job]\nkind = \"other\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let (code, out, err) = cli(&d.url, &["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("warning:") && out.contains("the global cap"),
        "two schedules at 03:00 against a cap of 1 warn: {out}"
    );
    let (code, out, err) = cli(&d.url, &["schedules", "run", "slow"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("fired slow now"), "{out}");
    wait_until("the slow run to start", Duration::from_secs(20), || {
        let (_, s) = d.api("GET", "/v1/status", None);
        s["running"] == 1
    });
    let (code, _, err) = cli(&d.url, &["schedules", "run", "other"]);
    assert_eq!(code, 3, "a full cap exits 3: {err}");
    assert!(
        err.contains("full") && err.contains("expected in about"),
        "{err}"
    );
    let (code, out, err) = cli(&d.url, &["schedules", "run", "other", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("forced past a full global cap"), "{out}");
    let (code, out, _) = cli(&d.url, &["audit", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("force_run") && out.contains("schedule:other"),
        "{out}"
    );
    wait_until("the forced run to finish", Duration::from_secs(20), || {
        let (_, h) = d.api("GET", "/v1/schedules/other/history", None);
        h["firings"][0]["state"] == "succeeded"
    });

    assert_eq!(
        cli(&d.url, &["pressure", "raise", "ide", "--ttl", "5m"]).0,
        0
    );
    let (code, out, _) = cli(&d.url, &["pressure", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("ide"), "{out}");
    assert_eq!(cli(&d.url, &["pressure", "clear", "ide"]).0, 0);
    let (code, _, err) = cli(&d.url, &["pressure", "clear", "ide"]);
    assert_ne!(code, 0, "nothing left to clear: {err}");
    let (code, _, err) = cli(&d.url, &["pressure", "raise", "ide", "--ttl", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ttl"), "{err}");

    let (_, h) = d.api("GET", "/v1/schedules/other/history", None);
    let at = h["firings"][0]["nominal_at"].as_str().unwrap().to_string();
    let (code, out, err) = cli(&d.url, &["schedules", "history", "other", "--at", &at]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{at}: forced")) && out.contains("ended succeeded"),
        "{out}"
    );
    let (code, out, _) = cli(&d.url, &["schedules", "metrics", "other"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("slot wait") && out.contains("forced 1"),
        "{out}"
    );
    let (code, out, _) = cli(&d.url, &["forecast", "--hours", "24"]);
    assert_eq!(code, 0);
    assert!(out.contains("slow") && out.contains("WAITED"), "{out}");
    let (code, out, _) = cli(&d.url, &["schedules", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("forced → succeeded"), "{out}");
    let (_, slow) = d.api("GET", "/v1/jobs?kind=slow", None);
    let id = slow["items"][0]["id"].as_i64().unwrap();
    assert_eq!(cli(&d.url, &["jobs", "cancel", &id.to_string()]).0, 0);
    d.stop();
}
