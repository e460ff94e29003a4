//! A backend's bearer key, read from the environment variable `api_key_env` names, reaches its
//! server and nothing else: not stdout, not stderr at the most verbose logging, not the outbox,
//! the reports or the state folder, not a `Debug` print, and not an error message from a server
//! that echoes it back.

mod dialect_support;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use dialect_support::{Backend, Class, contains};
use tandem::backend::ChatClient;
use tandem::config::Config;
use tandem::fake_server::FakeServer;

/// The environment variable the test configs name.
const KEY_VAR: &str = "TANDEM_DIALECT_TEST_KEY";

fn class_with_key(code: &str, feedback: &str) -> Class {
    let class = Class::with(|name| {
        name.starts_with("okaforamara") || name.starts_with("brennan") || name.starts_with("novak")
    });
    let extra = format!("api_key_env = \"{KEY_VAR}\"");
    class.config(
        &[
            Backend {
                name: "code",
                roles: "role = \"code_analysis\"",
                url: code,
                model: "m",
                api: "openai",
                extra: &extra,
            },
            Backend {
                name: "feedback",
                roles: "role = \"feedback\"",
                url: feedback,
                model: "m",
                api: "openai",
                extra: &extra,
            },
        ],
        "",
    );
    class
}

/// Runs `tandem -vv run` with debug logging for every crate and the key in the environment.
async fn run_verbose(class: &Class, key: &str) -> Output {
    let config = class.path().join("tandem.toml");
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("-vv")
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "debug")
            .env(KEY_VAR, key)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Fails naming every place the key was found.
fn assert_nowhere(class: &Class, output: &Output, key: &str) {
    let mut found = Vec::new();
    if contains(&output.stdout, key) {
        found.push("stdout".to_string());
    }
    if contains(&output.stderr, key) {
        found.push("stderr".to_string());
    }
    let files = class.files();
    assert!(
        files
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("outbox")),
        "the run wrote no records"
    );
    for (path, bytes) in &files {
        if contains(bytes, key) {
            found.push(path.display().to_string());
        }
    }
    assert!(found.is_empty(), "the key appears in {found:?}");
}

#[tokio::test]
async fn the_key_reaches_the_server_and_appears_nowhere_else() {
    let key = format!("tk-{:x}-never-print-me", rand_suffix());
    let code = FakeServer::builder().require_api_key(&key).start().await;
    let feedback = FakeServer::builder().require_api_key(&key).start().await;
    let class = class_with_key(&code.url(), &feedback.url());

    let output = run_verbose(&class, &key).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("DEBUG"),
        "debug logging was not on: {stderr}"
    );
    for server in [&code, &feedback] {
        let stats = server.stats();
        assert!(stats.requests >= 3, "{stats:?}");
        assert_eq!(stats.unauthorized, 0, "a request went without the key");
    }
    assert_nowhere(&class, &output, &key);
}

#[tokio::test]
async fn a_key_a_server_echoes_back_is_written_nowhere() {
    let wrong = format!("tk-{:x}-wrong-key-echoed", rand_suffix());
    let code = FakeServer::builder()
        .require_api_key("the-right-key")
        .start()
        .await;
    let feedback = FakeServer::builder()
        .require_api_key("the-right-key")
        .start()
        .await;
    let class = class_with_key(&code.url(), &feedback.url());

    let output = run_verbose(&class, &wrong).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(code.stats().unauthorized > 0);
    let records: Vec<String> = class
        .files()
        .into_iter()
        .filter(|(p, _)| {
            p.extension().is_some_and(|e| e == "json") && p.to_string_lossy().contains("outbox")
        })
        .map(|(_, bytes)| String::from_utf8(bytes).unwrap())
        .collect();
    assert!(
        records
            .iter()
            .any(|r| r.contains("\"unauthorized\"") && r.contains("[redacted]")),
        "no record shows the refused key, redacted: {records:#?}"
    );
    assert_nowhere(&class, &output, &wrong);
}

#[tokio::test]
async fn debug_prints_of_config_and_client_leave_the_key_out() {
    let key = format!("tk-{:x}-debug-print", rand_suffix());
    let class = class_with_key("http://127.0.0.1:9", "http://127.0.0.1:9");
    // The variable is read when a client is made; this test alone sets it in this process.
    // SAFETY: no other thread of this test binary reads or writes this variable.
    unsafe { std::env::set_var(KEY_VAR, &key) };
    let config = Arc::new(Config::load(&class.path().join("tandem.toml")).unwrap());
    let client = ChatClient::new(
        &config.backends[0],
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .unwrap();
    for shown in [
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{config:#?}"),
    ] {
        assert!(!shown.contains(&key), "{shown}");
    }
    assert!(format!("{client:?}").contains("has_api_key: true"));
}

/// A suffix that makes each run's key unique, so no stale file can match it by chance.
fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) ^ u64::from(std::process::id())
}
