//! The OpenAI-compatible dialect: `POST /v1/chat/completions`, streamed as server-sent events.
//!
//! One request shape serves every OpenAI-compatible server, written for the strictest of them:
//!
//! - `model` is always the backend's configured name, because mlx_lm.server unloads its model
//!   and tries to load any other name it is sent (`default_model` means "the one loaded").
//! - `max_tokens` is always sent: mlx_lm.server stops at 512 otherwise, reasoning included.
//! - `stream_options: {"include_usage": true}` is always sent: vLLM and Ollama's `/v1` report
//!   usage only when asked, and mlx_lm.server fails on `stream_options` without that key.
//! - The JSON schema goes in the nested `response_format.json_schema.schema` form, the one
//!   llama.cpp and vLLM read (mlx_lm.server ignores `response_format`; the reply is validated
//!   either way).
//!
//! Reading the stream, every server's extras are taken when present: `usage` from whichever
//! chunk carries it; llama.cpp's `timings` (always on its last chunk); vLLM's per-request
//! `metrics` (on the usage chunk, with `--enable-per-request-metrics`); reasoning from
//! `reasoning` (mlx-lm, Ollama, newer vLLM) or `reasoning_content` (llama.cpp, older vLLM).
//! Comments such as mlx-lm's `: keepalive 12/80` are skipped by the SSE parser.

use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use super::client::{ChatRequest, ServerTimings, Usage};
use super::dialect::{Reply, StreamFailure};
use super::error::excerpt;
use super::sse::SseParser;

/// The chat endpoint under a base URL that may or may not end in `/v1`.
pub(crate) fn chat_url(base: &str) -> String {
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// The JSON body of a request, as sent.
pub(crate) fn body(model: &str, request: &ChatRequest) -> Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": request.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    });
    if let Some(seed) = request.seed {
        body["seed"] = seed.into();
    }
    if let Some(schema) = &request.json_schema {
        body["response_format"] = serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": "reply", "strict": true, "schema": schema},
        });
    }
    body
}

/// Reads a server-sent-event body into a [`Reply`].
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    parser: SseParser,
}

impl SseReader {
    /// Feeds the next bytes of the body, received at `now`.
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        now: Instant,
        reply: &mut Reply,
    ) -> Result<(), StreamFailure> {
        let events = self
            .parser
            .push(bytes)
            .map_err(|e| StreamFailure::Decode(e.to_string()))?;
        for event in events {
            if reply.done {
                break;
            }
            if event.event.as_deref() == Some("error") {
                return Err(StreamFailure::Server(error_message(&event.data)));
            }
            take(reply, &event.data, now)?;
        }
        Ok(())
    }

    /// Takes a last event the body did not terminate with a blank line.
    pub(crate) fn end(&mut self, now: Instant, reply: &mut Reply) -> Result<(), StreamFailure> {
        if reply.done {
            return Ok(());
        }
        let tail = self
            .parser
            .finish()
            .map_err(|e| StreamFailure::Decode(e.to_string()))?;
        match tail {
            Some(event) if event.event.as_deref() == Some("error") => {
                Err(StreamFailure::Server(error_message(&event.data)))
            }
            Some(event) => take(reply, &event.data, now),
            None => Ok(()),
        }
    }
}

/// The message of an error event's data, which may be JSON or plain text.
fn error_message(data: &str) -> String {
    super::error::server_message(data)
}

/// Takes one event's data, received at `now`.
fn take(reply: &mut Reply, data: &str, now: Instant) -> Result<(), StreamFailure> {
    let data = data.trim();
    if data.is_empty() {
        return Ok(());
    }
    reply.event(now);
    if data == "[DONE]" {
        reply.done = true;
        return Ok(());
    }
    let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
        StreamFailure::Decode(format!(
            "a chunk is not valid JSON ({e}): {}",
            excerpt(data)
        ))
    })?;
    if let Some(error) = chunk.error {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| match &error {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        return Err(StreamFailure::Server(excerpt(&message)));
    }
    if reply.model.is_none() {
        reply.model = chunk.model;
    }
    for choice in chunk.choices {
        if let Some(delta) = choice.delta {
            let reasoning = match (delta.reasoning, delta.reasoning_content) {
                (Some(a), Some(b)) => Some(a + &b),
                (a, b) => a.or(b),
            };
            reply.text(delta.content.as_deref(), reasoning.as_deref(), now);
        }
        if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
            reply.finish_reason = Some(reason);
        }
    }
    if let Some(usage) = chunk.usage {
        let prompt = usage.prompt_tokens.unwrap_or(0);
        let completion = usage.completion_tokens.unwrap_or(0);
        reply.usage = Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: usage.total_tokens.unwrap_or(prompt + completion),
            cached_tokens: usage.prompt_tokens_details.and_then(|d| d.cached_tokens),
        });
    }
    if let Some(t) = chunk.timings {
        reply.merge_timings(ServerTimings {
            prompt_ms: t.prompt_ms,
            prompt_n: t.prompt_n,
            cache_n: t.cache_n,
            predicted_ms: t.predicted_ms,
            predicted_n: t.predicted_n,
            ..ServerTimings::default()
        });
    }
    if let Some(m) = chunk.metrics {
        // vLLM's `time_to_first_token_ms` runs from the moment the request was scheduled to its
        // first token: prefill plus the first decoding step, without the queue, which is what
        // llama.cpp's `prompt_ms` measures too. Its queue wait is kept apart.
        reply.merge_timings(ServerTimings {
            prompt_ms: m.time_to_first_token_ms,
            predicted_ms: m.generation_time_ms,
            queue_ms: m.queue_time_ms,
            ..ServerTimings::default()
        });
    }
    Ok(())
}

