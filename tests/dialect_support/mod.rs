//! What the dialect tests share: a temporary class folder (inbox, rubric, config) built from
//! `examples/`, and ways to look at everything a run wrote.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// One `[[backend]]` of a test configuration.
pub struct Backend<'a> {
    pub name: &'a str,
    /// `role = "…"` or `roles = [...]`, as TOML.
    pub roles: &'a str,
    pub url: &'a str,
    pub model: &'a str,
    /// `openai` or `ollama`.
    pub api: &'a str,
    /// More TOML lines for the backend (`api_key_env = …`, `context_length = …`).
    pub extra: &'a str,
}

/// A class in a temporary folder: `inbox/` holding sample submissions, `rubric.toml`, and a
/// `tandem.toml` written by [`Class::config`].
pub struct Class {
    pub dir: tempfile::TempDir,
}

impl Class {
    /// The whole sample class.
    pub fn all() -> Self {
        Self::with(|_| true)
    }

    /// The sample submissions whose file names `keep` accepts.
    pub fn with(keep: impl Fn(&str) -> bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let examples = examples();
        std::fs::create_dir(dir.path().join("inbox")).unwrap();
        for entry in std::fs::read_dir(examples.join("class")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if keep(&name) {
                std::fs::copy(&path, dir.path().join("inbox").join(&name)).unwrap();
            }
        }
        std::fs::copy(examples.join("rubric.toml"), dir.path().join("rubric.toml")).unwrap();
        Class { dir }
    }

    /// The class's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `tandem.toml` for these backends and returns its path; `grading` is the body of
    /// its `[grading]` table (short timeouts and one retry when empty).
    pub fn config(&self, backends: &[Backend<'_>], grading: &str) -> PathBuf {
        let mut text = String::from(
            "[paths]\ninbox = \"inbox\"\noutbox = \"outbox\"\nreports = \"reports\"\n\
             state = \".tandem\"\n\n[assignment]\nrubric = \"rubric.toml\"\n\n",
        );
        for b in backends {
            text.push_str(&format!(
                "[[backend]]\nname = \"{}\"\n{}\nurl = \"{}\"\nmodel = \"{}\"\napi = \"{}\"\n\
                 max_concurrency = 2\n{}\n\n",
                b.name, b.roles, b.url, b.model, b.api, b.extra
            ));
        }
        text.push_str("[grading]\n");
        text.push_str(if grading.is_empty() {
            "read_timeout_seconds = 20\nretries = 1\n"
        } else {
            grading
        });
        text.push_str("\n[inbox]\nsettle_seconds = 0\n");
        let path = self.path().join("tandem.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every file under the class folder, with its bytes.
    pub fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        walkdir::WalkDir::new(self.path())
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect()
    }
}

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
