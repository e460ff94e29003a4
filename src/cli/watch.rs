//! `tandem watch`: its flags, and what it prints as batches finish.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use tandem::batch::{BatchError, RunOptions};
use tandem::progress::LiveDisplay;
use tandem::watch::WatchOptions;

use super::{
    EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, cancel_on_ctrl_c, prepare, print_outcome,
};

/// The flags of `tandem watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Close a batch once no new file has arrived for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    quiet_period: f64,
    /// Poll the inbox instead of waiting for filesystem events (NFS, SMB, container mounts).
    #[arg(long)]
    poll: bool,
    /// With --poll, look this often, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    poll_interval: f64,
    /// List the whole inbox at least this often, in seconds, whatever the watcher reports.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    rescan_every: f64,
    /// Wait up to this many seconds for servers that are still starting.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    wait: u64,
    /// Grade again submissions already graded under the same rubric, prompts and models.
    #[arg(long)]
    regrade: bool,
}

fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("--{flag}: {value} is not a number of seconds"))
}

/// Runs `tandem watch` until Ctrl-C.
pub async fn watch(config_path: &Path, args: WatchArgs) -> Result<u8, String> {
    let options = WatchOptions {
        run: RunOptions {
            regrade: args.regrade,
            ..RunOptions::default()
        },
        poll: args.poll,
        poll_interval: seconds("poll-interval", args.poll_interval)?.max(Duration::from_millis(50)),
        quiet_period: seconds("quiet-period", args.quiet_period)?,
        rescan_every: seconds("rescan-every", args.rescan_every)?.max(Duration::from_secs(1)),
    };
    let config = prepare(config_path, Duration::from_secs(args.wait)).await?;
    let display = Arc::new(LiveDisplay::stderr());
    let cancel = cancel_on_ctrl_c();
    let printed = config.clone();
    let on_batch = Arc::new(move |outcome: &tandem::batch::BatchOutcome| {
        print_outcome(&printed, outcome);
    });

    let summary = match tandem::watch::watch(config, options, display, cancel, on_batch).await {
        Ok(summary) => summary,
        Err(BatchError::Interrupted) => return Ok(EXIT_INTERRUPTED),
        Err(error) => return Err(error.to_string()),
    };
    eprintln!(
        "Stopped after {} batches ({} failed submissions).",
        summary.batches, summary.failed
    );
    Ok(if summary.left_unfinished {
        eprintln!("tandem: {}", BatchError::Interrupted);
        EXIT_INTERRUPTED
    } else if summary.failed > 0 {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}
