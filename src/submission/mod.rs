//! Submissions: an inbox entry read from disk and normalised into the text a model grades.
//!
//! An entry is one file, or one folder holding one student's files. [`load`] reads it,
//! decides its [`Format`], hashes its bytes, reads the student from LMS-style names
//! ([`lms`]), and renders everything as plain text: notebooks through the `notebook` module,
//! every file through the `decode` module's clean-up (byte-order marks, UTF-16, terminal
//! colour codes, invisible characters), and the whole cut to a character limit with a visible
//! marker.
//!
//! What goes wrong is a [`LoadError`] with a stable [`LoadError::kind`], naming the file and
//! what is wrong with it, so the queue can write a failure record and go on. Claiming entries,
//! unpacking LMS zips and making ids unique across a batch happen elsewhere.

mod decode;
pub mod lms;
mod notebook;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::record::{Student, SubmissionInfo};

pub use lms::{Lms, LmsName, parse_lms_name};

/// The kind of file a submission is; a folder whose files differ is [`Format::Mixed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The format's name as it appears in records and reports.
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

    /// The format a file name's extension stands for, compared without regard to case.
    pub fn from_extension(extension: &str) -> Option<Format> {
        match extension.to_ascii_lowercase().as_str() {
            "ipynb" => Some(Format::Notebook),
            "py" => Some(Format::Python),
            "r" => Some(Format::R),
            "rmd" => Some(Format::RMarkdown),
            "sql" => Some(Format::Sql),
            "md" | "markdown" => Some(Format::Markdown),
            "txt" => Some(Format::Text),
            _ => None,
        }
    }
}

/// A submission ready to grade.
#[derive(Debug, Clone)]
pub struct Submission {
    /// A filesystem-safe slug of the entry's name; unique within a batch only once the batch
    /// has made it so.
    pub id: String,
    /// The file or folder the submission was read from.
    pub entry: PathBuf,
    /// The files of the submission relative to the entry, `/`-separated, in the order they
    /// were read; for a single file, its file name.
    pub files: Vec<String>,
    pub format: Format,
    /// Hex SHA-256 of the file's bytes; for a folder, of each file's relative path, length
    /// and bytes in order.
    pub sha256: String,
    /// Total size of the files on disk.
    pub bytes: u64,
    /// Who handed it in, as far as LMS-style names reveal; `name` is `None` when they do not.
    pub student: Student,
    /// The normalised text a model grades.
    pub text: String,
}

impl Submission {
    /// What the LMS name of the entry (or, for a folder, of its files) says, where it says
    /// anything.
    pub fn lms_name(&self) -> Option<LmsName> {
        entry_lms_name(&self.entry, &self.files)
    }

    /// The submission as the result record describes it.
    pub fn info(&self) -> SubmissionInfo {
        SubmissionInfo {
            id: self.id.clone(),
            files: self.files.clone(),
            format: self.format.as_str().to_string(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
            student: self.student.clone(),
            original: None,
        }
    }
}

/// Limits applied while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLimits {
    /// A file larger than this fails with [`LoadError::TooLarge`] without being read.
    pub max_file_bytes: u64,
    /// The submission's text is cut to this many characters, with a marker saying so.
    pub max_chars: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_file_bytes: 2 * 1024 * 1024,
            max_chars: 12_000,
        }
    }
}

