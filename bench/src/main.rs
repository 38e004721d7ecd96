//! `reeve-bench-compare`: reeve against effectum 0.7.0 (the fastest embedded
//! SQLite peer in `shared/BENCH-PEERS.md`), in one run on one machine, by one
//! method.
//!
//! Each product is measured on a fresh database file in a temporary directory
//! with no-op jobs:
//!
//! 1. **Bulk enqueue**: `--jobs` jobs (default 20,000) with the product's batch
//!    call, 1,000 jobs per call, into the fresh database (jobs/s).
//! 2. **Process**: workers start on the pre-filled queue; the clock starts
//!    before they do and stops when every handler has run and the database
//!    shows no unfinished job (jobs/s).
//! 3. **Idle latency**: on the idle queue, from the enqueue call returning to
//!    the handler starting; 20 warm-up samples, then 200 (p50 and p99 in ms).
//!
//! reeve runs with every guarantee on: the real `SqliteStore` (WAL,
//! `synchronous=FULL` unless `--reeve-synchronous normal`) and `--workers`
//! engines (default 4), each with an in-process no-op handler, exactly as
//! `reeve bench` does. effectum runs one `Worker` with `max_concurrency` 10
//! on a file set to `journal_mode=WAL` before it opens it (as shipped, 0.7.0
//! never enables WAL); it sets `synchronous=NORMAL` itself.
//!
//! The measurements alternate, reeve then effectum, `--runs` times (default
//! 3); each runs in a fresh process: reeve's in this binary
//! (`--measure-reeve`), effectum's in `effectum-peer`, a separate cargo
//! project beside this one that this binary builds first. They cannot share
//! one binary: effectum 0.7.0 links SQLite through rusqlite 0.31
//! (libsqlite3-sys 0.28) and reeve through sqlx 0.9 (libsqlite3-sys 0.30.1 or
//! later), and both declare `links = "sqlite3"`. The output gives the medians
//! and the ratios reeve/effectum, as a table or with `--json` as one JSON
//! object.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- --runs 3
//! ```

mod reeve_side;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

/// Jobs per batch call.
pub const BATCH: u32 = 1000;
/// Latency samples thrown away before the measured ones.
pub const WARMUP: u32 = 20;

const USAGE: &str = "\
usage: reeve-bench-compare [--jobs N] [--workers W] [--runs N] [--json]
                           [--samples N] [--effectum-concurrency N]
                           [--reeve-synchronous full|normal] [--effectum-bin PATH]

  --jobs N                  no-op jobs to enqueue and process per run (20000)
  --workers W               reeve engines claiming concurrently (4)
  --runs N                  measurements of each product, alternating (3)
  --json                    print one JSON object instead of a table
  --samples N               idle-latency samples after 20 warm-up ones (200)
  --effectum-concurrency N  effectum's Worker max_concurrency (10)
  --reeve-synchronous MODE  reeve's SQLite synchronous setting (full)
  --effectum-bin PATH       a built effectum-peer instead of building it";

/// One measurement of one product.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub enqueue_jobs_per_s: f64,
    pub process_jobs_per_s: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

impl Figures {
    const KEYS: [&str; 4] = [
        "enqueue_jobs_per_s",
        "process_jobs_per_s",
        "latency_ms_p50",
        "latency_ms_p99",
    ];

    fn get(&self, key: &str) -> f64 {
        match key {
            "enqueue_jobs_per_s" => self.enqueue_jobs_per_s,
            "process_jobs_per_s" => self.process_jobs_per_s,
            "latency_ms_p50" => self.latency_ms_p50,
            "latency_ms_p99" => self.latency_ms_p99,
            _ => unreachable!("unknown figure {key}"),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "enqueue_jobs_per_s": self.enqueue_jobs_per_s.round(),
            "process_jobs_per_s": self.process_jobs_per_s.round(),
            "latency_ms_p50": round3(self.latency_ms_p50),
            "latency_ms_p99": round3(self.latency_ms_p99),
        })
    }

    /// Reads the JSON line a measuring process prints.
    fn from_json(line: &str) -> anyhow::Result<Figures> {
        let v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("not a JSON object: {line:?}"))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .with_context(|| format!("{k} missing from {line:?}"))
        };
        Ok(Figures {
            enqueue_jobs_per_s: field("enqueue_jobs_per_s")?,
            process_jobs_per_s: field("process_jobs_per_s")?,
            latency_ms_p50: field("latency_ms_p50")?,
            latency_ms_p99: field("latency_ms_p99")?,
        })
    }
}

