//! Shared set-up for the grading tests: a workspace with a config and the sample rubric, fast
//! fake servers, and a batch run that returns its records.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tandem::batch::{self, RunOptions};
use tandem::config::Config;
use tandem::fake_server::{FakeServer, FakeServerBuilder, Reply};
use tandem::progress::LiveDisplay;
use tandem::record::ResultRecord;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The repository's folder.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A fake server that answers quickly.
pub fn fast(reply: Reply) -> FakeServerBuilder {
    FakeServer::builder()
        .prefill_tok_per_s(1_000_000.0)
        .decode_tok_per_s(100_000.0)
        .tokens_per_chunk(16)
        .reply(reply)
}

/// What goes into a workspace's `tandem.toml` beyond the two backends.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    /// Lines added to the code-analysis backend's table.
    pub code_backend: &'static str,
    /// Lines added to the feedback backend's table.
    pub feedback_backend: &'static str,
    /// Lines added to `[grading]`.
    pub grading: &'static str,
    /// Whole tables added at the end.
    pub tables: &'static str,
}

/// A folder with a config, the sample rubric and an empty inbox.
pub struct Workspace {
    pub dir: TempDir,
    pub config_text: String,
}

impl Workspace {
    pub fn new(code_url: &str, feedback_url: &str, extra: &Extra) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            root().join("examples/rubric.toml"),
            dir.path().join("rubric.toml"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("inbox")).unwrap();
        let config_text = format!(
            r#"[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code"
role = "code_analysis"
url = "{code_url}"
model = "coder"
{code}

[[backend]]
name = "feedback"
role = "feedback"
url = "{feedback_url}"
model = "writer"
{feedback}

[grading]
retries = 0
{grading}

[inbox]
settle_seconds = 0
{tables}
"#,
            code = extra.code_backend,
            feedback = extra.feedback_backend,
            grading = extra.grading,
            tables = extra.tables,
        );
        std::fs::write(dir.path().join("tandem.toml"), &config_text).unwrap();
        Workspace { dir, config_text }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::new(Config::load(&self.dir.path().join("tandem.toml")).unwrap())
    }

    /// Copies files (or folders) into the inbox under their own names.
    pub fn drop_files(&self, paths: &[PathBuf]) {
        for path in paths {
            copy_into(path, &self.inbox().join(path.file_name().unwrap()));
        }
    }

    /// Writes a file into the inbox.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.inbox().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Runs `tandem run` once and returns every record it wrote.
    pub async fn run(&self) -> Vec<ResultRecord> {
        let outcomes = batch::run(
            self.config(),
            RunOptions::default(),
            Arc::new(LiveDisplay::new(Box::new(std::io::sink()))),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        outcomes.into_iter().flat_map(|o| o.records).collect()
    }
}

fn copy_into(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_into(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// The files of a folder, sorted.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The first user message of a chat request: the prompt as tandem built it.
pub fn prompt(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The fenced submission inside a prompt: between the opening marker on its own line and the
/// last closing marker with the same tag.
pub fn fenced_submission(prompt: &str) -> String {
    let Some(start) = prompt.find("<<<SUBMISSION ") else {
        return String::new();
    };
    let tag: String = prompt[start + 14..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let open = format!("\n<<<SUBMISSION {tag}>>>\n");
    let close = format!("\n<<<END SUBMISSION {tag}>>>");
    match (prompt.find(&open), prompt.rfind(&close)) {
        (Some(a), Some(b)) if b > a => prompt[a + open.len()..b].to_string(),
        _ => String::new(),
    }
}

/// The criteria of a code-analysis request's schema: each id with its points.
pub fn schema_criteria(body: &Value) -> Vec<(String, i64)> {
    let schema = &body["response_format"]["json_schema"]["schema"];
    schema["properties"]["criteria"]["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(id, p)| {
                    let max = p["properties"]["score"]["maximum"].as_i64().unwrap_or(0);
                    (id.clone(), max)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a request is the code-analysis role's (its schema has criteria).
pub fn is_code_analysis(body: &Value) -> bool {
    !schema_criteria(body).is_empty()
}

/// A code-analysis reply giving each criterion the score `score(id, max)`.
pub fn code_reply(body: &Value, score: impl Fn(&str, i64) -> i64) -> String {
    let mut criteria = serde_json::Map::new();
    for (id, max) in schema_criteria(body) {
        criteria.insert(
            id.clone(),
            json!({"score": score(&id, max), "evidence": format!("{id} seen")}),
        );
    }
    json!({"criteria": criteria, "summary": "Assessed."}).to_string()
}

/// A feedback reply with an overall score.
pub fn feedback_reply(overall: i64) -> String {
    json!({
        "summary": "Clear work with one gap.",
        "strengths": ["Loads and cleans the data"],
        "improvements": ["Label the chart's axes"],
        "overall_score": overall,
    })
    .to_string()
}

/// The rubric's maximum score, from a feedback request's schema.
pub fn schema_max(body: &Value) -> i64 {
    body["response_format"]["json_schema"]["schema"]["properties"]["overall_score"]["maximum"]
        .as_i64()
        .unwrap_or(0)
}
