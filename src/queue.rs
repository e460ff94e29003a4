//! The durable queue between the inbox and the outbox.
//!
//! Every state change is a rename on one filesystem, so a crash at any instant leaves each
//! submission in exactly one place:
//!
//! ```text
//! inbox/NAME ─claim─▶ STATE/claimed/BATCH/ID/NAME ─records written─▶ STATE/archive/BATCH/ID/NAME
//!                                   │
//!                                   └─▶ outbox/BATCH/ID.json (or one per student of an LMS zip)
//! ```
//!
//! A claimed entry is a *unit*: its id is fixed at the claim as the name of its folder, so a
//! resumed batch writes the same record ids. A record is written to a temporary file in its
//! destination folder, fsynced, renamed without replacing an existing file, and the folder
//! fsynced; only when all of a unit's records exist is the unit archived. A batch stays
//! unfinished (its `claimed/BATCH/` folder exists) until its reports are written, so work found
//! there at start-up is resumed, records already written are never written again, and temporary
//! files a crash left behind are removed. A lock on the state folder keeps a second tandem out.
//!
//! [`ledger`] remembers what was graded under which grading configuration; [`survey`] decides,
//! for each unit of a batch, which records it yields and what becomes of each.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub mod ledger;
pub mod survey;

use crate::config::Paths;
use crate::record::ResultRecord;
use crate::submission;

/// A queue operation that failed, naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{first} and {second} are on different filesystems; the inbox, outbox and state folder \
         must share one so that moves are atomic renames"
    )]
    CrossDevice { first: PathBuf, second: PathBuf },
    #[error("{path} is locked by another tandem (pid {pid}); wait for it or stop it")]
    Locked { path: PathBuf, pid: String },
    #[error("{path} already exists; it was not replaced")]
    Exists { path: PathBuf },
    #[error(
        "{inner} is inside the inbox {inbox}; tandem would take it for a submission. Put the \
         outbox, reports and state folder beside the inbox"
    )]
    InsideInbox { inner: PathBuf, inbox: PathBuf },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> QueueError {
    let path = path.to_path_buf();
    move |source| QueueError::Io {
        path,
        action,
        source,
    }
}

/// The queue's folders, held open under a lock for the life of the value.
#[derive(Debug)]
pub struct Queue {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub state: PathBuf,
    _lock: File,
}

