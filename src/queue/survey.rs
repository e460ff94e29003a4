//! What each claimed unit of a batch becomes, decided before any call is made.
//!
//! A unit (one claimed inbox entry) yields one record, or one per student for an LMS zip. For
//! each record still to be written the survey decides its fate:
//!
//! - **grade** it;
//! - **duplicate**: the same submitter's same bytes were graded before under the same grading
//!   key (the [`Ledger`] says where), or earlier in this batch; not graded again unless the run
//!   asks for a regrade;
//! - **superseded**: an older Canvas resubmission (`analysis.ipynb` beside `analysis-1.ipynb`
//!   from the same student) of which only the newest is graded;
//! - **fail** before any call: the entry cannot be read, the zip breaks a limit, a link.
//!
//! Submissions to grade whose bytes match another submitter's, in this batch or graded before,
//! carry references to those records so that both sides are flagged `identical_submission`.
//!
//! The survey reads every submission once to hash it, keeping only small metadata (ids, hashes,
//! sizes), so a batch of thousands is surveyed in little memory; the loader reads the text again
//! when it is the submission's turn. Every decision depends only on what the state folder,
//! outbox and ledger hold, so a batch resumed after a crash decides the same way for the
//! records not yet written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::ledger::{self, Ledger, MAX_IDENTICAL};
use super::{MEMBER_SEPARATOR, Queue, QueueError, Unit, short_hash};
use crate::inbox::lms_zip::{self, ZipLimits};
use crate::record::{RecordRef, Student, SubmissionInfo};
use crate::submission::{self, Format, LoadLimits, parse_lms_name};

/// What the survey needs to know beyond the queue.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Limits on each file read.
    pub limits: LoadLimits,
    /// Limits on what an LMS zip may expand to.
    pub zip: ZipLimits,
    /// Grade duplicates again instead of pointing at the earlier record.
    pub regrade: bool,
}

/// A batch's claimed units and the records still to be written for them.
#[derive(Debug)]
pub struct Survey {
    pub units: Vec<UnitWork>,
    /// The records to write, those that need no call first, then larger submissions first.
    pub items: Vec<Item>,
}

/// A claimed unit and how many of its records are still to be written.
#[derive(Debug)]
pub struct UnitWork {
    /// The claimed entry.
    pub unit: Unit,
    /// When it reaches zero the unit is archived.
    pub remaining: usize,
}

/// One record still to be written.
#[derive(Debug, Clone)]
pub struct Item {
    /// The record id, unique in the batch.
    pub id: String,
    /// Index of its unit in [`Survey::units`].
    pub unit: usize,
    /// Who handed it in, as the ledger keys it.
    pub identity: String,
    /// SHA-256 of its bytes; empty when it could not be read.
    pub sha256: String,
    /// Its size in bytes; 0 when it could not be read.
    pub bytes: u64,
    /// Where its original is kept, relative to the state folder.
    pub original: String,
    /// Other submitters' records of the same bytes.
    pub identical_to: Vec<RecordRef>,
    /// Flags its record carries whatever becomes of it.
    pub flags: Vec<String>,
    /// The submission as read by the survey, for records written without loading it again.
    pub loaded: Option<SubmissionInfo>,
    pub action: Action,
}

/// What to do for an item.
#[derive(Debug, Clone)]
pub enum Action {
    /// Load the file or folder at `path` and grade it.
    Grade {
        path: PathBuf,
        /// The student, when the entry's own names do not tell (zip members).
        student: Option<Student>,
        naming: Naming,
    },
    /// Record it as a duplicate of an earlier record.
    Duplicate { of: RecordRef, info: SubmissionInfo },
    /// Record it as superseded by a newer resubmission.
    Superseded { by: RecordRef, info: SubmissionInfo },
    /// Record why it cannot be graded.
    Fail {
        kind: String,
        message: String,
        info: SubmissionInfo,
    },
}

/// How a path in an error message is rewritten to name the file as the instructor dropped it
/// (`analysis.ipynb`, `class.zip: smithjane_1234/analysis.ipynb`) rather than where it waits in
/// the state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    strip: String,
    with: String,
}

impl Naming {
    /// Rewrites every path under the state folder in a message.
    pub fn apply(&self, message: &str) -> String {
        message.replace(&self.strip, &self.with)
    }
}

