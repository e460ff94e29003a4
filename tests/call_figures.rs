//! Every figure of one call, as DESIGN.md's "What each figure means" defines it, measured by the
//! streaming client against a fake server whose prefill and decode rates are known.
//!
//! The fake sleeps for `prompt_tokens / prefill` before its first token and `1 / decode` between
//! tokens, on a fixed schedule, so the figures have expected values. Sleeps never end early,
//! so the lower bound of each band is firm; the upper bound leaves room for a busy machine but
//! still fails when a figure is computed from the wrong moments.

mod common;

use serde_json::json;
use tandem::backend::Role;
use tandem::fake_server::{Dialect, FakeServer, Reply};
use tandem::record::{Category, PromptEvalSource, TokenSource};

use common::{EASY, HARD, PATIENT, assert_near, chat, client, record_of, request};

/// Prompt tokens charged per request: 1000 at 2000 tok/s is half a second of prefill.
const PROMPT_TOKENS: u64 = 1000;
const PREFILL_TOK_PER_S: f64 = 2000.0;
const PREFILL_SECONDS: f64 = PROMPT_TOKENS as f64 / PREFILL_TOK_PER_S;

/// Reply tokens (four characters each): 201 at 400 tok/s is 200 gaps, half a second of decode.
const REPLY_TOKENS: u64 = 201;
const DECODE_TOK_PER_S: f64 = 400.0;
const DECODE_SECONDS: f64 = (REPLY_TOKENS - 1) as f64 / DECODE_TOK_PER_S;

/// How far a timed figure may stray from its expected value.
const BAND: f64 = 0.3;

fn reply_text() -> String {
    "abcd".repeat(REPLY_TOKENS as usize)
}

