//! A streaming client for the OpenAI-compatible chat API, written to measure honestly.
//!
//! Each request is sent with `stream: true` and `stream_options.include_usage`, so that the
//! time to the first token can be seen and the server's own token counts arrive at the end.
//! The client timestamps the moment the request is sent, the first content or reasoning delta
//! (never a comment, keep-alive or role-only chunk) and the last delta; it keeps the server's
//! `usage` from whichever chunk carries it and llama.cpp's `timings` when present.
//!
//! One call is one request: retrying is the scheduler's decision, because a retry must be
//! visible in the record.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sse::SseParser;
use crate::config::BackendConfig;

/// How much of an error body is kept in a message.
const BODY_EXCERPT_CHARS: usize = 300;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// What to ask a server for; the model name comes from the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    /// Always sent: mlx-lm otherwise stops at 512 tokens, reasoning included.
    pub max_tokens: u32,
    pub temperature: f64,
    pub seed: Option<u64>,
    /// A JSON schema for the reply, sent in the nested OpenAI `response_format` form.
    pub json_schema: Option<Value>,
}

/// The server's token counts, from its `usage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
}

/// The server's own timings, where it reports them (llama.cpp's `timings`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServerTimings {
    /// Prefill time, excluding time spent waiting for a slot.
    pub prompt_ms: Option<f64>,
    pub prompt_n: Option<u64>,
    pub cache_n: Option<u64>,
    pub predicted_ms: Option<f64>,
    pub predicted_n: Option<u64>,
}

/// The three moments every figure of a call is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeline {
    /// When the request was handed to the connection.
    pub sent: Instant,
    /// The wall-clock time at `sent`; later moments are placed by the monotonic clock.
    pub sent_wall: DateTime<Local>,
    /// The first content or reasoning delta, if any came.
    pub first: Option<Instant>,
    /// The last content or reasoning delta, or the end of the stream if none came.
    pub end: Instant,
}

impl Timeline {
    /// Seconds from `sent` to a later instant.
    pub fn since_sent(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.sent).as_secs_f64()
    }

    /// The wall-clock time of a later instant.
    pub fn wall(&self, at: Instant) -> DateTime<Local> {
        let offset = at.saturating_duration_since(self.sent);
        self.sent_wall + chrono::Duration::from_std(offset).unwrap_or_default()
    }
}

/// A finished call: the reply and its measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// The answer text (content deltas joined).
    pub content: String,
    /// Reasoning text the server separated from the answer (`reasoning`/`reasoning_content`).
    pub reasoning: String,
    /// `stop`, `length` and so on, as the server said it.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub timings: Option<ServerTimings>,
    pub timeline: Timeline,
    /// The model name the server reported, which may differ from the one requested.
    pub served_model: Option<String>,
}

/// Why a call produced no answer. Each kind is counted separately in the batch's reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url} sent nothing for {seconds} s (read timeout)")]
    Timeout { url: String, seconds: u64 },
    #[error("{url} answered HTTP {status}: {excerpt}")]
    Http {
        url: String,
        status: u16,
        excerpt: String,
    },
    #[error("the prompt does not fit the context of {url}: {detail}")]
    ContextOverflow { url: String, detail: String },
    #[error("the stream from {url} ended before its final chunk: {detail}")]
    StreamCut { url: String, detail: String },
    #[error("{url} sent an error inside its stream: {detail}")]
    ServerError { url: String, detail: String },
    #[error("cannot decode the stream from {url}: {detail}")]
    Decode { url: String, detail: String },
}

impl CallError {
    /// A stable name for the kind, used in records and failure counts.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Connect { .. } => "connect",
            CallError::Timeout { .. } => "timeout",
            CallError::Http { .. } => "http_status",
            CallError::ContextOverflow { .. } => "context_overflow",
            CallError::StreamCut { .. } => "stream_cut",
            CallError::ServerError { .. } => "server_error",
            CallError::Decode { .. } => "decode",
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Connect { .. }
            | CallError::Timeout { .. }
            | CallError::StreamCut { .. }
            | CallError::ServerError { .. } => true,
            CallError::Http { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            CallError::ContextOverflow { .. } | CallError::Decode { .. } => false,
        }
    }
}