impl Queue {
    /// Creates the folders if needed, takes the lock, and checks that all share one filesystem.
    pub fn open(paths: &Paths) -> Result<Queue, QueueError> {
        // The reports are written last; a folder that cannot take them must stop the batch
        // before any work, not after a night of grading. It is checked first, so that a refusal
        // leaves nothing behind.
        for dir in [&paths.reports, &paths.inbox, &paths.outbox, &paths.state] {
            fs::create_dir_all(dir).map_err(io_err(dir, "cannot create folder"))?;
            if dir == &paths.reports || dir == &paths.outbox {
                let probe = dir.join(format!(".tandem-write-check.{}", std::process::id()));
                fs::write(&probe, b"").map_err(io_err(dir, "cannot write in folder"))?;
                let _ = fs::remove_file(&probe);
            }
        }
        let inbox = paths
            .inbox
            .canonicalize()
            .map_err(io_err(&paths.inbox, "cannot resolve"))?;
        for inner in [&paths.outbox, &paths.state, &paths.reports] {
            let resolved = inner.canonicalize().unwrap_or_else(|_| inner.clone());
            if resolved.starts_with(&inbox) {
                return Err(QueueError::InsideInbox {
                    inner: inner.clone(),
                    inbox: paths.inbox.clone(),
                });
            }
        }
        for sub in ["claimed", "archive", "unpacked", "ledger"] {
            let dir = paths.state.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        }
        let device = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.dev())
                .map_err(io_err(p, "cannot read metadata"))
        };
        let state_dev = device(&paths.state)?;
        for dir in [&paths.inbox, &paths.outbox] {
            if device(dir)? != state_dev {
                return Err(QueueError::CrossDevice {
                    first: dir.clone(),
                    second: paths.state.clone(),
                });
            }
        }

        let lock_path = paths.state.join("lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "cannot open lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(QueueError::Locked {
                    path: paths.state.clone(),
                    pid: pid.trim().to_string(),
                });
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(QueueError::Io {
                    path: lock_path,
                    action: "cannot lock",
                    source,
                });
            }
        }
        lock.set_len(0)
            .map_err(io_err(&lock_path, "cannot write lock file"))?;
        write!(lock, "{}", std::process::id())
            .map_err(io_err(&lock_path, "cannot write lock file"))?;

        Ok(Queue {
            inbox: paths.inbox.clone(),
            outbox: paths.outbox.clone(),
            state: paths.state.clone(),
            _lock: lock,
        })
    }

    /// Where a batch's claimed units wait, one folder each.
    pub fn claimed_dir(&self, batch: &str) -> PathBuf {
        self.state.join("claimed").join(batch)
    }

    /// Where a batch's originals are kept once their records are written.
    pub fn archive_dir(&self, batch: &str) -> PathBuf {
        self.state.join("archive").join(batch)
    }

    /// Where a batch's LMS zips are unpacked while their students are graded.
    pub fn unpacked_dir(&self, batch: &str) -> PathBuf {
        self.state.join("unpacked").join(batch)
    }

    /// Where a batch's records go.
    pub fn batch_outbox(&self, batch: &str) -> PathBuf {
        self.outbox.join(batch)
    }

    /// A new batch name from the local time, unused in the outbox and the state folder.
    pub fn new_batch_id(&self) -> String {
        let stamp = chrono::Local::now().format("%Y-%m-%dT%H-%M-%S").to_string();
        let mut id = stamp.clone();
        let mut n = 2;
        while self.batch_outbox(&id).exists()
            || self.claimed_dir(&id).exists()
            || self.archive_dir(&id).exists()
        {
            id = format!("{stamp}-{n}");
            n += 1;
        }
        id
    }

    /// Opens a batch: creates its claimed folder, which marks it unfinished until
    /// [`Queue::finish_batch`].
    pub fn open_batch(&self, batch: &str) -> Result<(), QueueError> {
        let dir = self.claimed_dir(batch);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        sync_dir(&self.state.join("claimed"))
    }

    /// Claims an inbox entry for a batch: gives it an id unused in the batch, creates
    /// `claimed/BATCH/ID/`, and renames the entry into it without replacing anything.
    ///
    /// The id is the folder's name, so it is fixed from the claim on and a resumed batch gives
    /// the entry the same record. A crash between the two steps leaves an empty folder, which
    /// [`Queue::claimed_units`] removes; the entry is still in the inbox. The claim survives a
    /// power cut once [`Queue::sync_claims`] has returned, which must happen before the entry
    /// is graded.
    pub fn claim(&self, batch: &str, entry: &Path) -> Result<Unit, QueueError> {
        let name = entry.file_name().ok_or_else(|| QueueError::Io {
            path: entry.to_path_buf(),
            action: "cannot claim",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let display = name.to_string_lossy().into_owned();
        let batch_dir = self.claimed_dir(batch);
        fs::create_dir_all(&batch_dir).map_err(io_err(&batch_dir, "cannot create folder"))?;

        let slug = submission::slug(&display);
        let mut attempt = 0u32;
        let (id, dir) = loop {
            let id = match attempt {
                0 => slug.clone(),
                n => format!("{slug}-{}", short_hash(&format!("{display}\0{n}"))),
            };
            attempt += 1;
            let dir = batch_dir.join(&id);
            if self.archive_dir(batch).join(&id).exists() || self.has_record(batch, &id) {
                continue;
            }
            match fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&dir, "cannot create folder")(e)),
            }
        };
        let target = dir.join(name);
        if let Err(error) = rename_noreplace(entry, &target) {
            let _ = fs::remove_dir(&dir);
            return Err(error);
        }
        Ok(Unit {
            batch: batch.to_string(),
            id,
            name: display,
            path: target,
        })
    }

    /// Makes every claim so far survive a power cut, with one `syncfs` of the state folder's
    /// filesystem instead of three folder fsyncs per claim.
    ///
    /// A claim lost in a power cut after its record was written would put the entry back in
    /// the inbox beside its record, to be graded twice; claims are therefore synced before the
    /// batch that holds them is graded.
    pub fn sync_claims(&self) -> Result<(), QueueError> {
        sync_filesystem(&self.state)
    }

    /// Batches left unfinished by an earlier run (claimed folder still present), oldest first.
    pub fn unfinished_batches(&self) -> Result<Vec<String>, QueueError> {
        let root = self.state.join("claimed");
        let mut batches = Vec::new();
        for path in list_sorted(&root)? {
            if path.is_dir() {
                batches.push(
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        Ok(batches)
    }

    /// The units still claimed for a batch, by id. A unit folder left empty by a crash during
    /// its claim is removed.
    pub fn claimed_units(&self, batch: &str) -> Result<Vec<Unit>, QueueError> {
        self.units_in(batch, &self.claimed_dir(batch), true)
    }

    /// The units of a batch already archived, by id.
    pub fn archived_units(&self, batch: &str) -> Result<Vec<Unit>, QueueError> {
        self.units_in(batch, &self.archive_dir(batch), false)
    }

    fn units_in(&self, batch: &str, root: &Path, tidy: bool) -> Result<Vec<Unit>, QueueError> {
        let mut units = Vec::new();
        for dir in list_sorted(root)? {
            let id = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let inside = list_sorted(&dir)?;
            match inside.as_slice() {
                [] if tidy => {
                    fs::remove_dir(&dir).map_err(io_err(&dir, "cannot remove empty claim"))?;
                }
                [path] => units.push(Unit {
                    batch: batch.to_string(),
                    id,
                    name: path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    path: path.clone(),
                }),
                _ => tracing::warn!(dir = %dir.display(), "unexpected contents; left alone"),
            }
        }
        Ok(units)
    }

    /// Whether a record for this submission id already exists in the batch's outbox.
    pub fn has_record(&self, batch: &str, id: &str) -> bool {
        self.batch_outbox(batch).join(format!("{id}.json")).exists()
    }

    /// The ids of the records already in a batch's outbox folder.
    pub fn record_ids(&self, batch: &str) -> Result<Vec<String>, QueueError> {
        Ok(list_sorted(&self.batch_outbox(batch))?
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?.to_string();
                let id = name.strip_suffix(".json")?;
                (!name.starts_with('.')).then(|| id.to_string())
            })
            .collect())
    }

    /// Writes a record durably; an existing record is never replaced.
    pub fn write_record(&self, record: &ResultRecord) -> Result<PathBuf, QueueError> {
        let dir = self.batch_outbox(&record.batch);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        let path = dir.join(format!("{}.json", record.submission.id));
        let mut json = serde_json::to_vec_pretty(record).expect("records always serialise");
        json.push(b'\n');
        write_new_file(&path, &json)?;
        Ok(path)
    }

    /// Moves a claimed unit to the archive once all its records are written, and removes what
    /// was unpacked from it.
    ///
    /// The move is not fsynced: the unit's records already are, and a move lost in a power cut
    /// leaves the unit claimed with its records written, which the resumed batch archives.
    pub fn archive(&self, unit: &Unit) -> Result<PathBuf, QueueError> {
        let dir = self.archive_dir(&unit.batch);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        let from = self.claimed_dir(&unit.batch).join(&unit.id);
        let target = dir.join(&unit.id);
        rename_noreplace(&from, &target)?;
        let unpacked = self.unpacked_dir(&unit.batch).join(&unit.id);
        if unpacked.exists() {
            fs::remove_dir_all(&unpacked).map_err(io_err(&unpacked, "cannot remove"))?;
        }
        Ok(target.join(&unit.name))
    }

    /// Removes leftovers of writes a crash interrupted: temporary files in the batch's outbox
    /// and report folders. Only the lock holder writes there, so none is in use.
    pub fn remove_temporaries(&self, batch: &str, reports: &Path) -> Result<(), QueueError> {
        for dir in [self.batch_outbox(batch), reports.join(batch)] {
            for path in list_sorted(&dir)? {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    tracing::debug!(path = %path.display(), "removing an interrupted write");
                    fs::remove_file(&path).map_err(io_err(&path, "cannot remove"))?;
                }
            }
        }
        Ok(())
    }

    /// Marks a batch finished once its reports are written: removes its (empty) claimed folder
    /// and anything left unpacked.
    pub fn finish_batch(&self, batch: &str) -> Result<(), QueueError> {
        // The archive moves were not fsynced one by one; they must be durable before the batch
        // stops looking unfinished.
        sync_filesystem(&self.state)?;
        let unpacked = self.unpacked_dir(batch);
        if unpacked.exists() {
            fs::remove_dir_all(&unpacked).map_err(io_err(&unpacked, "cannot remove"))?;
        }
        let dir = self.claimed_dir(batch);
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir, "cannot remove finished batch")(e)),
        }
        sync_dir(&self.state.join("claimed"))
    }

    /// Every record of a batch, read back from the outbox.
    pub fn read_records(&self, batch: &str) -> Result<Vec<ResultRecord>, QueueError> {
        read_records(&self.batch_outbox(batch))
    }
}

