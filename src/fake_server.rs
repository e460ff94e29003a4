//! An in-process fake model server for tests and benchmarks, compiled with the `fake-server`
//! feature.
//!
//! The fake speaks the OpenAI-compatible chat API the way the local servers tandem meets do:
//! llama.cpp's `llama-server`, `mlx_lm.server`, vLLM (and OpenAI itself), each a [`Dialect`]
//! with its own stream shape, and Ollama both ways: its `/v1` and its native `POST /api/chat`
//! with newline-delimited JSON and nanosecond durations. It binds `127.0.0.1:0` on the current tokio runtime, so many can
//! run side by side, and it never sends traffic anywhere.
//!
//! What it owns:
//!
//! - **Timing.** A call waits for a free slot (FIFO), prefills its prompt at
//!   [`FakeServerBuilder::prefill_tok_per_s`], then emits its reply one token per chunk at
//!   [`FakeServerBuilder::decode_tok_per_s`]. While k calls decode at once each one runs at
//!   `decode × f(k) / k`, where f is the [`Batching`] curve, recomputed at every token.
//! - **Replies.** A fixed text, a closure of the request body, or (the default) a minimal JSON
//!   instance of the schema the request asked for, split into four-character tokens; reasoning
//!   deltas before it on request; `max_tokens` cuts the reply with `finish_reason: "length"`.
//! - **Faults.** HTTP errors in each server's error shape, streams that are cut, end early,
//!   stall, carry an error event or a garbage line, scheduled by [`When`]; [`FakeServer::stop`]
//!   makes the port refuse connections until [`FakeServer::restart`].
//! - **Keys.** [`FakeServerBuilder::require_api_key`] answers 401 to any request without the
//!   bearer key (health routes excepted, as llama.cpp's `/health` is).
//! - **Introspection.** [`FakeServer::stats`] counts requests, the peak number in flight, and
//!   keeps each request's body and timestamps for assertions.
//!
//! What it does not do: tokenise, run a model, or check a request beyond what a server would
//! reject. Prefill is not shared between concurrent calls; only decoding is.
//!
//! ```no_run
//! # async fn demo() {
//! use tandem::fake_server::{Dialect, Fault, FakeServer, Reply, When};
//!
//! let server = FakeServer::builder()
//!     .dialect(Dialect::LlamaCpp)
//!     .prefill_tok_per_s(2000.0)
//!     .decode_tok_per_s(2000.0)
//!     .slots(1)
//!     .reply(Reply::fixed("Well done."))
//!     .fault(Fault::server_error(), When::Nth(2))
//!     .start()
//!     .await;
//! let chat = format!("{}/v1/chat/completions", server.url());
//! // ... send requests to `chat`, then:
//! assert!(server.stats().peak_in_flight <= 1);
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Characters per token when a reply is split into tokens and a prompt's tokens are estimated.
const CHARS_PER_TOKEN: usize = 4;

/// The reply when [`Reply::Schema`] finds no schema in the request.
const SCHEMALESS_REPLY: &str = "The submission meets the rubric.";

/// Reasoning text, cycled through four characters at a time for reasoning tokens.
const REASONING_TEXT: &str = "Checking the work against each criterion of the rubric. ";

/// How many stream frames may wait in the channel between the generator and the connection.
const FRAME_BUFFER: usize = 64;

/// Which server's stream shape the fake imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// llama.cpp's `llama-server`: no role-only chunk; the last chunk carries `finish_reason`,
    /// `usage` and `timings` (always, whatever `stream_options` says); reasoning in
    /// `reasoning_content`.
    #[default]
    LlamaCpp,
    /// `mlx_lm.server`: `: keepalive N/M` comments during prefill, a role-only first chunk, a
    /// finish chunk, then (when `stream_options.include_usage` is true) a usage chunk with
    /// `"choices": []` and `"object": "chat.completion"`; reasoning in `reasoning`; no timings.
    Mlx,
    /// vLLM: a role-only first chunk, a finish chunk, then (when `include_usage` is true) a usage
    /// chunk with `"choices": []`; reasoning in `reasoning_content`; no timings.
    Vllm,
    /// OpenAI's own API: the same stream as [`Dialect::Vllm`], named for tests that mean it.
    OpenAi,
    /// Ollama. Its `/v1/chat/completions` streams like vLLM with reasoning in `reasoning` and no
    /// timings; its native `POST /api/chat` streams NDJSON lines (`{"message": {"content",
    /// "thinking"}, "done": false}`) and ends with a `done: true` object carrying
    /// `prompt_eval_count`, `eval_count` and the durations in nanoseconds. `GET /` answers
    /// "Ollama is running", `/api/version` and `/api/tags` exist, and `/health` does not. A
    /// prompt longer than the context (`options.num_ctx`, else [`FakeServerBuilder::context_size`],
    /// else 4096) is cut to it without an error, as Ollama does.
    Ollama,
}

impl Dialect {
    fn reasoning_field(self) -> &'static str {
        match self {
            Dialect::Mlx | Dialect::Ollama => "reasoning",
            _ => "reasoning_content",
        }
    }

    fn sends_role_chunk(self) -> bool {
        !matches!(self, Dialect::LlamaCpp)
    }
}

/// How decoding speed is shared when several calls decode at once.
///
/// With k calls decoding, the server's aggregate rate is `decode_tok_per_s × f(k)` and each call
/// gets `decode_tok_per_s × f(k) / k`. f(1) should be 1 and f must stay positive.
#[derive(Clone, Default)]
pub enum Batching {
    /// f(k) = k: every call decodes at the full rate however many run (ideal batching).
    #[default]
    Linear,
    /// f(k) = k^e: sublinear batching for 0 < e < 1, e.g. `Power(0.7)`.
    Power(f64),
    /// f(k) = 1: the aggregate rate is fixed, so concurrent calls split it evenly.
    Shared,
    /// Any curve f(k).
    Custom(Arc<dyn Fn(usize) -> f64 + Send + Sync>),
}

impl Batching {
    /// The aggregate speed-up f(k) with `k` calls decoding at once.
    pub fn aggregate(&self, k: usize) -> f64 {
        let k = k.max(1);
        match self {
            Batching::Linear => k as f64,
            Batching::Power(exponent) => (k as f64).powf(*exponent),
            Batching::Shared => 1.0,
            Batching::Custom(curve) => curve(k),
        }
    }
}

impl fmt::Debug for Batching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Batching::Linear => f.write_str("Linear"),
            Batching::Power(exponent) => write!(f, "Power({exponent})"),
            Batching::Shared => f.write_str("Shared"),
            Batching::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What the fake answers, before it is split into tokens.
#[derive(Clone, Default)]
pub enum Reply {
    /// The same text for every request.
    Fixed(String),
    /// A minimal valid instance of the request's JSON schema, from
    /// `response_format.json_schema.schema` (or llama.cpp's `response_format.schema`), built by
    /// [`reply_matching_schema`]; a short sentence when the request has no schema.
    #[default]
    Schema,
    /// The text a function makes of the request body.
    Func(Arc<dyn Fn(&Value) -> String + Send + Sync>),
}

impl Reply {
    /// [`Reply::Fixed`] from anything string-like.
    pub fn fixed(text: impl Into<String>) -> Self {
        Reply::Fixed(text.into())
    }

    /// [`Reply::Func`] from a closure of the request body.
    pub fn func(f: impl Fn(&Value) -> String + Send + Sync + 'static) -> Self {
        Reply::Func(Arc::new(f))
    }

    /// The reply text for one request.
    pub fn render(&self, request: &Value) -> String {
        match self {
            Reply::Fixed(text) => text.clone(),
            Reply::Func(f) => f(request),
            Reply::Schema => {
                let format = &request["response_format"];
                let schema = format["json_schema"]
                    .get("schema")
                    .or_else(|| format.get("schema"));
                match schema {
                    Some(schema) => reply_matching_schema(schema),
                    None => SCHEMALESS_REPLY.to_string(),
                }
            }
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Fixed(text) => f.debug_tuple("Fixed").field(text).finish(),
            Reply::Schema => f.write_str("Schema"),
            Reply::Func(_) => f.write_str("Func(..)"),
        }
    }
}

/// Something going wrong with a request, injected on the schedule of a [`When`].
///
/// Token counts (`after_tokens`) count reasoning and content tokens sent before the fault; a
/// count past the end of the reply triggers the fault after the last token, before the finish
/// chunk. On a non-streaming request the stream faults become their nearest equivalent: a
/// dropped connection, a truncated JSON body, a 500 with the error, a garbage body, or no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answers at once with this HTTP status and JSON body instead of a reply. See the
    /// constructors [`Fault::server_error`], [`Fault::busy`], [`Fault::context_overflow`],
    /// [`Fault::model_not_found`] and [`Fault::loading`].
    Status {
        /// The HTTP status code.
        status: u16,
        /// The JSON error body.
        body: Value,
    },
    /// Never sends a status line: the request hangs before any response header.
    Hang,
    /// Drops the connection after this many tokens: no finish chunk, no `[DONE]`, and the
    /// client's body read fails.
    Drop {
        /// Tokens sent before the connection is dropped.
        after_tokens: usize,
    },
    /// Ends the body cleanly after this many tokens, without a finish chunk or `[DONE]`, as
    /// Ollama's `/v1` does when its model fails mid-stream.
    EndEarly {
        /// Tokens sent before the body ends.
        after_tokens: usize,
    },
    /// Stops sending after this many tokens and holds the connection (and its slot) open until
    /// the client gives up or the server stops: for read-timeout tests.
    Stall {
        /// Tokens sent before the stream goes quiet.
        after_tokens: usize,
    },
    /// Sends `{"error": {"code": 500, "message": …, "type": "server_error"}}` inside the 200
    /// stream after this many tokens, then ends the body without `[DONE]`.
    ErrorEvent {
        /// Tokens sent before the error event.
        after_tokens: usize,
        /// The error's message.
        message: String,
        /// Send it as older llama.cpp builds did, in a non-standard `error:` field instead of a
        /// `data:` line.
        legacy_field: bool,
    },
    /// Sends a `data:` line that is not JSON after this many tokens, then carries on normally.
    Garbage {
        /// Tokens sent before the garbage line.
        after_tokens: usize,
    },
}