/// Surveys a batch's claimed units (see the module documentation).
pub fn survey(
    queue: &Queue,
    ledger: &Ledger,
    batch: &str,
    settings: &Settings,
) -> Result<Survey, QueueError> {
    let units = queue.claimed_units(batch)?;
    let written: HashSet<String> = queue.record_ids(batch)?.into_iter().collect();

    let mut items = Vec::new();
    for (index, unit) in units.iter().enumerate() {
        if is_zip(&unit.path) {
            items.extend(zip_items(queue, index, unit, settings)?);
        } else {
            items.push(plain_item(queue, index, unit));
        }
    }
    let archived = queue.archived_units(batch)?;
    supersede_flat(&units, &archived, &mut items);
    debug_assert_eq!(
        items.iter().map(|i| &i.id).collect::<HashSet<_>>().len(),
        items.len(),
        "record ids are unique in a batch"
    );

    let mut units: Vec<UnitWork> = units
        .into_iter()
        .map(|unit| UnitWork { unit, remaining: 0 })
        .collect();
    items.retain(|item| !written.contains(&item.id));
    for item in &items {
        units[item.unit].remaining += 1;
    }

    items
        .par_iter_mut()
        .for_each(|item| read_item(item, &settings.limits));
    decide(batch, ledger, settings.regrade, &mut items);

    // Records that need no call go first, so that they are written at once; then the larger
    // submissions, so that the batch does not end with one long call alone.
    items.sort_by_key(|item| {
        let graded = matches!(item.action, Action::Grade { .. });
        (graded, std::cmp::Reverse(item.bytes))
    });
    Ok(Survey { units, items })
}

fn is_zip(path: &Path) -> bool {
    let is_file = fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    is_file && extension.as_deref() == Some("zip")
}

fn unknown_info(id: &str, files: Vec<String>, bytes: u64, student: Student) -> SubmissionInfo {
    SubmissionInfo {
        id: id.to_string(),
        files,
        format: "unknown".into(),
        sha256: String::new(),
        bytes,
        student,
        original: None,
    }
}

