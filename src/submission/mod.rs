//! Submissions: an inbox entry read from disk and normalised into text a model can grade.
//!
//! PLACEHOLDER interface; the loader is written in this folder.

use std::path::{Path, PathBuf};

use crate::record::Student;

/// The kind of file a submission is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Notebook,
    Python,
    R,
    RMarkdown,
    Sql,
    Markdown,
    Text,
    Mixed,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Notebook => "notebook",
            Format::Python => "python",
            Format::R => "r",
            Format::RMarkdown => "rmarkdown",
            Format::Sql => "sql",
            Format::Markdown => "markdown",
            Format::Text => "text",
            Format::Mixed => "mixed",
        }
    }
}

/// A submission ready to grade.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: String,
    pub entry: PathBuf,
    pub files: Vec<String>,
    pub format: Format,
    pub sha256: String,
    pub bytes: u64,
    pub student: Student,
    pub text: String,
}

/// Limits applied while loading.
#[derive(Debug, Clone)]
pub struct LoadLimits {
    pub max_file_bytes: u64,
    pub max_chars: usize,
}

/// A submission that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
}

impl LoadError {
    pub fn kind(&self) -> &'static str {
        "unreadable"
    }
}

pub fn load(entry: &Path, _limits: &LoadLimits) -> Result<Submission, LoadError> {
    Err(LoadError::Other {
        path: entry.to_path_buf(),
        message: "not yet".into(),
    })
}