fn timed_server(dialect: Dialect) -> tandem::fake_server::FakeServerBuilder {
    FakeServer::builder()
        .dialect(dialect)
        .prompt_tokens(PROMPT_TOKENS)
        .prefill_tok_per_s(PREFILL_TOK_PER_S)
        .decode_tok_per_s(DECODE_TOK_PER_S)
        .reply(Reply::fixed(reply_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_call_figures_follow_the_servers_prefill_and_decode_rates() {
    let server = timed_server(Dialect::LlamaCpp).start().await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    let ttft = call.time_to_first_token_seconds;
    let generation = call.generation_time_seconds;
    assert_near("time_to_first_token_seconds", ttft, PREFILL_SECONDS, BAND);
    assert_near(
        "generation_time_seconds",
        generation,
        PREFILL_SECONDS + DECODE_SECONDS,
        BAND,
    );
    assert_near(
        "decode_tokens_per_second",
        call.decode_tokens_per_second.unwrap(),
        DECODE_TOK_PER_S,
        BAND,
    );
    assert_near(
        "tokens_per_second",
        call.tokens_per_second,
        REPLY_TOKENS as f64 / (PREFILL_SECONDS + DECODE_SECONDS),
        BAND,
    );

    // The definitions, exactly (up to the record's rounding).
    assert!((call.tokens_per_second - REPLY_TOKENS as f64 / generation).abs() < 0.01);
    let decode = (REPLY_TOKENS - 1) as f64 / (generation - ttft);
    assert!((call.decode_tokens_per_second.unwrap() - decode).abs() / decode < 1e-3);

    // The client's clock starts when the request is sent, before the server receives it, and
    // reads each token after the server sent it.
    let log = &server.stats().requests_log[0];
    let server_ttft = (log.first_token.unwrap() - log.received).as_secs_f64();
    let server_span = (log.last_token.unwrap() - log.received).as_secs_f64();
    assert!(
        ttft >= server_ttft - 1e-6,
        "{ttft} < server's {server_ttft}"
    );
    assert!(
        generation >= server_span - 1e-6,
        "{generation} < {server_span}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_prompt_eval_time_is_the_servers_own_prompt_ms() {
    let server = timed_server(Dialect::LlamaCpp).start().await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    let prompt_ms = outcome.timings.unwrap().prompt_ms.unwrap();
    assert_eq!(call.prompt_eval_source, PromptEvalSource::Server);
    assert!((call.prompt_eval_time_seconds - prompt_ms / 1000.0).abs() < 1e-6);
    assert_near(
        "prompt_eval_time_seconds",
        call.prompt_eval_time_seconds,
        PREFILL_SECONDS,
        BAND,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_prompt_eval_time_leaves_out_waiting_for_a_slot() {
    // One slot: the second call waits for the first (about a second) before its prefill starts.
    let server = timed_server(Dialect::LlamaCpp).slots(1).start().await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let (a, b) = tokio::join!(chat_client.chat(&req), chat_client.chat(&req));
    let (a, b) = (a.unwrap(), b.unwrap());
    let later = if a.timeline.first > b.timeline.first {
        a
    } else {
        b
    };
    let call = record_of(&server, &chat_client, &req, &later, EASY);

    assert!(call.time_to_first_token_seconds >= 2.0 * PREFILL_SECONDS + DECODE_SECONDS);
    assert_eq!(call.prompt_eval_source, PromptEvalSource::Server);
    assert_near(
        "prompt_eval_time_seconds",
        call.prompt_eval_time_seconds,
        PREFILL_SECONDS,
        BAND,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_server_timings_prompt_eval_time_is_the_measured_ttft() {
    for dialect in [Dialect::Mlx, Dialect::Vllm] {
        let server = timed_server(dialect).start().await;
        let chat_client = client(&server, PATIENT);
        let req = request("Grade this.", 1024);
        let outcome = chat_client.chat(&req).await.unwrap();
        let call = record_of(&server, &chat_client, &req, &outcome, EASY);

        assert!(outcome.timings.is_none(), "{dialect:?}");
        assert_eq!(
            call.prompt_eval_source,
            PromptEvalSource::Ttft,
            "{dialect:?}"
        );
        assert_eq!(
            call.prompt_eval_time_seconds, call.time_to_first_token_seconds,
            "{dialect:?}"
        );
        assert_near(
            "prompt_eval_time_seconds",
            call.prompt_eval_time_seconds,
            PREFILL_SECONDS,
            BAND,
        );
    }
}

#[tokio::test]
async fn token_counts_are_the_servers_usage() {
    // The server counts one token more than it streams (as mlx-lm counts its stop token), and
    // charges a prompt size no estimate from the characters would give.
    for dialect in [Dialect::LlamaCpp, Dialect::Mlx, Dialect::Vllm] {
        let server = FakeServer::builder()
            .dialect(dialect)
            .prompt_tokens(1234)
            .extra_completion_tokens(1)
            .reply(Reply::fixed("abcd".repeat(10)))
            .start()
            .await;
        let chat_client = client(&server, PATIENT);
        let req = request("Grade this.", 1024);
        let outcome = chat_client.chat(&req).await.unwrap();
        let call = record_of(&server, &chat_client, &req, &outcome, EASY);

        assert_eq!(call.token_source, TokenSource::Server, "{dialect:?}");
        assert_eq!(call.prompt_tokens, 1234, "{dialect:?}");
        assert_eq!(call.output_tokens, 11, "{dialect:?}");
        assert_eq!(call.total_tokens, 1245, "{dialect:?}");
    }
}

#[tokio::test]
async fn token_counts_are_estimated_and_marked_when_the_server_sends_no_usage() {
    for dialect in [Dialect::LlamaCpp, Dialect::Vllm] {
        let server = FakeServer::builder()
            .dialect(dialect)
            .usage(false)
            .reply(Reply::fixed("abcd".repeat(10)))
            .start()
            .await;
        let chat_client = client(&server, PATIENT);
        let req = request("Grade this.", 1024);
        let outcome = chat_client.chat(&req).await.unwrap();
        let call = record_of(&server, &chat_client, &req, &outcome, EASY);

        assert!(outcome.usage.is_none(), "{dialect:?}");
        assert_eq!(call.token_source, TokenSource::Estimated, "{dialect:?}");
        assert_eq!(call.output_tokens, 10, "{dialect:?}");
        let prompt_chars = common::prompt_chars(&req) as u64;
        assert_eq!(call.prompt_tokens, prompt_chars.div_ceil(4), "{dialect:?}");
        assert_eq!(call.total_tokens, call.prompt_tokens + 10, "{dialect:?}");
        // llama.cpp sends no timings either then, so prefill falls back to the TTFT.
        assert_eq!(
            call.prompt_eval_source,
            PromptEvalSource::Ttft,
            "{dialect:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_keepalives_and_the_role_chunk_do_not_start_the_first_token_clock() {
    // mlx-lm sends its role-only chunk when the call starts, then a keep-alive comment every
    // 50 prompt tokens (every 25 ms here) through half a second of prefill.
    let server = timed_server(Dialect::Mlx).keepalive_every(50).start().await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    assert!(
        call.time_to_first_token_seconds >= PREFILL_SECONDS,
        "the first-token clock started at {} s, before prefill ended",
        call.time_to_first_token_seconds
    );
    assert_near(
        "time_to_first_token_seconds",
        call.time_to_first_token_seconds,
        PREFILL_SECONDS,
        BAND,
    );
    assert_near(
        "decode_tokens_per_second",
        call.decode_tokens_per_second.unwrap(),
        DECODE_TOK_PER_S,
        BAND,
    );
    assert_eq!(outcome.content, reply_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoning_delta_starts_the_first_token_clock() {
    // 0.05 s of prefill, then 40 reasoning tokens at 200 tok/s (0.2 s) before the answer.
    let reasoning_tokens = 40;
    for (dialect, field) in [
        (Dialect::LlamaCpp, None),
        (Dialect::Mlx, None),
        (Dialect::Vllm, Some("reasoning")),
    ] {
        let mut builder = FakeServer::builder()
            .dialect(dialect)
            .prompt_tokens(100)
            .prefill_tok_per_s(PREFILL_TOK_PER_S)
            .decode_tok_per_s(200.0)
            .reasoning_tokens(reasoning_tokens)
            .reply(Reply::fixed("abcd".repeat(5)));
        if let Some(field) = field {
            builder = builder.reasoning_field(field);
        }
        let server = builder.start().await;
        let chat_client = client(&server, PATIENT);
        let req = request("Grade this.", 1024);
        let outcome = chat_client.chat(&req).await.unwrap();
        let call = record_of(&server, &chat_client, &req, &outcome, EASY);

        assert!(
            call.time_to_first_token_seconds < 0.05 + 0.1,
            "{dialect:?}: TTFT {} s waited for the answer instead of the reasoning",
            call.time_to_first_token_seconds
        );
        assert_eq!(outcome.content, "abcd".repeat(5), "{dialect:?}");
        assert_eq!(outcome.reasoning.chars().count(), 4 * reasoning_tokens);
        assert_eq!(
            call.output_tokens,
            reasoning_tokens as u64 + 5,
            "{dialect:?}"
        );
    }
}

#[tokio::test]
async fn every_request_streams_with_usage_and_a_max_tokens() {
    let server = FakeServer::builder().start().await;
    let mut req = request("Grade this.", 321);
    req.json_schema = Some(json!({
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 3}},
        "required": ["score"],
    }));
    let outcome = chat(&server, PATIENT, &req).await;
    let mut bare = request("Grade that.", 7);
    bare.seed = None;
    chat(&server, PATIENT, &bare).await;

    assert_eq!(outcome.content, r#"{"score":3}"#);
    let bodies = server.stats().bodies();
    assert_eq!(bodies.len(), 2);
    for (body, max_tokens) in bodies.iter().zip([321, 7]) {
        assert_eq!(body["max_tokens"], max_tokens, "{body}");
        assert_eq!(body["stream"], true, "{body}");
        assert_eq!(body["stream_options"]["include_usage"], true, "{body}");
        assert_eq!(body["model"], common::MODEL, "{body}");
    }
    assert_eq!(bodies[0]["seed"], 7);
    assert_eq!(bodies[0]["response_format"]["type"], "json_schema");
    assert_eq!(
        bodies[0]["response_format"]["json_schema"]["schema"]["required"],
        json!(["score"])
    );
    assert!(bodies[1].get("seed").is_none());
    assert!(bodies[1].get("response_format").is_none());
}

#[tokio::test]
async fn a_call_record_names_its_backend_role_and_attempts() {
    let server = FakeServer::builder()
        .reply(Reply::fixed("abcdefgh"))
        .start()
        .await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    assert_eq!(call.role, Role::CodeAnalysis);
    assert_eq!(call.model, common::MODEL);
    assert_eq!(call.server, "fake");
    assert_eq!(call.server_url, server.url());
    assert_eq!(call.attempts, 1);
    assert_eq!(call.queue_wait_seconds, 0.0);
    assert_eq!(call.finish_reason.as_deref(), Some("stop"));
    assert_eq!(call.category, Category::Excellent);
    assert!(call.sent_at <= call.first_token_at && call.first_token_at <= call.finished_at);

    let slow = record_of(&server, &chat_client, &req, &outcome, HARD);
    assert_eq!(slow.category, Category::NeedsOptimisation);
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_is_recorded_with_finish_reason_length() {
    let server = FakeServer::builder()
        .reply(Reply::fixed("abcd".repeat(50)))
        .start()
        .await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 12);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    assert_eq!(outcome.content, "abcd".repeat(12));
    assert_eq!(call.finish_reason.as_deref(), Some("length"));
    assert_eq!(call.output_tokens, 12);
}

#[tokio::test]
async fn a_one_token_reply_has_no_decode_rate() {
    let server = FakeServer::builder()
        .reply(Reply::fixed("ok"))
        .start()
        .await;
    let chat_client = client(&server, PATIENT);
    let req = request("Grade this.", 1024);
    let outcome = chat_client.chat(&req).await.unwrap();
    let call = record_of(&server, &chat_client, &req, &outcome, EASY);

    assert_eq!(call.output_tokens, 1);
    assert_eq!(call.decode_tokens_per_second, None);
    assert_eq!(
        call.time_to_first_token_seconds,
        call.generation_time_seconds
    );
}
