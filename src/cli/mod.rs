//! The command line: flags as typed, and what each command does with the library.
//!
//! Exit status: 0 when every submission was graded, 3 when the batch finished but some
//! submissions failed (each has its failure record), 2 when tandem could not run at all, with a
//! one-line reason naming the file, key or URL at fault.

mod init;
mod probe;
mod report;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tandem::batch::{self, BatchError, RunOptions};
use tandem::config::Config;
use tandem::progress::LiveDisplay;

/// Every submission was graded.
pub const EXIT_OK: u8 = 0;
/// tandem could not run: bad config, no reachable server, unwritable folder.
pub const EXIT_CANNOT_RUN: u8 = 2;
/// The batch finished, but some submissions failed.
pub const EXIT_SOME_FAILED: u8 = 3;
/// Stopped by Ctrl-C; claimed work is resumed at the next start.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Grades a class's homework with local language models and measures the servers' work.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Args {
    /// The configuration file; paths in it are relative to its folder.
    #[arg(
        long,
        global = true,
        default_value = "tandem.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,

    /// More log lines on stderr: -v for the batch's life, -vv for every decision.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Grade every submission in the inbox now, then exit (the overnight job).
    Run {
        /// Wait up to this many seconds for servers that are still starting.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
        /// Grade again submissions already graded under the same rubric, prompts and models,
        /// instead of recording them as duplicates of the earlier result.
        #[arg(long)]
        regrade: bool,
    },
    /// Keep watching the inbox; files that arrive together form a batch, graded and reported
    /// once no new file has come for the quiet period.
    Watch(watch::WatchArgs),
    /// Show a finished batch's figures from its files (the latest batch by default).
    Report {
        /// The batch id (its folder name in the outbox).
        batch: Option<String>,
        /// Print the summary as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Regenerate every CSV and the page of the batch from its outbox records.
        #[arg(long)]
        rebuild: bool,
    },
    /// Measure each configured server with standard prompts at rising concurrency.
    Probe(probe::ProbeArgs),
    /// Write a starter tandem.toml and rubric.toml into the current folder.
    Init {
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
    },
}

/// Sets up log lines on stderr; `RUST_LOG` overrides the verbosity flags.
pub fn init_logging(verbose: u8) {
    // The live display already shows retries and backends going down, so by default only
    // errors are logged; -v adds the warnings and the batch's life.
    let level = match verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("tandem={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// Runs a command and returns its exit status.
pub async fn dispatch(args: Args) -> u8 {
    let result = match args.command {
        Command::Run { wait, regrade } => {
            run(&args.config, Duration::from_secs(wait), regrade).await
        }
        Command::Watch(watch_args) => watch::watch(&args.config, watch_args).await,
        Command::Report {
            batch,
            json,
            rebuild,
        } => report::show(&args.config, batch.as_deref(), json, rebuild),
        Command::Probe(probe_args) => probe::probe(&args.config, &probe_args).await,
        Command::Init { force } => init::write_starter(force),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tandem: {message}");
            EXIT_CANNOT_RUN
        }
    }
}

/// Loads the configuration, with the reason on one line if it cannot be used.
pub fn load_config(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

/// A token cancelled by the first Ctrl-C; a second one quits at once.
fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("tandem: stopping; press Ctrl-C again to quit at once");
            on_signal.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    cancel
}

/// Loads the configuration and waits for its backends, as `run` and `watch` both begin.
async fn prepare(config_path: &std::path::Path, wait: Duration) -> Result<Arc<Config>, String> {
    let config = Arc::new(load_config(config_path)?);
    tandem::backend::check_keys(&config).map_err(|e| e.to_string())?;
    let say = |line: &str| eprintln!("{line}");
    let ready = tandem::backend::check_backends(&config, wait, &say)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(backends = ?ready, "backends ready");
    Ok(config)
}

async fn run(config_path: &std::path::Path, wait: Duration, regrade: bool) -> Result<u8, String> {
    let config = prepare(config_path, wait).await?;
    let display = Arc::new(LiveDisplay::stderr());
    let cancel = cancel_on_ctrl_c();
    let options = RunOptions {
        regrade,
        ..RunOptions::default()
    };

    let outcomes = match batch::run(config.clone(), options, display.clone(), cancel).await {
        Ok(outcomes) => outcomes,
        Err(BatchError::Interrupted) => {
            eprintln!("tandem: {}", BatchError::Interrupted);
            return Ok(EXIT_INTERRUPTED);
        }
        Err(error) => return Err(error.to_string()),
    };
    if outcomes.is_empty() {
        eprintln!(
            "Nothing to grade: {} holds no submissions.",
            config.paths.inbox.display()
        );
        return Ok(EXIT_OK);
    }

    let mut any_failed = false;
    for outcome in &outcomes {
        any_failed |= outcome.failed() > 0;
        print_outcome(&config, outcome);
    }
    Ok(if any_failed {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}

/// The terminal summary of a finished batch and where its files are.
fn print_outcome(config: &Config, outcome: &batch::BatchOutcome) {
    eprintln!();
    eprintln!(
        "{}",
        tandem::report::render_terminal_summary(&outcome.summary)
    );
    eprintln!(
        "Batch {}: {} graded, {} failed. Records in {}, reports in {}",
        outcome.batch,
        outcome.records.len() - outcome.failed(),
        outcome.failed(),
        config.paths.outbox.join(&outcome.batch).display(),
        outcome.reports.dir.display(),
    );
}