/// A streamed chat chunk; every field is optional because servers differ.
#[derive(Debug, Default, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    timings: Option<WireTimings>,
    metrics: Option<WireMetrics>,
    model: Option<String>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    content: Option<String>,
    reasoning: Option<String>,
    reasoning_content: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptTokensDetails {
    cached_tokens: Option<u64>,
}

/// llama.cpp's `timings`.
#[derive(Debug, Default, Deserialize)]
struct WireTimings {
    prompt_ms: Option<f64>,
    prompt_n: Option<u64>,
    cache_n: Option<u64>,
    predicted_ms: Option<f64>,
    predicted_n: Option<u64>,
}

/// vLLM's per-request `metrics`; every field may be `null`.
#[derive(Debug, Default, Deserialize)]
struct WireMetrics {
    time_to_first_token_ms: Option<f64>,
    generation_time_ms: Option<f64>,
    queue_time_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Local;

    fn reply() -> Reply {
        Reply::new(Instant::now(), Local::now())
    }

    #[test]
    fn role_only_chunks_do_not_start_the_first_token_clock() {
        let mut r = reply();
        let t = Instant::now();
        take(
            &mut r,
            r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#,
            t,
        )
        .unwrap();
        assert!(!r.started());
        take(
            &mut r,
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            t,
        )
        .unwrap();
        assert!(r.started());
    }

    #[test]
    fn usage_and_timings_are_read_from_whichever_chunk_carries_them() {
        let mut r = reply();
        let t = Instant::now();
        take(
            &mut r,
            r#"{"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}],
               "usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13},
               "timings":{"prompt_ms":12.5,"prompt_n":10,"predicted_ms":40.0,"predicted_n":3}}"#,
            t,
        )
        .unwrap();
        take(&mut r, "[DONE]", t).unwrap();
        let outcome = r.finish(t).unwrap();
        assert_eq!(outcome.usage.unwrap().completion_tokens, 3);
        assert_eq!(outcome.timings.unwrap().prompt_ms, Some(12.5));
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn vllm_metrics_give_prefill_and_queue_times() {
        let mut r = reply();
        take(
            &mut r,
            r#"{"choices":[],"usage":{"prompt_tokens":42,"completion_tokens":128},
               "metrics":{"time_to_first_token_ms":85.2,"generation_time_ms":1240.5,
                          "queue_time_ms":12.3,"mean_itl_ms":9.1,"tokens_per_second":103.2}}"#,
            Instant::now(),
        )
        .unwrap();
        let timings = r.timings.unwrap();
        assert_eq!(timings.prompt_ms, Some(85.2));
        assert_eq!(timings.queue_ms, Some(12.3));
        assert_eq!(timings.predicted_ms, Some(1240.5));
    }

    #[test]
    fn null_vllm_metrics_leave_no_server_prefill() {
        let mut r = reply();
        take(
            &mut r,
            r#"{"choices":[],"metrics":{"time_to_first_token_ms":null,"queue_time_ms":null}}"#,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(r.timings.unwrap().prompt_ms, None);
    }

    #[test]
    fn an_error_object_inside_the_stream_is_a_server_error() {
        let err = take(
            &mut reply(),
            r#"{"error":{"code":500,"message":"slot crashed"}}"#,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err, StreamFailure::Server("slot crashed".into()));
    }

    #[test]
    fn a_legacy_error_field_is_a_server_error_not_an_empty_event() {
        let mut reader = SseReader::default();
        let err = reader
            .push(
                b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                  error: {\"code\":500,\"message\":\"context shift disabled\"}\n\n",
                Instant::now(),
                &mut reply(),
            )
            .unwrap_err();
        assert_eq!(err, StreamFailure::Server("context shift disabled".into()));
    }
}