impl Fault {
    /// Any status with any JSON body.
    pub fn status(status: u16, body: Value) -> Self {
        Fault::Status { status, body }
    }

    /// HTTP 500 in llama.cpp's shape, with the message of its "Invalid input batch" failure.
    pub fn server_error() -> Self {
        Fault::status(
            500,
            json!({"error": {
                "code": 500, "message": "Invalid input batch", "type": "server_error",
            }}),
        )
    }

    /// HTTP 503 in Ollama's shape when its queue is full (the two spaces are Ollama's).
    pub fn busy() -> Self {
        Fault::status(
            503,
            json!({"error": "server busy, please try again.  maximum pending requests exceeded"}),
        )
    }

    /// HTTP 503 in llama.cpp's shape while its model is loading.
    pub fn loading() -> Self {
        Fault::status(503, loading_body())
    }

    /// HTTP 400 in llama.cpp's shape for a prompt longer than the context.
    pub fn context_overflow(n_prompt_tokens: u64, n_ctx: u64) -> Self {
        Fault::status(400, context_overflow_body(n_prompt_tokens, n_ctx))
    }

    /// HTTP 404 in the OpenAI shape for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        Fault::status(404, model_not_found_body(model))
    }

    /// The token count a stream fault waits for, if it is one.
    fn after_tokens(&self) -> Option<usize> {
        match self {
            Fault::Drop { after_tokens }
            | Fault::EndEarly { after_tokens }
            | Fault::Stall { after_tokens }
            | Fault::ErrorEvent { after_tokens, .. }
            | Fault::Garbage { after_tokens } => Some(*after_tokens),
            Fault::Status { .. } | Fault::Hang => None,
        }
    }
}

/// Which chat requests a fault applies to, by their 1-based arrival number on the server.
///
/// When several faults match a request, the one added first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every request.
    Every,
    /// Only the nth request (1-based).
    Nth(usize),
    /// The first n requests.
    FirstN(usize),
    /// The nth request and every one after it.
    From(usize),
}

impl When {
    fn matches(self, index: usize) -> bool {
        match self {
            When::Every => true,
            When::Nth(n) => index == n,
            When::FirstN(n) => index <= n,
            When::From(n) => index >= n,
        }
    }
}

/// One chat request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// Its 1-based arrival number, the one [`When`] counts.
    pub index: usize,
    /// The request body; `Value::Null` when it was not JSON.
    pub body: Value,
    /// Whether it asked for a stream.
    pub stream: bool,
    /// When it arrived.
    pub received: Instant,
    /// When it got a slot and prefill began; the wait before is queueing.
    pub started: Option<Instant>,
    /// When its first token was sent.
    pub first_token: Option<Instant>,
    /// When its last token was sent.
    pub last_token: Option<Instant>,
    /// When the server finished with it (after `[DONE]`, or at the fault that ended it).
    pub finished: Option<Instant>,
    /// The prompt tokens it was charged (estimated or fixed).
    pub prompt_tokens: u64,
    /// The reasoning and content tokens sent.
    pub completion_tokens: u64,
    /// The fault injected into it, if any.
    pub fault: Option<Fault>,
}

impl RequestLog {
    /// Seconds spent waiting for a slot, once it had one.
    pub fn queue_wait(&self) -> Option<Duration> {
        self.started.map(|started| started - self.received)
    }
}

/// A snapshot of what a fake server has seen.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Chat requests received (streamed or not, failed or not).
    pub requests: usize,
    /// Chat requests being answered or queued right now.
    pub in_flight: usize,
    /// The most chat requests ever in flight at once, queued ones included: the number a
    /// client's concurrency limit bounds.
    pub peak_in_flight: usize,
    /// The most requests ever holding a slot at once (at most the slot count).
    pub peak_busy_slots: usize,
    /// `GET /health` polls answered.
    pub health_polls: usize,
    /// Requests refused for a missing or wrong key.
    pub unauthorized: usize,
    /// Every chat request in arrival order.
    pub requests_log: Vec<RequestLog>,
}

impl Stats {
    /// The bodies of every chat request in arrival order.
    pub fn bodies(&self) -> Vec<Value> {
        self.requests_log.iter().map(|r| r.body.clone()).collect()
    }
}

/// Configures a [`FakeServer`]; made by [`FakeServer::builder`].
#[derive(Debug, Clone)]
pub struct FakeServerBuilder {
    config: Config,
    faults: Vec<(Fault, When)>,
}

#[derive(Debug, Clone)]
struct Config {
    dialect: Dialect,
    model: String,
    prefill_tok_per_s: f64,
    decode_tok_per_s: f64,
    slots: usize,
    batching: Batching,
    prompt_tokens: Option<u64>,
    tokens_per_chunk: usize,
    reply: Reply,
    reasoning_tokens: usize,
    reasoning_field: Option<String>,
    role_chunk: Option<bool>,
    usage: bool,
    extra_completion_tokens: u64,
    context_size: Option<u64>,
    require_model: bool,
    keepalive_every: u64,
    health_loading_polls: usize,
    health_loading_for: Option<Duration>,
    api_key: Option<String>,
    per_request_metrics: bool,
    load_duration: Duration,
}

impl Default for FakeServerBuilder {
    fn default() -> Self {
        FakeServerBuilder {
            config: Config {
                dialect: Dialect::default(),
                model: "fake-model".to_string(),
                prefill_tok_per_s: 10_000.0,
                decode_tok_per_s: 1_000.0,
                slots: 4,
                batching: Batching::default(),
                prompt_tokens: None,
                tokens_per_chunk: 1,
                reply: Reply::default(),
                reasoning_tokens: 0,
                reasoning_field: None,
                role_chunk: None,
                usage: true,
                extra_completion_tokens: 0,
                context_size: None,
                require_model: false,
                keepalive_every: 256,
                health_loading_polls: 0,
                health_loading_for: None,
                api_key: None,
                per_request_metrics: false,
                load_duration: Duration::ZERO,
            },
            faults: Vec::new(),
        }
    }
}

impl FakeServerBuilder {
    /// The stream shape to imitate (default [`Dialect::LlamaCpp`]).
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.config.dialect = dialect;
        self
    }

    /// The model name `/v1/models` lists and replies carry when the request names none
    /// (default `fake-model`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.config.model = model.into();
        self
    }

    /// Prompt tokens evaluated per second once a call has a slot (default 10 000).
    pub fn prefill_tok_per_s(mut self, rate: f64) -> Self {
        self.config.prefill_tok_per_s = rate;
        self
    }

    /// Tokens generated per second by one call decoding alone (default 1 000).
    pub fn decode_tok_per_s(mut self, rate: f64) -> Self {
        self.config.decode_tok_per_s = rate;
        self
    }

    /// Calls served at once; more wait in a FIFO queue (default 4, llama.cpp's automatic
    /// default; mlx-lm before 0.28.4 and Ollama's default behave as 1).
    pub fn slots(mut self, slots: usize) -> Self {
        self.config.slots = slots.max(1);
        self
    }

    /// How decoding speed is shared between concurrent calls (default [`Batching::Linear`]).
    pub fn batching(mut self, batching: Batching) -> Self {
        self.config.batching = batching;
        self
    }

    /// Charges every request this many prompt tokens instead of estimating a quarter of the
    /// characters in its messages' contents.
    pub fn prompt_tokens(mut self, tokens: u64) -> Self {
        self.config.prompt_tokens = Some(tokens);
        self
    }

    /// Tokens per content or reasoning chunk (default 1); each chunk is sent when its last token
    /// is ready.
    pub fn tokens_per_chunk(mut self, tokens: usize) -> Self {
        self.config.tokens_per_chunk = tokens.max(1);
        self
    }

    /// What to answer (default [`Reply::Schema`]).
    pub fn reply(mut self, reply: Reply) -> Self {
        self.config.reply = reply;
        self
    }

    /// Reasoning tokens sent before the reply, in the dialect's reasoning field. They count in
    /// `completion_tokens` and against `max_tokens`, as on real servers.
    pub fn reasoning_tokens(mut self, tokens: usize) -> Self {
        self.config.reasoning_tokens = tokens;
        self
    }

    /// Overrides the dialect's name for the reasoning delta field (e.g. vLLM's newer
    /// `reasoning`).
    pub fn reasoning_field(mut self, field: impl Into<String>) -> Self {
        self.config.reasoning_field = Some(field.into());
        self
    }

    /// Whether to send a role-only first chunk `{"role":"assistant","content":""}` once the
    /// call has a slot (default: every dialect but llama.cpp).
    pub fn role_chunk(mut self, send: bool) -> Self {
        self.config.role_chunk = Some(send);
        self
    }

    /// Whether the server reports token counts at all (default true). With false, streams and
    /// replies carry no `usage` and llama.cpp no `timings`, as old Ollama `/v1` builds did.
    pub fn usage(mut self, report: bool) -> Self {
        self.config.usage = report;
        self
    }

    /// Adds this many tokens to the `completion_tokens` reported, beyond those sent (mlx-lm
    /// counts the stop token, for instance).
    pub fn extra_completion_tokens(mut self, tokens: u64) -> Self {
        self.config.extra_completion_tokens = tokens;
        self
    }

    /// The context size: a request whose prompt tokens exceed it gets llama.cpp's HTTP 400
    /// `exceed_context_size_error` (or vLLM's shape in the other dialects).
    pub fn context_size(mut self, n_ctx: u64) -> Self {
        self.config.context_size = Some(n_ctx);
        self
    }

    /// Answers 404 model-not-found to requests naming any other model than [`Self::model`].
    pub fn require_model(mut self, require: bool) -> Self {
        self.config.require_model = require;
        self
    }

    /// Prompt tokens between mlx-lm's `: keepalive N/M` comments (default 256).
    pub fn keepalive_every(mut self, tokens: u64) -> Self {
        self.config.keepalive_every = tokens.max(1);
        self
    }

    /// `GET /health` answers 503 "Loading model" to its first `polls` polls.
    pub fn health_loading_polls(mut self, polls: usize) -> Self {
        self.config.health_loading_polls = polls;
        self
    }

    /// `GET /health` answers 503 "Loading model" until this long after the server started.
    pub fn health_loading_for(mut self, duration: Duration) -> Self {
        self.config.health_loading_for = Some(duration);
        self
    }

    /// Answers 401 to every request without `Authorization: Bearer <key>`, except the health
    /// routes (`/health`, `/v1/health`, Ollama's `/`). The 401 body echoes the header it got, as
    /// careless servers do, so tests can check that a client never repeats it.
    pub fn require_api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(key.into());
        self
    }

    /// vLLM with `--enable-per-request-metrics`: a `metrics` object (`time_to_first_token_ms`
    /// from slot to first token, `generation_time_ms`, `queue_time_ms`, `mean_itl_ms`,
    /// `tokens_per_second`) on the usage chunk of a stream, or the top level of a reply.
    pub fn per_request_metrics(mut self, send: bool) -> Self {
        self.config.per_request_metrics = send;
        self
    }

    /// The `load_duration` Ollama's final object reports (default zero, which Ollama omits).
    pub fn load_duration(mut self, duration: Duration) -> Self {
        self.config.load_duration = duration;
        self
    }

    /// Injects a fault into the requests `when` selects; more can be added while the server
    /// runs with [`FakeServer::inject`].
    pub fn fault(mut self, fault: Fault, when: When) -> Self {
        self.faults.push((fault, when));
        self
    }

    /// Starts the server on `127.0.0.1` at a free port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound; use [`Self::try_start`] to handle that.
    pub async fn start(self) -> FakeServer {
        self.try_start()
            .await
            .expect("the fake server could not bind a port on 127.0.0.1")
    }

    /// Starts the server on `127.0.0.1` at a free port.
    pub async fn try_start(self) -> io::Result<FakeServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(self.config.slots)),
            config: self.config,
            faults: Mutex::new(self.faults),
            decoding: AtomicUsize::new(0),
            record: Mutex::new(Stats::default()),
            busy: AtomicUsize::new(0),
            created: Instant::now(),
            cancel: Mutex::new(CancellationToken::new()),
        });
        let running = serve(listener, &shared);
        Ok(FakeServer {
            addr,
            shared,
            running: Some(running),
        })
    }
}