/// A submission that could not be read, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: the file is empty (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: the file holds only whitespace")]
    Blank { path: PathBuf },
    #[error("{path}: the file is binary, not text")]
    Binary { path: PathBuf },
    #[error("{path}: not valid {encoding} at byte offset {offset}; save it as UTF-8")]
    NotUtf8 {
        path: PathBuf,
        offset: usize,
        encoding: &'static str,
    },
    #[error("{path}: the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "{path}: unsupported file type {}; tandem grades .ipynb, .py, .R, .Rmd, .sql, .md and .txt",
        describe_extension(extension)
    )]
    UnsupportedType { path: PathBuf, extension: String },
    #[error(
        "{path}: no gradable files (only {}); tandem grades .ipynb, .py, .R, .Rmd, .sql, .md \
         and .txt",
        unsupported.join(", ")
    )]
    NothingGradable {
        path: PathBuf,
        unsupported: Vec<String>,
    },
    #[error("{path}: notebook is not valid JSON at line {line}, column {column}: {message}")]
    NotebookJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: not a notebook: {missing}")]
    NotANotebook { path: PathBuf, missing: String },
    #[error("{path}: git merge-conflict markers left in the file, starting at line {line}")]
    MergeConflict { path: PathBuf, line: usize },
    #[error("{path}: the folder holds no files")]
    EmptyFolder { path: PathBuf },
    #[error("{path}: is a symbolic link; tandem does not follow links")]
    Symlink { path: PathBuf },
    #[error("{path}: neither a regular file nor a folder")]
    NotAFile { path: PathBuf },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe_extension(extension: &str) -> String {
    if extension.is_empty() {
        "(no extension)".to_string()
    } else {
        format!("`.{extension}`")
    }
}

impl LoadError {
    /// A stable, machine-readable name for what went wrong, as failure records carry it.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Empty { .. } | LoadError::Blank { .. } => "empty",
            LoadError::Binary { .. } => "binary",
            LoadError::NotUtf8 { .. } => "not_utf8",
            LoadError::TooLarge { .. } => "too_large",
            LoadError::UnsupportedType { .. } | LoadError::NothingGradable { .. } => {
                "unsupported_type"
            }
            LoadError::NotebookJson { .. } | LoadError::NotANotebook { .. } => "malformed_notebook",
            LoadError::MergeConflict { .. } => "merge_conflict",
            LoadError::EmptyFolder { .. } => "empty_folder",
            LoadError::Symlink { .. } => "symlink",
            LoadError::NotAFile { .. } => "not_a_file",
            LoadError::Io { .. } => "io",
        }
    }

    /// The file (or folder) at fault.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::Empty { path }
            | LoadError::Blank { path }
            | LoadError::Binary { path }
            | LoadError::NotUtf8 { path, .. }
            | LoadError::TooLarge { path, .. }
            | LoadError::UnsupportedType { path, .. }
            | LoadError::NothingGradable { path, .. }
            | LoadError::NotebookJson { path, .. }
            | LoadError::NotANotebook { path, .. }
            | LoadError::MergeConflict { path, .. }
            | LoadError::EmptyFolder { path }
            | LoadError::Symlink { path }
            | LoadError::NotAFile { path }
            | LoadError::Io { path, .. } => path,
        }
    }
}

