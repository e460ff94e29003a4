//! Each server's bodies, replayed byte for byte from `tests/fixtures/dialects/`, give the figures
//! that server reports: its token counts, its own prefill time where it has one
//! (`prompt_eval_source: server`) and the measured time to first token where it has none
//! (`ttft`); and each server's error bodies become tandem's error kinds with the server's
//! message kept.
//!
//! A tiny axum server plays the fixture: every event (SSE) or line (NDJSON) is sent after a
//! pause, so that the time to first token shows which event started the clock.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use serde_json::Value;
use tandem::backend::client::estimate_prompt_tokens;
use tandem::backend::{CallError, CallOutcome, ChatClient, ChatRequest, Message, Role};
use tandem::config::{Api, BackendConfig, Concurrency, Threshold};
use tandem::diagnostics::{CallContext, call_record};
use tandem::record::{CallRecord, PromptEvalSource, TokenSource};

/// The pause before each event of a replayed stream.
const PAUSE: Duration = Duration::from_millis(40);

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dialects")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the replay server answers, and what it was asked.
#[derive(Clone)]
struct Replay {
    status: u16,
    content_type: &'static str,
    /// The body's pieces, each sent after [`PAUSE`].
    pieces: Vec<String>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Replay {
    fn stream(name: &str) -> Self {
        let text = fixture(name);
        let (content_type, pieces) = if name.ends_with(".ndjson") {
            let lines = text.split_inclusive('\n').map(str::to_string).collect();
            ("application/x-ndjson", lines)
        } else {
            let events = text.split_inclusive("\n\n").map(str::to_string).collect();
            ("text/event-stream", events)
        };
        Replay {
            status: 200,
            content_type,
            pieces,
            requests: Arc::default(),
        }
    }

    fn error(status: u16, name: &str) -> Self {
        Replay {
            status,
            content_type: "application/json",
            pieces: vec![fixture(name)],
            requests: Arc::default(),
        }
    }

    /// Serves the replay on a free loopback port, returning its base URL.
    async fn serve(&self) -> String {
        async fn answer(State(replay): State<Replay>, uri: Uri, body: Bytes) -> Response {
            let request = serde_json::from_slice(&body).unwrap_or(Value::Null);
            replay
                .requests
                .lock()
                .unwrap()
                .push((uri.path().to_string(), request));
            let pieces = replay.pieces.clone();
            let stream = futures::stream::unfold(pieces.into_iter(), |mut rest| async move {
                let piece = rest.next()?;
                tokio::time::sleep(PAUSE).await;
                Some((Ok::<_, std::io::Error>(Bytes::from(piece)), rest))
            });
            Response::builder()
                .status(StatusCode::from_u16(replay.status).unwrap())
                .header(header::CONTENT_TYPE, replay.content_type)
                .body(Body::from_stream(stream))
                .unwrap()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(answer).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.requests.lock().unwrap().clone()
    }
}

fn backend(url: &str, api: Api, model: &str) -> BackendConfig {
    BackendConfig {
        name: "server".into(),
        roles: vec![Role::CodeAnalysis],
        url: url.parse().unwrap(),
        model: model.into(),
        max_concurrency: Concurrency::Fixed(1),
        api_key_env: None,
        api,
        context_length: None,
        send_seed: true,
        structured_output: true,
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            Message::system("You grade homework."),
            Message::user("Grade this: print(42)"),
        ],
        max_tokens: 640,
        temperature: 0.0,
        seed: Some(42),
        json_schema: Some(serde_json::json!({"type": "object"})),
    }
}

async fn call(backend: &BackendConfig) -> Result<CallOutcome, CallError> {
    let client = ChatClient::new(backend, Duration::from_secs(2), Duration::from_secs(10)).unwrap();
    client.chat(&request()).await
}

fn record(backend: &BackendConfig, outcome: &CallOutcome) -> CallRecord {
    call_record(
        CallContext {
            role: Role::CodeAnalysis,
            backend,
            server_url: backend.url.as_str(),
            prompt_chars: 40,
            queue_wait: Duration::ZERO,
            attempts: 1,
            retries: Vec::new(),
            threshold: Threshold {
                excellent: 30.0,
                good: 20.0,
            },
        },
        outcome,
    )
}

/// The time to first token must cover at least `events` pauses: the events before the first
/// text did not start the clock.
fn assert_first_token_after(record: &CallRecord, events: u32) {
    let floor = (PAUSE * events).as_secs_f64();
    assert!(
        record.time_to_first_token_seconds >= floor,
        "TTFT {} s is shorter than {events} pauses ({floor} s): an earlier event started the clock",
        record.time_to_first_token_seconds
    );
}

#[tokio::test]
async fn llama_cpp_stream_gives_server_prefill_and_usage() {
    let replay = Replay::stream("llamacpp_stream.sse");
    let b = backend(&replay.serve().await, Api::OpenAi, "gemma-3-270m");
    let outcome = call(&b).await.unwrap();
    let r = record(&b, &outcome);

    assert_eq!(r.prompt_eval_source, PromptEvalSource::Server);
    assert_eq!(r.prompt_eval_time_seconds, 0.220814);
    assert_eq!(
        (r.prompt_tokens, r.output_tokens, r.total_tokens),
        (31, 8, 39)
    );
    assert_eq!(r.token_source, TokenSource::Server);
    assert_eq!(r.cached_prompt_tokens, Some(1));
    assert_eq!(r.finish_reason.as_deref(), Some("length"));
    assert_eq!(outcome.content, "Grade this: print(42)<");
    // The role chunk (content null) is the first event; the first token is the second.
    assert_first_token_after(&r, 2);
}

#[tokio::test]
async fn mlx_stream_skips_keepalives_and_measures_prefill_as_ttft() {
    let replay = Replay::stream("mlx_stream.sse");
    let b = backend(&replay.serve().await, Api::OpenAi, "default_model");
    let outcome = call(&b).await.unwrap();
    let r = record(&b, &outcome);

    assert_eq!(r.prompt_eval_source, PromptEvalSource::Ttft);
    assert_eq!(r.prompt_eval_time_seconds, r.time_to_first_token_seconds);
    // Three keep-alives and the role chunk come before the first reasoning delta.
    assert_first_token_after(&r, 5);
    assert_eq!((r.prompt_tokens, r.output_tokens), (1187, 48));
    assert_eq!(r.cached_prompt_tokens, Some(640));
    assert_eq!(outcome.reasoning, "The work meets the rubric.");
    assert!(
        outcome.content.starts_with("{\"criteria\""),
        "{}",
        outcome.content
    );
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));

    let (path, sent) = replay.requests().remove(0);
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(sent["model"], "default_model");
    assert_eq!(sent["max_tokens"], 640);
    assert_eq!(
        sent["stream_options"],
        serde_json::json!({"include_usage": true})
    );
}