/// The record of a plain entry: a file or folder, graded as it is.
fn plain_item(queue: &Queue, index: usize, unit: &Unit) -> Item {
    let dir = queue.claimed_dir(&unit.batch).join(&unit.id);
    let mut item = Item {
        id: unit.id.clone(),
        unit: index,
        identity: ledger::identity(None, &unit.name),
        sha256: String::new(),
        bytes: 0,
        original: unit.original(),
        identical_to: Vec::new(),
        flags: Vec::new(),
        loaded: None,
        action: Action::Grade {
            path: unit.path.clone(),
            student: None,
            naming: Naming {
                strip: format!("{}/", dir.display()),
                with: String::new(),
            },
        },
    };
    let is_link = fs::symlink_metadata(&unit.path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        let target = fs::read_link(&unit.path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        item.action = Action::Fail {
            kind: "link".into(),
            message: format!(
                "{}: is a symbolic link (to {target}); links are never followed",
                unit.name
            ),
            info: unknown_info(&unit.id, vec![unit.name.clone()], 0, Student::default()),
        };
    }
    item
}

/// The records of an LMS zip: one per student, one per superseded file, or one failure for
/// the whole zip when it cannot be unpacked.
fn zip_items(
    queue: &Queue,
    index: usize,
    unit: &Unit,
    settings: &Settings,
) -> Result<Vec<Item>, QueueError> {
    let dest = queue.unpacked_dir(&unit.batch).join(&unit.id);
    if dest.exists() {
        // Left by an interrupted run; unpacking again gives the same members.
        fs::remove_dir_all(&dest).map_err(|source| QueueError::Io {
            path: dest.clone(),
            action: "cannot remove",
            source,
        })?;
    }
    let zip_bytes = fs::metadata(&unit.path).map(|m| m.len()).unwrap_or(0);
    let base = |id: String, identity: String, action: Action| Item {
        id,
        unit: index,
        identity,
        sha256: String::new(),
        bytes: 0,
        original: unit.original(),
        identical_to: Vec::new(),
        flags: Vec::new(),
        loaded: None,
        action,
    };
    let expansion = match lms_zip::expand(&unit.path, &unit.name, &dest, &settings.zip) {
        Ok(expansion) => expansion,
        Err(error) => {
            tracing::warn!(zip = %unit.name, %error, "cannot unpack");
            let info = unknown_info(
                &unit.id,
                vec![unit.name.clone()],
                zip_bytes,
                Default::default(),
            );
            let action = Action::Fail {
                kind: error.kind().to_string(),
                message: error.to_string(),
                info,
            };
            return Ok(vec![base(unit.id.clone(), String::new(), action)]);
        }
    };
    for skipped in &expansion.skipped {
        tracing::warn!(zip = %unit.name, entry = %skipped.entry, reason = skipped.reason, "zip entry skipped");
    }

    let mut items = Vec::new();
    let mut id_of_label: HashMap<String, String> = HashMap::new();
    // Two labels may share a slug (`Ana.py`, `ana.py`); the later one gets a hash of its label.
    let mut taken: HashSet<String> = HashSet::new();
    let mut member_id = |name: &str| {
        let mut id = format!("{}{MEMBER_SEPARATOR}{}", unit.id, submission::slug(name));
        while !taken.insert(id.clone()) {
            id = format!("{id}-{}", short_hash(name));
        }
        id
    };
    let naming = Naming {
        strip: format!("{}/", dest.display()),
        with: format!("{}: ", unit.name),
    };
    for member in &expansion.members {
        let id = member_id(&member.label);
        id_of_label.insert(member.label.clone(), id.clone());
        let student = member.lms.as_ref().map(|l| l.student()).unwrap_or_default();
        let display = format!("{}/{}", unit.name, member.label);
        let identity = ledger::identity(student.lms_id.as_deref(), &display);
        let action = match &member.problem {
            Some((kind, message)) => Action::Fail {
                kind: kind.clone(),
                message: message.clone(),
                info: unknown_info(&id, member.entries.clone(), 0, student),
            },
            None => Action::Grade {
                path: member.path.clone(),
                student: Some(student),
                naming: naming.clone(),
            },
        };
        let mut item = base(id, identity, action);
        if !expansion.skipped.is_empty() {
            item.flags.push("zip_entries_skipped".into());
        }
        items.push(item);
    }
    for old in &expansion.superseded {
        let id = member_id(&old.entry);
        let by = RecordRef::new(&unit.batch, &id_of_label[&old.label]);
        let mut info = unknown_info(&id, vec![old.entry.clone()], old.bytes, old.lms.student());
        info.sha256 = old.sha256.clone();
        info.format = format_name(&old.entry);
        let identity = ledger::identity(Some(&old.lms.lms_id), &old.entry);
        items.push(base(id, identity, Action::Superseded { by, info }));
    }
    Ok(items)
}

fn format_name(file: &str) -> String {
    let extension = Path::new(file)
        .extension()
        .map(|e| e.to_string_lossy().into_owned());
    extension
        .and_then(|e| Format::from_extension(&e))
        .map_or("unknown", Format::as_str)
        .to_string()
}

/// Canvas files dropped loose in the inbox: of one student's resubmissions of a file, only the
/// newest is graded, even when it was graded earlier in this batch.
fn supersede_flat(claimed: &[Unit], archived: &[Unit], items: &mut [Item]) {
    let mut newest: BTreeMap<(String, String), (u32, u64, String, String)> = BTreeMap::new();
    for unit in claimed.iter().chain(archived) {
        if is_zip(&unit.path) {
            continue;
        }
        let Some(lms) = parse_lms_name(&unit.name) else {
            continue;
        };
        let (Some(original), Some(file_id)) = (&lms.original_name, &lms.file_id) else {
            continue;
        };
        let rank = (
            lms.resubmission.unwrap_or(0),
            file_id.parse().unwrap_or(0),
            unit.name.clone(),
            unit.id.clone(),
        );
        let slot = newest
            .entry((lms.lms_id.clone(), original.clone()))
            .or_insert_with(|| rank.clone());
        if rank > *slot {
            *slot = rank;
        }
    }
    for item in items.iter_mut() {
        let unit = &claimed[item.unit];
        if item.id != unit.id || !matches!(item.action, Action::Grade { .. }) {
            continue;
        }
        let Some(lms) = parse_lms_name(&unit.name) else {
            continue;
        };
        let Some(original) = &lms.original_name else {
            continue;
        };
        let Some((.., newest_id)) = newest.get(&(lms.lms_id.clone(), original.clone())) else {
            continue;
        };
        if *newest_id != unit.id {
            let (sha256, bytes) = hash_file(&unit.path);
            let mut info = unknown_info(&unit.id, vec![unit.name.clone()], bytes, lms.student());
            info.sha256 = sha256;
            info.format = format_name(&unit.name);
            item.action = Action::Superseded {
                by: RecordRef::new(&unit.batch, newest_id),
                info,
            };
        }
    }
}

fn hash_file(path: &Path) -> (String, u64) {
    let Ok(mut file) = fs::File::open(path) else {
        return (String::new(), 0);
    };
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).unwrap_or(0);
    (hex::encode(hasher.finalize()), bytes)
}