/// A running fake model server; it shuts down when dropped.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// A builder with the defaults: llama.cpp dialect, 4 slots, 10 000 tok/s prefill, 1 000
    /// tok/s decode, linear batching, schema-matching replies, no faults.
    pub fn builder() -> FakeServerBuilder {
        FakeServerBuilder::default()
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash or `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on (kept across [`Self::stop`] and [`Self::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server has seen so far.
    pub fn stats(&self) -> Stats {
        self.shared.record().clone()
    }

    /// The bodies of every chat request so far, in arrival order.
    pub fn bodies(&self) -> Vec<Value> {
        self.stats().bodies()
    }

    /// Adds a fault while the server runs; [`When`] counts requests since the server was built.
    pub fn inject(&self, fault: Fault, when: When) {
        lock(&self.shared.faults).push((fault, when));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Stops the server: open streams are dropped, and the port refuses connections until
    /// [`Self::restart`]. Stopping a stopped server does nothing.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel.cancel();
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port after [`Self::stop`], keeping the statistics and faults.
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        *lock(&self.shared.cancel) = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await?;
        self.running = Some(serve(listener, &self.shared));
        Ok(())
    }

    /// A loopback URL on which nothing listens, for connection-refused tests.
    pub async fn refused_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a port on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        drop(listener);
        format!("http://{addr}")
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel.cancel();
        }
    }
}

/// Builds a minimal JSON instance valid for a JSON schema, as compact text.
///
/// Objects get every required property (and no others), integers and numbers their `maximum`
/// (else `max(1, minimum)`), strings `"ok"` fitted to `minLength`/`maxLength`, arrays one item
/// (or `minItems`), booleans `true`. `const`, `enum` (the first value), `anyOf`/`oneOf` (the
/// first branch), `allOf` (merged) and local `$ref`s (`#/$defs/…`, `#/definitions/…`) are
/// followed.
pub fn reply_matching_schema(schema: &Value) -> String {
    instance(schema, schema, 0).to_string()
}

fn instance(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > 32 {
        return Value::Null;
    }
    let Some(map) = schema.as_object() else {
        return json!("ok");
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        let target = reference
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer));
        return match target {
            Some(target) => instance(target, root, depth + 1),
            None => Value::Null,
        };
    }
    if let Some(value) = map.get("const") {
        return value.clone();
    }
    if let Some(first) = map
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(first) = map
            .get(key)
            .and_then(Value::as_array)
            .and_then(|v| v.first())
        {
            return instance(first, root, depth + 1);
        }
    }
    if let Some(parts) = map.get("allOf").and_then(Value::as_array) {
        let mut merged = map.clone();
        merged.remove("allOf");
        for part in parts.iter().filter_map(Value::as_object) {
            for (key, value) in part {
                match (merged.get_mut(key), value) {
                    (Some(Value::Object(into)), Value::Object(from)) => {
                        into.extend(from.clone());
                    }
                    (Some(Value::Array(into)), Value::Array(from)) if key == "required" => {
                        into.extend(from.iter().cloned());
                    }
                    _ => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        return instance(&Value::Object(merged), root, depth + 1);
    }

    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null")
            .unwrap_or("null"),
        _ if map.contains_key("properties") => "object",
        _ if map.contains_key("items") => "array",
        _ => "string",
    };
    match kind {
        "object" => {
            let properties = map.get("properties");
            let mut object = serde_json::Map::new();
            for name in map
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                let property = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                object.insert(name.to_string(), instance(property, root, depth + 1));
            }
            Value::Object(object)
        }
        "array" => {
            let items = map.get("items").unwrap_or(&Value::Null);
            let min = map.get("minItems").and_then(Value::as_u64).unwrap_or(1);
            let max = map
                .get("maxItems")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            let count = min.max(1).min(max);
            Value::Array(
                (0..count)
                    .map(|_| instance(items, root, depth + 1))
                    .collect(),
            )
        }
        "integer" => {
            if let Some(max) = map.get("maximum").and_then(Value::as_f64) {
                json!(max.floor() as i64)
            } else {
                let min = map.get("minimum").and_then(Value::as_f64).unwrap_or(1.0);
                json!(min.ceil().max(1.0) as i64)
            }
        }
        "number" => {
            if let Some(max) = map.get("maximum") {
                max.clone()
            } else {
                let min = map.get("minimum").and_then(Value::as_f64).unwrap_or(1.0);
                json!(min.max(1.0))
            }
        }
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => {
            let min = map.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let max = map
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            let mut text = String::from("ok");
            while text.len() < min {
                text.push('k');
            }
            text.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            json!(text)
        }
    }
}

/// Everything the handlers share; one per server, kept across restarts.
struct Shared {
    config: Config,
    faults: Mutex<Vec<(Fault, When)>>,
    slots: Arc<Semaphore>,
    /// Calls decoding right now: the k of the batching curve.
    decoding: AtomicUsize,
    /// Calls holding a slot right now.
    busy: AtomicUsize,
    record: Mutex<Stats>,
    created: Instant,
    /// Cancelled when the server stops; replaced on restart.
    cancel: Mutex<CancellationToken>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: a panicking test must not hide its cause behind ours.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn record(&self) -> MutexGuard<'_, Stats> {
        lock(&self.record)
    }

    /// Logs a new chat request and counts it in flight until the guard drops.
    fn admit(self: &Arc<Self>, body: Value, received: Instant) -> (usize, InFlight) {
        let mut record = self.record();
        record.requests += 1;
        record.in_flight += 1;
        record.peak_in_flight = record.peak_in_flight.max(record.in_flight);
        let index = record.requests;
        record.requests_log.push(RequestLog {
            index,
            stream: body["stream"].as_bool().unwrap_or(false),
            body,
            received,
            started: None,
            first_token: None,
            last_token: None,
            finished: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            fault: None,
        });
        (index, InFlight(Arc::clone(self)))
    }

    fn log(&self, index: usize, update: impl FnOnce(&mut RequestLog)) {
        if let Some(entry) = self.record().requests_log.get_mut(index - 1) {
            update(entry);
        }
    }

    fn fault_for(&self, index: usize) -> Option<Fault> {
        lock(&self.faults)
            .iter()
            .find(|(_, when)| when.matches(index))
            .map(|(fault, _)| fault.clone())
    }

    fn cancel_token(&self) -> CancellationToken {
        lock(&self.cancel).clone()
    }

    /// How long the next token takes with the calls decoding now.
    fn token_delay(&self) -> Duration {
        let k = self.decoding.load(Ordering::SeqCst).max(1);
        let per_call = self.config.decode_tok_per_s * self.config.batching.aggregate(k) / k as f64;
        seconds(1.0 / per_call)
    }
}

/// Counts a chat request in flight while it lives.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.record().in_flight -= 1;
    }
}

