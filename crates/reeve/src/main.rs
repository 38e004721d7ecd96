//! The `reeve` binary: thin glue. `serve` runs the daemon (store, engine,
//! HTTP API); every other command is a client of that API (`--url`, env
//! `REEVE_URL`), except `bench`, which measures a store directly.

mod bench;
mod bench_dashboard;
mod cli;
mod client;
mod config;
mod database;
mod schedule_files;
mod serve;
mod webhooks;
mod worker;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            cli::Command::Serve(serve_args) => serve::run(serve_args).await,
            cli::Command::Bench(bench_args) => bench::run(bench_args).await,
            cli::Command::Migrate(serve_args) => serve::migrate(serve_args).await,
            cli::Command::Worker(worker_args) => worker::run(worker_args).await,
            command => client::run(&args.global, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
