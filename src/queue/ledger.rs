//! The ledger: which submissions were already graded, under which grading configuration.
//!
//! An entry's key is who handed the work in (the student's LMS id, or the entry's name when
//! there is none), the SHA-256 of its bytes, and the grading key (the hash of rubric, prompts,
//! models and settings). Entries live in the state folder as one small file each:
//!
//! ```text
//! STATE/ledger/GRADING_KEY/SHA[..2]/SHA/IDENTITY_HASH.json   → {identity, sha256, batch, id, path}
//! ```
//!
//! so that "was this graded before?" is one file read, and "who else handed in these bytes?"
//! is one folder listing. Each file is replaced by a rename, so a reader never sees half of one.
//!
//! An entry is written just before its graded record, and trusted only while that record
//! exists and is graded with the same bytes: an entry whose record was never written (a crash
//! in between) or failed is ignored, so the submission is graded again rather than pointed at
//! nothing. Only graded records are entered; a submission that failed can be dropped again to
//! retry it.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{QueueError, replace_file_unsynced, short_hash};
use crate::record::{RecordRef, ResultRecord, Status};

/// Most records of other students named as byte-identical to one submission.
pub const MAX_IDENTICAL: usize = 10;

/// The ledger of one grading configuration.
#[derive(Debug, Clone)]
pub struct Ledger {
    root: PathBuf,
    outbox: PathBuf,
}

/// One ledger file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LedgerEntry {
    identity: String,
    sha256: String,
    #[serde(flatten)]
    record: RecordRef,
}

impl Ledger {
    /// The ledger for `grading_key` in the state folder; records are looked up in `outbox`.
    pub fn open(state: &Path, outbox: &Path, grading_key: &str) -> Ledger {
        Ledger {
            root: state.join("ledger").join(grading_key),
            outbox: outbox.to_path_buf(),
        }
    }

    fn folder(&self, sha256: &str) -> PathBuf {
        let shard = sha256.get(..2).unwrap_or("00");
        self.root.join(shard).join(sha256)
    }

    fn file(&self, identity: &str, sha256: &str) -> PathBuf {
        let name = format!("{}.json", short_hash(identity));
        self.folder(sha256).join(name)
    }

    /// The graded record of the same bytes from the same submitter, if there is one.
    pub fn earlier(&self, identity: &str, sha256: &str) -> Option<RecordRef> {
        let entry = read_entry(&self.file(identity, sha256))?;
        (entry.identity == identity && self.is_graded(&entry.record, sha256))
            .then_some(entry.record)
    }

    /// Graded records of the same bytes from other submitters, at most [`MAX_IDENTICAL`].
    pub fn others(&self, identity: &str, sha256: &str) -> Vec<RecordRef> {
        let Ok(listing) = fs::read_dir(self.folder(sha256)) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = listing
            .flatten()
            .map(|item| item.path())
            .filter(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .collect();
        paths.sort();
        let mut found: Vec<RecordRef> = paths
            .iter()
            .filter_map(|path| read_entry(path))
            .filter(|entry| entry.identity != identity)
            .filter(|entry| self.is_graded(&entry.record, sha256))
            .map(|entry| entry.record)
            .collect();
        found.sort();
        found.truncate(MAX_IDENTICAL);
        found
    }

    /// Enters a graded record, replacing any earlier entry for the same key (a regrade).
    pub fn enter(
        &self,
        identity: &str,
        sha256: &str,
        record: &RecordRef,
    ) -> Result<(), QueueError> {
        let entry = LedgerEntry {
            identity: identity.to_string(),
            sha256: sha256.to_string(),
            record: record.clone(),
        };
        let path = self.file(identity, sha256);
        let mut json = serde_json::to_vec_pretty(&entry).expect("ledger entries always serialise");
        json.push(b'\n');
        // Not fsynced: an entry lost or left empty by a power cut is unreadable or points at
        // nothing, and is ignored, which costs a regrade and never a lost record.
        replace_file_unsynced(&path, &json)
    }

    fn is_graded(&self, record: &RecordRef, sha256: &str) -> bool {
        let Ok(bytes) = fs::read(self.outbox.join(&record.path)) else {
            return false;
        };
        serde_json::from_slice::<ResultRecord>(&bytes)
            .is_ok_and(|r| r.status == Status::Graded && r.submission.sha256 == sha256)
    }
}

fn read_entry(path: &Path) -> Option<LedgerEntry> {
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Who handed a submission in, as the ledger keys it: the student's LMS id where the names
/// reveal one, otherwise the name of the entry as it was dropped.
pub fn identity(lms_id: Option<&str>, entry_name: &str) -> String {
    match lms_id {
        Some(id) => format!("student:{id}"),
        None => format!("entry:{entry_name}"),
    }
}
