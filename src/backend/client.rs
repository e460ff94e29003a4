//! A streaming chat client for one backend, written to measure honestly.
//!
//! Every request is streamed, so that the time to the first token can be seen and the server's
//! own token counts and timings arrive at the end. The client timestamps the moment the request
//! is sent, the first content or reasoning delta (never a comment, keep-alive or role-only
//! chunk) and the last delta. What goes on the wire depends on the backend's `api`
//! ([`super::dialect`]): the OpenAI-compatible chat API ([`super::openai`]) or Ollama's native
//! one ([`super::ollama`]).
//!
//! Two limits end a stream that has gone quiet, and no total deadline, because a long answer is
//! not a failure: the read timeout, which every chunk restarts, and the token-silence limit
//! ([`TOKEN_SILENCE_FACTOR`] times the read timeout), which only a data event restarts. Without
//! the second, a server sending nothing but keep-alive comments would hold a call open forever.
//!
//! Before sending, a request is checked against the backend's `context_length`, where the
//! configuration gives one: mlx_lm.server has no context check of its own and runs an oversized
//! prompt until the GPU runs out of memory, and Ollama's `/v1` cuts it silently.
//!
//! A backend's key, read from the environment variable its `api_key_env` names, is sent as a
//! bearer token and nowhere else: `Debug` leaves it out, and any server message that echoes it
//! has it replaced before the message can reach a log or a record.
//!
//! One call is one request: retrying is the scheduler's decision, because a retry must be
//! visible in the record.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dialect::{BodyReader, Reply, StreamFailure};
use super::error::{classify, excerpt, is_context_overflow};
use super::{ollama, openai};
use crate::config::{Api, BackendConfig};

pub use super::error::CallError;

/// Characters per token when a prompt's length is estimated before sending. Code, tables and
/// markdown tokenise denser than prose; erring towards more tokens keeps a prompt from being
/// cut, at the price of a larger context than strictly needed.
const CHARS_PER_TOKEN_ESTIMATE: u64 = 3;

/// Tokens a chat template adds around each message, in the estimate.
const TOKENS_PER_MESSAGE: u64 = 8;

/// The token-silence limit as a multiple of the read timeout: a stream that carries only
/// keep-alive comments for this long ends with a timeout. The read timeout alone cannot catch
/// it, because every comment restarts it; a long prefill with keep-alives stays well inside.
pub const TOKEN_SILENCE_FACTOR: u32 = 4;

/// What replaces a backend's key wherever a server echoed it.
const REDACTED: &str = "[redacted]";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: "system".into(),
            content: content.into(),
        }
    }

    /// A user message.
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
    /// A JSON schema for the reply (OpenAI `response_format`, Ollama `format`).
    pub json_schema: Option<Value>,
}

/// The server's token counts, from its `usage` object (or Ollama's `prompt_eval_count` and
/// `eval_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: Option<u64>,
}

/// The server's own timings, where it reports them: llama.cpp's `timings`, Ollama's final
/// object (converted from nanoseconds), vLLM's per-request `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServerTimings {
    /// Prefill time, excluding time spent waiting for a slot: llama.cpp `prompt_ms`, Ollama
    /// `prompt_eval_duration`, vLLM `time_to_first_token_ms` (from scheduling to first token).
    pub prompt_ms: Option<f64>,
    pub prompt_n: Option<u64>,
    pub cache_n: Option<u64>,
    /// Decoding time: llama.cpp `predicted_ms`, Ollama `eval_duration`, vLLM
    /// `generation_time_ms`.
    pub predicted_ms: Option<f64>,
    pub predicted_n: Option<u64>,
    /// Time the request waited in the server's own queue (vLLM `queue_time_ms`).
    pub queue_ms: Option<f64>,
    /// Time spent loading the model before this request could run (Ollama `load_duration`).
    pub load_ms: Option<f64>,
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
    /// Reasoning text the server separated from the answer (`reasoning`, `reasoning_content`,
    /// Ollama's `thinking`).
    pub reasoning: String,
    /// `stop`, `length` and so on, as the server said it.
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub timings: Option<ServerTimings>,
    pub timeline: Timeline,
    /// The model name the server reported, which may differ from the one requested.
    pub served_model: Option<String>,
}