/// Counts a call in an atomic gauge while it lives.
struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    fn enter(gauge: &'a AtomicUsize) -> (Self, usize) {
        let now = gauge.fetch_add(1, Ordering::SeqCst) + 1;
        (Gauge(gauge), now)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn seconds(value: f64) -> Duration {
    if value.is_finite() && value > 0.0 {
        Duration::from_secs_f64(value)
    } else {
        Duration::ZERO
    }
}

async fn sleep_until(deadline: Instant) {
    if deadline > Instant::now() {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

fn serve(listener: TcpListener, shared: &Arc<Shared>) -> Running {
    let cancel = shared.cancel_token();
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models));
    let router = if shared.config.dialect == Dialect::Ollama {
        router
            .route("/api/chat", post(ollama_chat))
            .route("/", get(ollama_root))
            .route("/api/version", get(ollama_version))
            .route("/api/tags", get(ollama_tags))
    } else {
        router
    };
    let router = router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(shared),
            check_key,
        ))
        .with_state(Arc::clone(shared));
    let signal = cancel.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await;
    });
    Running { cancel, task }
}

fn json_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A response whose body fails at once, so the client sees the connection drop.
fn dropped_response() -> Response {
    let failure = futures::stream::once(async {
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "fault: connection dropped",
        ))
    });
    Response::new(Body::from_stream(failure))
}

fn loading_body() -> Value {
    json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
}

fn context_overflow_body(n_prompt_tokens: u64, n_ctx: u64) -> Value {
    json!({"error": {
        "code": 400,
        "message": "the request exceeds the available context size. \
                    try increasing the context size or enable context shift",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": n_prompt_tokens,
        "n_ctx": n_ctx,
    }})
}

fn vllm_context_overflow_body(n_prompt_tokens: u64, n_ctx: u64) -> Value {
    json!({"error": {
        "message": format!(
            "This model's maximum context length is {n_ctx} tokens. However, you requested \
             {n_prompt_tokens} tokens in the messages. Please reduce the length of the messages."
        ),
        "type": "BadRequestError",
        "param": null,
        "code": 400,
    }})
}

