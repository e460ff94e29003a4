//! What the queue's integration tests share: a class folder with a config pointing at fake
//! model servers, and ways to read back what a run left in the outbox and the state folder.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem::config::Config;
use tandem::fake_server::FakeServer;
use tandem::record::{ResultRecord, Status};

/// A temporary class folder: `tandem.toml`, `rubric.toml`, `inbox/`, `outbox/`, `reports/`,
/// `.tandem/`.
pub struct Class {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// Two fast fake servers, one per role.
pub struct Servers {
    pub code: FakeServer,
    pub feedback: FakeServer,
}

impl Servers {
    /// Servers fast enough that a class is graded in a moment.
    pub async fn fast() -> Servers {
        Servers::with_rate(20_000.0).await
    }

    /// Servers that decode and prefill at `rate` tokens per second, four calls at a time.
    pub async fn with_rate(rate: f64) -> Servers {
        let server = || {
            FakeServer::builder()
                .prefill_tok_per_s(rate * 4.0)
                .decode_tok_per_s(rate)
                .slots(4)
                .start()
        };
        Servers {
            code: server().await,
            feedback: server().await,
        }
    }

    /// The calls both servers received.
    pub fn requests(&self) -> usize {
        self.code.stats().requests + self.feedback.stats().requests
    }
}

impl Class {
    /// A class folder whose config points at `servers`; `inbox_extra` is added to `[inbox]`.
    pub fn new(servers: &Servers, inbox_extra: &str) -> Class {
        Class::with_urls(&servers.code.url(), &servers.feedback.url(), inbox_extra)
    }

    /// A class folder whose backends are at the given URLs.
    pub fn with_urls(code: &str, feedback: &str, inbox_extra: &str) -> Class {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rubric = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rubric.toml");
        fs::copy(rubric, root.join("rubric.toml")).unwrap();
        for sub in ["inbox", "outbox", "reports"] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        let config = format!(
            r#"
[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code"
role = "code_analysis"
url = "{code}"
model = "fake-coder"
max_concurrency = 4

[[backend]]
name = "feedback"
role = "feedback"
url = "{feedback}"
model = "fake-writer"
max_concurrency = 4

[grading]
read_timeout_seconds = 20
retries = 1

[inbox]
settle_seconds = 0
{inbox_extra}
"#
        );
        let settle = if inbox_extra.contains("settle_seconds") {
            ""
        } else {
            "settle_seconds = 0"
        };
        let config = config.replace("settle_seconds = 0\n", &format!("{settle}\n"));
        let config_path = root.join("tandem.toml");
        fs::write(&config_path, config).unwrap();
        Class { dir, config_path }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.root().join("inbox")
    }

    pub fn outbox(&self) -> PathBuf {
        self.root().join("outbox")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join(".tandem")
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(Config::load(&self.config_path).unwrap())
    }

    /// Writes a file into the inbox, the way a careful producer does: elsewhere, then renamed.
    pub fn drop_file(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let staging = self.root().join(".staging");
        fs::create_dir_all(&staging).unwrap();
        let temporary = staging.join("file");
        fs::write(&temporary, bytes).unwrap();
        let target = self.inbox().join(name);
        fs::rename(&temporary, &target).unwrap();
        target
    }

    /// Every record in the outbox, across batches, by file name order.
    pub fn records(&self) -> Vec<ResultRecord> {
        let mut records = Vec::new();
        for batch in sorted_children(&self.outbox()) {
            if batch.is_dir() {
                records.extend(tandem::queue::read_records(&batch).unwrap());
            }
        }
        records
    }

    /// Every file in the outbox whose name is not a record's (temporaries, partial writes).
    pub fn stray_outbox_files(&self) -> Vec<PathBuf> {
        walk(&self.outbox())
            .into_iter()
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with('.') || !name.ends_with(".json")
            })
            .collect()
    }

    /// The original bytes the state folder keeps for a record.
    pub fn original(&self, record: &ResultRecord) -> PathBuf {
        self.state().join(
            record
                .submission
                .original
                .as_ref()
                .expect("records name their original"),
        )
    }

    /// Entries still claimed in the state folder.
    pub fn claimed(&self) -> Vec<PathBuf> {
        walk(&self.state().join("claimed"))
    }
}

/// The one record whose original or files name `name`.
pub fn record_for<'a>(records: &'a [ResultRecord], name: &str) -> &'a ResultRecord {
    let found: Vec<&ResultRecord> = records
        .iter()
        .filter(|r| {
            r.submission
                .original
                .as_deref()
                .is_some_and(|o| o.ends_with(&format!("/{name}")))
        })
        .collect();
    assert_eq!(found.len(), 1, "records for {name}: {found:#?}");
    found[0]
}

/// The records by status name, for messages.
pub fn statuses(records: &[ResultRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        let name = match r.status {
            Status::Graded => "graded",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
            Status::Superseded => "superseded",
        };
        *counts.entry(name.to_string()).or_default() += 1;
    }
    counts
}

pub fn sorted_children(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    paths
}

/// Every file (not folder) below `dir`, links included, without following links.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| !e.file_type().is_dir())
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// A small notebook with one code cell holding `code`.
pub fn notebook(code: &str) -> String {
    serde_json::json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "cells": [{
            "cell_type": "code",
            "id": "c1",
            "metadata": {},
            "execution_count": 1,
            "source": code,
            "outputs": []
        }]
    })
    .to_string()
}

/// A Python script that differs by `n`.
pub fn script(n: usize) -> String {
    format!(
        "import pandas as pd\nsales = pd.read_csv('sales.csv')\n# submission {n}\n\
         print(sales.groupby('region')['units'].sum() * {n})\n"
    )
}
