//! LMS bulk-download zips: one zip dropped in the inbox, one submission per student.
//!
//! Canvas's "Download Submissions" zip is flat, each file named
//! `lastfirst_[late_]userid_fileid_original`; Moodle's has a folder per student named
//! `Full Name_participantid_assignsubmission_file` (or flat files with that prefix). Entries
//! are grouped by the student identity those names carry ([`parse_lms_name`]); an entry whose
//! name carries none is its own submission, or with the rest of its top-level folder. Of a
//! student's Canvas resubmissions of one file (`analysis.ipynb`, `analysis-1.ipynb`, ...) the
//! newest is kept and the older ones are listed as superseded.
//!
//! Paths inside a zip are never trusted. Nothing is extracted under a name the zip chose:
//! each student's files are written below a folder this module names, with every path component
//! cleaned, and entries that are links, encrypted, or whose paths climb out (`..`) or start at
//! the root are skipped and listed. Limits on the entry count, the total uncompressed size and
//! the expansion ratio are checked against the central directory before anything is unpacked,
//! and again against the bytes actually read, so a zip bomb stops with an error naming the limit.
//!
//! This module unpacks; it does not load, grade or record. The queue decides what each member
//! becomes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::submission::{Lms, LmsName, parse_lms_name};

/// Entries below this many uncompressed bytes are not held to the expansion ratio: small text
/// compresses very well without being a bomb.
const RATIO_FLOOR: u64 = 1024 * 1024;

/// How many largest-allowed files' worth of bytes a zip may expand to.
pub const FILES_PER_ZIP: u64 = 256;

/// Limits that stop a zip from expanding without bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipLimits {
    /// Most entries (files and folders) a zip may list.
    pub max_entries: usize,
    /// Most bytes all its entries may hold once uncompressed.
    pub max_total_bytes: u64,
    /// Most an entry (over 1 MiB) or the whole zip may grow when uncompressed, as a factor.
    pub max_ratio: u64,
    /// A file larger than this is not unpacked; its student's record fails on its size.
    pub max_file_bytes: u64,
}

impl ZipLimits {
    /// The limits for a configuration whose files may be at most `max_file_bytes`: a zip may
    /// hold [`FILES_PER_ZIP`] such files' worth of bytes (512 MiB at the default 2 MiB).
    pub fn for_file_limit(max_file_bytes: u64) -> ZipLimits {
        ZipLimits {
            max_file_bytes,
            max_total_bytes: max_file_bytes.saturating_mul(FILES_PER_ZIP),
            ..ZipLimits::default()
        }
    }
}

impl Default for ZipLimits {
    fn default() -> Self {
        ZipLimits {
            max_entries: 10_000,
            max_total_bytes: 512 * 1024 * 1024,
            max_ratio: 100,
            max_file_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A zip that cannot be unpacked, naming it (as it was dropped) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("{zip}: not a readable zip archive: {source}")]
    Unreadable {
        zip: String,
        #[source]
        source: ::zip::result::ZipError,
    },
    #[error("{zip}: lists {count} entries, over the limit of {limit} entries")]
    TooManyEntries {
        zip: String,
        count: usize,
        limit: usize,
    },
    #[error("{zip}: holds {bytes} bytes once uncompressed, over the limit of {limit} bytes")]
    TooLarge { zip: String, bytes: u64, limit: u64 },
    #[error(
        "{zip}: {entry} expands {ratio} times ({bytes} bytes from {compressed}), over the limit \
         of {limit} times; it looks like a zip bomb"
    )]
    Ratio {
        zip: String,
        entry: String,
        bytes: u64,
        compressed: u64,
        ratio: u64,
        limit: u64,
    },
    #[error("{zip}: {entry}: cannot read: {source}")]
    Entry {
        zip: String,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot unpack: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{zip}: holds no files to grade{}", skipped_note(skipped))]
    Empty { zip: String, skipped: Vec<Skipped> },
}

fn skipped_note(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|s| format!("{} ({})", s.entry, s.reason))
        .collect();
    format!("; skipped {}", listed.join(", "))
}

impl ZipError {
    /// A stable, machine-readable name for what went wrong, as failure records carry it.
    pub fn kind(&self) -> &'static str {
        match self {
            ZipError::Unreadable { .. } => "unreadable_zip",
            ZipError::TooManyEntries { .. } => "zip_too_many_entries",
            ZipError::TooLarge { .. } => "zip_too_large",
            ZipError::Ratio { .. } => "zip_expansion_ratio",
            ZipError::Entry { .. } | ZipError::Write { .. } => "io",
            ZipError::Empty { .. } => "empty_zip",
        }
    }
}