/// Reads a submission to be graded once, to learn its hash, size and submitter; what cannot be
/// read becomes a failure now.
fn read_item(item: &mut Item, limits: &LoadLimits) {
    let Action::Grade {
        path,
        student,
        naming,
    } = &item.action
    else {
        return;
    };
    match submission::load(path, limits) {
        Ok(loaded) => {
            let mut info = loaded.info();
            info.id = item.id.clone();
            if let Some(student) = student {
                info.student = student.clone();
            }
            item.sha256 = info.sha256.clone();
            item.bytes = info.bytes;
            if info.student.lms_id.is_some() {
                item.identity = ledger::identity(info.student.lms_id.as_deref(), "");
            }
            item.loaded = Some(info);
        }
        Err(error) => {
            let files = vec![
                path.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ];
            let bytes = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
            // The LMS name still says whose it is, even when the file cannot be read.
            let student = student
                .clone()
                .or_else(|| submission::parse_lms_name(&files[0]).map(|lms| lms.student()))
                .unwrap_or_default();
            let mut info = unknown_info(&item.id, files, bytes, student);
            if let Some(format) = Path::new(&info.files[0])
                .extension()
                .and_then(|ext| submission::Format::from_extension(&ext.to_string_lossy()))
            {
                info.format = format.as_str().into();
            }
            info.sha256 = file_sha256(path).unwrap_or_default();
            item.sha256 = info.sha256.clone();
            item.action = Action::Fail {
                kind: error.kind().to_string(),
                message: naming.apply(&error.to_string()),
                info,
            };
        }
    }
}

/// The SHA-256 of a regular file's bytes, read in a stream; `None` for anything else.
fn file_sha256(path: &Path) -> Option<String> {
    use sha2::Digest;
    if !fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

/// Marks duplicates and finds byte-identical work of other submitters.
fn decide(batch: &str, ledger: &Ledger, regrade: bool, items: &mut [Item]) {
    let mut first: HashMap<(String, String), RecordRef> = HashMap::new();
    let mut by_sha: HashMap<String, Vec<(String, RecordRef)>> = HashMap::new();
    for item in items.iter_mut() {
        if !matches!(item.action, Action::Grade { .. }) || item.sha256.is_empty() {
            continue;
        }
        let own = RecordRef::new(batch, &item.id);
        let key = (item.identity.clone(), item.sha256.clone());
        let earlier = if regrade {
            None
        } else {
            ledger
                .earlier(&item.identity, &item.sha256)
                .filter(|r| *r != own)
                .or_else(|| first.get(&key).cloned())
        };
        match earlier {
            Some(of) => {
                let info = item.loaded.clone().unwrap_or_default();
                item.action = Action::Duplicate { of, info };
            }
            None => {
                first.entry(key).or_insert_with(|| own.clone());
                by_sha
                    .entry(item.sha256.clone())
                    .or_default()
                    .push((item.identity.clone(), own));
            }
        }
    }

    for item in items.iter_mut() {
        if !matches!(item.action, Action::Grade { .. }) || item.sha256.is_empty() {
            continue;
        }
        let mut others: Vec<RecordRef> = by_sha[&item.sha256]
            .iter()
            .filter(|(identity, _)| *identity != item.identity)
            .map(|(_, r)| r.clone())
            .collect();
        others.extend(ledger.others(&item.identity, &item.sha256));
        others.sort();
        others.dedup();
        others.truncate(MAX_IDENTICAL);
        item.identical_to = others;
    }
}