/// One inbox entry as claimed: a file or folder (or an LMS zip of many students) in
/// `claimed/BATCH/ID/`, and later in `archive/BATCH/ID/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The batch it was claimed for.
    pub batch: String,
    /// Unique in the batch; the record id of a plain entry.
    pub id: String,
    /// The entry's name as it was dropped in the inbox.
    pub name: String,
    /// Where the entry is now.
    pub path: PathBuf,
}

impl Unit {
    /// Where the original is kept once archived, relative to the state folder.
    pub fn original(&self) -> String {
        format!("archive/{}/{}/{}", self.batch, self.id, self.name)
    }
}

/// Joins an LMS zip's unit id and a member's label into the member's record id. Slugs never
/// hold two `-` in a row, so no claimed entry's id can take the shape of a member's.
pub const MEMBER_SEPARATOR: &str = "--";

/// The first eight hex digits of the SHA-256 of some text.
pub fn short_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..8].to_string()
}

/// Every record in an outbox batch folder, in file-name order. Temporary files are skipped.
pub fn read_records(dir: &Path) -> Result<Vec<ResultRecord>, QueueError> {
    let mut records = Vec::new();
    for path in list_sorted(dir)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let bytes = fs::read(&path).map_err(io_err(&path, "cannot read record"))?;
        let record: ResultRecord = serde_json::from_slice(&bytes).map_err(|e| QueueError::Io {
            path: path.clone(),
            action: "cannot parse record",
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        records.push(record);
    }
    Ok(records)
}

fn list_sorted(dir: &Path) -> Result<Vec<PathBuf>, QueueError> {
    let mut paths = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                paths.push(entry.map_err(io_err(dir, "cannot list"))?.path());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir, "cannot list")(e)),
    }
    paths.sort();
    Ok(paths)
}