/// An entry left out of every submission, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's name as the zip lists it.
    pub entry: String,
    /// Why it was skipped: a link, encrypted, an absolute path, a path with `..`.
    pub reason: &'static str,
}

/// One student's submission unpacked from a zip.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Who it is, for ids and messages: `smithjane_123456` (Canvas), `Jane Smith_4821` (Moodle),
    /// or the entry's own top-level name when it carries no identity.
    pub label: String,
    /// What to load: the one file, or the folder holding the student's files.
    pub path: PathBuf,
    /// The identity the entry names carry, if any.
    pub lms: Option<LmsName>,
    /// The entries unpacked for this student, as the zip names them.
    pub entries: Vec<String>,
    /// A file of this student's that could not be unpacked: (kind, message).
    pub problem: Option<(String, String)>,
}

/// An older Canvas resubmission, left out in favour of a newer one of the same file.
#[derive(Debug, Clone, PartialEq)]
pub struct Superseded {
    /// The entry's name as the zip lists it.
    pub entry: String,
    /// The [`Member::label`] of the student whose newer file is graded instead.
    pub label: String,
    /// The entry that supersedes it.
    pub by_entry: String,
    /// What its Canvas name says about the student.
    pub lms: LmsName,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its uncompressed size.
    pub bytes: u64,
}

/// What a zip held: its students' submissions, older resubmissions, and skipped entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// One per student, in label order.
    pub members: Vec<Member>,
    pub superseded: Vec<Superseded>,
    pub skipped: Vec<Skipped>,
}

/// An entry that will be unpacked, found in the central directory.
struct Kept {
    index: usize,
    name: String,
    parts: Vec<String>,
}

/// A student's group of entries while the zip is read.
struct Group {
    label: String,
    lms: Option<LmsName>,
    files: Vec<Kept>,
}

