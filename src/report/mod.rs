//! Reports: a finished batch's figures and grades, written where the instructor looks.
//!
//! This module writes `reports/<batch>/summary.csv`, `submissions.csv` and `grades.csv`, keeps
//! one row per batch in `reports/batches.csv`, and renders the plain-text table shown at the end
//! of `tandem run` and by `tandem report`. It computes nothing itself: every figure comes from a
//! [`BatchSummary`] or from the result records, so the reports of any batch can be rebuilt from
//! its outbox folder. Every file is replaced atomically, so a reader or a crash never sees half
//! of one.

pub mod csv;
pub mod terminal;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::diagnostics::batch::BatchSummary;
use crate::record::ResultRecord;

pub use terminal::render_terminal_summary;

/// The name of the per-server and batch figures file in a batch's report folder.
pub const SUMMARY_FILE: &str = "summary.csv";
/// The name of the per-submission figures file in a batch's report folder.
pub const SUBMISSIONS_FILE: &str = "submissions.csv";
/// The name of the grades file in a batch's report folder.
pub const GRADES_FILE: &str = "grades.csv";
/// The name of the one-row-per-batch file in the reports folder.
pub const BATCHES_FILE: &str = "batches.csv";

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
    /// `reports/batches.csv`.
    pub batches: PathBuf,
}

/// Writes a batch's CSV reports into `dir` and its row into `batch_root/batches.csv`.
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
) -> Result<ReportFiles, ReportError> {
    for folder in [dir, batch_root] {
        fs::create_dir_all(folder).map_err(|source| ReportError::CreateDir {
            path: folder.to_path_buf(),
            source,
        })?;
    }

    let mut records: Vec<&ResultRecord> = records.iter().collect();
    records.sort_by(|a, b| a.submission.id.cmp(&b.submission.id));

    let files = ReportFiles {
        dir: dir.to_path_buf(),
        summary: dir.join(SUMMARY_FILE),
        submissions: dir.join(SUBMISSIONS_FILE),
        grades: dir.join(GRADES_FILE),
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
    // TODO: Two tandem processes finishing batches at the same instant can each read
    // batches.csv before the other renames its copy into place, losing one row; a lock file
    // beside it would close that window.
    let batches = csv::batches_csv(&files.batches, batch_id, summary)?;
    write_atomically(&files.batches, &batches)?;
    Ok(files)
}

/// Replaces `path` with `bytes` so that readers see the old file or the new one, never a mix.
///
/// The bytes go to a temporary file in the same folder, which is flushed, synced and renamed over
/// `path`; then the folder is synced so the rename survives a power cut.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let write_error = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = folder.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.flush()?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temp);
        return Err(write_error(source));
    }
    sync_folder(folder).map_err(write_error)
}

#[cfg(unix)]
fn sync_folder(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

#[cfg(not(unix))]
fn sync_folder(_folder: &Path) -> io::Result<()> {
    // Folders cannot be opened for syncing here; the rename itself is what makes the swap atomic.
    Ok(())
}