/// The `p` quantile (nearest rank) of `samples`, which it sorts.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug)]
struct Args {
    jobs: u32,
    workers: u32,
    runs: u32,
    json: bool,
    samples: u32,
    effectum_concurrency: u16,
    reeve_synchronous: String,
    effectum_bin: Option<PathBuf>,
    /// Internal: measure reeve once in this process and print one JSON line.
    measure_reeve: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        jobs: 20_000,
        workers: 4,
        runs: 3,
        json: false,
        samples: 200,
        effectum_concurrency: 10,
        reeve_synchronous: "full".into(),
        effectum_bin: None,
        measure_reeve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--jobs" => args.jobs = value()?.parse().context("--jobs")?,
            "--workers" => args.workers = value()?.parse().context("--workers")?,
            "--runs" => args.runs = value()?.parse().context("--runs")?,
            "--samples" => args.samples = value()?.parse().context("--samples")?,
            "--effectum-concurrency" => {
                args.effectum_concurrency = value()?.parse().context("--effectum-concurrency")?;
            }
            "--reeve-synchronous" => args.reeve_synchronous = value()?,
            "--effectum-bin" => args.effectum_bin = Some(value()?.into()),
            "--json" => args.json = true,
            "--measure-reeve" => args.measure_reeve = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    ensure!(
        args.jobs > 0
            && args.workers > 0
            && args.runs > 0
            && args.samples > 0
            && args.effectum_concurrency > 0,
        "--jobs, --workers, --runs, --samples and --effectum-concurrency must be at least 1"
    );
    ensure!(
        matches!(args.reeve_synchronous.as_str(), "full" | "normal"),
        "--reeve-synchronous must be full or normal"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.measure_reeve {
        let figures = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(reeve_side::measure(
                args.jobs,
                args.workers,
                args.samples,
                &args.reeve_synchronous,
            ))?;
        println!("{}", figures.to_json());
        return Ok(());
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: built without --release; reeve's figures will be meaningless");
    }

    let peer = match &args.effectum_bin {
        Some(path) => path.clone(),
        None => build_peer()?,
    };
    let me = std::env::current_exe().context("cannot find this binary")?;
    let mut reeve = Vec::new();
    let mut effectum = Vec::new();
    for run in 1..=args.runs {
        let mut cmd = Command::new(&me);
        cmd.arg("--measure-reeve")
            .args(["--jobs", &args.jobs.to_string()])
            .args(["--workers", &args.workers.to_string()])
            .args(["--samples", &args.samples.to_string()])
            .args(["--reeve-synchronous", &args.reeve_synchronous]);
        let f = measure_in_child(cmd).context("measuring reeve")?;
        eprintln!("run {run}/{} reeve    {}", args.runs, f.to_json());
        reeve.push(f);

        let mut cmd = Command::new(&peer);
        cmd.args(["--jobs", &args.jobs.to_string()])
            .args(["--concurrency", &args.effectum_concurrency.to_string()])
            .args(["--samples", &args.samples.to_string()]);
        let f = measure_in_child(cmd).context("measuring effectum")?;
        eprintln!("run {run}/{} effectum {}", args.runs, f.to_json());
        effectum.push(f);
    }

    let med = |runs: &[Figures], key: &str| median(runs.iter().map(|f| f.get(key)).collect());
    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("jobs".into(), args.jobs.into());
        out.insert("runs".into(), args.runs.into());
        out.insert("latency_samples".into(), args.samples.into());
        out.insert("reeve.workers".into(), args.workers.into());
        out.insert(
            "reeve.synchronous".into(),
            args.reeve_synchronous.clone().into(),
        );
        out.insert(
            "effectum.max_concurrency".into(),
            args.effectum_concurrency.into(),
        );
        for (name, runs) in [("reeve", &reeve), ("effectum", &effectum)] {
            for key in Figures::KEYS {
                let m = med(runs, key);
                let m = if key.starts_with("latency") {
                    round3(m)
                } else {
                    m.round()
                };
                out.insert(format!("{name}.{key}"), m.into());
            }
        }
        for (ratio, key) in RATIOS {
            let r = round2(med(&reeve, key) / med(&effectum, key));
            out.insert(format!("ratio.{ratio}"), r.into());
        }
        out.insert(
            "per_run".into(),
            json!({
                "reeve": reeve.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
                "effectum": effectum.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
            }),
        );
        println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    } else {
        println!(
            "{} no-op jobs, medians of {} runs; reeve: {} engines, synchronous={}; \
             effectum 0.7.0: WAL, max_concurrency {}",
            args.jobs, args.runs, args.workers, args.reeve_synchronous, args.effectum_concurrency
        );
        println!(
            "{:<22} {:>12} {:>12} {:>16}",
            "", "reeve", "effectum", "reeve/effectum"
        );
        for ((label, unit), (_, key)) in LABELS.iter().zip(RATIOS) {
            let (r, e) = (med(&reeve, key), med(&effectum, key));
            let (rs, es) = if *unit == "ms" {
                (format!("{r:.3}"), format!("{e:.3}"))
            } else {
                (format!("{r:.0}"), format!("{e:.0}"))
            };
            println!(
                "{:<22} {rs:>12} {es:>12} {:>16.2}",
                format!("{label} ({unit})"),
                r / e
            );
        }
        println!("(throughput: a ratio above 1 favours reeve; latency: below 1 does)");
    }
    Ok(())
}

/// Ratio names and the figure each compares.
const RATIOS: [(&str, &str); 4] = [
    ("enqueue", "enqueue_jobs_per_s"),
    ("process", "process_jobs_per_s"),
    ("latency_p50", "latency_ms_p50"),
    ("latency_p99", "latency_ms_p99"),
];

const LABELS: [(&str, &str); 4] = [
    ("bulk enqueue", "jobs/s"),
    ("process", "jobs/s"),
    ("idle latency p50", "ms"),
    ("idle latency p99", "ms"),
];

/// Runs one measuring process and reads the JSON line it prints last.
fn measure_in_child(mut cmd: Command) -> anyhow::Result<Figures> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", out.status);
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .with_context(|| format!("{cmd:?} printed nothing"))?;
    Figures::from_json(line)
}

/// Builds `effectum-peer` (release) into `target/effectum-peer` beside this
/// project and returns the binary's path.
fn build_peer() -> anyhow::Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = here.join("target").join("effectum-peer");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building effectum-peer (the first build takes a few minutes)");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(here.join("effectum-peer").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null())
        .status()
        .context("cannot run cargo to build effectum-peer")?;
    ensure!(status.success(), "building effectum-peer failed: {status}");
    Ok(target.join("release").join("effectum-peer"))
}
