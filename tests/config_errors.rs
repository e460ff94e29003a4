//! A configuration tandem cannot use stops `tandem run` before any work, with exit status 2 and
//! one line on stderr naming the file and the key (or the rubric, or the server's URL) at fault.

mod common;

use std::fs;
use std::path::Path;

use tandem::fake_server::FakeServer;
use tempfile::TempDir;

use common::{examples, run_tandem};

/// A submission left in the inbox, which must still be there after a refused run.
const WAITING: &str = "smithjane_104001_5530001_analysis.py";

/// A valid configuration for two servers, with `{code}` and `{feedback}` for their URLs.
const VALID: &str = r#"[paths]
inbox = "inbox"
outbox = "outbox"
reports = "reports"
state = "state"

[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code-server"
role = "code_analysis"
url = "{code}"
model = "fake-model"
max_concurrency = 1

[[backend]]
name = "feedback-server"
role = "feedback"
url = "{feedback}"
model = "fake-model"

[inbox]
settle_seconds = 0
"#;

/// A folder with the sample rubric, one waiting submission and `config` as `tandem.toml`.
fn folder(config: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        examples().join("rubric.toml"),
        dir.path().join("rubric.toml"),
    )
    .unwrap();
    fs::create_dir(dir.path().join("inbox")).unwrap();
    fs::write(
        dir.path().join("inbox").join(WAITING),
        "import pandas as pd\n",
    )
    .unwrap();
    fs::write(dir.path().join("tandem.toml"), config).unwrap();
    dir
}

fn with_urls(config: &str, code: &str, feedback: &str) -> String {
    config
        .replace("{code}", code)
        .replace("{feedback}", feedback)
}

