//! Ollama's native dialect: `POST /api/chat`, streamed as newline-delimited JSON.
//!
//! Ollama's OpenAI-compatible `/v1` reports token counts but no timings, and cannot be told a
//! context size, so a long homework prompt is cut to Ollama's default context (4096 tokens on
//! most machines) without a word. The native endpoint fixes both:
//!
//! - Each streamed line is `{"message": {"content": …, "thinking": …}, "done": false}`; the last
//!   has `"done": true`, a `done_reason`, and the server's figures in **nanoseconds**:
//!   `prompt_eval_duration` (its prefill time, taken as the call's prompt evaluation),
//!   `eval_duration`, `load_duration` (a cold model load, kept apart), `total_duration`, and the
//!   token counts `prompt_eval_count` and `eval_count`. Ollama omits any figure that is zero.
//! - The request sets `options.num_ctx` from the prompt's estimated length plus the reply
//!   budget, so nothing is truncated, and `options.num_predict`, `temperature` and `seed`; the
//!   reply's JSON schema goes in `format`.
//!
//! Ollama reloads a model whenever a request asks for a different `num_ctx`, so the context
//! size is chosen once per server and model and only ever grows during a run: powers of two
//! from 4096, or exactly the backend's `context_length` when the configuration gives one.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use super::client::{ChatRequest, ServerTimings, Usage};
use super::dialect::{Reply, StreamFailure};
use super::error::excerpt;

/// The smallest context tandem asks Ollama for: Ollama's own usual default.
pub const MIN_CONTEXT_TOKENS: u32 = 4096;

/// The chat endpoint under a base URL (a trailing `/v1` is dropped: native routes live at the
/// root).
pub(crate) fn chat_url(base: &str) -> String {
    format!("{}/api/chat", base.trim_end_matches("/v1"))
}

/// The JSON body of a request, as sent, with the context size already chosen.
pub(crate) fn body(model: &str, request: &ChatRequest, num_ctx: u32) -> Value {
    let mut options = serde_json::json!({
        "num_ctx": num_ctx,
        "num_predict": request.max_tokens,
        "temperature": request.temperature,
    });
    if let Some(seed) = request.seed {
        options["seed"] = seed.into();
    }
    let mut body = serde_json::json!({
        "model": model,
        "messages": request.messages,
        "stream": true,
        "options": options,
    });
    if let Some(schema) = &request.json_schema {
        body["format"] = schema.clone();
    }
    body
}

/// The context a request needs: room for the estimated prompt and the whole reply budget,
/// rounded up to a power of two from [`MIN_CONTEXT_TOKENS`], or the configured size.
pub fn context_for(estimated_prompt_tokens: u64, max_tokens: u32, configured: Option<u32>) -> u32 {
    if let Some(size) = configured {
        return size;
    }
    let need = estimated_prompt_tokens + u64::from(max_tokens);
    let mut size = u64::from(MIN_CONTEXT_TOKENS);
    while size < need {
        size *= 2;
    }
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// The context size to send to a server for a model: the largest asked for so far in this
/// process, so that the model is reloaded only when a prompt needs more room than any before.
pub(crate) fn settle_context(server: &str, model: &str, wanted: u32) -> u32 {
    static SIZES: OnceLock<Mutex<HashMap<(String, String), u32>>> = OnceLock::new();
    let mut sizes = SIZES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let size = sizes
        .entry((server.to_string(), model.to_string()))
        .or_insert(wanted);
    *size = (*size).max(wanted);
    *size
}

/// Reads a newline-delimited JSON body into a [`Reply`].
#[derive(Debug, Default)]
pub(crate) struct NdjsonReader {
    line: Vec<u8>,
}

impl NdjsonReader {
    /// Feeds the next bytes of the body, received at `now`; lines may be split anywhere.
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        now: Instant,
        reply: &mut Reply,
    ) -> Result<(), StreamFailure> {
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                take_line(reply, &line, now)?;
            } else {
                self.line.push(byte);
            }
        }
        Ok(())
    }

    /// Takes a last line the body did not end with a newline.
    pub(crate) fn end(&mut self, now: Instant, reply: &mut Reply) -> Result<(), StreamFailure> {
        let line = std::mem::take(&mut self.line);
        take_line(reply, &line, now)
    }
}

