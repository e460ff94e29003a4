//! One batch, end to end: claim what the inbox holds, load it, grade it, record it, report it.
//!
//! A batch is a folder of records in the outbox and a folder of reports, both named by the
//! batch id. Work left claimed by an earlier run that was stopped is finished first, in its
//! own batch, so that every input ends in exactly one record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::diagnostics::batch::{BatchSummary, summarise};
use crate::grading::{self, GradingPlan};
use crate::inbox;
use crate::progress::LiveDisplay;
use crate::queue::{Queue, QueueError};
use crate::record::{ResultRecord, Status, SubmissionInfo};
use crate::report::{self, ReportError, ReportFiles};
use crate::scheduler::{self, Finished, Options, Scheduler, SchedulerError};
use crate::submission::{self, LoadLimits, Submission};

/// A batch that could not run or could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{path}: cannot list the inbox: {source}")]
    Inbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted; unfinished submissions stay claimed and are resumed at the next start")]
    Interrupted,
}

/// What a finished batch produced.
#[derive(Debug)]
pub struct BatchOutcome {
    pub batch: String,
    pub records: Vec<ResultRecord>,
    pub summary: BatchSummary,
    pub reports: ReportFiles,
    /// The batch resumed work an earlier run had claimed.
    pub resumed: bool,
}

impl BatchOutcome {
    /// How many of the batch's records are failures.
    pub fn failed(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.status == Status::Failed)
            .count()
    }
}

/// How a run behaves beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub scheduler: Options,
}

/// Runs `tandem run`: finishes any interrupted batch, then grades everything in the inbox now.
pub async fn run(
    config: Arc<Config>,
    options: RunOptions,
    display: Arc<LiveDisplay>,
    cancel: CancellationToken,
) -> Result<Vec<BatchOutcome>, BatchError> {
    let queue = Queue::open(&config.paths)?;
    let plan = Arc::new(GradingPlan::new(config.clone()));
    let mut outcomes = Vec::new();

    for batch in queue.unfinished_batches()? {
        tracing::info!(%batch, "resuming a batch an earlier run left unfinished");
        display.line(&format!(
            "Resuming batch {batch}, left unfinished by an earlier run"
        ));
        let claimed = queue.claimed_entries(&batch)?;
        let mut outcome =
            grade_batch(&queue, &plan, &batch, claimed, &options, &display, &cancel).await?;
        outcome.resumed = true;
        outcomes.push(outcome);
    }

    let entries = inbox::stable_entries(&queue.inbox, config.inbox.settle)
        .await
        .map_err(|source| BatchError::Inbox {
            path: queue.inbox.clone(),
            source,
        })?;
    if entries.is_empty() {
        return Ok(outcomes);
    }
    let batch = queue.new_batch_id();
    let mut claimed = Vec::new();
    for entry in &entries {
        match queue.claim(&batch, &entry.path) {
            Ok(path) => claimed.push(path),
            // Gone since the scan (another process took it, or its owner removed it).
            Err(error) => tracing::warn!(entry = %entry.name, %error, "not claimed"),
        }
    }
    tracing::info!(%batch, submissions = claimed.len(), "batch started");
    outcomes.push(grade_batch(&queue, &plan, &batch, claimed, &options, &display, &cancel).await?);
    Ok(outcomes)
}

/// Submission ids for a batch's entries: the slug of each name, with a short hash of the name
/// added where two names share a slug. Computed over every entry the batch ever held, so a
/// resumed batch gives each entry the id it had before.
fn submission_ids(names: &[String]) -> HashMap<String, String> {
    let mut by_slug: HashMap<String, usize> = HashMap::new();
    for name in names {
        *by_slug.entry(submission::slug(name)).or_default() += 1;
    }
    names
        .iter()
        .map(|name| {
            let slug = submission::slug(name);
            let id = if by_slug[&slug] > 1 {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(name.as_bytes());
                format!("{slug}-{}", &hex::encode(digest)[..8])
            } else {
                slug
            };
            (name.clone(), id)
        })
        .collect()
}