/// Runs `tandem run` on a folder and returns its stderr, after checking that it refused to run
/// with status 2 and one line, and touched nothing.
async fn refused(dir: &Path) -> String {
    let output = run_tandem(dir, &["run", "--config", "tandem.toml"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr is not one line:\n{stderr}");
    assert!(
        dir.join("inbox").join(WAITING).is_file(),
        "the submission was taken"
    );
    assert!(
        !dir.join("outbox").exists(),
        "something was written to the outbox"
    );
    lines[0].to_string()
}

/// A config built from the valid one with `from` replaced by `to`, at refused URLs (so that a
/// config accepted by mistake still fails, but on its servers, not naming the key).
async fn config_with(from: &str, to: &str) -> String {
    let url = FakeServer::refused_url().await;
    let config = with_urls(VALID, &url, &url);
    assert!(config.contains(from), "the valid config has no `{from}`");
    let dir = folder(&config.replacen(from, to, 1));
    refused(dir.path()).await
}

#[tokio::test]
async fn an_unknown_key_names_the_file_and_the_key() {
    let line = config_with("inbox = \"inbox\"", "inboxx = \"inbox\"").await;
    assert!(
        line.contains("tandem.toml:2:"),
        "not the key's line: {line}"
    );
    assert!(line.contains("inboxx"), "{line}");
}

#[tokio::test]
async fn an_unknown_key_in_the_rubric_names_the_rubric_and_its_line() {
    let url = FakeServer::refused_url().await;
    let dir = folder(&with_urls(VALID, &url, &url));
    let rubric = fs::read_to_string(dir.path().join("rubric.toml")).unwrap();
    let line_of_points = rubric
        .lines()
        .position(|l| l.starts_with("points"))
        .unwrap()
        + 1;
    fs::write(
        dir.path().join("rubric.toml"),
        rubric.replacen("points", "pointz", 1),
    )
    .unwrap();
    let line = refused(dir.path()).await;

    assert!(
        line.contains(&format!("rubric.toml:{line_of_points}:")),
        "not line {line_of_points}: {line}"
    );
    assert!(line.contains("pointz"), "{line}");
}

#[tokio::test]
async fn a_missing_rubric_names_the_config_file_the_key_and_the_rubric_file() {
    let line = config_with("rubric = \"rubric.toml\"", "rubric = \"rubrik.toml\"").await;
    assert!(line.contains("tandem.toml"), "{line}");
    assert!(line.contains("assignment.rubric"), "{line}");
    assert!(line.contains("rubrik.toml"), "{line}");
}

#[tokio::test]
async fn a_malformed_url_names_the_file_and_the_key() {
    let url = FakeServer::refused_url().await;
    let config = with_urls(VALID, "http//127.0.0.1:8081", &url);
    let dir = folder(&config);
    let line = refused(dir.path()).await;
    assert!(line.contains("tandem.toml"), "{line}");
    assert!(line.contains("backend[0].url"), "{line}");
    assert!(line.contains("http//127.0.0.1:8081"), "{line}");
}

#[tokio::test]
async fn a_role_without_a_backend_names_the_role() {
    let line = config_with("role = \"feedback\"", "role = \"code_analysis\"").await;
    assert!(line.contains("tandem.toml"), "{line}");
    assert!(line.contains("`backend`"), "{line}");
    assert!(line.contains("feedback"), "{line}");
}

#[tokio::test]
async fn a_bad_max_concurrency_names_the_file_and_the_key() {
    for bad in ["0", "\"lots\"", "\"auto:0\"", "1.5"] {
        let line = config_with("max_concurrency = 1", &format!("max_concurrency = {bad}")).await;
        assert!(line.contains("tandem.toml"), "{bad}: {line}");
        assert!(line.contains("backend[0].max_concurrency"), "{bad}: {line}");
    }
}

#[tokio::test]
async fn a_config_that_is_not_toml_names_the_file_and_line() {
    let line = config_with("[assignment]", "[assignment").await;
    assert!(line.contains("tandem.toml:7:"), "{line}");
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    let dir = folder("");
    fs::remove_file(dir.path().join("tandem.toml")).unwrap();
    let line = refused(dir.path()).await;
    assert!(line.contains("tandem.toml"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_names_its_url() {
    let code = FakeServer::builder().start().await;
    let nothing = FakeServer::refused_url().await;
    let dir = folder(&with_urls(VALID, &code.url(), &nothing));
    let line = refused(dir.path()).await;

    assert!(line.contains(&nothing), "{line}");
    assert!(line.contains("feedback"), "{line}");
    assert_eq!(
        code.stats().requests,
        0,
        "a chat request went out before the check"
    );
}

#[tokio::test]
async fn a_key_variable_that_is_not_set_stops_the_run_naming_the_key() {
    let line = config_with(
        "max_concurrency = 1\n",
        "max_concurrency = 1\napi_key_env = \"TANDEM_TEST_KEY_THAT_IS_NEVER_SET\"\n",
    )
    .await;
    assert!(line.contains("tandem.toml"), "{line}");
    assert!(line.contains("backend[0].api_key_env"), "{line}");
    assert!(line.contains("TANDEM_TEST_KEY_THAT_IS_NEVER_SET"), "{line}");
}

#[tokio::test]
async fn an_inbox_holding_the_configuration_is_refused() {
    let url = FakeServer::refused_url().await;
    let config = with_urls(VALID, &url, &url).replacen(
        "inbox = \"inbox\"\noutbox = \"outbox\"\nreports = \"reports\"\nstate = \"state\"",
        "inbox = \".\"\noutbox = \"../out\"\nreports = \"../rep\"\nstate = \"../state\"",
        1,
    );
    assert!(config.contains("inbox = \".\""));
    let dir = folder(&config);
    let line = refused(dir.path()).await;
    assert!(line.contains("paths.inbox"), "{line}");
    assert!(line.contains("configuration"), "{line}");
    assert!(
        dir.path().join("tandem.toml").is_file(),
        "the configuration stays where it is"
    );
}

#[tokio::test]
async fn a_reports_folder_that_cannot_be_written_stops_the_run_before_any_work() {
    let server = FakeServer::builder().start().await;
    let config = with_urls(VALID, &server.url(), &server.url()).replacen(
        "reports = \"reports\"",
        // /proc refuses new folders even to root, so this holds however the tests are run.
        "reports = \"/proc/tandem-reports\"",
        1,
    );
    let dir = folder(&config);
    let line = refused(dir.path()).await;
    assert!(line.contains("/proc/tandem-reports"), "{line}");
    assert_eq!(server.stats().requests, 0, "no submission was graded");
}