/// An estimate of a prompt's tokens from its characters, used before any server has counted
/// them: to size Ollama's context and to refuse a prompt that cannot fit `context_length`.
pub fn estimate_prompt_tokens(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| {
            (m.content.chars().count() as u64).div_ceil(CHARS_PER_TOKEN_ESTIMATE)
                + TOKENS_PER_MESSAGE
        })
        .sum()
}

/// A client for one backend.
#[derive(Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    api: Api,
    endpoint: String,
    base: String,
    model: String,
    api_key: Option<String>,
    /// User and password written into the configured URL, sent as basic authentication and
    /// kept out of every URL tandem shows or records.
    url_credentials: Option<(String, Option<String>)>,
    read_timeout: Duration,
    context_length: Option<u32>,
    /// The backend's `seed` setting: whether a request's seed is sent.
    send_seed: bool,
    /// The backend's `structured_output` setting: whether a schema is sent.
    structured_output: bool,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("api", &self.api)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("has_api_key", &self.api_key.is_some())
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
        let mut url = backend.url.clone();
        let url_credentials = (!url.username().is_empty()).then(|| {
            (
                url.username().to_string(),
                url.password().map(str::to_string),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let base = url.as_str().trim_end_matches('/').to_string();
        let endpoint = match backend.api {
            Api::OpenAi => openai::chat_url(&base),
            Api::Ollama => ollama::chat_url(&base),
        };
        let api_key = backend
            .api_key_env
            .as_ref()
            .and_then(|var| std::env::var(var).ok())
            .filter(|key| !key.is_empty());
        // No total deadline: a long generation is not a failure. The read timeout restarts with
        // every chunk, so only a stalled stream times out; `chat` adds the token-silence limit
        // for a stream of keep-alives alone.
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
            api: backend.api,
            endpoint,
            base,
            model: backend.model.clone(),
            api_key,
            url_credentials,
            read_timeout,
            context_length: backend.context_length,
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

    /// The dialect this client speaks.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The model name every request carries.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The JSON body of a request, as sent. For Ollama this settles the context size, which
    /// then holds for later requests to the same server and model.
    pub fn body(&self, request: &ChatRequest) -> Value {
        // The backend's settings decide whether a seed and a schema go out at all: a seed
        // keeps mlx-lm from batching a request, and some servers reject schemas.
        let request = &ChatRequest {
            seed: request.seed.filter(|_| self.send_seed),
            json_schema: request
                .json_schema
                .clone()
                .filter(|_| self.structured_output),
            ..request.clone()
        };
        match self.api {
            Api::OpenAi => openai::body(&self.model, request),
            Api::Ollama => {
                let wanted = ollama::context_for(
                    estimate_prompt_tokens(&request.messages),
                    request.max_tokens,
                    self.context_length,
                );
                let num_ctx = ollama::settle_context(&self.base, &self.model, wanted);
                ollama::body(&self.model, request, num_ctx)
            }
        }
    }

    /// Refuses a request that cannot fit the backend's configured `context_length`, before
    /// anything is sent.
    pub fn check_fits(&self, request: &ChatRequest) -> Result<(), CallError> {
        let Some(limit) = self.context_length else {
            return Ok(());
        };
        let prompt = estimate_prompt_tokens(&request.messages);
        let need = prompt + u64::from(request.max_tokens);
        if need <= u64::from(limit) {
            return Ok(());
        }
        Err(CallError::ContextOverflow {
            url: self.endpoint.clone(),
            detail: format!(
                "about {prompt} prompt tokens (estimated) and up to {} reply tokens exceed the \
                 backend's context_length of {limit} tokens; the request was not sent",
                request.max_tokens
            ),
            prompt_tokens: Some(prompt),
            context_tokens: Some(u64::from(limit)),
        })
    }

    /// Adds the backend's bearer key, or the credentials its URL carried.
    fn authorise(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.api_key, &self.url_credentials) {
            (Some(key), _) => builder.bearer_auth(key),
            (None, Some((user, password))) => builder.basic_auth(user, password.as_deref()),
            (None, None) => builder,
        }
    }

    /// Sends one request and reads its stream to the end.
    pub async fn chat(&self, request: &ChatRequest) -> Result<CallOutcome, CallError> {
        self.check_fits(request)?;
        let body = self.body(request);
        let builder = self.authorise(self.http.post(&self.endpoint).json(&body));

        let sent_wall = Local::now();
        let sent = Instant::now();
        let response = builder.send().await.map_err(|e| self.transport_error(&e))?;

        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(classify(
                &self.endpoint,
                &self.model,
                status.as_u16(),
                &self.redact(&text),
            ));
        }

        let mut reply = Reply::new(sent, sent_wall);
        let mut reader = BodyReader::new(self.api);
        let mut bytes = response.bytes_stream();
        let silence = self.token_silence();
        loop {
            // Keep-alives restart the read timeout but not this deadline: only a data event does.
            let deadline = reply.last_event().unwrap_or(sent) + silence;
            let Ok(next) = tokio::time::timeout_at(deadline.into(), bytes.next()).await else {
                return Err(CallError::KeepAlivesOnly {
                    url: self.endpoint.clone(),
                    silence,
                });
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| self.transport_error(&e))?;
            reader
                .push(&chunk, Instant::now(), &mut reply)
                .map_err(|failure| self.stream_error(failure))?;
            if reply.done {
                break;
            }
        }
        reader
            .end(Instant::now(), &mut reply)
            .map_err(|failure| self.stream_error(failure))?;
        let outcome = reply
            .finish(Instant::now())
            .map_err(|detail| CallError::StreamCut {
                url: self.endpoint.clone(),
                detail,
            })?;
        self.note(request, &outcome);
        Ok(outcome)
    }

    /// The longest a stream may go without a data event, keep-alives notwithstanding.
    pub fn token_silence(&self) -> Duration {
        self.read_timeout * TOKEN_SILENCE_FACTOR
    }

    /// A `GET` on a path of the server, for health checks: the body, or the error it met.
    pub async fn get(&self, path: &str) -> Result<String, CallError> {
        let url = format!("{}{path}", self.base.trim_end_matches("/v1"));
        let builder = self.authorise(self.http.get(&url).timeout(Duration::from_secs(10)));
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
        let body = self.redact(&response.text().await.unwrap_or_default());
        if status.is_success() {
            return Ok(body);
        }
        Err(match classify(&url, &self.model, status.as_u16(), &body) {
            // A missing health route is not a missing model: the caller tries another route.
            CallError::ModelNotFound { url, detail, .. } => CallError::Http {
                url,
                status: 404,
                excerpt: detail,
            },
            other => other,
        })
    }

    /// Logs what a finished call reported, for `-vv`.
    fn note(&self, request: &ChatRequest, outcome: &CallOutcome) {
        let timings = outcome.timings.unwrap_or_default();
        tracing::debug!(
            url = %self.endpoint,
            prompt_tokens = outcome.usage.map(|u| u.prompt_tokens),
            output_tokens = outcome.usage.map(|u| u.completion_tokens),
            server_prefill_ms = timings.prompt_ms,
            server_queue_ms = timings.queue_ms,
            model_load_ms = timings.load_ms,
            finish_reason = outcome.finish_reason.as_deref(),
            "call finished"
        );
        if self.api == Api::Ollama
            && let Some(usage) = outcome.usage
        {
            // Ollama cuts a prompt longer than its context without an error; a count far below
            // the estimate is the only sign left.
            let estimate = estimate_prompt_tokens(&request.messages);
            if usage.prompt_tokens > 0 && usage.prompt_tokens * 3 < estimate {
                tracing::warn!(
                    url = %self.endpoint,
                    evaluated = usage.prompt_tokens,
                    estimated = estimate,
                    "Ollama evaluated far fewer prompt tokens than estimated; \
                     the prompt may have been truncated"
                );
            }
        }
    }

    /// Replaces the backend's key wherever a server echoed it.
    fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if text.contains(key.as_str()) => text.replace(key.as_str(), REDACTED),
            _ => text.to_string(),
        }
    }

    fn transport_error(&self, err: &reqwest::Error) -> CallError {
        let url = self.endpoint.clone();
        let detail = self.redact(&error_chain(err));
        if err.is_timeout() {
            CallError::Timeout {
                url,
                read_timeout: self.read_timeout,
            }
        } else if err.is_body() || err.is_decode() {
            CallError::StreamCut { url, detail }
        } else {
            CallError::Connect { url, detail }
        }
    }

    fn stream_error(&self, failure: StreamFailure) -> CallError {
        let url = self.endpoint.clone();
        match failure {
            StreamFailure::Decode(detail) => CallError::Decode {
                url,
                detail: self.redact(&detail),
            },
            StreamFailure::Server(detail) if is_context_overflow(&detail) => {
                CallError::ContextOverflow {
                    url,
                    detail: self.redact(&detail),
                    prompt_tokens: None,
                    context_tokens: None,
                }
            }
            StreamFailure::Server(detail) => CallError::ServerError {
                url,
                detail: self.redact(&excerpt(&detail)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Role;
    use crate::config::Concurrency;

    fn backend(api: Api, context_length: Option<u32>) -> BackendConfig {
        BackendConfig {
            name: "b".into(),
            roles: vec![Role::CodeAnalysis],
            url: "http://127.0.0.1:9/".parse().unwrap(),
            model: "served-name".into(),
            max_concurrency: Concurrency::Fixed(1),
            api_key_env: None,
            api,
            context_length,
            send_seed: true,
            structured_output: true,
        }
    }

    fn client(api: Api, context_length: Option<u32>) -> ChatClient {
        ChatClient::new(
            &backend(api, context_length),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    fn request(chars: usize, max_tokens: u32) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user("x".repeat(chars))],
            max_tokens,
            temperature: 0.0,
            seed: None,
            json_schema: None,
        }
    }

    #[test]
    fn each_api_has_its_endpoint() {
        assert_eq!(
            client(Api::OpenAi, None).endpoint(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert_eq!(
            client(Api::Ollama, None).endpoint(),
            "http://127.0.0.1:9/api/chat"
        );
    }

    #[test]
    fn openai_requests_always_carry_model_max_tokens_and_include_usage() {
        let body = client(Api::OpenAi, None).body(&request(10, 77));
        assert_eq!(body["model"], "served-name");
        assert_eq!(body["max_tokens"], 77);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn a_prompt_beyond_context_length_is_refused_before_sending() {
        let c = client(Api::OpenAi, Some(1000));
        assert!(c.check_fits(&request(300, 500)).is_ok());
        let err = c.check_fits(&request(3000, 500)).unwrap_err();
        assert_eq!(err.kind(), "context_overflow");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("context_length of 1000"), "{err}");
        assert!(
            client(Api::OpenAi, None)
                .check_fits(&request(300_000, 500))
                .is_ok()
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let mut c = client(Api::OpenAi, None);
        c.api_key = Some("sk-very-secret-value".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-very-secret-value"), "{shown}");
        assert!(shown.contains("has_api_key: true"), "{shown}");
        assert_eq!(
            c.redact("bad key sk-very-secret-value given"),
            "bad key [redacted] given"
        );
    }

    #[test]
    fn credentials_in_the_url_never_appear_in_a_url_tandem_shows() {
        let mut b = backend(Api::OpenAi, None);
        b.url = "http://grader:hunter2pw@127.0.0.1:9/".parse().unwrap();
        let client = ChatClient::new(&b, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        for shown in [
            client.base_url().to_string(),
            client.endpoint().to_string(),
            format!("{client:?}"),
            format!("{b:?}"),
        ] {
            assert!(!shown.contains("hunter2pw"), "{shown}");
            assert!(!shown.contains("grader@"), "{shown}");
        }
        assert_eq!(client.base_url(), "http://127.0.0.1:9");
    }
}
