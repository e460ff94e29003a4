//! Each way a call can fail ends in its own error kind, and its message names the server's URL
//! and says what went wrong, so that a failure record and the batch's failure counts can tell
//! a server that is down from one that is overloaded, cut off, confused or too small.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use tandem::backend::ChatClient;
use tandem::backend::client::TOKEN_SILENCE_FACTOR;
use tandem::config::Api;
use tandem::fake_server::{Dialect, FakeServer, Fault, Reply, When};

use common::{PATIENT, backend_at, chat, chat_error, request};

/// A short read timeout for the tests about silence.
const READ_TIMEOUT: Duration = Duration::from_millis(400);

fn long_reply() -> Reply {
    Reply::fixed("abcd".repeat(40))
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_naming_the_url() {
    let url = FakeServer::refused_url().await;
    let client =
        ChatClient::new(&backend_at("gone", &url), Duration::from_secs(2), PATIENT).unwrap();
    let error = client.chat(&request("hi", 16)).await.unwrap_err();

    assert_eq!(error.kind(), "connect", "{error}");
    assert!(error.to_string().contains(&url), "{error}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_stopped_server_is_a_connect_error_until_it_restarts() {
    let mut server = FakeServer::builder().start().await;
    server.stop().await;
    let error = chat_error(&server, PATIENT, &request("hi", 16)).await;
    assert_eq!(error.kind(), "connect", "{error}");

    server.restart().await.unwrap();
    chat(&server, PATIENT, &request("hi", 16)).await;
}

#[tokio::test]
async fn http_errors_keep_their_status_kind_and_an_excerpt_of_the_body() {
    for (fault, status, kind, words, retryable) in [
        (
            Fault::server_error(),
            500,
            "http_status",
            "Invalid input batch",
            true,
        ),
        (
            Fault::busy(),
            503,
            "server_busy",
            "maximum pending requests exceeded",
            true,
        ),
        (Fault::loading(), 503, "server_busy", "Loading model", true),
        (
            Fault::model_not_found("fake-model"),
            404,
            "model_not_found",
            "does not exist",
            false,
        ),
    ] {
        let server = FakeServer::builder()
            .fault(fault.clone(), When::Every)
            .start()
            .await;
        let error = chat_error(&server, PATIENT, &request("hi", 16)).await;

        assert_eq!(error.kind(), kind, "{error}");
        let message = error.to_string();
        assert!(message.contains(words), "{message}");
        if kind != "model_not_found" {
            assert!(message.contains(&format!("HTTP {status}")), "{message}");
        }
        assert!(error.url().starts_with(&server.url()), "{error:?}");
        assert_eq!(error.is_retryable(), retryable, "{error}");
    }
}

#[tokio::test]
async fn a_long_error_body_is_cut_to_an_excerpt_on_one_line() {
    let body = serde_json::json!({"error": {"message": format!("line\n{}", "x".repeat(5000))}});
    let server = FakeServer::builder()
        .fault(Fault::status(502, body), When::Every)
        .start()
        .await;
    let error = chat_error(&server, PATIENT, &request("hi", 16)).await;

    let message = error.to_string();
    assert_eq!(error.kind(), "http_status");
    assert!(!message.contains('\n'), "{message}");
    assert!(message.len() < 1000, "{} characters", message.len());
}

#[tokio::test]
async fn a_stream_that_stops_without_its_final_chunk_is_cut() {
    for fault in [
        Fault::Drop { after_tokens: 3 },
        Fault::EndEarly { after_tokens: 3 },
        Fault::Drop { after_tokens: 0 },
        Fault::EndEarly { after_tokens: 0 },
    ] {
        for dialect in [Dialect::LlamaCpp, Dialect::Mlx] {
            let server = FakeServer::builder()
                .dialect(dialect)
                .reply(long_reply())
                .fault(fault.clone(), When::Every)
                .start()
                .await;
            let error = chat_error(&server, PATIENT, &request("hi", 64)).await;

            assert_eq!(error.kind(), "stream_cut", "{fault:?} {dialect:?}: {error}");
            assert!(error.to_string().contains(&server.url()), "{error}");
            assert!(error.is_retryable());
        }
    }
}

#[tokio::test]
async fn an_error_event_inside_the_stream_is_a_server_error() {
    for legacy_field in [false, true] {
        let server = FakeServer::builder()
            .reply(long_reply())
            .fault(
                Fault::ErrorEvent {
                    after_tokens: 2,
                    message: "slot 0 crashed".into(),
                    legacy_field,
                },
                When::Every,
            )
            .start()
            .await;
        let error = chat_error(&server, PATIENT, &request("hi", 64)).await;

        assert_eq!(
            error.kind(),
            "server_error",
            "legacy {legacy_field}: {error}"
        );
        assert!(error.to_string().contains("slot 0 crashed"), "{error}");
        assert!(error.to_string().contains(&server.url()), "{error}");
    }
}

#[tokio::test]
async fn a_stall_longer_than_the_read_timeout_times_out() {
    for after_tokens in [0, 3] {
        let server = FakeServer::builder()
            .reply(long_reply())
            .fault(Fault::Stall { after_tokens }, When::Every)
            .start()
            .await;
        let started = Instant::now();
        let error = chat_error(&server, READ_TIMEOUT, &request("hi", 64)).await;

        assert_eq!(
            error.kind(),
            "timeout",
            "after {after_tokens} tokens: {error}"
        );
        assert!(error.to_string().contains(&server.url()), "{error}");
        assert!(error.is_retryable());
        assert!(started.elapsed() >= READ_TIMEOUT);
        assert!(
            started.elapsed() < READ_TIMEOUT * 10,
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = FakeServer::builder()
        .fault(Fault::Hang, When::Every)
        .start()
        .await;
    let started = Instant::now();
    let error = chat_error(&server, READ_TIMEOUT, &request("hi", 64)).await;

    assert_eq!(error.kind(), "timeout", "{error}");
    assert!(
        started.elapsed() < READ_TIMEOUT * 10,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_timeout_message_gives_the_read_timeout() {
    let server = FakeServer::builder()
        .fault(Fault::Stall { after_tokens: 1 }, When::Every)
        .start()
        .await;
    let error = chat_error(&server, Duration::from_millis(1500), &request("hi", 64)).await;

    assert!(error.to_string().contains("1.5 s"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_generation_longer_than_the_read_timeout_does_not_time_out() {
    // A second and a half of prefill and decoding in all, but never more than 0.2 s without a
    // byte: the read timeout restarts with every chunk, so this is not a stall.
    let server = FakeServer::builder()
        .dialect(Dialect::Mlx)
        .prompt_tokens(400)
        .prefill_tok_per_s(800.0)
        .keepalive_every(100)
        .decode_tok_per_s(40.0)
        .reply(Reply::fixed("abcd".repeat(41)))
        .start()
        .await;
    let started = Instant::now();
    let outcome = chat(&server, READ_TIMEOUT, &request("hi", 64)).await;

    assert!(
        started.elapsed() > READ_TIMEOUT * 3,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.content, "abcd".repeat(41));
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_a_context_overflow() {
    // llama.cpp's HTTP 400, as a fault and from the server's own context check, and vLLM's.
    let llama_fault = FakeServer::builder()
        .fault(Fault::context_overflow(9000, 8192), When::Every)
        .start()
        .await;
    let llama_small = FakeServer::builder().context_size(8).start().await;
    let vllm_small = FakeServer::builder()
        .dialect(Dialect::Vllm)
        .context_size(8)
        .start()
        .await;
    let long_prompt = "word ".repeat(200);
    for server in [&llama_fault, &llama_small, &vllm_small] {
        let error = chat_error(server, PATIENT, &request(&long_prompt, 64)).await;

        assert_eq!(error.kind(), "context_overflow", "{error}");
        assert!(error.to_string().contains(&server.url()), "{error}");
        assert!(!error.is_retryable(), "the same prompt can never fit");
    }

    // Older llama.cpp builds sent the overflow inside the 200 stream, in an `error:` field.
    let legacy = FakeServer::builder()
        .fault(
            Fault::ErrorEvent {
                after_tokens: 0,
                message: "the request exceeds the available context size".into(),
                legacy_field: true,
            },
            When::Every,
        )
        .start()
        .await;
    let error = chat_error(&legacy, PATIENT, &request(&long_prompt, 64)).await;
    assert_eq!(error.kind(), "context_overflow", "{error}");
}

#[tokio::test]
async fn a_data_line_that_is_not_json_is_a_decode_error() {
    let server = FakeServer::builder()
        .reply(long_reply())
        .fault(Fault::Garbage { after_tokens: 2 }, When::Every)
        .start()
        .await;
    let error = chat_error(&server, PATIENT, &request("hi", 64)).await;

    assert_eq!(error.kind(), "decode", "{error}");
    assert!(error.to_string().contains("garbage"), "{error}");
    assert!(error.to_string().contains(&server.url()), "{error}");
}

#[tokio::test]
async fn a_fault_on_one_request_leaves_the_next_one_whole() {
    let server = FakeServer::builder()
        .reply(Reply::fixed("abcdefgh"))
        .fault(Fault::server_error(), When::Nth(1))
        .start()
        .await;
    let first = chat_error(&server, PATIENT, &request("hi", 64)).await;
    let second = chat(&server, PATIENT, &request("hi", 64)).await;

    assert_eq!(first.kind(), "http_status");
    assert_eq!(second.content, "abcdefgh");
    assert_eq!(server.stats().requests, 2);
}

/// Serves, on any path, a 200 stream that sends `head` and then `ping` every `every` forever,
/// returning the base URL.
async fn keepalive_server(
    content_type: &'static str,
    head: &'static str,
    ping: &'static str,
    every: Duration,
) -> String {
    let answer = move || async move {
        let pings = futures::stream::unfold(true, move |first| async move {
            if first {
                return Some((Ok::<_, std::io::Error>(head.to_string()), false));
            }
            tokio::time::sleep(every).await;
            Some((Ok(ping.to_string()), false))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from_stream(pings))
            .unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(answer)).await });
    url
}

#[tokio::test]
async fn a_stream_of_keep_alives_alone_times_out_after_the_token_silence_limit() {
    let role_chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    let token = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    let ollama_token = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n";
    // Keep-alives from the start (a prefill that never ends), after a role-only chunk, and after
    // the first tokens; SSE comments for the OpenAI dialect, blank lines for Ollama's NDJSON.
    let cases = [
        (Api::OpenAi, "text/event-stream", "", ": keep-alive\n\n"),
        (Api::OpenAi, "text/event-stream", role_chunk, ": ping\n\n"),
        (
            Api::OpenAi,
            "text/event-stream",
            token,
            ": keepalive 3/80\n\n",
        ),
        (Api::Ollama, "application/x-ndjson", "", "\n"),
        (Api::Ollama, "application/x-ndjson", ollama_token, " \n"),
    ];
    let read_timeout = Duration::from_millis(300);
    let limit = read_timeout * TOKEN_SILENCE_FACTOR;
    for (api, content_type, head, ping) in cases {
        let url = keepalive_server(content_type, head, ping, read_timeout / 3).await;
        let mut backend = backend_at("pinging", &url);
        backend.api = api;
        let client = ChatClient::new(&backend, Duration::from_secs(2), read_timeout).unwrap();
        let started = Instant::now();
        let error = tokio::time::timeout(limit * 5, client.chat(&request("hi", 16)))
            .await
            .unwrap_or_else(|_| panic!("{api:?} {head:?}: keep-alives held the call open"))
            .unwrap_err();

        let elapsed = started.elapsed();
        let case = format!("{api:?} after {head:?}: {error}");
        assert_eq!(error.kind(), "timeout", "{case}");
        assert!(error.is_retryable(), "{case}");
        let message = error.to_string();
        assert!(message.contains("only keep-alives"), "{case}");
        assert!(message.contains("for 1.2 s"), "{case}");
        assert!(message.contains(&url), "{case}");
        assert!(elapsed >= limit, "{case}: ended after {elapsed:?}");
        assert!(elapsed < limit * 3, "{case}: ended after {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_with_keep_alives_longer_than_the_read_timeout_succeeds() {
    // Two read timeouts of prefill with mlx-lm's progress comments and no token, inside the
    // token-silence limit of four.
    let server = FakeServer::builder()
        .dialect(Dialect::Mlx)
        .prompt_tokens(800)
        .prefill_tok_per_s(1000.0)
        .keepalive_every(100)
        .reply(Reply::fixed("abcd".repeat(4)))
        .start()
        .await;
    let started = Instant::now();
    let outcome = chat(&server, READ_TIMEOUT, &request("hi", 64)).await;

    assert!(
        started.elapsed() > READ_TIMEOUT * 2,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(outcome.content, "abcd".repeat(4));
}