#[tokio::test]
async fn vllm_metrics_give_server_prefill_and_without_them_ttft() {
    let with = Replay::stream("vllm_stream_metrics.sse");
    let b = backend(
        &with.serve().await,
        Api::OpenAi,
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    );
    let outcome = call(&b).await.unwrap();
    let r = record(&b, &outcome);
    assert_eq!(r.prompt_eval_source, PromptEvalSource::Server);
    assert_eq!(r.prompt_eval_time_seconds, 0.1852);
    assert_eq!(outcome.timings.unwrap().queue_ms, Some(42.3));
    assert_eq!((r.prompt_tokens, r.output_tokens), (2048, 64));
    assert_eq!(outcome.reasoning, "Checking each criterion.");
    assert_first_token_after(&r, 2);

    let without = Replay::stream("vllm_stream.sse");
    let b = backend(
        &without.serve().await,
        Api::OpenAi,
        "Qwen/Qwen3-Coder-30B-A3B-Instruct",
    );
    let r = record(&b, &call(&b).await.unwrap());
    assert_eq!(r.prompt_eval_source, PromptEvalSource::Ttft);
    assert_eq!(r.prompt_eval_time_seconds, r.time_to_first_token_seconds);
    assert_eq!((r.prompt_tokens, r.output_tokens), (2048, 64));
}

#[tokio::test]
async fn ollama_native_stream_gives_nanosecond_figures_and_sizes_the_context() {
    let replay = Replay::stream("ollama_chat.ndjson");
    let b = backend(&replay.serve().await, Api::Ollama, "qwen3:8b");
    let outcome = call(&b).await.unwrap();
    let r = record(&b, &outcome);

    assert_eq!(r.prompt_eval_source, PromptEvalSource::Server);
    assert_eq!(r.prompt_eval_time_seconds, 0.342546);
    assert_eq!(
        (r.prompt_tokens, r.output_tokens, r.total_tokens),
        (1426, 282, 1708)
    );
    assert_eq!(r.token_source, TokenSource::Server);
    assert_eq!(outcome.timings.unwrap().load_ms, Some(1.334875));
    assert_eq!(outcome.reasoning, "Reading the work.");
    assert!(
        outcome.content.ends_with("\"overall_score\": 7}"),
        "{}",
        outcome.content
    );
    assert_first_token_after(&r, 1);

    let (path, sent) = replay.requests().remove(0);
    assert_eq!(path, "/api/chat");
    assert_eq!(sent["model"], "qwen3:8b");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["options"]["num_predict"], 640);
    assert_eq!(sent["options"]["seed"], 42);
    assert_eq!(sent["format"], serde_json::json!({"type": "object"}));
    let num_ctx = sent["options"]["num_ctx"].as_u64().unwrap();
    assert!(num_ctx >= estimate_prompt_tokens(&request().messages) + 640);
    assert!(num_ctx >= 4096);
}