fn model_not_found_body(model: &str) -> Value {
    json!({"error": {
        "message": format!("The model `{model}` does not exist."),
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }})
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let polls = {
        let mut record = shared.record();
        record.health_polls += 1;
        record.health_polls
    };
    if shared.config.dialect == Dialect::Ollama {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    let config = &shared.config;
    let loading = polls <= config.health_loading_polls
        || config
            .health_loading_for
            .is_some_and(|duration| shared.created.elapsed() < duration);
    if loading {
        json_response(503, &loading_body())
    } else {
        json_response(200, &json!({"status": "ok"}))
    }
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    json_response(
        200,
        &json!({"object": "list", "data": [{
            "id": shared.config.model,
            "object": "model",
            "created": unix_now(),
            "owned_by": "tandem-fake-server",
        }]}),
    )
}

async fn not_found() -> Response {
    json_response(
        404,
        &json!({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
    )
}

/// Estimates prompt tokens as a quarter of the characters in the messages' contents, counting
/// both plain strings and the text parts of content arrays.
fn estimate_prompt_tokens(body: &Value) -> u64 {
    let mut chars = 0;
    for message in body["messages"].as_array().into_iter().flatten() {
        match &message["content"] {
            Value::String(text) => chars += text.chars().count(),
            Value::Array(parts) => {
                for part in parts {
                    if let Some(text) = part["text"].as_str() {
                        chars += text.chars().count();
                    }
                }
            }
            _ => {}
        }
    }
    chars.div_ceil(CHARS_PER_TOKEN) as u64
}

/// Splits text into tokens of up to four characters.
fn split_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(CHARS_PER_TOKEN)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// One token of a reply.
#[derive(Debug, Clone)]
struct Token {
    reasoning: bool,
    text: String,
}

/// What one call will send, decided when it arrives.
#[derive(Debug)]
struct Plan {
    index: usize,
    id: String,
    model: String,
    created: u64,
    dialect: Dialect,
    reasoning_field: String,
    role_chunk: bool,
    prompt_tokens: u64,
    tokens: Vec<Token>,
    finish_reason: &'static str,
    include_usage: bool,
    fault: Option<Fault>,
    /// Ollama's native `/api/chat`: NDJSON lines instead of OpenAI chunks.
    native: bool,
}

impl Plan {
    fn new(shared: &Shared, index: usize, body: &Value, prompt_tokens: u64) -> Plan {
        let config = &shared.config;
        let reasoning = REASONING_TEXT
            .chars()
            .cycle()
            .take(config.reasoning_tokens * CHARS_PER_TOKEN)
            .collect::<String>();
        let mut tokens: Vec<Token> = split_tokens(&reasoning)
            .into_iter()
            .map(|text| Token {
                reasoning: true,
                text,
            })
            .chain(
                split_tokens(&config.reply.render(body))
                    .into_iter()
                    .map(|text| Token {
                        reasoning: false,
                        text,
                    }),
            )
            .collect();
        let max_tokens = body["max_tokens"]
            .as_u64()
            .or_else(|| body["max_completion_tokens"].as_u64());
        let mut finish_reason = "stop";
        if let Some(max) = max_tokens.and_then(|m| usize::try_from(m).ok())
            && tokens.len() > max
        {
            tokens.truncate(max);
            finish_reason = "length";
        }
        Plan {
            index,
            id: format!("chatcmpl-fake-{index}"),
            model: body["model"].as_str().unwrap_or(&config.model).to_string(),
            created: unix_now(),
            dialect: config.dialect,
            reasoning_field: config
                .reasoning_field
                .clone()
                .unwrap_or_else(|| config.dialect.reasoning_field().to_string()),
            role_chunk: config
                .role_chunk
                .unwrap_or_else(|| config.dialect.sends_role_chunk()),
            prompt_tokens,
            tokens,
            finish_reason,
            include_usage: body["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            fault: shared.fault_for(index),
            native: false,
        }
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        if self.native {
            return self.native_line(&delta);
        }
        self.chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]))
    }

    fn usage(&self, completion_tokens: u64) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    /// The reasoning and content text of the tokens in a range.
    fn texts(&self, tokens: &[Token]) -> (String, String) {
        let mut reasoning = String::new();
        let mut content = String::new();
        for token in tokens {
            if token.reasoning {
                reasoning.push_str(&token.text);
            } else {
                content.push_str(&token.text);
            }
        }
        (reasoning, content)
    }
}

/// llama.cpp's `timings` object for a finished call.
fn timings(plan: &Plan, generated: &Generated) -> Value {
    let prompt_ms = generated.prompt_time.as_secs_f64() * 1000.0;
    let predicted_ms = generated.predicted_time.as_secs_f64() * 1000.0;
    let predicted_n = generated.emitted as u64;
    let per_second = |n: u64, ms: f64| {
        if ms > 0.0 {
            n as f64 * 1000.0 / ms
        } else {
            0.0
        }
    };
    let per_token = |n: u64, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
    json!({
        "cache_n": 0,
        "prompt_n": plan.prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": per_token(plan.prompt_tokens, prompt_ms),
        "prompt_per_second": per_second(plan.prompt_tokens, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": per_token(predicted_n, predicted_ms),
        "predicted_per_second": per_second(predicted_n, predicted_ms),
    })
}

/// Ollama's context when a request sets no `num_ctx` and the server no other default.
const OLLAMA_DEFAULT_CONTEXT: u64 = 4096;

fn ollama_not_found_message(model: &str) -> String {
    format!("model \"{model}\" not found, try pulling it first")
}

impl Plan {
    /// One line of Ollama's native stream carrying a delta's text.
    fn native_line(&self, delta: &Value) -> Value {
        let mut message = json!({
            "role": "assistant",
            "content": delta["content"].as_str().unwrap_or(""),
        });
        if let Some(thinking) = delta[self.reasoning_field.as_str()].as_str() {
            message["thinking"] = json!(thinking);
        }
        json!({
            "model": self.model,
            "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "message": message,
            "done": false,
        })
    }
}

/// Makes a native line Ollama's last: `done`, its reason, and the figures in nanoseconds, each
/// left out when zero as Ollama's `omitempty` does.
fn add_native_figures(
    line: &mut Value,
    shared: &Shared,
    plan: &Plan,
    generated: &Generated,
    completion_tokens: u64,
) {
    let received = shared
        .record()
        .requests_log
        .get(plan.index - 1)
        .map(|log| log.received);
    let load = shared.config.load_duration;
    let total = received.map_or(Duration::ZERO, |r| r.elapsed()) + load;
    line["done"] = json!(true);
    line["done_reason"] = json!(plan.finish_reason);
    let mut put = |key: &str, value: u128| {
        if value > 0 {
            line[key] = json!(value as u64);
        }
    };
    put("total_duration", total.as_nanos());
    put("load_duration", load.as_nanos());
    if shared.config.usage {
        put("prompt_eval_count", u128::from(plan.prompt_tokens));
        put("prompt_eval_duration", generated.prompt_time.as_nanos());
        put("eval_count", u128::from(completion_tokens));
        put("eval_duration", generated.predicted_time.as_nanos());
    }
}

/// vLLM's per-request `metrics`, when the server is set to send them.
fn vllm_metrics(shared: &Shared, plan: &Plan, generated: &Generated) -> Option<Value> {
    if !(shared.config.per_request_metrics && matches!(plan.dialect, Dialect::Vllm)) {
        return None;
    }
    let queue = shared
        .record()
        .requests_log
        .get(plan.index - 1)
        .and_then(RequestLog::queue_wait)
        .unwrap_or_default();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = generated.emitted as f64;
    let mean_itl = (generated.emitted > 1).then(|| ms(generated.predicted_time) / (n - 1.0));
    let inference = generated.prompt_time + generated.predicted_time;
    Some(json!({
        "time_to_first_token_ms": ms(generated.prompt_time),
        "generation_time_ms": ms(generated.predicted_time),
        "queue_time_ms": ms(queue),
        "mean_itl_ms": mean_itl,
        "tokens_per_second": if inference.is_zero() { 0.0 } else { n / inference.as_secs_f64() },
    }))
}

/// Refuses a request without the configured bearer key; health routes stay open.
async fn check_key(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = &shared.config.api_key else {
        return next.run(request).await;
    };
    let open = matches!(request.uri().path(), "/health" | "/v1/health")
        || (request.uri().path() == "/" && shared.config.dialect == Dialect::Ollama);
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if open || given == format!("Bearer {key}") {
        return next.run(request).await;
    }
    shared.record().unauthorized += 1;
    json_response(
        401,
        &json!({"error": {
            "code": 401,
            "message": format!("Invalid API Key (got `{given}`)"),
            "type": "authentication_error",
        }}),
    )
}

async fn ollama_root() -> Response {
    (StatusCode::OK, "Ollama is running").into_response()
}

async fn ollama_version() -> Response {
    json_response(200, &json!({"version": "0.12.6"}))
}

async fn ollama_tags(State(shared): State<Arc<Shared>>) -> Response {
    let name = if shared.config.model.contains(':') {
        shared.config.model.clone()
    } else {
        format!("{}:latest", shared.config.model)
    };
    json_response(
        200,
        &json!({"models": [{
            "name": name, "model": name, "size": 0, "digest": "0",
            "details": {"format": "gguf", "family": "fake"},
        }]}),
    )
}

/// Ollama's native `POST /api/chat`: the same timing model and faults as the OpenAI routes,
/// read from `options` and answered in NDJSON (a stream is the default, as in Ollama).
async fn ollama_chat(State(shared): State<Arc<Shared>>, raw: Bytes) -> Response {
    let received = Instant::now();
    let native: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let (index, in_flight) = shared.admit(native.clone(), received);
    let refuse = |status: u16, error: &Value| {
        shared.log(index, |log| log.finished = Some(Instant::now()));
        json_response(status, error)
    };
    if !native.is_object() {
        return refuse(400, &json!({"error": "invalid request body"}));
    }

    // The request in the OpenAI shape the plan reads.
    let options = &native["options"];
    let mut body = json!({
        "model": native["model"],
        "messages": native["messages"],
        "stream": native["stream"].as_bool().unwrap_or(true),
    });
    if let Some(max) = options["num_predict"].as_i64().filter(|n| *n >= 0) {
        body["max_tokens"] = json!(max);
    }
    if native["format"].is_object() {
        body["response_format"] = json!({"type": "json_schema",
            "json_schema": {"name": "reply", "schema": native["format"]}});
    }

    let config = &shared.config;
    let n_ctx = options["num_ctx"]
        .as_u64()
        .or(config.context_size)
        .unwrap_or(OLLAMA_DEFAULT_CONTEXT);
    let prompt_tokens = config
        .prompt_tokens
        .unwrap_or_else(|| estimate_prompt_tokens(&body))
        .min(n_ctx);
    let mut plan = Plan::new(&shared, index, &body, prompt_tokens);
    plan.native = true;
    plan.role_chunk = false;
    plan.reasoning_field = "thinking".to_string();
    shared.log(index, |log| {
        log.prompt_tokens = prompt_tokens;
        log.fault = plan.fault.clone();
    });
    let cancel = shared.cancel_token();

    match &plan.fault {
        Some(Fault::Status { status, body }) => return refuse(*status, body),
        Some(Fault::Hang) => {
            cancel.cancelled().await;
            return dropped_response();
        }
        _ => {}
    }
    if config.require_model && plan.model != config.model {
        return refuse(
            404,
            &json!({"error": ollama_not_found_message(&plan.model)}),
        );
    }

    if body["stream"].as_bool().unwrap_or(true) {
        return stream_response(shared, plan, in_flight, cancel);
    }
    let generated = tokio::select! {
        generated = generate(&shared, &plan, &Out::Silent) => generated,
        () = cancel.cancelled() => return dropped_response(),
    };
    let Ok(generated) = generated else {
        return dropped_response();
    };
    shared.log(index, |log| log.finished = Some(Instant::now()));
    drop(in_flight);
    match generated.ended_by {
        None => json_response(200, &completion(&shared, &plan, &generated)),
        Some(Fault::ErrorEvent { message, .. }) => json_response(500, &json!({"error": message})),
        Some(_) => dropped_response(),
    }
}

/// The client went away.
struct Closed;

/// Where a call's frames go: a live stream, or nowhere for a non-streaming call.
enum Out {
    Stream(mpsc::Sender<Result<Bytes, io::Error>>),
    /// A newline-delimited JSON stream (Ollama's native chat).
    Lines(mpsc::Sender<Result<Bytes, io::Error>>),
    Silent,
}

impl Out {
    fn streaming(&self) -> bool {
        matches!(self, Out::Stream(_) | Out::Lines(_))
    }

    async fn send(&self, frame: String) -> Result<(), Closed> {
        match self {
            Out::Stream(tx) | Out::Lines(tx) => {
                tx.send(Ok(Bytes::from(frame))).await.map_err(|_| Closed)
            }
            Out::Silent => Ok(()),
        }
    }

    async fn data(&self, value: &Value) -> Result<(), Closed> {
        match self {
            Out::Lines(_) => self.send(format!("{value}\n")).await,
            _ => self.send(format!("data: {value}\n\n")).await,
        }
    }

    /// Makes the connection drop: hyper aborts a body whose stream yields an error.
    async fn abort(&self) {
        if let Out::Stream(tx) | Out::Lines(tx) = self {
            // Frames still buffered when the body fails are lost with the connection; let the
            // connection take and flush them first, so the client sees every token sent.
            while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let error = io::Error::new(io::ErrorKind::ConnectionReset, "fault: connection dropped");
            let _ = tx.send(Err(error)).await;
        }
    }
}

/// How a simulated generation went.
struct Generated {
    /// The fault that ended it early, if one did.
    ended_by: Option<Fault>,
    emitted: usize,
    /// From getting a slot to the first token (llama.cpp's `prompt_ms`).
    prompt_time: Duration,
    /// From the first token to the last (llama.cpp's `predicted_ms`).
    predicted_time: Duration,
}

/// Runs one call through the timing model: slot, prefill, then tokens, sending its frames to
/// `out` and injecting the plan's stream fault. Never returns for a stall.
async fn generate(shared: &Shared, plan: &Plan, out: &Out) -> Result<Generated, Closed> {
    let config = &shared.config;
    let _permit = Arc::clone(&shared.slots)
        .acquire_owned()
        .await
        .expect("the slot semaphore is never closed");
    let (_busy, busy_now) = Gauge::enter(&shared.busy);
    {
        let mut record = shared.record();
        record.peak_busy_slots = record.peak_busy_slots.max(busy_now);
    }
    let started = Instant::now();
    shared.log(plan.index, |log| log.started = Some(started));

    if out.streaming() && plan.role_chunk {
        out.data(&plan.delta(json!({"role": "assistant", "content": ""}), None))
            .await?;
    }

    let prefill_rate = config.prefill_tok_per_s;
    let prefill_end = started + seconds(plan.prompt_tokens as f64 / prefill_rate);
    if out.streaming() && plan.dialect == Dialect::Mlx {
        let total = plan.prompt_tokens;
        out.send(format!(": keepalive 0/{total}\n\n")).await?;
        let mut done = 0;
        while done < total {
            done = (done + config.keepalive_every).min(total);
            sleep_until(started + seconds(done as f64 / prefill_rate)).await;
            out.send(format!(": keepalive {done}/{total}\n\n")).await?;
        }
    }
    sleep_until(prefill_end).await;

    let (_decoding, _) = Gauge::enter(&shared.decoding);
    let mut ready = prefill_end;
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut emitted = 0;
    let mut fault = plan.fault.clone();
    let total = plan.tokens.len();
    loop {
        let due = fault
            .as_ref()
            .and_then(Fault::after_tokens)
            .is_some_and(|after| after.min(total) == emitted);
        if due {
            shared.log(plan.index, |log| log.completion_tokens = emitted as u64);
            let f = fault.take().expect("a due fault exists");
            if !out.streaming() {
                if let Fault::Stall { .. } = f {
                    std::future::pending::<()>().await;
                }
                return Ok(ended_early(f, emitted, started, first, last));
            }
            match &f {
                Fault::Drop { .. } => out.abort().await,
                Fault::EndEarly { .. } => {}
                Fault::Stall { .. } => std::future::pending::<()>().await,
                Fault::ErrorEvent { message, .. } if plan.native => {
                    out.data(&json!({"error": message})).await?;
                }
                Fault::ErrorEvent {
                    message,
                    legacy_field,
                    ..
                } => {
                    let error = json!({"error": {
                        "code": 500, "message": message, "type": "server_error",
                    }});
                    let field = if *legacy_field { "error" } else { "data" };
                    out.send(format!("{field}: {error}\n\n")).await?;
                }
                Fault::Garbage { .. } if plan.native => {
                    out.send("{\"message\": <<garbage>>\n".to_string()).await?;
                    continue;
                }
                Fault::Garbage { .. } => {
                    out.send("data: {\"choices\": [{\"delta\": <<garbage>>\n\n".to_string())
                        .await?;
                    continue;
                }
                Fault::Status { .. } | Fault::Hang => {}
            }
            return Ok(ended_early(f, emitted, started, first, last));
        }
        if emitted == total {
            break;
        }

        let end = (emitted + config.tokens_per_chunk).min(total);
        for index in emitted..end {
            if index > 0 {
                ready += shared.token_delay();
            }
        }
        sleep_until(ready).await;
        let now = Instant::now();
        first.get_or_insert(now);
        last = Some(now);
        let (reasoning, content) = plan.texts(&plan.tokens[emitted..end]);
        let mut delta = serde_json::Map::new();
        if !reasoning.is_empty() {
            delta.insert(plan.reasoning_field.clone(), json!(reasoning));
        }
        if !content.is_empty() {
            delta.insert("content".to_string(), json!(content));
        }
        out.data(&plan.delta(Value::Object(delta), None)).await?;
        emitted = end;
        shared.log(plan.index, |log| {
            log.first_token = first;
            log.last_token = last;
            log.completion_tokens = emitted as u64;
        });
    }

    let first_or_end = first.unwrap_or(prefill_end);
    Ok(Generated {
        ended_by: None,
        emitted,
        prompt_time: first_or_end - started,
        predicted_time: last.map_or(Duration::ZERO, |last| last - first_or_end),
    })
}

fn ended_early(
    fault: Fault,
    emitted: usize,
    started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
) -> Generated {
    let now = Instant::now();
    Generated {
        ended_by: Some(fault),
        emitted,
        prompt_time: first.unwrap_or(now) - started,
        predicted_time: match (first, last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        },
    }
}

/// Sends what follows the last token: the finish chunk, the usage chunk where the dialect has
/// one, and `[DONE]`.
async fn finish_stream(
    shared: &Shared,
    plan: &Plan,
    generated: &Generated,
    out: &Out,
) -> Result<(), Closed> {
    let config = &shared.config;
    let completion_tokens = generated.emitted as u64 + config.extra_completion_tokens;
    if plan.native {
        let mut last = plan.native_line(&json!({"content": ""}));
        add_native_figures(&mut last, shared, plan, generated, completion_tokens);
        return out.data(&last).await;
    }
    let mut finish = plan.delta(json!({}), Some(plan.finish_reason));
    match plan.dialect {
        Dialect::LlamaCpp => {
            if config.usage {
                finish["usage"] = plan.usage(completion_tokens);
                finish["timings"] = timings(plan, generated);
            }
            out.data(&finish).await?;
        }
        Dialect::Mlx | Dialect::Vllm | Dialect::OpenAi | Dialect::Ollama => {
            out.data(&finish).await?;
            if config.usage && plan.include_usage {
                let mut usage = plan.chunk(json!([]));
                usage["usage"] = plan.usage(completion_tokens);
                if plan.dialect == Dialect::Mlx {
                    usage["object"] = json!("chat.completion");
                }
                if let Some(metrics) = vllm_metrics(shared, plan, generated) {
                    usage["metrics"] = metrics;
                }
                out.data(&usage).await?;
            }
        }
    }
    out.send("data: [DONE]\n\n".to_string()).await
}

/// The whole JSON answer of a non-streaming call.
fn completion(shared: &Shared, plan: &Plan, generated: &Generated) -> Value {
    let config = &shared.config;
    let (reasoning, content) = plan.texts(&plan.tokens[..generated.emitted]);
    if plan.native {
        let mut delta = json!({"content": content});
        if !reasoning.is_empty() {
            delta[plan.reasoning_field.as_str()] = json!(reasoning);
        }
        let mut body = plan.native_line(&delta);
        let completion_tokens = generated.emitted as u64 + config.extra_completion_tokens;
        add_native_figures(&mut body, shared, plan, generated, completion_tokens);
        return body;
    }
    let mut message = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        message[plan.reasoning_field.as_str()] = json!(reasoning);
    }
    let mut body = json!({
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
    });
    if config.usage {
        body["usage"] = plan.usage(generated.emitted as u64 + config.extra_completion_tokens);
        if plan.dialect == Dialect::LlamaCpp {
            body["timings"] = timings(plan, generated);
        }
        if let Some(metrics) = vllm_metrics(shared, plan, generated) {
            body["metrics"] = metrics;
        }
    }
    body
}

async fn chat(State(shared): State<Arc<Shared>>, raw: Bytes) -> Response {
    let received = Instant::now();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let (index, in_flight) = shared.admit(body.clone(), received);
    let refuse = |status: u16, error: &Value| {
        shared.log(index, |log| log.finished = Some(Instant::now()));
        json_response(status, error)
    };
    if !body.is_object() {
        return refuse(
            400,
            &json!({"error": {
                "code": 400,
                "message": "the request body is not a JSON object",
                "type": "invalid_request_error",
            }}),
        );
    }

    let config = &shared.config;
    let prompt_tokens = config
        .prompt_tokens
        .unwrap_or_else(|| estimate_prompt_tokens(&body));
    // Ollama's `/v1` cannot be given a context size: a longer prompt is cut to its default.
    let prompt_tokens = if config.dialect == Dialect::Ollama {
        prompt_tokens.min(config.context_size.unwrap_or(OLLAMA_DEFAULT_CONTEXT))
    } else {
        prompt_tokens
    };
    let plan = Plan::new(&shared, index, &body, prompt_tokens);
    shared.log(index, |log| {
        log.prompt_tokens = prompt_tokens;
        log.fault = plan.fault.clone();
    });
    let cancel = shared.cancel_token();

    match &plan.fault {
        Some(Fault::Status { status, body }) => return refuse(*status, body),
        Some(Fault::Hang) => {
            cancel.cancelled().await;
            return dropped_response();
        }
        _ => {}
    }
    if config.require_model && plan.model != config.model {
        let body = match config.dialect {
            Dialect::Ollama => json!({"error": {
                "message": ollama_not_found_message(&plan.model),
                "type": "api_error", "param": null, "code": null,
            }}),
            _ => model_not_found_body(&plan.model),
        };
        return refuse(404, &body);
    }
    if let Some(n_ctx) = config.context_size
        && prompt_tokens > n_ctx
        && config.dialect != Dialect::Ollama
    {
        let body = match config.dialect {
            Dialect::LlamaCpp => context_overflow_body(prompt_tokens, n_ctx),
            _ => vllm_context_overflow_body(prompt_tokens, n_ctx),
        };
        return refuse(400, &body);
    }

    if body["stream"].as_bool().unwrap_or(false) {
        stream_response(shared, plan, in_flight, cancel)
    } else {
        let generated = tokio::select! {
            generated = generate(&shared, &plan, &Out::Silent) => generated,
            () = cancel.cancelled() => return dropped_response(),
        };
        let Ok(generated) = generated else {
            return dropped_response();
        };
        shared.log(index, |log| log.finished = Some(Instant::now()));
        drop(in_flight);
        match generated.ended_by {
            None => json_response(200, &completion(&shared, &plan, &generated)),
            Some(Fault::ErrorEvent { message, .. }) => json_response(
                500,
                &json!({"error": {"code": 500, "message": message, "type": "server_error"}}),
            ),
            Some(Fault::Garbage { .. }) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "<<garbage: not JSON>>",
            )
                .into_response(),
            Some(Fault::EndEarly { .. }) => {
                let mut text = completion(&shared, &plan, &generated).to_string();
                text.truncate(text.len() / 2);
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    text,
                )
                    .into_response()
            }
            Some(_) => dropped_response(),
        }
    }
}

