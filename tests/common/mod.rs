//! Helpers shared by the integration tests that talk to fake model servers: a backend pointing
//! at a fake, a client for it, a plain chat request, and a call's figures computed the way the
//! scheduler computes them.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use tandem::backend::{CallError, CallOutcome, ChatClient, ChatRequest, Message, Role};
use tandem::config::{Api, BackendConfig, Concurrency, Threshold};
use tandem::diagnostics::{CallContext, call_record};
use tandem::fake_server::FakeServer;
use tandem::record::CallRecord;

/// The model name every fake backend is configured with.
pub const MODEL: &str = "fake-model";

/// A read timeout long enough never to fire in a test that is not about timeouts.
pub const PATIENT: Duration = Duration::from_secs(30);

/// A code-analysis backend named `name` at `url`.
pub fn backend_at(name: &str, url: &str) -> BackendConfig {
    BackendConfig {
        name: name.to_string(),
        roles: vec![Role::CodeAnalysis],
        url: url::Url::parse(url).expect("a test URL parses"),
        model: MODEL.to_string(),
        max_concurrency: Concurrency::Fixed(1),
        api_key_env: None,
        api: Api::OpenAi,
        context_length: None,
        send_seed: true,
        structured_output: true,
    }
}

/// The backend for a running fake server.
pub fn backend(server: &FakeServer) -> BackendConfig {
    backend_at("fake", &server.url())
}

/// A client for a fake server with the given read timeout.
pub fn client(server: &FakeServer, read_timeout: Duration) -> ChatClient {
    ChatClient::new(&backend(server), Duration::from_secs(2), read_timeout)
        .expect("a client for a loopback URL builds")
}

/// A chat request with one user message and no schema.
pub fn request(prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::system("You grade homework."),
            Message::user(prompt),
        ],
        max_tokens,
        temperature: 0.0,
        seed: Some(7),
        json_schema: None,
    }
}

/// Characters in a request's messages, as the scheduler counts them for an estimate.
pub fn prompt_chars(request: &ChatRequest) -> usize {
    request.messages.iter().map(|m| m.content.len()).sum()
}

/// Thresholds no test rate reaches or every test rate passes, for checking categories.
pub const EASY: Threshold = Threshold {
    excellent: 1.0,
    good: 0.5,
};
pub const HARD: Threshold = Threshold {
    excellent: 1_000_000.0,
    good: 500_000.0,
};

/// A call's record, made as the scheduler makes it for a first attempt with no queueing.
pub fn record_of(
    server: &FakeServer,
    client: &ChatClient,
    request: &ChatRequest,
    outcome: &CallOutcome,
    threshold: Threshold,
) -> CallRecord {
    let backend = backend(server);
    call_record(
        CallContext {
            role: Role::CodeAnalysis,
            backend: &backend,
            server_url: client.base_url(),
            prompt_chars: prompt_chars(request),
            queue_wait: Duration::ZERO,
            attempts: 1,
            retries: Vec::new(),
            threshold,
        },
        outcome,
    )
}

/// Sends one request to a fake server and returns the outcome.
pub async fn chat(
    server: &FakeServer,
    read_timeout: Duration,
    request: &ChatRequest,
) -> CallOutcome {
    client(server, read_timeout)
        .chat(request)
        .await
        .expect("the call succeeds")
}

/// Sends one request to a fake server and returns the error it must end in.
pub async fn chat_error(
    server: &FakeServer,
    read_timeout: Duration,
    request: &ChatRequest,
) -> CallError {
    match client(server, read_timeout).chat(request).await {
        Ok(outcome) => panic!("the call succeeded: {outcome:?}"),
        Err(error) => error,
    }
}

/// The repository's `examples/` folder: the sample class, its rubric and configuration.
pub fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Runs the built `tandem` binary with `args` in `dir`, off the async runtime so that fake
/// servers on it keep answering, and returns its exit status and output.
pub async fn run_tandem(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut command = assert_cmd::cargo::cargo_bin_cmd!("tandem");
    command
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .timeout(Duration::from_secs(60));
    tokio::task::spawn_blocking(move || command.output().expect("the tandem binary runs"))
        .await
        .expect("the blocking task finishes")
}

/// Asserts that `actual` lies within `share` (e.g. 0.3 for ±30%) of `expected`.
#[track_caller]
pub fn assert_near(what: &str, actual: f64, expected: f64, share: f64) {
    let (low, high) = (expected * (1.0 - share), expected * (1.0 + share));
    assert!(
        (low..=high).contains(&actual),
        "{what} = {actual}, expected {expected} ± {:.0}% ({low}..{high})",
        share * 100.0
    );
}
