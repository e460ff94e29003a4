//! `tandem watch`: keep watching the inbox and grade what arrives, batch by batch.
//!
//! The file watcher is only a hint that something changed; the truth is a listing of the inbox.
//! The watcher is armed before anything else, so nothing dropped during start-up is missed; the
//! inbox is then listed at start, on every event (at most every [`SCAN_DEBOUNCE`]), on every
//! overflow (`Flag::Rescan`), and every `rescan_every` even when no event came, since watchers
//! lose events on large folders and network filesystems. `--poll` uses a polling watcher for
//! filesystems that send no events at all (NFS, SMB, some container mounts).
//!
//! An entry is claimed once it is ready (see [`crate::inbox::Watchlist`]: held still over the
//! settle time, its notebooks and zips whole). Entries claimed close together form a batch; a
//! batch is closed once nothing has been claimed into it for the quiet period, then graded and
//! reported while the next batch gathers. Batches are graded one at a time, in order.
//!
//! Stopping (Ctrl-C, or the cancellation token) stops claiming at once and interrupts the batch
//! being graded: what was recorded stays recorded, and everything else stays claimed in the
//! state folder and is resumed at the next start, by `watch` or `run`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchError, BatchOutcome, Grader, RunOptions};
use crate::config::Config;
use crate::inbox::{self, Watchlist};
use crate::progress::LiveDisplay;
use crate::queue::Queue;

/// The shortest pause between two listings of the inbox, so that a burst of events (a large
/// copy) costs one listing rather than thousands.
pub const SCAN_DEBOUNCE: Duration = Duration::from_millis(200);

/// How `tandem watch` watches.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub run: RunOptions,
    /// Poll the inbox instead of asking the operating system for events.
    pub poll: bool,
    /// How often the polling watcher looks.
    pub poll_interval: Duration,
    /// A batch is closed once nothing new has been claimed into it for this long.
    pub quiet_period: Duration,
    /// A full listing at least this often, events or not.
    pub rescan_every: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            run: RunOptions::default(),
            poll: false,
            poll_interval: Duration::from_secs(1),
            quiet_period: Duration::from_secs(30),
            rescan_every: Duration::from_secs(30),
        }
    }
}

/// How a watch session ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchSummary {
    /// Batches graded and reported.
    pub batches: usize,
    /// Failure records over those batches.
    pub failed: usize,
    /// Stopping interrupted work, which stays claimed for the next start.
    pub left_unfinished: bool,
}

/// Why the watcher woke the collector.
#[derive(Debug, Default)]
struct Hint {
    wake: Notify,
    /// The watcher lost events (`Flag::Rescan`) or failed; noted in the log.
    lost_events: AtomicBool,
}

/// Arms a watcher on the inbox whose every event wakes the collector.
fn arm(
    inbox: &Path,
    options: &WatchOptions,
    hint: Arc<Hint>,
) -> Result<Box<dyn Watcher + Send>, BatchError> {
    let handler = move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if event.need_rescan() => hint.lost_events.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "the inbox watcher failed; listing the inbox again");
                hint.lost_events.store(true, Ordering::Relaxed);
            }
        }
        hint.wake.notify_one();
    };
    let watch_error = |source: notify::Error| BatchError::Inbox {
        path: inbox.to_path_buf(),
        source: std::io::Error::other(format!("cannot watch: {source}")),
    };
    let poller = |handler| {
        let config = notify::Config::default().with_poll_interval(options.poll_interval);
        notify::PollWatcher::new(handler, config).map(|w| Box::new(w) as Box<dyn Watcher + Send>)
    };
    let mut watcher: Box<dyn Watcher + Send> = if options.poll {
        poller(handler).map_err(watch_error)?
    } else {
        match notify::recommended_watcher(handler.clone()) {
            Ok(watcher) => Box::new(watcher),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "no event watcher (on Linux, raise fs.inotify.max_user_watches or \
                     max_user_instances); polling instead"
                );
                poller(handler).map_err(watch_error)?
            }
        }
    };
    watcher
        .watch(inbox, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    Ok(watcher)
}

/// The batch gathering arrivals.
struct OpenBatch {
    id: String,
    entries: usize,
    last_claim: Instant,
}

