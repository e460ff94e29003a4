//! Before a batch, `tandem run` probes every backend the way its server allows: a server that
//! cannot be reached stops the run at once with exit status 2 and a line naming its URL and the
//! error; `--wait` gives servers that are still starting time to come up; a server still
//! loading its model is waited for with a message; an Ollama server without the configured model
//! stops the run before anything is claimed.

mod dialect_support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use dialect_support::{Backend, Class};
use tandem::fake_server::{Dialect, FakeServer};

/// Runs `tandem run` on a class's config with extra arguments, to completion.
async fn run(class: &Class, args: &[&str]) -> Output {
    spawn_run(class.path(), args).await.unwrap()
}

/// Starts `tandem run` on the config in `dir`; the run goes on while the test does other things.
fn spawn_run(dir: &Path, args: &[&str]) -> tokio::task::JoinHandle<Output> {
    let config = dir.join("tandem.toml");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn one_submission() -> Class {
    Class::with(|name| name.starts_with("okaforamara"))
}

fn both_roles(class: &Class, code: &str, feedback: &str, model: &str, api: &str) {
    class.config(
        &[
            Backend {
                name: "code",
                roles: "role = \"code_analysis\"",
                url: code,
                model,
                api,
                extra: "",
            },
            Backend {
                name: "feedback",
                roles: "role = \"feedback\"",
                url: feedback,
                model,
                api,
                extra: "",
            },
        ],
        "",
    );
}

#[tokio::test]
async fn a_down_server_stops_the_run_at_once_naming_its_url() {
    let class = one_submission();
    let code = FakeServer::builder().start().await;
    let down = FakeServer::refused_url().await;
    both_roles(&class, &code.url(), &down, "m", "openai");

    let started = Instant::now();
    let output = run(&class, &[]).await;
    let elapsed = started.elapsed();

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        text.contains(&down),
        "the message does not name {down}: {text}"
    );
    assert!(text.contains("feedback"), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
    assert_eq!(
        std::fs::read_dir(class.path().join("inbox"))
            .unwrap()
            .count(),
        1,
        "the submission left the inbox"
    );
}

#[tokio::test]
async fn run_waits_for_servers_that_are_still_starting() {
    let class = one_submission();
    let mut code = FakeServer::builder().start().await;
    let mut feedback = FakeServer::builder().start().await;
    both_roles(&class, &code.url(), &feedback.url(), "m", "openai");
    code.stop().await;
    feedback.stop().await;

    let tandem = spawn_run(class.path(), &["--wait", "30"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    code.restart().await.unwrap();
    feedback.restart().await.unwrap();
    let output = tandem.await.unwrap();

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("waiting up to 30 s for code"), "{text}");
    assert!(text.contains("is ready"), "{text}");
    assert!(code.stats().requests > 0);
}

#[tokio::test]
async fn run_waits_with_a_message_while_a_model_loads() {
    let class = one_submission();
    let loading = Duration::from_millis(1500);
    let code = FakeServer::builder()
        .health_loading_for(loading)
        .start()
        .await;
    let feedback = FakeServer::builder().start().await;
    both_roles(&class, &code.url(), &feedback.url(), "m", "openai");

    let started = Instant::now();
    let output = run(&class, &[]).await;

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(started.elapsed() >= loading);
    assert!(text.contains("still loading its model"), "{text}");
    assert!(text.contains("Loading model"), "{text}");
    assert!(code.stats().health_polls >= 2);
}

#[tokio::test]
async fn an_ollama_server_without_the_model_stops_the_run() {
    let class = one_submission();
    let code = FakeServer::builder()
        .dialect(Dialect::Ollama)
        .model("qwen3:8b")
        .start()
        .await;
    let feedback = FakeServer::builder()
        .dialect(Dialect::Ollama)
        .model("qwen3:8b")
        .start()
        .await;
    both_roles(&class, &code.url(), &feedback.url(), "llama3.2", "ollama");

    let output = run(&class, &[]).await;

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("ollama pull llama3.2"), "{text}");
    assert!(text.contains(&code.url()), "{text}");
    assert_eq!(code.stats().requests, 0, "a chat request was sent");
}

#[tokio::test]
async fn an_ollama_server_behind_the_openai_api_is_pointed_out() {
    let class = one_submission();
    let code = FakeServer::builder()
        .dialect(Dialect::Ollama)
        .model("qwen3:8b")
        .start()
        .await;
    let feedback = FakeServer::builder()
        .dialect(Dialect::Ollama)
        .model("qwen3:8b")
        .start()
        .await;
    both_roles(&class, &code.url(), &feedback.url(), "qwen3:8b", "openai");

    let output = run(&class, &[]).await;

    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("is Ollama; with api = \"ollama\""), "{text}");
}