/// Unpacks the zip at `zip_path` below `dest` (which must not exist yet), one folder per
/// student. `display` names the zip in messages, as it was dropped in the inbox.
pub fn expand(
    zip_path: &Path,
    display: &str,
    dest: &Path,
    limits: &ZipLimits,
) -> Result<Expansion, ZipError> {
    let zip = || display.to_string();
    let file = File::open(zip_path).map_err(|source| ZipError::Entry {
        zip: zip(),
        entry: String::new(),
        source,
    })?;
    let zip_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut archive = ::zip::ZipArchive::new(file)
        .map_err(|source| ZipError::Unreadable { zip: zip(), source })?;
    if archive.len() > limits.max_entries {
        return Err(ZipError::TooManyEntries {
            zip: zip(),
            count: archive.len(),
            limit: limits.max_entries,
        });
    }

    let (kept, skipped) = survey_entries(&mut archive, display, zip_bytes, limits)?;
    let kept = unwrap_single_root(kept);
    let (groups, superseded_entries) = group_by_student(kept);
    if groups.is_empty() && superseded_entries.is_empty() {
        return Err(ZipError::Empty {
            zip: zip(),
            skipped,
        });
    }

    fs::create_dir_all(dest).map_err(|source| ZipError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut unpacked_bytes = 0u64;
    let mut members = Vec::with_capacity(groups.len());
    let mut used_dirs: Vec<String> = Vec::new();
    for group in groups {
        let dir_name = unique_name(&safe_component(&group.label), &used_dirs);
        used_dirs.push(dir_name.clone());
        let dir = dest.join(&dir_name);
        fs::create_dir(&dir).map_err(|source| ZipError::Write {
            path: dir.clone(),
            source,
        })?;
        let single = group.files.len() == 1;
        let mut problem = None;
        let mut written: Vec<String> = Vec::new();
        let mut entries = Vec::new();
        let mut only_file = None;
        for kept in &group.files {
            entries.push(kept.name.clone());
            let relative = relative_path(kept, group.lms.as_ref(), single);
            let relative = unique_path(relative, &written);
            written.push(relative.join("/"));
            let target = relative
                .iter()
                .fold(dir.clone(), |path, part| path.join(part));
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|source| ZipError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let read = copy_entry(&mut archive, kept, display, &target, limits)?;
            unpacked_bytes += read.bytes;
            if unpacked_bytes > limits.max_total_bytes {
                return Err(ZipError::TooLarge {
                    zip: zip(),
                    bytes: unpacked_bytes,
                    limit: limits.max_total_bytes,
                });
            }
            if read.over_limit && problem.is_none() {
                problem = Some((
                    "too_large".to_string(),
                    format!(
                        "{display}: {}: the file is over the limit of {} bytes",
                        kept.name, limits.max_file_bytes
                    ),
                ));
            }
            only_file = Some(target);
        }
        let path = match (single, only_file) {
            (true, Some(file)) => file,
            _ => dir,
        };
        members.push(Member {
            label: group.label,
            path,
            lms: group.lms,
            entries,
            problem,
        });
    }

    let mut superseded = Vec::with_capacity(superseded_entries.len());
    for (kept, label, by_entry, lms) in superseded_entries {
        let (sha256, bytes) = hash_entry(&mut archive, &kept, display, limits)?;
        superseded.push(Superseded {
            entry: kept.name,
            label,
            by_entry,
            lms,
            sha256,
            bytes,
        });
    }
    Ok(Expansion {
        members,
        superseded,
        skipped,
    })
}

/// Reads the central directory: which entries will be unpacked, which are skipped, and whether
/// the declared sizes stay within the limits.
fn survey_entries(
    archive: &mut ::zip::ZipArchive<File>,
    display: &str,
    zip_bytes: u64,
    limits: &ZipLimits,
) -> Result<(Vec<Kept>, Vec<Skipped>), ZipError> {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    let mut total = 0u64;
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|source| ZipError::Unreadable {
                zip: display.to_string(),
                source,
            })?;
        let name = entry.name().to_string();
        if entry.is_dir() {
            continue;
        }
        let skip = |reason| Skipped {
            entry: name.clone(),
            reason,
        };
        if entry.is_symlink() {
            skipped.push(skip("a link"));
            continue;
        }
        if entry.encrypted() {
            skipped.push(skip("encrypted"));
            continue;
        }
        let parts = match split_entry_name(&name) {
            Ok(parts) => parts,
            Err(reason) => {
                skipped.push(skip(reason));
                continue;
            }
        };
        if parts.iter().any(|p| is_ignored_part(p)) {
            continue;
        }

        let (bytes, compressed) = (entry.size(), entry.compressed_size());
        total = total.saturating_add(bytes);
        if total > limits.max_total_bytes {
            return Err(ZipError::TooLarge {
                zip: display.to_string(),
                bytes: total,
                limit: limits.max_total_bytes,
            });
        }
        let ratio = bytes / compressed.max(1);
        if bytes > RATIO_FLOOR && ratio > limits.max_ratio {
            return Err(ZipError::Ratio {
                zip: display.to_string(),
                entry: name,
                bytes,
                compressed,
                ratio,
                limit: limits.max_ratio,
            });
        }
        kept.push(Kept { index, name, parts });
    }
    let ratio = total / zip_bytes.max(1);
    if total > RATIO_FLOOR && ratio > limits.max_ratio {
        return Err(ZipError::Ratio {
            zip: display.to_string(),
            entry: "the whole archive".to_string(),
            bytes: total,
            compressed: zip_bytes,
            ratio,
            limit: limits.max_ratio,
        });
    }
    Ok((kept, skipped))
}

/// The components of an entry's name, or why it cannot be trusted at all.
fn split_entry_name(name: &str) -> Result<Vec<String>, &'static str> {
    let name = name.replace('\\', "/");
    let bytes = name.as_bytes();
    let has_drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if name.starts_with('/') || has_drive {
        return Err("an absolute path");
    }
    let parts: Vec<String> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .map(str::to_string)
        .collect();
    if parts.iter().any(|p| p == "..") {
        return Err("a path with `..`");
    }
    if parts.iter().any(|p| p.contains('\0')) {
        return Err("a NUL byte in its name");
    }
    if parts.is_empty() {
        return Err("an empty name");
    }
    Ok(parts)
}

/// Dotfiles, macOS resource forks, caches and temporaries are never part of a submission.
fn is_ignored_part(part: &str) -> bool {
    part.starts_with('.')
        || matches!(part, "__MACOSX" | "__pycache__")
        || crate::inbox::is_ignored(part)
}

/// Drops a top-level folder that wraps every entry and names no student, as when someone zips
/// the folder that holds the class rather than its contents.
fn unwrap_single_root(mut kept: Vec<Kept>) -> Vec<Kept> {
    let Some(first) = kept.first().map(|k| k.parts[0].clone()) else {
        return kept;
    };
    let wraps_all = kept
        .iter()
        .all(|k| k.parts.len() > 1 && k.parts[0] == first);
    if wraps_all && parse_lms_name(&first).is_none() {
        for k in &mut kept {
            k.parts.remove(0);
        }
    }
    kept
}