/// A client for one backend.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    endpoint: String,
    base: String,
    model: String,
    api_key: Option<String>,
    read_timeout: Duration,
    /// The backend's `seed` setting: whether a request's seed is sent.
    send_seed: bool,
    /// The backend's `structured_output` setting: whether a schema is sent.
    structured_output: bool,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// A client for a backend, reading its key from the environment variable the config names.
    pub fn new(
        backend: &BackendConfig,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Self, CallError> {
        let base = backend.url.as_str().trim_end_matches('/').to_string();
        let endpoint = if base.ends_with("/v1") {
            format!("{base}/chat/completions")
        } else {
            format!("{base}/v1/chat/completions")
        };
        let api_key = backend
            .api_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|key| !key.is_empty());
        // No total deadline: a long generation is not a failure. The read timeout restarts with
        // every chunk, so only a stalled stream times out.
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            // A fresh connection per call: model servers close idle keep-alive connections
            // (llama-server after a few seconds), and a request written to one that is closing
            // fails with "connection closed before message completed". Connecting on a local
            // network costs far less than the retry would.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(|e| CallError::Connect {
                url: endpoint.clone(),
                detail: e.to_string(),
            })?;
        Ok(ChatClient {
            http,
            endpoint,
            base,
            model: backend.model.clone(),
            api_key,
            read_timeout,
            send_seed: backend.send_seed,
            structured_output: backend.structured_output,
        })
    }

    /// The URL chat requests are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's base URL, as configured.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The JSON body of a request, as sent.
    pub fn body(&self, request: &ChatRequest) -> Value {
        let mut body = serde_json::json!({
            "model": self.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        });
        if let Some(seed) = request.seed.filter(|_| self.send_seed) {
            body["seed"] = seed.into();
        }
        if let Some(schema) = request
            .json_schema
            .as_ref()
            .filter(|_| self.structured_output)
        {
            body["response_format"] = serde_json::json!({
                "type": "json_schema",
                "json_schema": {"name": "reply", "strict": true, "schema": schema},
            });
        }
        body
    }

    /// Sends one request and reads its stream to the end.
    pub async fn chat(&self, request: &ChatRequest) -> Result<CallOutcome, CallError> {
        let body = self.body(request);
        let mut builder = self.http.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }

        let sent_wall = Local::now();
        let sent = Instant::now();
        let response = builder.send().await.map_err(|e| self.transport_error(&e))?;

        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.http_error(status.as_u16(), &text));
        }

        let mut stream = StreamState::new(sent, sent_wall);
        let mut parser = SseParser::new();
        let mut bytes = response.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| self.transport_error(&e))?;
            let now = Instant::now();
            let events = parser.push(&chunk).map_err(|e| CallError::Decode {
                url: self.endpoint.clone(),
                detail: e.to_string(),
            })?;
            for event in events {
                stream
                    .take(&event.data, now)
                    .map_err(|detail| self.stream_error(detail))?;
            }
            if stream.done {
                break;
            }
        }
        if !stream.done {
            let tail = parser.finish().map_err(|e| CallError::Decode {
                url: self.endpoint.clone(),
                detail: e.to_string(),
            })?;
            if let Some(event) = tail {
                stream
                    .take(&event.data, Instant::now())
                    .map_err(|detail| self.stream_error(detail))?;
            }
        }
        stream
            .finish(Instant::now())
            .map_err(|detail| CallError::StreamCut {
                url: self.endpoint.clone(),
                detail,
            })
    }

    /// A `GET` on a path of the server, for health checks: success or the error it met.
    pub async fn get(&self, path: &str) -> Result<(), CallError> {
        let url = format!("{}{path}", self.base.trim_end_matches("/v1"));
        let mut builder = self.http.get(&url).timeout(Duration::from_secs(10));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder.send().await.map_err(|e| {
            let mut error = self.transport_error(&e);
            if let CallError::Connect { url: u, .. } | CallError::Timeout { url: u, .. } =
                &mut error
            {
                u.clone_from(&url);
            }
            error
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(CallError::Http {
            url,
            status: status.as_u16(),
            excerpt: excerpt(&body),
        })
    }

    fn transport_error(&self, err: &reqwest::Error) -> CallError {
        let url = self.endpoint.clone();
        if err.is_timeout() {
            CallError::Timeout {
                url,
                seconds: self.read_timeout.as_secs(),
            }
        } else if err.is_connect() {
            CallError::Connect {
                url,
                detail: error_chain(err),
            }
        } else if err.is_body() || err.is_decode() {
            CallError::StreamCut {
                url,
                detail: error_chain(err),
            }
        } else {
            CallError::Connect {
                url,
                detail: error_chain(err),
            }
        }
    }

    fn http_error(&self, status: u16, body: &str) -> CallError {
        let excerpt = excerpt(body);
        if is_context_overflow(body) {
            return CallError::ContextOverflow {
                url: self.endpoint.clone(),
                detail: excerpt,
            };
        }
        CallError::Http {
            url: self.endpoint.clone(),
            status,
            excerpt,
        }
    }

    fn stream_error(&self, failure: StreamFailure) -> CallError {
        match failure {
            StreamFailure::Decode(detail) => CallError::Decode {
                url: self.endpoint.clone(),
                detail,
            },
            StreamFailure::Server(detail) if is_context_overflow(&detail) => {
                CallError::ContextOverflow {
                    url: self.endpoint.clone(),
                    detail,
                }
            }
            StreamFailure::Server(detail) => CallError::ServerError {
                url: self.endpoint.clone(),
                detail,
            },
        }
    }
}

/// The error and its causes on one line, so the root cause (refused, reset) is visible.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// The start of a body, on one line.
fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > BODY_EXCERPT_CHARS {
        let cut: String = flat.chars().take(BODY_EXCERPT_CHARS).collect();
        format!("{cut}…")
    } else if flat.is_empty() {
        "(empty body)".into()
    } else {
        flat
    }
}