/// Writes a new file atomically and durably: temporary file in the same folder, fsync, rename
/// without replacing, fsync of the folder.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let tmp = write_synced_temp(path, bytes)?;
    let renamed = rename_noreplace(&tmp, path);
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    sync_dir(parent_dir(path))
}

/// Writes a file atomically, replacing any earlier version (for reports, not records): readers
/// see the old file or the new one, never a mix, and the swap survives a power cut.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let tmp = write_synced_temp(path, bytes)?;
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path, "cannot rename into place")(source));
    }
    sync_dir(parent_dir(path))
}

/// Writes `bytes` to a fresh temporary file beside `path` and fsyncs it. An fsync error means
/// the write is lost; it is never retried (see "fsyncgate").
fn write_synced_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, QueueError> {
    let tmp = temp_name(path);
    let written = File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .map_err(io_err(&tmp, "cannot write"));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| tmp)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A temporary name beside `path`, unique within this process and among processes.
fn temp_name(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes a file by renaming a temporary file over it, without any fsync: a reader never sees
/// half of it, but a power cut may leave the old version, or an empty or partial file. Only for
/// files whose loss costs nothing but work, such as ledger entries.
pub fn replace_file_unsynced(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir, "cannot create folder"))?;
    let tmp = temp_name(path);
    fs::write(&tmp, bytes).map_err(io_err(&tmp, "cannot write"))?;
    fs::rename(&tmp, path).map_err(io_err(path, "cannot rename into place"))
}

/// Flushes everything written to the filesystem holding `path` (Linux `syncfs`).
pub fn sync_filesystem(path: &Path) -> Result<(), QueueError> {
    use std::os::fd::AsRawFd;

    let dir = File::open(path).map_err(io_err(path, "cannot open"))?;
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io_err(path, "cannot sync filesystem")(
            io::Error::last_os_error(),
        ))
    }
}

/// Fsyncs a folder so that renames into and out of it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "cannot fsync folder"))
}