/// The student an entry belongs to: the key that groups it, its label, and the identity.
fn student_of(kept: &Kept) -> (String, String, Option<LmsName>) {
    let top = &kept.parts[0];
    match parse_lms_name(top) {
        Some(lms) => {
            let label = match (&lms.name, lms.lms) {
                (Some(name), _) => format!("{name}_{}", lms.lms_id),
                (None, Lms::Moodle) => format!("Participant_{}", lms.lms_id),
                (None, Lms::Canvas) => lms.lms_id.clone(),
            };
            (format!("{:?}:{}", lms.lms, lms.lms_id), label, Some(lms))
        }
        None => (format!("entry:{top}"), top.clone(), None),
    }
}

/// Groups entries by student, and sets older Canvas resubmissions aside, each with the label of
/// its student and the entry that supersedes it.
#[allow(clippy::type_complexity)]
fn group_by_student(kept: Vec<Kept>) -> (Vec<Group>, Vec<(Kept, String, String, LmsName)>) {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for k in kept {
        let (key, label, lms) = student_of(&k);
        let group = groups.entry(key).or_insert_with(|| Group {
            label,
            lms: lms.clone(),
            files: Vec::new(),
        });
        if let (Some(mine), Some(theirs)) = (&lms, &mut group.lms) {
            theirs.late |= mine.late;
        }
        group.files.push(k);
    }

    let mut superseded = Vec::new();
    let mut result = Vec::with_capacity(groups.len());
    for (_, mut group) in groups {
        // Canvas names each resubmitted file `original-N`; the highest N (then the highest file
        // id) is the newest.
        let mut newest: BTreeMap<String, (u32, u64, String)> = BTreeMap::new();
        for k in &group.files {
            if let Some(lms) = canvas_file(k) {
                let original = lms.original_name.clone().unwrap_or_default();
                let rank = (
                    lms.resubmission.unwrap_or(0),
                    lms.file_id
                        .as_deref()
                        .and_then(|f| f.parse().ok())
                        .unwrap_or(0),
                    k.name.clone(),
                );
                let slot = newest.entry(original).or_insert_with(|| rank.clone());
                if rank > *slot {
                    *slot = rank;
                }
            }
        }
        let (keep, older): (Vec<Kept>, Vec<Kept>) =
            group.files.into_iter().partition(|k| match canvas_file(k) {
                Some(lms) => newest[&lms.original_name.clone().unwrap_or_default()].2 == k.name,
                None => true,
            });
        for k in older {
            let lms = canvas_file(&k).expect("only Canvas files are superseded");
            let by = newest[&lms.original_name.clone().unwrap_or_default()]
                .2
                .clone();
            superseded.push((k, group.label.clone(), by, lms));
        }
        group.files = keep;
        group.files.sort_by(|a, b| a.parts.cmp(&b.parts));
        if !group.files.is_empty() {
            result.push(group);
        }
    }
    result.sort_by(|a, b| a.label.cmp(&b.label));
    (result, superseded)
}

/// The Canvas name of a flat entry (a file at the top of the zip), if it has one.
fn canvas_file(kept: &Kept) -> Option<LmsName> {
    if kept.parts.len() != 1 {
        return None;
    }
    parse_lms_name(&kept.parts[0]).filter(|l| l.lms == Lms::Canvas && l.original_name.is_some())
}

/// Where an entry goes inside its student's folder: a flat LMS file under the name the student
/// gave it, a file inside a student's folder under its path there, every component cleaned.
fn relative_path(kept: &Kept, lms: Option<&LmsName>, single: bool) -> Vec<String> {
    let parts: Vec<&str> = if kept.parts.len() > 1 {
        kept.parts[1..].iter().map(String::as_str).collect()
    } else {
        vec![kept.parts[0].as_str()]
    };
    let mut cleaned: Vec<String> = parts.iter().map(|p| safe_component(p)).collect();
    if kept.parts.len() == 1
        && lms.is_some()
        && let Some(original) = parse_lms_name(&kept.parts[0]).and_then(|l| l.original_name)
    {
        // The student's own file name, so that two students' identical work hashes alike.
        let last = cleaned.len() - 1;
        cleaned[last] = safe_component(&original);
    }
    if single {
        cleaned = vec![cleaned.pop().expect("an entry has a name")];
    }
    cleaned
}