/// Recognises the context-overflow errors of llama.cpp, vLLM and OpenAI-style servers.
fn is_context_overflow(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("exceed_context_size")
        || lower.contains("context length")
        || lower.contains("context_length_exceeded")
        || lower.contains("exceeds the available context")
        || lower.contains("maximum context")
}

/// A problem found while reading the stream's chunks.
#[derive(Debug)]
enum StreamFailure {
    Decode(String),
    Server(String),
}

/// A streamed chat chunk; every field is optional because servers differ.
#[derive(Debug, Default, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    timings: Option<WireTimings>,
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

#[derive(Debug, Default, Deserialize)]
struct WireTimings {
    prompt_ms: Option<f64>,
    prompt_n: Option<u64>,
    cache_n: Option<u64>,
    predicted_ms: Option<f64>,
    predicted_n: Option<u64>,
}

/// What has been read of a stream so far.
#[derive(Debug)]
struct StreamState {
    sent: Instant,
    sent_wall: DateTime<Local>,
    first: Option<Instant>,
    last: Option<Instant>,
    content: String,
    reasoning: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    timings: Option<ServerTimings>,
    model: Option<String>,
    done: bool,
}

impl StreamState {
    fn new(sent: Instant, sent_wall: DateTime<Local>) -> Self {
        StreamState {
            sent,
            sent_wall,
            first: None,
            last: None,
            content: String::new(),
            reasoning: String::new(),
            finish_reason: None,
            usage: None,
            timings: None,
            model: None,
            done: false,
        }
    }

