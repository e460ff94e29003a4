//! Reports: a finished batch's figures and grades, written where the instructor looks.
//!
//! This module writes `reports/<batch>/summary.csv`, `submissions.csv`, `grades.csv`, a
//! gradebook to import into Canvas when the LMS names gave student ids, and `report.html`; it
//! keeps one row per batch in `reports/batches.csv`, and renders the plain-text report shown at
//! the end of `tandem run` and by `tandem report`. Batch figures come from a [`BatchSummary`],
//! and the charts and recommendations from the result records, so the reports of any batch can
//! be rebuilt from its outbox folder. Every file is replaced atomically, so a reader or a crash
//! never sees half of one.

pub mod csv;
pub mod html;
pub mod recommend;
pub mod svg;
pub mod terminal;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::backend::Role;
use crate::config::{Concurrency, Config, Thresholds};
use crate::diagnostics::batch::BatchSummary;
use crate::record::ResultRecord;

pub use recommend::{Recommendation, recommend};
pub use terminal::{render_terminal_report, render_terminal_summary};

/// The name of the per-server and batch figures file in a batch's report folder.
pub const SUMMARY_FILE: &str = "summary.csv";
/// The name of the per-submission figures file in a batch's report folder.
pub const SUBMISSIONS_FILE: &str = "submissions.csv";
/// The name of the grades file in a batch's report folder.
pub const GRADES_FILE: &str = "grades.csv";
/// The name of the one-row-per-batch file in the reports folder.
pub const BATCHES_FILE: &str = "batches.csv";
/// The name of the Canvas gradebook-import file in a batch's report folder.
pub const GRADEBOOK_FILE: &str = "gradebook-canvas.csv";
/// The name of the page in a batch's report folder.
pub const HTML_FILE: &str = "report.html";

/// What the reports need from the configuration besides the records.
///
/// [`ReportSettings::from_config`] builds it for a batch; [`Default`] gives the original
/// system's thresholds and no backends, for reports made from records alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportSettings {
    /// The assignment's title (the rubric's): it heads the page and names the gradebook's
    /// assignment column.
    pub assignment: String,
    /// The bounds of the categories.
    pub thresholds: Thresholds,
    /// The configured backends, for the recommendations about them.
    pub backends: Vec<BackendSettings>,
    /// The `max_tokens` each role's calls were sent with.
    pub max_tokens: BTreeMap<Role, u32>,
}

/// One configured backend, as the recommendations need it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSettings {
    /// The backend's configured name.
    pub name: String,
    /// The roles it is configured for.
    pub roles: Vec<Role>,
    /// How many calls it may have in flight.
    pub max_concurrency: Concurrency,
    /// Output throughput at two requests in flight over that at one, from the newest
    /// `tandem probe` of this backend; `None` when it was never probed at both levels.
    pub batching_gain: Option<f64>,
}

impl ReportSettings {
    /// The settings of a configuration, with each backend's batching gain taken from the newest
    /// probe report in its reports folder, if there is one.
    pub fn from_config(config: &Config) -> Self {
        let gains = crate::probe::latest_batching_gains(&config.paths.reports);
        ReportSettings {
            assignment: config.rubric.title.clone(),
            thresholds: config.thresholds,
            backends: config
                .backends
                .iter()
                .map(|b| BackendSettings {
                    name: b.name.clone(),
                    roles: b.roles.clone(),
                    max_concurrency: b.max_concurrency,
                    batching_gain: gains.get(&b.name).copied(),
                })
                .collect(),
            max_tokens: Role::ALL
                .into_iter()
                .map(|role| (role, config.grading.max_tokens(role)))
                .collect(),
        }
    }

    /// The configured backend of that name.
    pub fn backend(&self, name: &str) -> Option<&BackendSettings> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// A report that could not be written, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A report folder could not be created.
    #[error("{path}: cannot create report folder: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A report file could not be written, synced or moved into place.
    #[error("{path}: cannot write report: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A row could not be turned into CSV.
    #[error("{path}: cannot encode CSV: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: ::csv::Error,
    },
    /// The existing `batches.csv` could not be read back to add this batch's row.
    #[error("{path}: cannot read existing batches: {source}")]
    ReadBatches {
        path: PathBuf,
        #[source]
        source: ::csv::Error,
    },
    /// The existing `batches.csv` has other columns than this version of tandem writes.
    #[error("{path}: unexpected header `{found}`; move the file aside to start a new one")]
    BatchesHeader { path: PathBuf, found: String },
}

/// Where [`write_batch_reports`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    /// The batch's report folder, `reports/<batch>/`.
    pub dir: PathBuf,
    /// `reports/<batch>/summary.csv`.
    pub summary: PathBuf,
    /// `reports/<batch>/submissions.csv`.
    pub submissions: PathBuf,
    /// `reports/<batch>/grades.csv`.
    pub grades: PathBuf,
    /// `reports/<batch>/gradebook-canvas.csv`, written when LMS names gave student ids.
    pub gradebook: Option<PathBuf>,
    /// `reports/<batch>/report.html`.
    pub html: PathBuf,
    /// `reports/batches.csv`.
    pub batches: PathBuf,
}