/// A path component safe to create: no separators, control characters or leading dots, at most
/// 120 bytes, never empty.
fn safe_component(part: &str) -> String {
    let cleaned: String = part
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() { "_".to_string() } else { out }
}

/// `name`, or `name-2`, `name-3`, ... (before any extension) if `name` is taken.
fn unique_name(name: &str, taken: &[String]) -> String {
    if !taken.iter().any(|t| t == name) {
        return name.to_string();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => name.split_at(dot),
        _ => (name, ""),
    };
    (2..)
        .map(|n| format!("{stem}-{n}{ext}"))
        .find(|candidate| !taken.iter().any(|t| t == candidate))
        .expect("some suffix is free")
}

fn unique_path(mut parts: Vec<String>, taken: &[String]) -> Vec<String> {
    let last = parts.len() - 1;
    let prefix = parts[..last].join("/");
    let siblings: Vec<String> = taken
        .iter()
        .filter_map(|t| {
            let (dir, name) = t.rsplit_once('/').unwrap_or(("", t));
            (dir == prefix).then(|| name.to_string())
        })
        .collect();
    parts[last] = unique_name(&parts[last], &siblings);
    parts
}

/// How much of an entry was unpacked.
struct Copied {
    bytes: u64,
    over_limit: bool,
}

/// Unpacks one entry into a new file, reading at most one byte past the file size limit.
fn copy_entry(
    archive: &mut ::zip::ZipArchive<File>,
    kept: &Kept,
    display: &str,
    target: &Path,
    limits: &ZipLimits,
) -> Result<Copied, ZipError> {
    let entry_error = |source| ZipError::Entry {
        zip: display.to_string(),
        entry: kept.name.clone(),
        source,
    };
    let entry = archive
        .by_index(kept.index)
        .map_err(|e| entry_error(io::Error::other(e)))?;
    let mut out = File::create_new(target).map_err(|source| ZipError::Write {
        path: target.to_path_buf(),
        source,
    })?;
    let bytes = io::copy(&mut entry.take(limits.max_file_bytes + 1), &mut out).map_err(|e| {
        if e.kind() == io::ErrorKind::WriteZero {
            ZipError::Write {
                path: target.to_path_buf(),
                source: e,
            }
        } else {
            entry_error(e)
        }
    })?;
    let over_limit = bytes > limits.max_file_bytes;
    if over_limit {
        // Keep no partial copy: the student's record fails on the size, naming the entry.
        out.set_len(0).map_err(|source| ZipError::Write {
            path: target.to_path_buf(),
            source,
        })?;
    }
    Ok(Copied { bytes, over_limit })
}

/// The SHA-256 and size of an entry that is not unpacked.
fn hash_entry(
    archive: &mut ::zip::ZipArchive<File>,
    kept: &Kept,
    display: &str,
    limits: &ZipLimits,
) -> Result<(String, u64), ZipError> {
    let entry_error = |source| ZipError::Entry {
        zip: display.to_string(),
        entry: kept.name.clone(),
        source,
    };
    let entry = archive
        .by_index(kept.index)
        .map_err(|e| entry_error(io::Error::other(e)))?;
    let mut hasher = Sha256::new();
    let mut limited = entry.take(limits.max_file_bytes + 1);
    let mut buffer = [0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = limited.read(&mut buffer).map_err(entry_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_entry_names_are_refused_or_cleaned() {
        assert_eq!(split_entry_name("../evil.py"), Err("a path with `..`"));
        assert_eq!(split_entry_name("a/../../evil.py"), Err("a path with `..`"));
        assert_eq!(split_entry_name("/etc/passwd"), Err("an absolute path"));
        assert_eq!(split_entry_name("C:\\x.py"), Err("an absolute path"));
        assert_eq!(
            split_entry_name("Jane_1_assignsubmission_file/./sub\\a.py").unwrap(),
            vec!["Jane_1_assignsubmission_file", "sub", "a.py"]
        );
        assert_eq!(safe_component("..hidden"), "hidden");
        assert_eq!(safe_component("a\nb:c"), "a_b_c");
        assert_eq!(safe_component("   "), "_");
    }

    #[test]
    fn names_are_made_unique() {
        let taken = vec!["a.py".to_string(), "a-2.py".to_string()];
        assert_eq!(unique_name("a.py", &taken), "a-3.py");
        assert_eq!(unique_name("b.py", &taken), "b.py");
    }
}