/// A claimed entry's record path relative to the state folder, for `submission.original`.
fn original_path(batch: &str, claimed: &Path) -> String {
    let name = claimed.file_name().unwrap_or_default().to_string_lossy();
    format!("archive/{batch}/{name}")
}

/// What the loader hands on: a submission to grade, or a record of why it cannot be graded.
enum Loaded {
    Ready(Arc<Submission>),
    Failed(Box<ResultRecord>),
}

async fn grade_batch(
    queue: &Queue,
    plan: &Arc<GradingPlan>,
    batch: &str,
    claimed: Vec<PathBuf>,
    options: &RunOptions,
    display: &Arc<LiveDisplay>,
    cancel: &CancellationToken,
) -> Result<BatchOutcome, BatchError> {
    let names = queue.batch_entry_names(batch)?;
    let ids = submission_ids(&names);
    let config = &plan.config;

    // Entries whose record was written before a crash, but not yet archived, are done.
    let mut todo = Vec::new();
    for path in claimed {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let id = ids
            .get(&name)
            .cloned()
            .unwrap_or_else(|| submission::slug(&name));
        if queue.has_record(batch, &id) {
            queue.archive(batch, &path)?;
        } else {
            todo.push((path, id));
        }
    }
    // Larger submissions first, so that the batch does not end with one long call alone.
    todo.sort_by_cached_key(|(path, _)| {
        std::cmp::Reverse(
            std::fs::symlink_metadata(path)
                .map(|m| m.len())
                .unwrap_or(0),
        )
    });
    display.set_total(todo.len());
    display.line(&format!(
        "Batch {batch}: {} submissions, {} backends",
        todo.len(),
        config.backends.len()
    ));

    let claimed_by_id: HashMap<String, PathBuf> = todo
        .iter()
        .map(|(path, id)| (id.clone(), path.clone()))
        .collect();

    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
    let scheduler = Scheduler::new(
        plan.clone(),
        &options.scheduler,
        display.clone() as Arc<dyn scheduler::Observer>,
        cancel.clone(),
        finished_tx,
    )?;
    let (ready_tx, ready_rx) = mpsc::channel::<Arc<Submission>>(scheduler.window());
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<Loaded>();

    let limits = LoadLimits {
        max_file_bytes: config.inbox.max_file_bytes,
        max_chars: config.grading.max_submission_chars,
    };
    let loader_plan = plan.clone();
    let loader_batch = batch.to_string();
    let loader = tokio::spawn(async move {
        for (path, id) in todo {
            let plan = loader_plan.clone();
            let limits = limits.clone();
            let batch = loader_batch.clone();
            let loaded =
                tokio::task::spawn_blocking(move || load_one(&plan, &batch, &path, id, &limits))
                    .await
                    .expect("loading a submission never panics");
            let sent = match loaded {
                Loaded::Ready(submission) => ready_tx.send(submission).await.is_ok(),
                failed @ Loaded::Failed(_) => failed_tx.send(failed).is_ok(),
            };
            if !sent {
                break;
            }
        }
    });
    let scheduling = tokio::spawn(scheduler.run(ready_rx));

    let mut finished_open = true;
    let mut failed_open = true;
    while finished_open || failed_open {
        let record = tokio::select! {
            _ = cancel.cancelled() => break,
            next = finished_rx.recv(), if finished_open => match next {
                Some(done) => {
                    let mut info = done.submission.info();
                    info.original = Some(original_path(batch, &done.submission.entry));
                    grading::assemble(plan, batch, &done.submission, info, Vec::new(), done.results)
                }
                None => { finished_open = false; continue; }
            },
            next = failed_rx.recv(), if failed_open => match next {
                Some(Loaded::Failed(record)) => *record,
                Some(Loaded::Ready(_)) => continue,
                None => { failed_open = false; continue; }
            },
        };
        queue.write_record(&record)?;
        if let Some(path) = claimed_by_id.get(&record.submission.id) {
            queue.archive(batch, path)?;
        }
        display.submission_finished(&record);
    }
    if cancel.is_cancelled() {
        loader.abort();
        let _ = scheduling.await;
        return Err(BatchError::Interrupted);
    }
    let _ = loader.await;
    let _ = scheduling.await;

    let records = queue.read_records(batch)?;
    let summary = summarise(&records, &config.thresholds);
    let reports = report::write_batch_reports(
        &config.paths.reports.join(batch),
        &config.paths.reports,
        batch,
        &records,
        &summary,
        &report::ReportSettings::from_config(config),
    )?;
    tracing::info!(%batch, reports = %reports.dir.display(), "batch finished");
    Ok(BatchOutcome {
        batch: batch.to_string(),
        records,
        summary,
        reports,
        resumed: false,
    })
}