/// Reads an inbox entry, a file or a folder of one student's files, into a [`Submission`].
///
/// In a folder, dotfiles, dot-folders and editor or download temporaries are skipped,
/// symbolic links are ignored without being read, and files of unsupported types are listed in
/// `files` and noted in the text but not graded. A gradable file that cannot be read fails the
/// whole submission, since a grade without it would be a wrong grade; only an empty file among
/// others is noted and passed over.
pub fn load(entry: &Path, limits: &LoadLimits) -> Result<Submission, LoadError> {
    let meta = std::fs::symlink_metadata(entry).map_err(|source| LoadError::Io {
        path: entry.to_path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(LoadError::Symlink {
            path: entry.to_path_buf(),
        });
    }
    let body = if meta.is_dir() {
        load_folder(entry, limits)?
    } else if meta.is_file() {
        load_file(entry, limits)?
    } else {
        return Err(LoadError::NotAFile {
            path: entry.to_path_buf(),
        });
    };

    let student = entry_lms_name(entry, &body.files)
        .map(|n| n.student())
        .unwrap_or_default();
    Ok(Submission {
        id: slug(&file_name(entry)),
        entry: entry.to_path_buf(),
        files: body.files,
        format: body.format,
        sha256: body.sha256,
        bytes: body.bytes,
        student,
        text: decode::cut(&body.text, limits.max_chars),
    })
}

/// What was read from an entry, before the student and the id are added.
struct Body {
    files: Vec<String>,
    format: Format,
    sha256: String,
    bytes: u64,
    text: String,
}

fn load_file(path: &Path, limits: &LoadLimits) -> Result<Body, LoadError> {
    let format = format_of(path)?;
    let bytes = read_limited(path, limits.max_file_bytes)?;
    Ok(Body {
        files: vec![file_name(path)],
        format,
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes: bytes.len() as u64,
        text: render(path, format, &bytes)?,
    })
}

fn load_folder(folder: &Path, limits: &LoadLimits) -> Result<Body, LoadError> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let walker = walkdir::WalkDir::new(folder)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !is_ignored(&e.file_name().to_string_lossy(), e.file_type().is_dir()));
    for item in walker {
        let item = item.map_err(|err| LoadError::Io {
            path: err.path().unwrap_or(folder).to_path_buf(),
            source: err
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("filesystem loop")),
        })?;
        let kind = item.file_type();
        if kind.is_symlink() {
            let path = item.path().display();
            tracing::debug!(%path, "ignoring a symbolic link in a submission");
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let relative = item.path().strip_prefix(folder).unwrap_or(item.path());
        let relative: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        found.push((relative.join("/"), item.path().to_path_buf()));
    }
    found.sort();
    if found.is_empty() {
        return Err(LoadError::EmptyFolder {
            path: folder.to_path_buf(),
        });
    }

    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut text = String::new();
    let mut formats: Vec<Format> = Vec::new();
    let mut unsupported = Vec::new();
    let mut first_empty = None;
    for (relative, path) in &found {
        let format = Format::from_extension(&extension(path));
        let Some(format) = format else {
            total += hash_unread(&mut hasher, relative, path)?;
            let _ = writeln!(text, "[not graded: {relative} (unsupported type)]\n");
            unsupported.push(relative.clone());
            continue;
        };
        let bytes = read_limited(path, limits.max_file_bytes)?;
        hash_file(&mut hasher, relative, &bytes);
        total += bytes.len() as u64;
        match render(path, format, &bytes) {
            Ok(rendered) => {
                let _ = write!(text, "=== {relative} ===\n{}\n\n", rendered.trim_end());
                formats.push(format);
            }
            Err(err @ (LoadError::Empty { .. } | LoadError::Blank { .. })) => {
                let _ = writeln!(text, "[not graded: {relative} (empty)]\n");
                first_empty.get_or_insert(err);
            }
            Err(err) => return Err(err),
        }
    }

    if formats.is_empty() {
        if let Some(err) = first_empty {
            return Err(err);
        }
        return Err(LoadError::NothingGradable {
            path: folder.to_path_buf(),
            unsupported,
        });
    }
    let format = if formats.iter().all(|f| *f == formats[0]) {
        formats[0]
    } else {
        Format::Mixed
    };
    let files = found.into_iter().map(|(relative, _)| relative).collect();
    let text = format!("{}\n", text.trim_end());
    Ok(Body {
        files,
        format,
        sha256: hex::encode(hasher.finalize()),
        bytes: total,
        text,
    })
}

/// Whether a folder entry is never part of a submission: dotfiles and dot-folders (such as
/// `.ipynb_checkpoints`), editor and download temporaries, and what operating systems and
/// Python leave beside the work.
fn is_ignored(name: &str, is_dir: bool) -> bool {
    if name.starts_with('.') {
        return true;
    }
    if is_dir {
        return matches!(name, "__MACOSX" | "__pycache__");
    }
    let lower = name.to_ascii_lowercase();
    lower.ends_with('~')
        || [".swp", ".part", ".crdownload", ".tmp"]
            .iter()
            .any(|s| lower.ends_with(s))
        || matches!(lower.as_str(), "thumbs.db" | "desktop.ini")
}