/// Renames `from` to `to`, failing instead of replacing an existing `to`.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), QueueError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let c_from = CString::new(from.as_os_str().as_bytes()).map_err(|_| QueueError::Io {
        path: from.to_path_buf(),
        action: "cannot rename",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"),
    })?;
    let c_to = CString::new(to.as_os_str().as_bytes()).map_err(|_| QueueError::Io {
        path: to.to_path_buf(),
        action: "cannot rename",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"),
    })?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EEXIST) => Err(QueueError::Exists {
            path: to.to_path_buf(),
        }),
        // Filesystems without RENAME_NOREPLACE: check, then rename. Only one tandem holds the
        // state lock, so nothing else races for the target.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            if to.symlink_metadata().is_ok() {
                return Err(QueueError::Exists {
                    path: to.to_path_buf(),
                });
            }
            fs::rename(from, to).map_err(io_err(from, "cannot rename"))
        }
        _ => Err(QueueError::Io {
            path: from.to_path_buf(),
            action: "cannot rename",
            source: err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> Paths {
        Paths {
            inbox: root.join("inbox"),
            outbox: root.join("outbox"),
            reports: root.join("reports"),
            state: root.join(".tandem"),
        }
    }

    #[test]
    fn a_second_queue_on_the_same_state_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Queue::open(&paths(dir.path())).unwrap();
        let second = Queue::open(&paths(dir.path())).unwrap_err();
        assert!(matches!(second, QueueError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("locked by another tandem"));
    }

    #[test]
    fn claiming_moves_the_entry_into_a_folder_named_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let entry = queue.inbox.join("Ana María.py");
        fs::write(&entry, "print(1)").unwrap();
        let unit = queue.claim("b1", &entry).unwrap();
        assert!(!entry.exists());
        assert_eq!(unit.id, "ana-maria.py");
        assert_eq!(
            unit.path,
            queue.claimed_dir("b1").join("ana-maria.py/Ana María.py")
        );
        assert_eq!(fs::read_to_string(&unit.path).unwrap(), "print(1)");
        assert_eq!(unit.original(), "archive/b1/ana-maria.py/Ana María.py");
    }

    #[test]
    fn an_entry_dropped_again_into_the_same_batch_gets_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let entry = queue.inbox.join("a.py");
        fs::write(&entry, "print(1)").unwrap();
        let first = queue.claim("b1", &entry).unwrap();
        fs::write(&entry, "print(2)").unwrap();
        let second = queue.claim("b1", &entry).unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(fs::read_to_string(&first.path).unwrap(), "print(1)");
        assert_eq!(fs::read_to_string(&second.path).unwrap(), "print(2)");
        assert!(!second.id.contains(MEMBER_SEPARATOR));
    }

    #[test]
    fn an_outbox_inside_the_inbox_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut nested = paths(dir.path());
        nested.outbox = nested.inbox.join("outbox");
        let error = Queue::open(&nested).unwrap_err();
        assert!(matches!(error, QueueError::InsideInbox { .. }), "{error}");
        assert!(error.to_string().contains("inside the inbox"));
    }

    #[test]
    fn new_files_are_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write_new_file(&path, b"first").unwrap();
        assert!(matches!(
            write_new_file(&path, b"second"),
            Err(QueueError::Exists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_batch_stays_unfinished_until_it_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let entry = queue.inbox.join("x.sql");
        fs::write(&entry, "select 1;").unwrap();
        let unit = queue.claim("2026-01-01T00-00-00", &entry).unwrap();
        queue.open_batch("2026-01-02T00-00-00").unwrap();
        assert_eq!(
            queue.unfinished_batches().unwrap(),
            vec!["2026-01-01T00-00-00", "2026-01-02T00-00-00"]
        );

        let archived = queue.archive(&unit).unwrap();
        assert_eq!(fs::read_to_string(archived).unwrap(), "select 1;");
        assert_eq!(
            queue.unfinished_batches().unwrap().len(),
            2,
            "reports not yet written"
        );
        queue.finish_batch("2026-01-01T00-00-00").unwrap();
        queue.finish_batch("2026-01-02T00-00-00").unwrap();
        assert!(queue.unfinished_batches().unwrap().is_empty());
    }

    #[test]
    fn a_claim_interrupted_before_its_rename_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        fs::create_dir_all(queue.claimed_dir("b1").join("half-claimed.py")).unwrap();
        assert!(queue.claimed_units("b1").unwrap().is_empty());
        assert!(!queue.claimed_dir("b1").join("half-claimed.py").exists());
    }

    #[test]
    fn interrupted_writes_are_removed_and_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let outbox = queue.batch_outbox("b1");
        fs::create_dir_all(&outbox).unwrap();
        fs::write(outbox.join(".a.json.123.tmp"), "{").unwrap();
        fs::write(outbox.join("b.json"), "{}").unwrap();
        queue
            .remove_temporaries("b1", &dir.path().join("reports"))
            .unwrap();
        let left: Vec<String> = fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["b.json"]);
    }
}
