//! The inbox: which of its entries are work, and which are ready to be taken.
//!
//! An entry is a file or a folder directly inside the inbox. Dotfiles and the temporaries of
//! editors and downloads are never work. An entry is ready once its size and modification time
//! have held over the settle time, so a file still being copied is left for a later look.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

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
        let meta = fs::symlink_metadata(&path)?;
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
    entries.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
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

/// Entries whose size and modification time held over `settle`; the rest are left in place.
///
/// Looks once, waits `settle`, and looks again: what changed in between is still being written.
pub async fn stable_entries(inbox: &Path, settle: Duration) -> std::io::Result<Vec<Entry>> {
    let first = list(inbox)?;
    if settle.is_zero() || first.is_empty() {
        return Ok(first);
    }
    tokio::time::sleep(settle).await;
    let before: HashMap<PathBuf, (u64, Option<SystemTime>)> = first
        .into_iter()
        .map(|e| (e.path, (e.bytes, e.modified)))
        .collect();
    let mut stable = Vec::new();
    for entry in list(inbox)? {
        match before.get(&entry.path) {
            Some(&(bytes, modified)) if bytes == entry.bytes && modified == entry.modified => {
                stable.push(entry);
            }
            _ => tracing::debug!(name = %entry.name, "not taken yet: still changing"),
        }
    }
    Ok(stable)
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
        let stable = stable_entries(dir.path(), Duration::from_millis(150))
            .await
            .unwrap();
        writer.await.unwrap();
        let names: Vec<&str> = stable.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["done.py"]);
    }
}