fn take_line(reply: &mut Reply, line: &[u8], now: Instant) -> Result<(), StreamFailure> {
    if reply.done {
        return Ok(());
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| StreamFailure::Decode("a line of the stream is not UTF-8".into()))?
        .trim();
    if text.is_empty() {
        return Ok(());
    }
    reply.event(now);
    let line: Line = serde_json::from_str(text).map_err(|e| {
        StreamFailure::Decode(format!("a line is not valid JSON ({e}): {}", excerpt(text)))
    })?;
    if let Some(error) = line.error {
        let message = match error {
            Value::String(s) => s,
            other => other
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_string),
        };
        return Err(StreamFailure::Server(excerpt(&message)));
    }
    if reply.model.is_none() {
        reply.model = line.model;
    }
    if let Some(message) = line.message {
        reply.text(message.content.as_deref(), message.thinking.as_deref(), now);
    }
    if line.done {
        reply.done = true;
        reply.finish_reason = Some(line.done_reason.unwrap_or_else(|| "stop".into()));
        if line.prompt_eval_count.is_some() || line.eval_count.is_some() {
            let prompt = line.prompt_eval_count.unwrap_or(0);
            let completion = line.eval_count.unwrap_or(0);
            reply.usage = Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_tokens: None,
            });
        }
        let ms = |ns: Option<u64>| ns.map(|ns| ns as f64 / 1e6);
        reply.merge_timings(ServerTimings {
            prompt_ms: ms(line.prompt_eval_duration),
            prompt_n: line.prompt_eval_count,
            predicted_ms: ms(line.eval_duration),
            predicted_n: line.eval_count,
            load_ms: ms(line.load_duration),
            ..ServerTimings::default()
        });
    }
    Ok(())
}

/// One line of a native chat stream; every field may be absent.
#[derive(Debug, Default, Deserialize)]
struct Line {
    model: Option<String>,
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    load_duration: Option<u64>,
    prompt_eval_count: Option<u64>,
    prompt_eval_duration: Option<u64>,
    eval_count: Option<u64>,
    eval_duration: Option<u64>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct LineMessage {
    content: Option<String>,
    thinking: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Message;
    use chrono::Local;

    fn reply() -> Reply {
        Reply::new(Instant::now(), Local::now())
    }

    #[test]
    fn the_final_line_gives_counts_and_nanosecond_durations() {
        let mut r = reply();
        let mut reader = NdjsonReader::default();
        let body = concat!(
            r#"{"model":"llama3.2","message":{"role":"assistant","content":"Hi"},"done":false}"#,
            "\n",
            r#"{"model":"llama3.2","message":{"role":"assistant","content":""},"done":true,"#,
            r#""done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"#,
            r#""prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"#,
            r#""eval_duration":4535599000}"#,
            "\n"
        );
        // Split in the middle of a line, as a network read may.
        let (a, b) = body.as_bytes().split_at(57);
        reader.push(a, Instant::now(), &mut r).unwrap();
        reader.push(b, Instant::now(), &mut r).unwrap();
        let outcome = r.finish(Instant::now()).unwrap();
        let usage = outcome.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (26, 282));
        let timings = outcome.timings.unwrap();
        assert_eq!(timings.prompt_ms, Some(342.546));
        assert_eq!(timings.predicted_ms, Some(4535.599));
        assert_eq!(timings.load_ms, Some(1.334875));
        assert_eq!(outcome.content, "Hi");
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn thinking_counts_as_the_first_token_and_is_kept_apart() {
        let mut r = reply();
        let t = Instant::now();
        take_line(
            &mut r,
            br#"{"message":{"role":"assistant","content":""}}"#,
            t,
        )
        .unwrap();
        assert!(!r.started());
        take_line(
            &mut r,
            br#"{"message":{"content":"","thinking":"Let me"}}"#,
            t,
        )
        .unwrap();
        assert!(r.started());
    }

    #[test]
    fn an_error_line_is_a_server_error() {
        let err = take_line(
            &mut reply(),
            br#"{"error":"model runner crashed"}"#,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err, StreamFailure::Server("model runner crashed".into()));
    }

    #[test]
    fn a_stream_that_stops_before_done_is_cut() {
        let mut r = reply();
        take_line(
            &mut r,
            br#"{"message":{"content":"par"},"done":false}"#,
            Instant::now(),
        )
        .unwrap();
        assert!(r.finish(Instant::now()).is_err());
    }

    #[test]
    fn context_is_sized_to_fit_prompt_and_reply_in_powers_of_two() {
        assert_eq!(context_for(100, 512, None), 4096);
        assert_eq!(context_for(4000, 512, None), 8192);
        assert_eq!(context_for(9000, 1024, None), 16384);
        assert_eq!(context_for(9000, 1024, Some(32768)), 32768);
    }

    #[test]
    fn context_size_only_grows_for_a_server_and_model() {
        let server = "http://127.0.0.1:1/context-growth-test";
        assert_eq!(settle_context(server, "m", 8192), 8192);
        assert_eq!(settle_context(server, "m", 4096), 8192);
        assert_eq!(settle_context(server, "m", 16384), 16384);
        assert_eq!(settle_context(server, "other", 4096), 4096);
    }

    #[test]
    fn the_body_carries_options_and_the_schema_as_format() {
        let request = ChatRequest {
            messages: vec![Message::user("hi")],
            max_tokens: 300,
            temperature: 0.0,
            seed: Some(7),
            json_schema: Some(serde_json::json!({"type": "object"})),
        };
        let body = body("qwen3:8b", &request, 8192);
        assert_eq!(body["options"]["num_ctx"], 8192);
        assert_eq!(body["options"]["num_predict"], 300);
        assert_eq!(body["options"]["seed"], 7);
        assert_eq!(body["format"]["type"], "object");
        assert_eq!(body["model"], "qwen3:8b");
        assert_eq!(body["stream"], true);
    }
}