/// Loads one claimed entry, or makes the failure record that says why it cannot be graded.
fn load_one(
    plan: &GradingPlan,
    batch: &str,
    path: &Path,
    id: String,
    limits: &LoadLimits,
) -> Loaded {
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let original = Some(original_path(batch, path));
    let failure = |kind: &str, message: String| {
        let meta = std::fs::symlink_metadata(path).ok();
        let format = Path::new(&name)
            .extension()
            .and_then(|ext| submission::Format::from_extension(&ext.to_string_lossy()))
            .map_or("unknown", submission::Format::as_str);
        let info = SubmissionInfo {
            id: id.clone(),
            files: vec![name.clone()],
            format: format.into(),
            sha256: file_sha256(path).unwrap_or_default(),
            bytes: meta.map(|m| m.len()).unwrap_or(0),
            // The LMS name still says whose it is, even when the file cannot be read.
            student: submission::parse_lms_name(&name)
                .map(|lms| lms.student())
                .unwrap_or_default(),
            original: original.clone(),
        };
        Loaded::Failed(Box::new(grading::failed_before_grading(
            plan, batch, info, kind, message,
        )))
    };
    let is_link = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if is_link {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return failure(
            "link",
            format!("{name}: is a symbolic link (to {target}); links are never followed"),
        );
    }
    match submission::load(path, limits) {
        Ok(mut submission) => {
            submission.id = id;
            Loaded::Ready(Arc::new(submission))
        }
        Err(error) => failure(error.kind(), inbox_relative(&error.to_string(), path)),
    }
}

/// The SHA-256 of a regular file's bytes, read in a stream; `None` for anything else.
fn file_sha256(path: &Path) -> Option<String> {
    use sha2::Digest;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

/// Messages name the file as the instructor dropped it, not by its path in the state folder.
fn inbox_relative(message: &str, claimed: &Path) -> String {
    match claimed.parent() {
        Some(dir) => message.replace(&format!("{}/", dir.display()), ""),
        None => message.to_string(),
    }
}

/// Grades one submission (a file or a folder) with a configuration and returns its record,
/// diagnostics included. The inbox, outbox and state folder are not touched; the record's
/// `batch` is `"single"`.
pub async fn grade_one(config: Arc<Config>, path: &Path) -> Result<ResultRecord, BatchError> {
    const BATCH: &str = "single";
    let plan = Arc::new(GradingPlan::new(config.clone()));
    let limits = LoadLimits {
        max_file_bytes: config.inbox.max_file_bytes,
        max_chars: config.grading.max_submission_chars,
    };
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let submission = match load_one(&plan, BATCH, path, submission::slug(&name), &limits) {
        Loaded::Ready(submission) => submission,
        Loaded::Failed(mut record) => {
            record.submission.original = None;
            return Ok(*record);
        }
    };

    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler::new(
        plan.clone(),
        &Options::default(),
        Arc::new(scheduler::Quiet),
        CancellationToken::new(),
        finished_tx,
    )?;
    let (ready_tx, ready_rx) = mpsc::channel(1);
    ready_tx
        .send(submission)
        .await
        .expect("the scheduler's input is open until dropped");
    drop(ready_tx);
    scheduler.run(ready_rx).await;
    let done = finished_rx
        .recv()
        .await
        .expect("the scheduler finishes every submission it admits");
    Ok(grading::assemble(
        &plan,
        BATCH,
        &done.submission,
        done.submission.info(),
        Vec::new(),
        done.results,
    ))
}