    /// Takes one event's data, received at `now`.
    fn take(&mut self, data: &str, now: Instant) -> Result<(), StreamFailure> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
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
                .unwrap_or_else(|| error.to_string());
            return Err(StreamFailure::Server(excerpt(&message)));
        }
        if self.model.is_none() {
            self.model = chunk.model;
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                let mut produced = false;
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.content.push_str(&text);
                    produced = true;
                }
                for text in [delta.reasoning, delta.reasoning_content]
                    .into_iter()
                    .flatten()
                {
                    if !text.is_empty() {
                        self.reasoning.push_str(&text);
                        produced = true;
                    }
                }
                if produced {
                    self.first.get_or_insert(now);
                    self.last = Some(now);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        if let Some(usage) = chunk.usage {
            let prompt = usage.prompt_tokens.unwrap_or(0);
            let completion = usage.completion_tokens.unwrap_or(0);
            self.usage = Some(Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: usage.total_tokens.unwrap_or(prompt + completion),
                cached_tokens: usage.prompt_tokens_details.and_then(|d| d.cached_tokens),
            });
        }
        if let Some(t) = chunk.timings {
            self.timings = Some(ServerTimings {
                prompt_ms: t.prompt_ms,
                prompt_n: t.prompt_n,
                cache_n: t.cache_n,
                predicted_ms: t.predicted_ms,
                predicted_n: t.predicted_n,
            });
        }
        Ok(())
    }

    /// Ends the stream at `now`; a stream without its final chunk is an error.
    fn finish(self, now: Instant) -> Result<CallOutcome, String> {
        // A stream is whole when it said [DONE], or when it carried a finish reason and usage
        // (some servers close the connection right after the usage chunk).
        let whole = self.done || (self.finish_reason.is_some() && self.usage.is_some());
        if !whole {
            let got = if self.first.is_some() {
                format!(
                    "{} characters of answer, no finish reason",
                    self.content.len()
                )
            } else {
                "no tokens at all".to_string()
            };
            return Err(format!("connection closed after {got}"));
        }
        Ok(CallOutcome {
            content: self.content,
            reasoning: self.reasoning,
            finish_reason: self.finish_reason,
            usage: self.usage,
            timings: self.timings,
            timeline: Timeline {
                sent: self.sent,
                sent_wall: self.sent_wall,
                first: self.first,
                end: self.last.unwrap_or(now),
            },
            served_model: self.model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        StreamState::new(Instant::now(), Local::now())
    }

    #[test]
    fn role_only_and_empty_deltas_do_not_start_the_first_token_clock() {
        let mut s = state();
        let t = Instant::now();
        s.take(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            t,
        )
        .unwrap();
        assert!(s.first.is_none());
        s.take(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#, t)
            .unwrap();
        assert_eq!(s.first, Some(t));
        assert_eq!(s.reasoning, "hmm");
    }

    #[test]
    fn usage_is_read_from_whichever_chunk_carries_it() {
        let mut s = state();
        let t = Instant::now();
        s.take(
            r#"{"choices":[{"delta":{"content":"ok"},"finish_reason":"stop"}],
               "usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13},
               "timings":{"prompt_ms":12.5,"prompt_n":10,"predicted_ms":40.0,"predicted_n":3}}"#,
            t,
        )
        .unwrap();
        s.take("[DONE]", t).unwrap();
        let outcome = s.finish(t).unwrap();
        assert_eq!(outcome.usage.unwrap().completion_tokens, 3);
        assert_eq!(outcome.timings.unwrap().prompt_ms, Some(12.5));
        assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn a_stream_without_its_final_chunk_is_cut() {
        let mut s = state();
        s.take(
            r#"{"choices":[{"delta":{"content":"partial"}}]}"#,
            Instant::now(),
        )
        .unwrap();
        let err = s.finish(Instant::now()).unwrap_err();
        assert!(err.contains("no finish reason"), "{err}");
    }

    #[test]
    fn an_error_object_inside_the_stream_is_a_server_error() {
        let mut s = state();
        let err = s
            .take(
                r#"{"error":{"code":500,"message":"slot crashed"}}"#,
                Instant::now(),
            )
            .unwrap_err();
        assert!(matches!(err, StreamFailure::Server(m) if m == "slot crashed"));
    }

    #[test]
    fn context_overflow_bodies_are_recognised() {
        assert!(is_context_overflow(
            r#"{"error":{"type":"exceed_context_size_error","n_prompt_tokens":9000,"n_ctx":4096}}"#
        ));
        assert!(is_context_overflow(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(!is_context_overflow("model not found"));
    }
}
