//! The inbox: which of its entries are work, and which are ready to be taken.
//!
//! An entry is a file, a folder (one student's files) or an LMS bulk-download zip (one
//! submission per student, see [`lms_zip`]) directly inside the inbox. Dotfiles and the
//! temporaries of editors and downloads are never work. An entry is ready once its size and
//! modification time have held over the settle time and it is whole: its notebooks parse and its
//! zips have their central directory ([`Watchlist`]). A file still being copied is left for a
//! later look. Listing keeps only small metadata per entry, so an inbox of thousands is cheap to
//! scan again and again.

pub mod lms_zip;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Suffixes of files that are still being written or are editors' leftovers.
const TEMPORARY_SUFFIXES: &[&str] = &[
    "~",
    ".swp",
    ".swo",
    ".swx",
    ".part",
    ".crdownload",
    ".tmp",
    ".download",
    ".partial",
];

/// Whether a name can never be work: dotfiles, editor and download temporaries.
pub fn is_ignored(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.starts_with(".#")
        || name == "4913"
        || TEMPORARY_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// An inbox entry found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub name: String,
    /// Total bytes (of every file, for a folder).
    pub bytes: u64,
    /// The newest modification time inside the entry.
    pub modified: Option<SystemTime>,
    /// The entry is a symbolic link (never followed).
    pub is_link: bool,
}

/// Lists the inbox's candidate entries, largest first.
pub fn list(inbox: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for item in fs::read_dir(inbox)? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if is_ignored(&name) {
            tracing::debug!(%name, "skipped: dotfile or temporary");
            continue;
        }
        let path = item.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Taken or removed since the folder was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let (bytes, modified) = if meta.is_dir() {
            measure_folder(&path)
        } else {
            (meta.len(), meta.modified().ok())
        };
        entries.push(Entry {
            path,
            name,
            bytes,
            modified,
            is_link: meta.file_type().is_symlink(),
        });
    }
    sort_largest_first(&mut entries);
    Ok(entries)
}

fn measure_folder(dir: &Path) -> (u64, Option<SystemTime>) {
    let mut bytes = 0;
    let mut newest = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok();
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if let Ok(meta) = item.metadata() {
            if meta.is_file() {
                bytes += meta.len();
            }
            if let Ok(m) = meta.modified() {
                newest = newest.max(Some(m));
            }
        }
    }
    (bytes, newest)
}

/// How long a notebook, zip or folder that does not parse must hold still, as a multiple of the
/// settle time, before it is taken anyway (to fail with a record saying what is wrong).
pub const UNPARSED_GRACE_FACTOR: u32 = 5;

/// What is known of an entry since its size or modification time last changed.
#[derive(Debug)]
struct Seen {
    entry: Entry,
    /// When the entry was first seen as it is now.
    since: Instant,
    /// Whether its notebooks and zips parse, once checked for this size and time.
    complete: Option<bool>,
}

/// The inbox entries seen so far and how long each has held still: decides when one is ready.
///
/// An entry is ready once its size and modification time have held over the settle time and
/// it is complete: every notebook in it parses as JSON and every zip has its central directory.
/// A half-written notebook usually does not parse, so it waits even when its writer pauses;
/// one that still does not parse after [`UNPARSED_GRACE_FACTOR`] settle times is broken, not
/// in transit, and is taken so that its failure record says so.
#[derive(Debug)]
pub struct Watchlist {
    seen: HashMap<PathBuf, Seen>,
    settle: Duration,
    grace: Duration,
    /// Files larger than this are not parsed (they fail on size whatever they hold).
    parse_limit: u64,
}

impl Watchlist {
    /// An empty watchlist with the configured settle time and file size limit.
    pub fn new(settle: Duration, parse_limit: u64) -> Watchlist {
        Watchlist {
            seen: HashMap::new(),
            settle,
            grace: settle * UNPARSED_GRACE_FACTOR,
            parse_limit,
        }
    }

    /// Takes in a fresh listing of the inbox; entries no longer listed are forgotten.
    pub fn observe(&mut self, entries: Vec<Entry>, now: Instant) {
        let mut next = HashMap::with_capacity(entries.len());
        for entry in entries {
            let seen = match self.seen.remove(&entry.path) {
                Some(old)
                    if old.entry.bytes == entry.bytes && old.entry.modified == entry.modified =>
                {
                    Seen { entry, ..old }
                }
                _ => Seen {
                    entry,
                    since: now,
                    complete: None,
                },
            };
            next.insert(seen.entry.path.clone(), seen);
        }
        self.seen = next;
    }

