//! The durable queue between the inbox and the outbox.
//!
//! Every state change is a rename on one filesystem, so a crash at any instant leaves each
//! submission in exactly one place:
//!
//! ```text
//! inbox/NAME ─claim─▶ STATE/claimed/BATCH/NAME ─record written─▶ STATE/archive/BATCH/NAME
//!                                                  │
//!                                                  └─▶ outbox/BATCH/ID.json
//! ```
//!
//! A record is written to a temporary file in its destination folder, fsynced, renamed without
//! replacing an existing file, and the folder fsynced; only then is the original archived. Work
//! found in `claimed/` at start-up is resumed, and a record that already exists is never
//! written twice. A lock on the state folder keeps a second tandem out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::Paths;
use crate::record::ResultRecord;

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
        for dir in [&paths.inbox, &paths.outbox, &paths.state] {
            fs::create_dir_all(dir).map_err(io_err(dir, "cannot create folder"))?;
        }
        for sub in ["claimed", "archive"] {
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

    /// Where a batch's claimed entries wait.
    pub fn claimed_dir(&self, batch: &str) -> PathBuf {
        self.state.join("claimed").join(batch)
    }

    /// Where a batch's originals are kept once their records are written.
    pub fn archive_dir(&self, batch: &str) -> PathBuf {
        self.state.join("archive").join(batch)
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
        while self.batch_outbox(&id).exists() || self.claimed_dir(&id).exists() {
            id = format!("{stamp}-{n}");
            n += 1;
        }
        id
    }

    /// Claims an inbox entry for a batch by renaming it into the state folder.
    pub fn claim(&self, batch: &str, entry: &Path) -> Result<PathBuf, QueueError> {
        let dir = self.claimed_dir(batch);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        let name = entry.file_name().ok_or_else(|| QueueError::Io {
            path: entry.to_path_buf(),
            action: "cannot claim",
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let target = dir.join(name);
        rename_noreplace(entry, &target)?;
        sync_dir(&dir)?;
        if let Some(parent) = entry.parent() {
            sync_dir(parent)?;
        }
        Ok(target)
    }

    /// Batches with claimed entries left by an earlier run, oldest first.
    pub fn unfinished_batches(&self) -> Result<Vec<String>, QueueError> {
        let root = self.state.join("claimed");
        let mut batches = Vec::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root, "cannot list"))? {
            let entry = entry.map_err(io_err(&root, "cannot list"))?;
            let path = entry.path();
            if path.is_dir() {
                let has_work = fs::read_dir(&path)
                    .map_err(io_err(&path, "cannot list"))?
                    .next()
                    .is_some();
                if has_work {
                    batches.push(entry.file_name().to_string_lossy().into_owned());
                } else {
                    let _ = fs::remove_dir(&path);
                }
            }
        }
        batches.sort();
        Ok(batches)
    }

    /// The entries still claimed for a batch, by name.
    pub fn claimed_entries(&self, batch: &str) -> Result<Vec<PathBuf>, QueueError> {
        list_sorted(&self.claimed_dir(batch))
    }

    /// Names of every entry a batch has held, claimed or archived, for stable submission ids.
    pub fn batch_entry_names(&self, batch: &str) -> Result<Vec<String>, QueueError> {
        let mut names = Vec::new();
        for dir in [self.claimed_dir(batch), self.archive_dir(batch)] {
            for path in list_sorted(&dir)? {
                if let Some(name) = path.file_name() {
                    names.push(name.to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether a record for this submission id already exists in the batch's outbox.
    pub fn has_record(&self, batch: &str, id: &str) -> bool {
        self.batch_outbox(batch).join(format!("{id}.json")).exists()
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

    /// Moves a claimed entry to the archive once all its records are written.
    pub fn archive(&self, batch: &str, claimed: &Path) -> Result<PathBuf, QueueError> {
        let dir = self.archive_dir(batch);
        fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create folder"))?;
        let name = claimed.file_name().unwrap_or_default();
        let target = dir.join(name);
        rename_noreplace(claimed, &target)?;
        sync_dir(&dir)?;
        sync_dir(&self.claimed_dir(batch))?;
        Ok(target)
    }

    /// Every record of a batch, read back from the outbox.
    pub fn read_records(&self, batch: &str) -> Result<Vec<ResultRecord>, QueueError> {
        read_records(&self.batch_outbox(batch))
    }
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_name(path);
    let mut file = File::create(&tmp).map_err(io_err(&tmp, "cannot create"))?;
    file.write_all(bytes)
        .map_err(io_err(&tmp, "cannot write"))?;
    // An fsync error means the write is lost; it is not retried (see "fsyncgate").
    file.sync_all().map_err(io_err(&tmp, "cannot fsync"))?;
    drop(file);
    let renamed = rename_noreplace(&tmp, path);
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed?;
    sync_dir(dir)
}

/// Writes a file atomically, replacing any earlier version (for reports, not records).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), QueueError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir, "cannot create folder"))?;
    let tmp = temp_name(path);
    let mut file = File::create(&tmp).map_err(io_err(&tmp, "cannot create"))?;
    file.write_all(bytes)
        .map_err(io_err(&tmp, "cannot write"))?;
    file.sync_all().map_err(io_err(&tmp, "cannot fsync"))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path, "cannot rename into place"))?;
    sync_dir(dir)
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
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
    fn claiming_moves_the_entry_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let entry = queue.inbox.join("a.py");
        fs::write(&entry, "print(1)").unwrap();
        let claimed = queue.claim("b1", &entry).unwrap();
        assert!(!entry.exists());
        assert_eq!(fs::read_to_string(&claimed).unwrap(), "print(1)");

        fs::write(&entry, "print(2)").unwrap();
        let again = queue.claim("b1", &entry).unwrap_err();
        assert!(matches!(again, QueueError::Exists { .. }));
        assert_eq!(fs::read_to_string(&claimed).unwrap(), "print(1)");
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
    fn unfinished_batches_are_those_with_claimed_entries() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(&paths(dir.path())).unwrap();
        let entry = queue.inbox.join("x.sql");
        fs::write(&entry, "select 1;").unwrap();
        queue.claim("2026-01-01T00-00-00", &entry).unwrap();
        fs::create_dir_all(queue.claimed_dir("empty-batch")).unwrap();
        assert_eq!(
            queue.unfinished_batches().unwrap(),
            vec!["2026-01-01T00-00-00"]
        );
    }
}