/// A file's format from its extension, or the error for an unsupported one.
fn format_of(path: &Path) -> Result<Format, LoadError> {
    let extension = extension(path);
    Format::from_extension(&extension).ok_or_else(|| LoadError::UnsupportedType {
        path: path.to_path_buf(),
        extension,
    })
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads a whole file, failing without reading it when it is over `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let io_error = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size > limit {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }

    // The file may grow between the size check and the read; never read past the limit.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Adds one file of a folder to the folder's hash: its relative path, a NUL, its length as
/// eight little-endian bytes, and its bytes, so that no two different folders hash alike.
fn hash_file(hasher: &mut Sha256, relative: &str, bytes: &[u8]) {
    hasher.update(relative.as_bytes());
    hasher.update([0]);
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Hashes a file that is not graded by streaming it, since it may be large; returns its size.
fn hash_unread(hasher: &mut Sha256, relative: &str, path: &Path) -> Result<u64, LoadError> {
    let io_error = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    hasher.update(relative.as_bytes());
    hasher.update([0]);
    hasher.update(size.to_le_bytes());
    let copied = io::copy(&mut (&mut file).take(size), hasher).map_err(io_error)?;
    if copied != size {
        return Err(io_error(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while it was read",
        )));
    }
    Ok(size)
}

/// Decodes and renders one file's bytes as the text a model grades.
fn render(path: &Path, format: Format, bytes: &[u8]) -> Result<String, LoadError> {
    let path_buf = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(LoadError::Empty { path: path_buf() });
    }
    let text = decode::decode(bytes).map_err(|err| match err {
        decode::DecodeError::Binary => LoadError::Binary { path: path_buf() },
        decode::DecodeError::NotUtf8 { offset, encoding } => LoadError::NotUtf8 {
            path: path_buf(),
            offset,
            encoding,
        },
    })?;
    if text
        .chars()
        .all(|c| c.is_whitespace() || decode::is_invisible(c))
    {
        return Err(LoadError::Blank { path: path_buf() });
    }

    let text = match format {
        Format::Notebook => notebook::render(&text).map_err(|err| match err {
            notebook::NotebookError::Json {
                line,
                column,
                message,
            } => LoadError::NotebookJson {
                path: path_buf(),
                line,
                column,
                message,
            },
            notebook::NotebookError::MergeConflict { line } => LoadError::MergeConflict {
                path: path_buf(),
                line,
            },
            notebook::NotebookError::NotANotebook { missing } => LoadError::NotANotebook {
                path: path_buf(),
                missing,
            },
        })?,
        _ => text,
    };
    Ok(decode::clean(&text))
}

/// The LMS name of an entry, or for a folder whose own name says nothing, the name its files
/// share (all files that carry one must agree on the student).
fn entry_lms_name(entry: &Path, files: &[String]) -> Option<LmsName> {
    if let Some(parsed) = parse_lms_name(&file_name(entry)) {
        return Some(parsed);
    }
    let mut names = files
        .iter()
        .filter_map(|f| parse_lms_name(f.rsplit('/').next().unwrap_or(f)));
    let first = names.next()?;
    let mut late = first.late;
    for other in names {
        if other.lms != first.lms || other.lms_id != first.lms_id {
            return None;
        }
        late |= other.late;
    }
    Some(LmsName { late, ..first })
}

/// A filesystem-safe id from an entry's name: lower-case ASCII letters, digits, `-`, `_` and
/// `.`; every other run of characters becomes one `-`. Never empty, never hidden, at most
/// [`MAX_ID_LEN`] bytes.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        if let Some(ascii) = fold_latin(ch) {
            out.push_str(ascii);
        } else if ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.') {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_start_matches(['.', '-']);
    let mut out: String = out.chars().take(MAX_ID_LEN).collect();
    while out.ends_with(['-', '.']) {
        out.pop();
    }
    if out.is_empty() {
        "submission".to_string()
    } else {
        out
    }
}

/// The longest id [`slug`] makes.
pub const MAX_ID_LEN: usize = 80;

/// ASCII for the accented Latin letters common in student names, so that `Müller` becomes
/// `muller` rather than `m-ller`.
fn fold_latin(ch: char) -> Option<&'static str> {
    Some(match ch {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'Ç' | 'č' | 'Č' | 'ć' | 'Ć' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' | 'ę' | 'ě' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => "i",
        'ñ' | 'Ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => "o",
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' | 'ů' => "u",
        'ý' | 'ÿ' | 'Ý' => "y",
        'ß' => "ss",
        'š' | 'Š' | 'ś' | 'Ś' => "s",
        'ž' | 'Ž' | 'ź' | 'ż' => "z",
        'ł' | 'Ł' => "l",
        'ř' | 'Ř' => "r",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