/// Writes a batch's CSV reports and page into `dir` and its row into `batch_root/batches.csv`.
///
/// `dir` is the batch's report folder (`reports/<batch>/`), created if missing; `batch_root` is
/// the reports folder that holds `batches.csv`. Writing the same batch again replaces its files
/// and its row in `batches.csv` rather than adding a second row.
pub fn write_batch_reports(
    dir: &Path,
    batch_root: &Path,
    batch_id: &str,
    records: &[ResultRecord],
    summary: &BatchSummary,
    settings: &ReportSettings,
) -> Result<ReportFiles, ReportError> {
    for folder in [dir, batch_root] {
        fs::create_dir_all(folder).map_err(|source| ReportError::CreateDir {
            path: folder.to_path_buf(),
            source,
        })?;
    }

    let recommendations = recommend(summary, records, settings);
    let page = html::render_page(batch_id, records, summary, settings, &recommendations);

    let mut records: Vec<&ResultRecord> = records.iter().collect();
    records.sort_by(|a, b| a.submission.id.cmp(&b.submission.id));

    let files = ReportFiles {
        dir: dir.to_path_buf(),
        summary: dir.join(SUMMARY_FILE),
        submissions: dir.join(SUBMISSIONS_FILE),
        grades: dir.join(GRADES_FILE),
        gradebook: csv::has_canvas_students(&records).then(|| dir.join(GRADEBOOK_FILE)),
        html: dir.join(HTML_FILE),
        batches: batch_root.join(BATCHES_FILE),
    };
    write_atomically(
        &files.summary,
        &csv::summary_csv(&files.summary, batch_id, summary)?,
    )?;
    write_atomically(
        &files.submissions,
        &csv::submissions_csv(&files.submissions, &records)?,
    )?;
    write_atomically(&files.grades, &csv::grades_csv(&files.grades, &records)?)?;
    match &files.gradebook {
        Some(path) => write_atomically(
            path,
            &csv::canvas_gradebook_csv(path, &settings.assignment, &records)?,
        )?,
        // A rebuild from records that no longer name students must not leave an old gradebook.
        None => remove_if_present(&dir.join(GRADEBOOK_FILE))?,
    }
    write_atomically(&files.html, page.as_bytes())?;
    // TODO: Two tandem processes finishing batches at the same instant can each read
    // batches.csv before the other renames its copy into place, losing one row; a lock file
    // beside it would close that window.
    let batches = csv::batches_csv(&files.batches, batch_id, summary)?;
    write_atomically(&files.batches, &batches)?;
    Ok(files)
}

/// What `tandem report --json` prints: the batch's summary, its slowest submissions, its
/// failures, its flags and the recommendations.
pub fn report_json(
    batch_id: &str,
    records: &[ResultRecord],
    summary: &BatchSummary,
    recommendations: &[Recommendation],
) -> serde_json::Value {
    use crate::record::Status;

    let slowest: Vec<serde_json::Value> = terminal::slowest_submissions(records, terminal::SLOWEST)
        .into_iter()
        .map(|r| {
            let calls: BTreeMap<Role, serde_json::Value> = r
                .performance_diagnostics
                .calls
                .iter()
                .map(|(role, c)| {
                    let call = serde_json::json!({
                        "server": c.server,
                        "generation_time_seconds": c.generation_time_seconds,
                        "time_to_first_token_seconds": c.time_to_first_token_seconds,
                        "output_tokens": c.output_tokens,
                    });
                    (*role, call)
                })
                .collect();
            serde_json::json!({
                "id": r.submission.id,
                "wall_time_seconds": r
                    .performance_diagnostics
                    .combined_metrics
                    .as_ref()
                    .map(|m| m.wall_time_seconds),
                "calls": calls,
            })
        })
        .collect();
    let failures: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .map(|r| {
            serde_json::json!({
                "id": r.submission.id,
                "student": r.submission.student.name,
                "kind": r.error.as_ref().map(|e| e.kind.as_str()),
                "message": r.error.as_ref().map(|e| e.message.as_str()),
            })
        })
        .collect();
    let flags: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| !r.flags.is_empty())
        .map(|r| serde_json::json!({"id": r.submission.id, "flags": r.flags}))
        .collect();
    serde_json::json!({
        "batch": batch_id,
        "summary": summary,
        "slowest_submissions": slowest,
        "failures": failures,
        "flags": flags,
        "recommendations": recommendations,
    })
}

/// Replaces `path` with `bytes` so that readers see the old file or the new one, never a mix,
/// by the queue's durable write (temporary file, fsync, rename, folder fsync).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::queue::replace_file(path, bytes).map_err(|error| ReportError::Write {
        path: path.to_path_buf(),
        source: match error {
            crate::queue::QueueError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        },
    })
}

fn remove_if_present(path: &Path) -> Result<(), ReportError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => Err(ReportError::Write {
            path: path.to_path_buf(),
            source,
        }),
        _ => Ok(()),
    }
}