#[tokio::test]
async fn ollama_openai_endpoint_gives_counts_and_ttft() {
    let replay = Replay::stream("ollama_v1_stream.sse");
    let b = backend(&replay.serve().await, Api::OpenAi, "qwen3:8b");
    let outcome = call(&b).await.unwrap();
    let r = record(&b, &outcome);
    assert_eq!(r.prompt_eval_source, PromptEvalSource::Ttft);
    assert_eq!((r.prompt_tokens, r.output_tokens), (1426, 97));
    assert_eq!(outcome.reasoning, "Reading closely.");
    assert_first_token_after(&r, 1);
}

/// Plays an error body and returns what the client made of it.
async fn error_from(replay: Replay, api: Api) -> CallError {
    let b = backend(&replay.serve().await, api, "Qwen3-Coder-30B");
    call(&b).await.unwrap_err()
}

#[tokio::test]
async fn context_overflow_keeps_each_servers_message_and_counts() {
    let llama = error_from(
        Replay::error(400, "llamacpp_context_overflow.json"),
        Api::OpenAi,
    )
    .await;
    assert_eq!(llama.kind(), "context_overflow");
    assert!(
        llama
            .to_string()
            .contains("request (824 tokens) exceeds the available context size (512 tokens)"),
        "{llama}"
    );
    assert!(matches!(
        llama,
        CallError::ContextOverflow {
            prompt_tokens: Some(824),
            context_tokens: Some(512),
            ..
        }
    ));

    let vllm = error_from(
        Replay::error(400, "vllm_context_overflow.json"),
        Api::OpenAi,
    )
    .await;
    assert_eq!(vllm.kind(), "context_overflow");
    assert!(
        vllm.to_string()
            .contains("maximum context length is 8192 tokens"),
        "{vllm}"
    );
    assert!(!vllm.is_retryable());
}

#[tokio::test]
async fn a_missing_model_is_model_not_found_on_every_server() {
    for (replay, api) in [
        (Replay::error(404, "mlx_load_failure.json"), Api::OpenAi),
        (Replay::error(404, "vllm_model_not_found.json"), Api::OpenAi),
        (
            Replay::error(404, "ollama_model_not_found.json"),
            Api::Ollama,
        ),
    ] {
        let error = error_from(replay, api).await;
        assert_eq!(error.kind(), "model_not_found", "{error}");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("Qwen3-Coder-30B"), "{error}");
    }
    let ollama = error_from(
        Replay::error(404, "ollama_model_not_found.json"),
        Api::Ollama,
    )
    .await;
    assert!(
        ollama.to_string().contains("try pulling it first"),
        "{ollama}"
    );
}

#[tokio::test]
async fn busy_loading_and_stuck_servers_are_retryable_kinds() {
    let busy = error_from(Replay::error(503, "ollama_busy.json"), Api::Ollama).await;
    assert_eq!(busy.kind(), "server_busy");
    assert!(busy.is_retryable());
    assert!(
        busy.to_string()
            .contains("maximum pending requests exceeded"),
        "{busy}"
    );

    let loading = error_from(
        Replay::error(503, "llamacpp_health_loading.json"),
        Api::OpenAi,
    )
    .await;
    assert_eq!(loading.kind(), "server_busy");
    assert!(loading.to_string().contains("Loading model"), "{loading}");

    let stuck = error_from(
        Replay::error(500, "llamacpp_server_error.json"),
        Api::OpenAi,
    )
    .await;
    assert_eq!(stuck.kind(), "http_status");
    assert!(stuck.is_retryable());
    assert!(stuck.to_string().contains("Invalid input batch"), "{stuck}");
}

#[tokio::test]
async fn streams_that_fail_after_output_began_are_errors_not_answers() {
    let ollama = error_from(Replay::stream("ollama_midstream_error.ndjson"), Api::Ollama).await;
    assert_eq!(ollama.kind(), "server_error");
    assert!(ollama.to_string().contains("unexpected EOF"), "{ollama}");

    let cut = error_from(Replay::stream("ollama_v1_cut.sse"), Api::OpenAi).await;
    assert_eq!(cut.kind(), "stream_cut");
    assert!(cut.is_retryable());
}

#[tokio::test]
async fn a_prompt_beyond_the_configured_context_is_refused_without_a_request() {
    let replay = Replay::stream("mlx_stream.sse");
    let mut b = backend(&replay.serve().await, Api::OpenAi, "default_model");
    b.context_length = Some(600);
    let error = call(&b).await.unwrap_err();
    assert_eq!(error.kind(), "context_overflow");
    assert!(
        error.to_string().contains("context_length of 600"),
        "{error}"
    );
    assert!(replay.requests().is_empty(), "a request was sent");
}