/// Answers a streaming call: a task runs the timing model and feeds frames through a channel
/// to the response body, which ends (or fails) with it.
fn stream_response(
    shared: Arc<Shared>,
    plan: Plan,
    in_flight: InFlight,
    cancel: CancellationToken,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(FRAME_BUFFER);
    let content_type = if plan.native {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    let producer_cancel = cancel.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let out = if plan.native {
            Out::Lines(tx.clone())
        } else {
            Out::Stream(tx.clone())
        };
        let run = async {
            let generated = generate(&shared, &plan, &out).await?;
            if generated.ended_by.is_none() {
                finish_stream(&shared, &plan, &generated, &out).await?;
            }
            Ok::<(), Closed>(())
        };
        tokio::select! {
            _ = run => {}
            () = tx.closed() => {}
            () = producer_cancel.cancelled() => {}
        }
        shared.log(plan.index, |log| log.finished = Some(Instant::now()));
    });

    // The body ends when the producer drops its sender, and fails (dropping the connection)
    // when the server stops, so that stopping never leaves a client waiting.
    let stopped = Box::pin(cancel.cancelled_owned());
    let frames = futures::stream::unfold(
        (rx, stopped, false),
        |(mut rx, mut stopped, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                () = &mut stopped => {
                    let error = io::Error::new(io::ErrorKind::ConnectionAborted, "server stopped");
                    Some((Err(error), (rx, stopped, true)))
                }
                frame = rx.recv() => frame.map(|frame| (frame, (rx, stopped, false))),
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .expect("a static response head is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// One SSE event as a client received it.
    #[derive(Debug)]
    struct Frame {
        at: Instant,
        text: String,
    }

    impl Frame {
        fn json(&self) -> Option<Value> {
            self.text
                .strip_prefix("data: ")
                .and_then(|data| serde_json::from_str(data).ok())
        }
    }

    /// How a streamed response ended.
    #[derive(Debug)]
    struct Streamed {
        status: u16,
        sent: Instant,
        frames: Vec<Frame>,
        /// The body read failed (the connection dropped).
        failed: bool,
    }

    impl Streamed {
        fn data(&self) -> Vec<Value> {
            self.frames.iter().filter_map(Frame::json).collect()
        }

        fn content(&self) -> String {
            self.data()
                .iter()
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect()
        }

        fn done(&self) -> bool {
            self.frames.last().is_some_and(|f| f.text == "data: [DONE]")
        }

        /// The first frame carrying a content or reasoning delta.
        fn first_token(&self) -> Option<Instant> {
            self.frames
                .iter()
                .find(|f| {
                    f.json().is_some_and(|c| {
                        let delta = &c["choices"][0]["delta"];
                        ["content", "reasoning", "reasoning_content"]
                            .iter()
                            .any(|k| delta[*k].as_str().is_some_and(|s| !s.is_empty()))
                    })
                })
                .map(|f| f.at)
        }
    }

    fn request(content: &str) -> Value {
        json!({
            "model": "fake-model",
            "messages": [{"role": "user", "content": content}],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    async fn stream(server: &FakeServer, body: &Value) -> Streamed {
        stream_with(&client(), server, body).await
    }

    async fn stream_with(http: &reqwest::Client, server: &FakeServer, body: &Value) -> Streamed {
        let url = format!("{}/v1/chat/completions", server.url());
        let sent = Instant::now();
        let response = http.post(url).json(body).send().await.unwrap();
        let status = response.status().as_u16();
        let mut bytes = response.bytes_stream();
        let mut buffer = String::new();
        let mut frames = Vec::new();
        let mut failed = false;
        while let Some(chunk) = bytes.next().await {
            let Ok(chunk) = chunk else {
                failed = true;
                break;
            };
            let at = Instant::now();
            buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buffer.find("\n\n") {
                let text = buffer[..end].to_string();
                buffer.drain(..end + 2);
                frames.push(Frame { at, text });
            }
        }
        Streamed {
            status,
            sent,
            frames,
            failed,
        }
    }

    #[tokio::test]
    async fn llama_cpp_puts_usage_and_timings_on_the_finish_chunk() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("Twelve chars"))
            .prompt_tokens(40)
            .start()
            .await;
        let streamed = stream(&server, &request("hello")).await;

        assert_eq!(streamed.status, 200);
        assert!(streamed.done());
        assert_eq!(streamed.content(), "Twelve chars");
        let data = streamed.data();
        assert_eq!(data.len(), 4, "three tokens and the finish chunk: {data:?}");
        assert!(data[0]["choices"][0]["delta"].get("role").is_none());
        let last = data.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert_eq!(last["usage"]["prompt_tokens"], 40);
        assert_eq!(last["usage"]["completion_tokens"], 3);
        assert_eq!(last["timings"]["prompt_n"], 40);
        assert_eq!(last["timings"]["predicted_n"], 3);
        assert!(last["timings"]["prompt_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(last["timings"]["cache_n"], 0);
    }

    #[tokio::test]
    async fn mlx_sends_keepalives_a_role_chunk_and_a_separate_usage_chunk() {
        let server = FakeServer::builder()
            .dialect(Dialect::Mlx)
            .prompt_tokens(600)
            .reasoning_tokens(2)
            .reply(Reply::fixed("Fine work"))
            .start()
            .await;
        let streamed = stream(&server, &request("hello")).await;

        assert!(streamed.done());
        let keepalives: Vec<&str> = streamed
            .frames
            .iter()
            .map(|f| f.text.as_str())
            .filter(|t| t.starts_with(": keepalive"))
            .collect();
        assert_eq!(
            keepalives,
            [
                ": keepalive 0/600",
                ": keepalive 256/600",
                ": keepalive 512/600",
                ": keepalive 600/600"
            ]
        );
        let data = streamed.data();
        assert_eq!(
            data[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(data[1]["choices"][0]["delta"]["reasoning"], "Chec");
        assert!(
            data[1]["choices"][0]["delta"]
                .get("reasoning_content")
                .is_none()
        );
        assert_eq!(streamed.content(), "Fine work");
        let usage = data.last().unwrap();
        assert_eq!(usage["object"], "chat.completion");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 5);
        assert!(data.iter().all(|c| c.get("timings").is_none()));
        let finish = &data[data.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert!(finish.get("usage").is_none());
    }

    #[tokio::test]
    async fn vllm_sends_usage_only_when_asked() {
        let server = FakeServer::builder()
            .dialect(Dialect::Vllm)
            .reasoning_tokens(1)
            .reply(Reply::fixed("ok"))
            .start()
            .await;

        let with_usage = stream(&server, &request("hello")).await.data();
        let usage = with_usage.last().unwrap();
        assert_eq!(usage["object"], "chat.completion.chunk");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 2);
        assert_eq!(
            with_usage[1]["choices"][0]["delta"]["reasoning_content"],
            "Chec"
        );

        let mut body = request("hello");
        body.as_object_mut().unwrap().remove("stream_options");
        let without = stream(&server, &body).await;
        assert!(without.done());
        assert!(without.data().iter().all(|c| c.get("usage").is_none()));
    }

    #[tokio::test]
    async fn answers_without_a_stream_in_one_json_object() {
        let server = FakeServer::builder()
            .reasoning_tokens(1)
            .reply(Reply::fixed("All criteria met."))
            .start()
            .await;
        let mut body = request("hello");
        body["stream"] = json!(false);
        let response = client()
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();

        assert_eq!(answer["object"], "chat.completion");
        let choice = &answer["choices"][0];
        assert_eq!(choice["message"]["content"], "All criteria met.");
        assert_eq!(choice["message"]["reasoning_content"], "Chec");
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(answer["usage"]["completion_tokens"], 6);
        assert_eq!(answer["timings"]["predicted_n"], 6);
    }

    #[tokio::test]
    async fn max_tokens_cuts_the_reply_with_finish_reason_length() {
        let server = FakeServer::builder()
            .dialect(Dialect::Vllm)
            .reasoning_tokens(2)
            .reply(Reply::fixed("abcdefghijkl"))
            .start()
            .await;
        let mut body = request("hello");
        body["max_tokens"] = json!(3);
        let streamed = stream(&server, &body).await;

        assert_eq!(streamed.content(), "abcd");
        let data = streamed.data();
        assert_eq!(
            data[data.len() - 2]["choices"][0]["finish_reason"],
            "length"
        );
        assert_eq!(data.last().unwrap()["usage"]["completion_tokens"], 3);
    }

    #[tokio::test]
    async fn tokens_per_chunk_groups_tokens() {
        let server = FakeServer::builder()
            .tokens_per_chunk(2)
            .reply(Reply::fixed("abcdefghijkl"))
            .start()
            .await;
        let streamed = stream(&server, &request("hello")).await;
        let data = streamed.data();

        assert_eq!(data[0]["choices"][0]["delta"]["content"], "abcdefgh");
        assert_eq!(data[1]["choices"][0]["delta"]["content"], "ijkl");
        assert_eq!(data.last().unwrap()["usage"]["completion_tokens"], 3);
    }

    #[test]
    fn schema_replies_are_minimal_valid_instances() {
        let schema = json!({
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": 0, "maximum": 5},
                "count": {"type": "integer"},
                "ratio": {"type": "number", "minimum": 3},
                "comment": {"type": "string", "maxLength": 1},
                "label": {"type": "string", "minLength": 4},
                "grade": {"enum": ["pass", "fail"]},
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                "flag": {"type": ["boolean", "null"]},
                "ignored": {"type": "string"}
            },
            "required": ["score", "count", "ratio", "comment", "label", "grade", "items", "flag"],
            "$defs": {"item": {
                "type": "object",
                "properties": {"id": {"type": "string"}},
                "required": ["id"]
            }}
        });
        assert_eq!(
            reply_matching_schema(&schema),
            concat!(
                r#"{"score":5,"count":1,"ratio":3.0,"comment":"o","label":"okkk","#,
                r#""grade":"pass","items":[{"id":"ok"}],"flag":true}"#,
            )
        );
    }

    #[tokio::test]
    async fn default_reply_matches_the_requested_schema() {
        let server = FakeServer::builder().start().await;
        let schema = json!({
            "type": "object",
            "properties": {"score": {"type": "integer", "maximum": 10}},
            "required": ["score"]
        });
        let mut body = request("hello");
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema}
        });
        assert_eq!(stream(&server, &body).await.content(), r#"{"score":10}"#);
        assert_eq!(
            stream(&server, &request("hi")).await.content(),
            SCHEMALESS_REPLY
        );

        let echo = FakeServer::builder()
            .reply(Reply::func(|body| {
                body["messages"][0]["content"].to_string()
            }))
            .start()
            .await;
        assert_eq!(stream(&echo, &request("hi")).await.content(), "\"hi\"");
    }

    #[tokio::test]
    async fn one_slot_serialises_two_requests() {
        let server = FakeServer::builder()
            .slots(1)
            .prompt_tokens(20)
            .prefill_tok_per_s(1000.0)
            .decode_tok_per_s(200.0)
            .reply(Reply::fixed("x".repeat(40)))
            .start()
            .await;
        let body = request("hello");
        let (a, b) = tokio::join!(stream(&server, &body), stream(&server, &body));
        let (earlier, later) = if a.frames[0].at <= b.frames[0].at {
            (a, b)
        } else {
            (b, a)
        };

        let earlier_end = earlier.frames.last().unwrap().at;
        assert!(later.frames[0].at >= earlier_end);
        let stats = server.stats();
        assert_eq!(stats.peak_in_flight, 2);
        assert_eq!(stats.peak_busy_slots, 1);
        let waits: Vec<Duration> = stats
            .requests_log
            .iter()
            .map(|r| r.queue_wait().unwrap())
            .collect();
        assert!(
            waits.iter().any(|w| *w >= Duration::from_millis(50)),
            "{waits:?}"
        );
    }

    #[tokio::test]
    async fn prefill_and_decode_take_about_the_configured_time() {
        let server = FakeServer::builder()
            .prompt_tokens(200)
            .prefill_tok_per_s(1000.0)
            .decode_tok_per_s(400.0)
            .reply(Reply::fixed("x".repeat(4 * 41)))
            .start()
            .await;
        let streamed = stream(&server, &request("hello")).await;
        let first = streamed.first_token().unwrap();
        let ttft = first - streamed.sent;
        let decode = streamed.frames[streamed.frames.len() - 2].at - first;

        // 200 tokens at 1000 tok/s, then 40 gaps at 400 tok/s; sleeps never end early. Tokens
        // keep to a schedule, so a first token delayed by a busy machine is followed by faster
        // ones: only the prefill and the end of the stream have lower bounds of their own.
        assert!(ttft >= Duration::from_millis(195), "ttft {ttft:?}");
        assert!(ttft < Duration::from_secs(2), "ttft {ttft:?}");
        assert!(
            ttft + decode >= Duration::from_millis(295),
            "decode {decode:?}"
        );
        assert!(decode < Duration::from_secs(2), "decode {decode:?}");
        let timings = streamed.data().last().unwrap()["timings"].clone();
        let prompt_ms = timings["prompt_ms"].as_f64().unwrap();
        assert!(prompt_ms >= 195.0);
        assert!(prompt_ms + timings["predicted_ms"].as_f64().unwrap() >= 295.0);
    }

    #[tokio::test]
    async fn concurrent_decoding_shares_a_fixed_aggregate_rate() {
        let server = FakeServer::builder()
            .slots(2)
            .batching(Batching::Shared)
            .decode_tok_per_s(400.0)
            .reply(Reply::fixed("x".repeat(4 * 41)))
            .start()
            .await;
        let body = request("hello");
        let (a, b) = tokio::join!(stream(&server, &body), stream(&server, &body));

        // Alone, 40 gaps take 0.1 s; two at once share 400 tok/s, so most gaps take twice that.
        for streamed in [a, b] {
            let first = streamed.first_token().unwrap();
            let decode = streamed.frames[streamed.frames.len() - 2].at - first;
            assert!(decode >= Duration::from_millis(150), "decode {decode:?}");
        }
        assert_eq!(server.stats().peak_busy_slots, 2);
        assert!((Batching::Power(0.5).aggregate(4) - 2.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn status_faults_follow_their_schedule() {
        let server = FakeServer::builder()
            .fault(Fault::busy(), When::Nth(2))
            .fault(Fault::context_overflow(9000, 8192), When::From(4))
            .start()
            .await;
        let url = format!("{}/v1/chat/completions", server.url());
        let http = client();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let response = http.post(&url).json(&request("hi")).send().await.unwrap();
            statuses.push(response.status().as_u16());
            let _ = response.bytes().await;
        }
        assert_eq!(statuses, [200, 503, 200, 400]);

        let response = http.post(&url).json(&request("hi")).send().await.unwrap();
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "exceed_context_size_error");
        assert_eq!(error["error"]["n_ctx"], 8192);
        assert_eq!(server.stats().requests, 5);
        assert_eq!(server.stats().requests_log[1].fault, Some(Fault::busy()));
        assert!(server.stats().requests_log[1].finished.is_some());
    }

    #[tokio::test]
    async fn every_and_first_n_schedules() {
        assert!(When::Every.matches(7));
        assert!(When::FirstN(2).matches(2) && !When::FirstN(2).matches(3));
        let server = FakeServer::builder()
            .fault(Fault::server_error(), When::FirstN(1))
            .start()
            .await;
        assert_eq!(stream(&server, &request("hi")).await.status, 500);
        assert_eq!(stream(&server, &request("hi")).await.status, 200);
        server.inject(Fault::model_not_found("other"), When::Every);
        assert_eq!(stream(&server, &request("hi")).await.status, 404);
        server.clear_faults();
        assert_eq!(stream(&server, &request("hi")).await.status, 200);
    }

    #[tokio::test]
    async fn context_size_and_required_model_reject_requests() {
        let server = FakeServer::builder()
            .model("gemma")
            .require_model(true)
            .context_size(10)
            .start()
            .await;
        let mut body = request(&"x".repeat(80));
        body["model"] = json!("gemma");
        let response = client()
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["n_prompt_tokens"], 20);

        let wrong_model = stream(&server, &request("hi")).await;
        assert_eq!(wrong_model.status, 404);
    }

    #[tokio::test]
    async fn a_dropped_stream_fails_without_finish_or_done() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("x".repeat(40)))
            .fault(Fault::Drop { after_tokens: 3 }, When::Every)
            .start()
            .await;
        let streamed = stream(&server, &request("hi")).await;

        assert!(streamed.failed);
        assert_eq!(streamed.content(), "x".repeat(12));
        assert!(!streamed.done());
        assert_eq!(server.stats().requests_log[0].completion_tokens, 3);
    }

    #[tokio::test]
    async fn an_early_end_is_clean_but_has_no_finish_or_done() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("x".repeat(40)))
            .fault(Fault::EndEarly { after_tokens: 2 }, When::Every)
            .start()
            .await;
        let streamed = stream(&server, &request("hi")).await;

        assert!(!streamed.failed);
        assert!(!streamed.done());
        assert_eq!(streamed.data().len(), 2);
        assert!(
            streamed
                .data()
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
    }

    #[tokio::test]
    async fn a_stalled_stream_goes_quiet_after_its_tokens() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("x".repeat(40)))
            .fault(Fault::Stall { after_tokens: 2 }, When::Nth(1))
            .start()
            .await;
        let response = client()
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&request("hi"))
            .send()
            .await
            .unwrap();
        let mut bytes = response.bytes_stream();
        let mut received = String::new();
        let quiet = loop {
            match tokio::time::timeout(Duration::from_millis(300), bytes.next()).await {
                Ok(Some(chunk)) => received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };

        assert!(quiet, "the stream ended instead of stalling");
        assert_eq!(received.matches("data: ").count(), 2);
        assert_eq!(server.stats().in_flight, 1);
    }

    #[tokio::test]
    async fn a_client_giving_up_on_a_stall_frees_its_slot() {
        let server = FakeServer::builder()
            .slots(1)
            .fault(Fault::Stall { after_tokens: 1 }, When::Nth(1))
            .start()
            .await;
        let http = client();
        let url = format!("{}/v1/chat/completions", server.url());
        let stalled = async {
            let response = http.post(&url).json(&request("hi")).send().await.unwrap();
            response.bytes().await
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(200), stalled)
                .await
                .is_err()
        );

        let body = request("hi");
        let next = tokio::time::timeout(Duration::from_secs(5), stream(&server, &body));
        assert!(next.await.expect("the slot was freed").done());
        assert_eq!(server.stats().in_flight, 0);
    }

    #[tokio::test]
    async fn a_hung_request_sends_no_headers() {
        let server = FakeServer::builder()
            .fault(Fault::Hang, When::Every)
            .start()
            .await;
        let send = client()
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&request("hi"))
            .send();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), send)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn error_events_arrive_inside_a_200_stream() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("x".repeat(40)))
            .fault(
                Fault::ErrorEvent {
                    after_tokens: 1,
                    message: "boom".into(),
                    legacy_field: false,
                },
                When::Nth(1),
            )
            .fault(
                Fault::ErrorEvent {
                    after_tokens: 0,
                    message: "old".into(),
                    legacy_field: true,
                },
                When::Nth(2),
            )
            .start()
            .await;

        let modern = stream(&server, &request("hi")).await;
        assert_eq!(modern.status, 200);
        assert!(!modern.done());
        assert_eq!(modern.data().last().unwrap()["error"]["message"], "boom");

        let legacy = stream(&server, &request("hi")).await;
        let last = &legacy.frames.last().unwrap().text;
        assert!(last.starts_with("error: {"), "{last}");
        assert!(legacy.data().is_empty());
    }

    #[tokio::test]
    async fn a_garbage_line_is_followed_by_the_rest_of_the_stream() {
        let server = FakeServer::builder()
            .reply(Reply::fixed("abcdefgh"))
            .fault(Fault::Garbage { after_tokens: 1 }, When::Every)
            .start()
            .await;
        let streamed = stream(&server, &request("hi")).await;

        assert!(streamed.done());
        assert_eq!(streamed.content(), "abcdefgh");
        let garbage: Vec<_> = streamed
            .frames
            .iter()
            .filter(|f| f.text.starts_with("data: {") && f.json().is_none())
            .collect();
        assert_eq!(garbage.len(), 1);
    }

    #[tokio::test]
    async fn a_stopped_server_refuses_connections_until_restarted() {
        let mut server = FakeServer::builder().start().await;
        let http = client();
        assert!(stream_with(&http, &server, &request("hi")).await.done());

        server.stop().await;
        let url = format!("{}/v1/chat/completions", server.url());
        let error = http
            .post(&url)
            .json(&request("hi"))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error:?}");

        server.restart().await.unwrap();
        assert!(stream_with(&http, &server, &request("hi")).await.done());
        assert_eq!(server.stats().requests, 2);

        let refused = client().get(FakeServer::refused_url().await).send().await;
        assert!(refused.unwrap_err().is_connect());
    }

    #[tokio::test]
    async fn stopping_drops_open_streams() {
        let mut server = FakeServer::builder()
            .fault(Fault::Stall { after_tokens: 0 }, When::Every)
            .start()
            .await;
        let url = format!("{}/v1/chat/completions", server.url());
        let response = client()
            .post(url)
            .json(&request("hi"))
            .send()
            .await
            .unwrap();
        server.stop().await;
        let body = tokio::time::timeout(Duration::from_secs(5), response.bytes()).await;
        assert!(body.expect("the stream ended").is_err());
    }

    #[tokio::test]
    async fn health_reports_loading_then_ok_and_models_lists_the_model() {
        let server = FakeServer::builder()
            .model("gemma-3-270m")
            .health_loading_polls(2)
            .start()
            .await;
        let http = client();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = http
                .get(format!("{}/health", server.url()))
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [503, 503, 200]);
        assert_eq!(server.stats().health_polls, 3);

        let models: Value = http
            .get(format!("{}/v1/models", server.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(models["data"][0]["id"], "gemma-3-270m");
    }

    #[tokio::test]
    async fn health_can_load_for_a_duration() {
        let server = FakeServer::builder()
            .health_loading_for(Duration::from_secs(60))
            .start()
            .await;
        let response = client()
            .get(format!("{}/health", server.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["message"], "Loading model");
    }

    #[tokio::test]
    async fn records_bodies_and_timestamps() {
        let server = FakeServer::builder().start().await;
        stream(&server, &request("first")).await;
        stream(&server, &request("second prompt")).await;
        let stats = server.stats();

        assert_eq!(stats.requests, 2);
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.peak_in_flight, 1);
        let bodies = stats.bodies();
        assert_eq!(bodies[1]["messages"][0]["content"], "second prompt");
        let log = &stats.requests_log[1];
        assert_eq!(log.index, 2);
        assert!(log.stream);
        assert_eq!(log.prompt_tokens, 4);
        let started = log.started.unwrap();
        assert!(log.received <= started);
        assert!(started <= log.first_token.unwrap());
        assert!(log.first_token <= log.last_token);
        assert!(log.last_token.unwrap() <= log.finished.unwrap());
    }
}
