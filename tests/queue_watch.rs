//! `tandem watch`: files that arrive together form a batch closed after a quiet period, the
//! watcher (events or polling) wakes it without waiting for the periodic rescan, a notebook
//! still being written waits, and stopping leaves every submission finished or resumable.

mod queue_support;

use std::fs;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_support::{Class, Servers, notebook, record_for, script, statuses};
use tandem::batch::{self, BatchOutcome, RunOptions};
use tandem::progress::LiveDisplay;
use tandem::record::Status;
use tandem::watch::{WatchOptions, WatchSummary, watch};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A watch session running in the background.
struct Session {
    cancel: CancellationToken,
    batches: mpsc::UnboundedReceiver<BatchOutcome>,
    task: JoinHandle<WatchSummary>,
}

impl Session {
    fn start(class: &Class, options: WatchOptions) -> Session {
        let cancel = CancellationToken::new();
        let (tx, batches) = mpsc::unbounded_channel();
        let on_batch = Arc::new(move |outcome: &BatchOutcome| {
            let _ = tx.send(BatchOutcome {
                batch: outcome.batch.clone(),
                records: outcome.records.clone(),
                summary: outcome.summary.clone(),
                reports: outcome.reports.clone(),
                resumed: outcome.resumed,
            });
        });
        let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
        let task = tokio::spawn(watch(
            class.config(),
            options,
            display,
            cancel.clone(),
            on_batch,
        ));
        let task = tokio::spawn(async move { task.await.unwrap().expect("watch runs") });
        Session {
            cancel,
            batches,
            task,
        }
    }

    async fn next_batch(&mut self) -> BatchOutcome {
        tokio::time::timeout(Duration::from_secs(20), self.batches.recv())
            .await
            .expect("a batch finishes in time")
            .expect("the session is running")
    }

    async fn stop(self) -> WatchSummary {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("watch stops in time")
            .unwrap()
    }
}

fn options(quiet: f64) -> WatchOptions {
    WatchOptions {
        quiet_period: Duration::from_secs_f64(quiet),
        // Far longer than any test: files must be noticed through the watcher.
        rescan_every: Duration::from_secs(600),
        poll_interval: Duration::from_millis(100),
        ..WatchOptions::default()
    }
}

#[tokio::test]
async fn files_that_arrive_together_form_a_batch_closed_after_the_quiet_period() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "settle_seconds = 0.1");
    class.drop_file("before-start.py", script(0));
    let mut session = Session::start(&class, options(0.6));

    let first = session.next_batch().await;
    assert_eq!(first.records.len(), 1, "{:?}", statuses(&first.records));

    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped_at = Instant::now();
    for n in 1..=3 {
        class.drop_file(&format!("s{n}.py"), script(n));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let second = session.next_batch().await;
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(600),
        "closed before the quiet period"
    );
    assert_eq!(second.records.len(), 3, "the three arrivals form one batch");
    assert!(second.records.iter().all(|r| r.status == Status::Graded));
    assert!(
        second.reports.submissions.is_file(),
        "the batch is reported"
    );
    assert_ne!(first.batch, second.batch);

    let summary = session.stop().await;
    assert_eq!(summary.batches, 2);
    assert!(!summary.left_unfinished);
}

#[tokio::test]
async fn the_polling_watcher_finds_files_without_waiting_for_a_rescan() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let mut session = Session::start(
        &class,
        WatchOptions {
            poll: true,
            ..options(0.2)
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    class.drop_file("late.md", "# Late\nStill counts.");

    let batch = session.next_batch().await;
    assert_eq!(batch.records.len(), 1);
    record_for(&batch.records, "late.md");
    session.stop().await;
}

#[tokio::test]
async fn a_notebook_being_written_is_not_taken_until_it_is_whole() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "settle_seconds = 0.2");
    let mut session = Session::start(&class, options(0.2));
    let whole = notebook("import pandas as pd\nprint('finished')");
    let path = class.inbox().join("slow copy.ipynb");
    fs::write(&path, &whole[..whole.len() / 3]).unwrap();

    // Held still for twice the settle time, but not yet a notebook.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(path.exists(), "half a notebook was taken");
    fs::write(&path, &whole).unwrap();

    let batch = session.next_batch().await;
    let record = record_for(&batch.records, "slow copy.ipynb");
    assert_eq!(record.status, Status::Graded, "{record:#?}");
    assert_eq!(fs::read_to_string(class.original(record)).unwrap(), whole);
    session.stop().await;
}

#[tokio::test]
async fn stopping_leaves_every_submission_finished_or_resumable() {
    // Slow servers: the batch is still being graded when the watch is stopped.
    let servers = Servers::with_rate(150.0).await;
    let class = Class::new(&servers, "");
    let session = Session::start(&class, options(0.2));
    for n in 0..6 {
        class.drop_file(&format!("s{n}.py"), script(n));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while servers.requests() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(servers.requests() > 0, "grading started");
    let summary = session.stop().await;
    assert!(summary.left_unfinished);
    assert!(!class.claimed().is_empty(), "unfinished work stays claimed");
    assert!(class.stray_outbox_files().is_empty());

    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    let resumed = batch::run(
        class.config(),
        RunOptions::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(resumed[0].resumed);
    let records = class.records();
    assert_eq!(records.len(), 6, "{:?}", statuses(&records));
    for n in 0..6 {
        assert_eq!(
            record_for(&records, &format!("s{n}.py")).status,
            Status::Graded
        );
    }
    assert!(class.claimed().is_empty());
}
