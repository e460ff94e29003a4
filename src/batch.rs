//! One batch, end to end: claim what the inbox holds, load it, grade it, record it, report it.
//!
//! A batch is a folder of records in the outbox and a folder of reports, both named by the
//! batch id. Work left claimed by an earlier run that was stopped is finished first, in its
//! own batch, so that every input ends in exactly one record. [`Grader`] is the part shared by
//! `tandem run` and `tandem watch`: given a batch of claimed units it surveys them
//! ([`crate::queue::survey`]), grades what is to be graded, writes every record, and reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::diagnostics::batch::{BatchSummary, summarise};
use crate::grading::{self, GradingPlan};
use crate::inbox;
use crate::inbox::lms_zip::ZipLimits;
use crate::progress::LiveDisplay;
use crate::queue::ledger::Ledger;
use crate::queue::survey::{self, Action, Item, Survey, UnitWork};
use crate::queue::{Queue, QueueError};
use crate::record::{Links, RecordRef, ResultRecord, Status, SubmissionInfo};
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
    /// Grade submissions again that the ledger says were already graded under the same grading
    /// configuration, instead of recording them as duplicates.
    pub regrade: bool,
}

/// Runs `tandem run`: finishes any interrupted batch, then grades everything in the inbox now.
pub async fn run(
    config: Arc<Config>,
    options: RunOptions,
    display: Arc<LiveDisplay>,
    cancel: CancellationToken,
) -> Result<Vec<BatchOutcome>, BatchError> {
    let queue = Arc::new(Queue::open(&config.paths)?);
    let grader = Grader::new(config.clone(), options, display, cancel.clone());
    let mut outcomes = grader.resume(&queue).await?;

    let entries = inbox::stable_entries(
        &queue.inbox,
        config.inbox.settle,
        config.inbox.max_file_bytes,
    )
    .await
    .map_err(|source| BatchError::Inbox {
        path: queue.inbox.clone(),
        source,
    })?;
    if entries.is_empty() || cancel.is_cancelled() {
        return Ok(outcomes);
    }
    let batch = queue.new_batch_id();
    queue.open_batch(&batch)?;
    let mut claimed = 0;
    for entry in &entries {
        if cancel.is_cancelled() {
            break;
        }
        match queue.claim(&batch, &entry.path) {
            Ok(_) => claimed += 1,
            // Gone since the scan (another process took it, or its owner removed it).
            Err(error) => tracing::warn!(entry = %entry.name, %error, "not claimed"),
        }
    }
    tracing::info!(%batch, entries = claimed, "batch started");
    if let Some(outcome) = grader.grade(&queue, &batch).await? {
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Grades claimed batches, for `tandem run` and `tandem watch` alike: surveys a batch's claimed
/// units, loads and schedules what is to be graded, writes every record and archives each unit
/// once its records are all written, then writes the batch's reports.
pub struct Grader {
    plan: Arc<GradingPlan>,
    options: RunOptions,
    display: Arc<LiveDisplay>,
    cancel: CancellationToken,
}

/// What the record writer keeps of an item while its submission is loaded and graded.
struct Pending {
    unit: usize,
    identity: String,
    sha256: String,
    original: String,
    identical_to: Vec<RecordRef>,
    flags: Vec<String>,
}

/// How many records that need no call may wait between the loader and the writer.
const RECORD_BUFFER: usize = 64;

impl Grader {
    /// A grader for a configuration; `cancel` stops it, leaving unfinished work claimed.
    pub fn new(
        config: Arc<Config>,
        options: RunOptions,
        display: Arc<LiveDisplay>,
        cancel: CancellationToken,
    ) -> Grader {
        Grader {
            plan: Arc::new(GradingPlan::new(config)),
            options,
            display,
            cancel,
        }
    }

    /// The grading plan every batch is graded with.
    pub fn plan(&self) -> &Arc<GradingPlan> {
        &self.plan
    }

    /// Finishes the batches an earlier run left unfinished, oldest first.
    pub async fn resume(&self, queue: &Arc<Queue>) -> Result<Vec<BatchOutcome>, BatchError> {
        let mut outcomes = Vec::new();
        for batch in queue.unfinished_batches()? {
            tracing::info!(%batch, "resuming a batch an earlier run left unfinished");
            self.display.line(&format!(
                "Resuming batch {batch}, left unfinished by an earlier run"
            ));
            if let Some(mut outcome) = self.grade(queue, &batch).await? {
                outcome.resumed = true;
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    fn ledger(&self, queue: &Queue) -> Ledger {
        Ledger::open(&queue.state, &queue.outbox, &self.plan.grading_key)
    }

    /// Grades what a batch holds claimed and writes its reports; `None` when the batch held
    /// nothing at all (its claimed folder is simply removed).
    pub async fn grade(
        &self,
        queue: &Arc<Queue>,
        batch: &str,
    ) -> Result<Option<BatchOutcome>, BatchError> {
        let config = &self.plan.config;
        queue.sync_claims()?;
        queue.remove_temporaries(batch, &config.paths.reports)?;

        let settings = survey::Settings {
            limits: LoadLimits {
                max_file_bytes: config.inbox.max_file_bytes,
                max_chars: config.grading.max_submission_chars,
            },
            zip: ZipLimits::for_file_limit(config.inbox.max_file_bytes),
            regrade: self.options.regrade,
        };
        let surveyed = {
            let queue = queue.clone();
            let ledger = self.ledger(&queue);
            let batch = batch.to_string();
            tokio::task::spawn_blocking(move || survey::survey(&queue, &ledger, &batch, &settings))
                .await
                .expect("the survey never panics")?
        };
        let Survey { mut units, items } = surveyed;
        tracing::info!(%batch, units = units.len(), records = items.len(), "batch surveyed");
        for work in units.iter().filter(|w| w.remaining == 0) {
            // Every record was written before an interruption; only the move was left.
            queue.archive(&work.unit)?;
        }
        if !items.is_empty() {
            self.display.set_total(items.len());
            self.display.line(&format!(
                "Batch {batch}: {} submissions, {} backends",
                items.len(),
                config.backends.len()
            ));
            self.write_all(queue, batch, &mut units, items).await?;
        }
        if self.cancel.is_cancelled() {
            return Err(BatchError::Interrupted);
        }

        let records = queue.read_records(batch)?;
        if records.is_empty() {
            queue.finish_batch(batch)?;
            return Ok(None);
        }
        let summary = summarise(&records, &config.thresholds);
        let reports = report::write_batch_reports(
            &config.paths.reports.join(batch),
            &config.paths.reports,
            batch,
            &records,
            &summary,
            &report::ReportSettings::from_config(config),
        )?;
        queue.finish_batch(batch)?;
        tracing::info!(%batch, reports = %reports.dir.display(), "batch finished");
        Ok(Some(BatchOutcome {
            batch: batch.to_string(),
            records,
            summary,
            reports,
            resumed: false,
        }))
    }

    /// Loads, grades and records every item: the loader streams submissions into the
    /// scheduler's bounded window and records that need no call into a bounded buffer, so that
    /// memory stays flat however many wait; the writer writes each record as it comes.
    async fn write_all(
        &self,
        queue: &Arc<Queue>,
        batch: &str,
        units: &mut [UnitWork],
        items: Vec<Item>,
    ) -> Result<(), BatchError> {
        let plan = &self.plan;
        let ledger = self.ledger(queue);
        let mut pending: HashMap<String, Pending> = items
            .iter()
            .map(|item| {
                let meta = Pending {
                    unit: item.unit,
                    identity: item.identity.clone(),
                    sha256: item.sha256.clone(),
                    original: item.original.clone(),
                    identical_to: item.identical_to.clone(),
                    flags: item.flags.clone(),
                };
                (item.id.clone(), meta)
            })
            .collect();

        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
        let scheduler = Scheduler::new(
            plan.clone(),
            &self.options.scheduler,
            self.display.clone() as Arc<dyn scheduler::Observer>,
            self.cancel.clone(),
            finished_tx,
        )?;
        let (ready_tx, ready_rx) = mpsc::channel::<Arc<Submission>>(scheduler.window());
        let (record_tx, mut record_rx) = mpsc::channel::<Box<ResultRecord>>(RECORD_BUFFER);

        let limits = LoadLimits {
            max_file_bytes: plan.config.inbox.max_file_bytes,
            max_chars: plan.config.grading.max_submission_chars,
        };
        let loader_plan = plan.clone();
        let loader_batch = batch.to_string();
        let loader = tokio::spawn(async move {
            for item in items {
                let plan = loader_plan.clone();
                let limits = limits.clone();
                let batch = loader_batch.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || load_item(&plan, &batch, item, &limits))
                        .await
                        .expect("loading a submission never panics");
                let sent = match loaded {
                    Loaded::Ready(submission) => ready_tx.send(submission).await.is_ok(),
                    Loaded::Record(record) => record_tx.send(record).await.is_ok(),
                };
                if !sent {
                    break;
                }
            }
        });
        let scheduling = tokio::spawn(scheduler.run(ready_rx));

        let mut finished_open = true;
        let mut records_open = true;
        while finished_open || records_open {
            let mut record = tokio::select! {
                _ = self.cancel.cancelled() => break,
                next = finished_rx.recv(), if finished_open => match next {
                    Some(done) => {
                        let info = done.submission.info();
                        grading::assemble(
                            plan, batch, &done.submission, info, Vec::new(), done.results,
                        )
                    }
                    None => { finished_open = false; continue; }
                },
                next = record_rx.recv(), if records_open => match next {
                    Some(record) => *record,
                    None => { records_open = false; continue; }
                },
            };
            let Some(meta) = pending.remove(&record.submission.id) else {
                tracing::warn!(id = %record.submission.id, "a record nobody waited for");
                continue;
            };
            record.submission.original = Some(meta.original);
            record.flags.extend(meta.flags);
            if !meta.identical_to.is_empty() && record.status != Status::Duplicate {
                record.flags.push(IDENTICAL_FLAG.to_string());
                record.links.identical_to = meta.identical_to;
            }
            record.flags.sort();
            record.flags.dedup();
            let work = &mut units[meta.unit];
            work.remaining -= 1;
            let archive = (work.remaining == 0).then(|| work.unit.clone());
            let record = {
                let (queue, ledger) = (queue.clone(), ledger.clone());
                // fsyncs take milliseconds each: off the async workers that stream the calls.
                tokio::task::spawn_blocking(move || {
                    write_record(&queue, &ledger, &meta.identity, &meta.sha256, &record)?;
                    if let Some(unit) = archive {
                        queue.archive(&unit)?;
                    }
                    Ok::<_, QueueError>(record)
                })
                .await
                .expect("writing a record never panics")?
            };
            self.display.submission_finished(&record);
        }
        if self.cancel.is_cancelled() {
            loader.abort();
            let _ = scheduling.await;
            return Err(BatchError::Interrupted);
        }
        let _ = loader.await;
        let _ = scheduling.await;
        Ok(())
    }
}

/// Writes a record durably, entering it in the ledger first when it is a grade: an entry whose
/// record is missing is ignored, while a record without its entry could be graded twice.
fn write_record(
    queue: &Queue,
    ledger: &Ledger,
    identity: &str,
    sha256: &str,
    record: &ResultRecord,
) -> Result<(), QueueError> {
    if record.status == Status::Graded && !sha256.is_empty() {
        let at = RecordRef::new(&record.batch, &record.submission.id);
        ledger.enter(identity, sha256, &at)?;
    }
    queue.write_record(record)?;
    Ok(())
}

/// The flag on records whose bytes match another submitter's.
pub const IDENTICAL_FLAG: &str = "identical_submission";

/// What the loader hands on: a submission to grade, or a record written without a call.
enum Loaded {
    Ready(Arc<Submission>),
    Record(Box<ResultRecord>),
}

/// Loads one item to grade, or makes the record of an item that needs no call.
fn load_item(plan: &GradingPlan, batch: &str, item: Item, limits: &LoadLimits) -> Loaded {
    let record = |info: SubmissionInfo, status: Status, links: Links| {
        let mut record = grading::failed_before_grading(plan, batch, info, "", String::new());
        record.status = status;
        record.error = None;
        record.links = links;
        Loaded::Record(Box::new(record))
    };
    match item.action {
        Action::Grade {
            path,
            student,
            naming,
        } => match submission::load(&path, limits) {
            Ok(mut submission) => {
                submission.id = item.id;
                if let Some(student) = student {
                    submission.student = student;
                }
                Loaded::Ready(Arc::new(submission))
            }
            Err(error) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let format = Path::new(name.as_ref())
                    .extension()
                    .and_then(|ext| submission::Format::from_extension(&ext.to_string_lossy()))
                    .map_or("unknown", submission::Format::as_str);
                // The LMS name still says whose it is, even when the file cannot be read.
                let student = student
                    .or_else(|| submission::parse_lms_name(&name).map(|lms| lms.student()))
                    .unwrap_or_default();
                let info = SubmissionInfo {
                    id: item.id,
                    files: item.loaded.map(|i| i.files).unwrap_or_default(),
                    format: format.into(),
                    sha256: item.sha256,
                    bytes: item.bytes,
                    student,
                    ..Default::default()
                };
                let message = naming.apply(&error.to_string());
                Loaded::Record(Box::new(grading::failed_before_grading(
                    plan,
                    batch,
                    info,
                    error.kind(),
                    message,
                )))
            }
        },
        Action::Duplicate { of, info } => record(
            info,
            Status::Duplicate,
            Links {
                duplicate_of: Some(of),
                ..Links::default()
            },
        ),
        Action::Superseded { by, info } => record(
            info,
            Status::Superseded,
            Links {
                superseded_by: Some(by),
                ..Links::default()
            },
        ),
        Action::Fail {
            kind,
            message,
            info,
        } => Loaded::Record(Box::new(grading::failed_before_grading(
            plan, batch, info, &kind, message,
        ))),
    }
}

/// Loads a file or folder for [`grade_one`], or makes the record of why it cannot be graded.
fn load_single(
    plan: &GradingPlan,
    batch: &str,
    path: &Path,
    limits: &LoadLimits,
) -> Result<Submission, Box<ResultRecord>> {
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let failure = |kind: &str, message: String| {
        let info = SubmissionInfo {
            id: submission::slug(&name),
            files: vec![name.clone()],
            format: "unknown".into(),
            bytes: std::fs::symlink_metadata(path)
                .map(|m| m.len())
                .unwrap_or(0),
            ..Default::default()
        };
        Box::new(grading::failed_before_grading(
            plan, batch, info, kind, message,
        ))
    };
    submission::load(path, limits).map_err(|error| failure(error.kind(), error.to_string()))
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
    let submission = match load_single(&plan, BATCH, path, &limits) {
        Ok(submission) => Arc::new(submission),
        Err(record) => return Ok(*record),
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