    /// The entries ready to be claimed, largest first; they are forgotten once returned.
    pub fn take_ready(&mut self, now: Instant) -> Vec<Entry> {
        let mut ready = Vec::new();
        for (path, seen) in &mut self.seen {
            let held = now.saturating_duration_since(seen.since);
            if held < self.settle {
                continue;
            }
            let complete = *seen
                .complete
                .get_or_insert_with(|| is_complete(&seen.entry, self.parse_limit));
            if complete || held >= self.grace {
                if !complete {
                    tracing::debug!(name = %seen.entry.name, "taken although it does not parse");
                }
                ready.push(path.clone());
            } else {
                tracing::debug!(name = %seen.entry.name, "not taken yet: does not parse yet");
            }
        }
        let mut entries: Vec<Entry> = ready
            .into_iter()
            .filter_map(|path| self.seen.remove(&path).map(|s| s.entry))
            .collect();
        sort_largest_first(&mut entries);
        entries
    }

    /// When the next waiting entry may become ready, if any is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.seen
            .values()
            .map(|s| match s.complete {
                Some(false) => s.since + self.grace,
                _ => s.since + self.settle,
            })
            .min()
    }

    /// How many entries are waiting to become ready.
    pub fn waiting(&self) -> usize {
        self.seen.len()
    }
}

/// Whether an entry's notebooks and zips are whole: a notebook parses as JSON, a zip has its
/// central directory. Other files are complete once they hold still.
fn is_complete(entry: &Entry, parse_limit: u64) -> bool {
    if entry.is_link {
        return true;
    }
    let Ok(meta) = fs::symlink_metadata(&entry.path) else {
        return true;
    };
    if meta.is_dir() {
        return walkdir::WalkDir::new(&entry.path)
            .follow_links(false)
            .into_iter()
            .flatten()
            .filter(|item| item.file_type().is_file())
            .all(|item| file_is_complete(item.path(), parse_limit));
    }
    file_is_complete(&entry.path, parse_limit)
}

fn file_is_complete(path: &Path, parse_limit: u64) -> bool {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let Ok(file) = fs::File::open(path) else {
        return true;
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    match extension.as_str() {
        "ipynb" if size <= parse_limit => {
            let reader = std::io::BufReader::new(file);
            serde_json::from_reader::<_, serde::de::IgnoredAny>(reader).is_ok()
        }
        "zip" => ::zip::ZipArchive::new(file).is_ok(),
        _ => true,
    }
}

fn sort_largest_first(entries: &mut [Entry]) {
    entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
}

/// The entries ready now, for a one-shot run: looks, waits the settle time, and looks again.
///
/// What changed in between is still being written and is left for a later run. Entries that
/// held still but do not parse yet are given the rest of their grace period.
pub async fn stable_entries(
    inbox: &Path,
    settle: Duration,
    parse_limit: u64,
) -> std::io::Result<Vec<Entry>> {
    let mut watchlist = Watchlist::new(settle, parse_limit);
    watchlist.observe(list(inbox)?, Instant::now());
    if watchlist.waiting() == 0 {
        return Ok(Vec::new());
    }
    tokio::time::sleep(settle).await;
    watchlist.observe(list(inbox)?, Instant::now());
    let mut ready = watchlist.take_ready(Instant::now());

    let grace = watchlist.grace;
    let unparsed_deadline = watchlist
        .seen
        .values()
        .filter(|s| s.complete == Some(false))
        .map(|s| s.since + grace)
        .max();
    if let Some(deadline) = unparsed_deadline {
        tokio::time::sleep_until(deadline.into()).await;
        watchlist.observe(list(inbox)?, Instant::now());
        ready.extend(watchlist.take_ready(Instant::now()));
    }
    for seen in watchlist.seen.values() {
        tracing::debug!(name = %seen.entry.name, "not taken yet: still changing");
    }
    sort_largest_first(&mut ready);
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_and_dotfiles_are_never_work() {
        for name in [
            ".DS_Store",
            "a.py~",
            ".a.py.swp",
            "x.ipynb.part",
            "y.crdownload",
            "z.tmp",
            "4913",
        ] {
            assert!(is_ignored(name), "{name}");
        }
        for name in ["analysis.py", "smithjane_123_456_hw.ipynb", "report.md"] {
            assert!(!is_ignored(name), "{name}");
        }
    }

    #[tokio::test]
    async fn lists_largest_first_and_skips_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("small.py"), "x").unwrap();
        fs::write(dir.path().join("big.py"), "x".repeat(100)).unwrap();
        fs::write(dir.path().join("big.py.part"), "x".repeat(1000)).unwrap();
        fs::create_dir(dir.path().join("folder")).unwrap();
        fs::write(dir.path().join("folder/a.R"), "y".repeat(50)).unwrap();
        let names: Vec<String> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["big.py", "folder", "small.py"]);
    }

    #[tokio::test]
    async fn a_file_still_growing_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let growing = dir.path().join("growing.py");
        fs::write(&growing, "a").unwrap();
        fs::write(dir.path().join("done.py"), "b").unwrap();
        let writer = {
            let growing = growing.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    let mut text = fs::read_to_string(&growing).unwrap();
                    text.push('a');
                    fs::write(&growing, text).unwrap();
                }
            })
        };
        let stable = stable_entries(dir.path(), Duration::from_millis(150), 1 << 20)
            .await
            .unwrap();
        writer.await.unwrap();
        let names: Vec<&str> = stable.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["done.py"]);
    }
}