/// Runs `tandem watch` until `cancel` fires: resumes unfinished batches, then claims what
/// arrives and grades it batch by batch, calling `on_batch` with each finished batch.
pub async fn watch(
    config: Arc<Config>,
    options: WatchOptions,
    display: Arc<LiveDisplay>,
    cancel: CancellationToken,
    on_batch: Arc<dyn Fn(&BatchOutcome) + Send + Sync>,
) -> Result<WatchSummary, BatchError> {
    let queue = Arc::new(Queue::open(&config.paths)?);
    let hint = Arc::new(Hint::default());
    let _watcher = arm(&queue.inbox, &options, hint.clone())?;

    // Batches left by an earlier run are graded first; they are listed before the collector
    // opens a batch of its own, which would otherwise look unfinished too.
    let (closed_tx, closed_rx) = mpsc::unbounded_channel::<String>();
    for batch in queue.unfinished_batches()? {
        display.line(&format!(
            "Resuming batch {batch}, left unfinished by an earlier run"
        ));
        let _ = closed_tx.send(batch);
    }
    let grader = Grader::new(
        config.clone(),
        options.run.clone(),
        display.clone(),
        cancel.clone(),
    );
    let mut grading = tokio::spawn(grade_closed(grader, queue.clone(), closed_rx, on_batch));

    display.line(&format!(
        "Watching {} (batches close after {} s without new files; Ctrl-C to stop)",
        queue.inbox.display(),
        options.quiet_period.as_secs_f64()
    ));
    let mut watchlist = Watchlist::new(config.inbox.settle, config.inbox.max_file_bytes);
    let mut open: Option<OpenBatch> = None;
    let mut last_scan: Option<Instant> = None;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if let Some(last) = last_scan {
            let next = last + SCAN_DEBOUNCE;
            if next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
        }
        if hint.lost_events.swap(false, Ordering::Relaxed) {
            tracing::info!("the watcher lost events; the inbox is listed in full");
        }
        last_scan = Some(Instant::now());
        match inbox::list(&queue.inbox) {
            Ok(entries) => watchlist.observe(entries, Instant::now()),
            Err(error) => tracing::warn!(inbox = %queue.inbox.display(), %error, "cannot list"),
        }
        for entry in watchlist.take_ready(Instant::now()) {
            if cancel.is_cancelled() {
                break;
            }
            let batch = match &mut open {
                Some(batch) => batch,
                None => {
                    let id = queue.new_batch_id();
                    queue.open_batch(&id)?;
                    tracing::info!(batch = %id, "batch opened");
                    open.insert(OpenBatch {
                        id,
                        entries: 0,
                        last_claim: Instant::now(),
                    })
                }
            };
            match queue.claim(&batch.id, &entry.path) {
                Ok(unit) => {
                    batch.entries += 1;
                    batch.last_claim = Instant::now();
                    tracing::info!(batch = %batch.id, entry = %unit.name, "claimed");
                }
                Err(error) => tracing::warn!(entry = %entry.name, %error, "not claimed"),
            }
        }
        if let Some(batch) = open.take_if(|b| b.last_claim.elapsed() >= options.quiet_period) {
            display.line(&format!(
                "Batch {} closed with {} entries; grading",
                batch.id, batch.entries
            ));
            let _ = closed_tx.send(batch.id);
        }

        let mut wake = Instant::now() + options.rescan_every;
        if let Some(deadline) = watchlist.next_deadline() {
            wake = wake.min(deadline);
        }
        if let Some(batch) = &open {
            wake = wake.min(batch.last_claim + options.quiet_period);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = hint.wake.notified() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            ended = &mut grading => {
                // The grader stops early only on an error it cannot get past.
                return match ended.expect("the grading task never panics") {
                    Ok(summary) => Ok(summary),
                    Err(error) => Err(error),
                };
            }
        }
    }

    drop(closed_tx);
    let mut summary = grading.await.expect("the grading task never panics")?;
    if let Some(batch) = open {
        display.line(&format!(
            "Batch {} stays claimed with {} entries; it is graded at the next start",
            batch.id, batch.entries
        ));
        summary.left_unfinished |= batch.entries > 0;
    }
    Ok(summary)
}

/// Grades closed batches in the order they were closed, until the channel closes or the run is
/// cancelled.
async fn grade_closed(
    grader: Grader,
    queue: Arc<Queue>,
    mut closed: mpsc::UnboundedReceiver<String>,
    on_batch: Arc<dyn Fn(&BatchOutcome) + Send + Sync>,
) -> Result<WatchSummary, BatchError> {
    let mut summary = WatchSummary::default();
    while let Some(batch) = closed.recv().await {
        match grader.grade(&queue, &batch).await {
            Ok(Some(outcome)) => {
                summary.batches += 1;
                summary.failed += outcome.failed();
                on_batch(&outcome);
            }
            Ok(None) => {}
            Err(BatchError::Interrupted) => {
                summary.left_unfinished = true;
                break;
            }
            Err(error) => return Err(error),
        }
    }
    if !closed.is_empty() {
        summary.left_unfinished = true;
    }
    Ok(summary)
}
