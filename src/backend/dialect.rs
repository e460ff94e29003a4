//! What the two wire dialects share: the reply being assembled from a stream, and the choice of
//! reader for a backend's `api`.
//!
//! A dialect is how a server is spoken to, not which server it is. `api = "openai"` covers
//! mlx_lm.server, llama.cpp's llama-server, vLLM, LM Studio and Ollama's `/v1`: one request shape,
//! server-sent events back, and every server's extras (llama.cpp's `timings`, vLLM's `metrics`,
//! mlx-lm's `reasoning`) read when present. `api = "ollama"` is Ollama's native `/api/chat` with
//! newline-delimited JSON, the only way to learn its prefill time and set its context size.
//! Each dialect's reader ([`super::openai`], [`super::ollama`]) feeds a [`Reply`], which keeps
//! the timestamps and decides whether the stream ended whole.

use std::time::Instant;

use chrono::{DateTime, Local};

use super::client::{CallOutcome, ServerTimings, Timeline, Usage};
use super::ollama::NdjsonReader;
use super::openai::SseReader;
use crate::config::Api;

/// A problem found while reading a stream's chunks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamFailure {
    /// A chunk that is not what the dialect sends (not UTF-8, not JSON).
    Decode(String),
    /// An error the server reported inside the stream, in its own words.
    Server(String),
}

/// A reply as it streams in: the text so far, what the server reported, and when.
#[derive(Debug)]
pub(crate) struct Reply {
    sent: Instant,
    sent_wall: DateTime<Local>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// The last data event of any sort (not a comment or blank keep-alive).
    last_event: Option<Instant>,
    content: String,
    reasoning: String,
    pub(crate) finish_reason: Option<String>,
    pub(crate) usage: Option<Usage>,
    pub(crate) timings: Option<ServerTimings>,
    pub(crate) model: Option<String>,
    /// The stream said it was complete (`[DONE]`, or Ollama's `done: true`).
    pub(crate) done: bool,
}

impl Reply {
    /// An empty reply to a request sent at `sent`.
    pub(crate) fn new(sent: Instant, sent_wall: DateTime<Local>) -> Self {
        Reply {
            sent,
            sent_wall,
            first: None,
            last: None,
            last_event: None,
            content: String::new(),
            reasoning: String::new(),
            finish_reason: None,
            usage: None,
            timings: None,
            model: None,
            done: false,
        }
    }

    /// Adds answer and reasoning text received at `now`. Only non-empty text moves the first-
    /// and last-token clocks: role-only chunks, empty deltas and keep-alives never do.
    pub(crate) fn text(&mut self, content: Option<&str>, reasoning: Option<&str>, now: Instant) {
        let mut produced = false;
        if let Some(text) = content.filter(|t| !t.is_empty()) {
            self.content.push_str(text);
            produced = true;
        }
        if let Some(text) = reasoning.filter(|t| !t.is_empty()) {
            self.reasoning.push_str(text);
            produced = true;
        }
        if produced {
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
    }

    /// Notes a data event received at `now`: an SSE event with data or an NDJSON line, whatever
    /// it carries. Comments and blank lines, the servers' keep-alives, are not events.
    pub(crate) fn event(&mut self, now: Instant) {
        self.last_event = Some(now);
    }

    /// When the last data event arrived, if any has.
    pub(crate) fn last_event(&self) -> Option<Instant> {
        self.last_event
    }

    /// Whether any answer or reasoning text has arrived.
    #[cfg(test)]
    pub(crate) fn started(&self) -> bool {
        self.first.is_some()
    }

    /// Merges server timings into what is already known, field by field.
    pub(crate) fn merge_timings(&mut self, update: ServerTimings) {
        let current = self.timings.get_or_insert_with(ServerTimings::default);
        let pick = |new: Option<f64>, old: Option<f64>| new.or(old);
        current.prompt_ms = pick(update.prompt_ms, current.prompt_ms);
        current.predicted_ms = pick(update.predicted_ms, current.predicted_ms);
        current.queue_ms = pick(update.queue_ms, current.queue_ms);
        current.load_ms = pick(update.load_ms, current.load_ms);
        current.prompt_n = update.prompt_n.or(current.prompt_n);
        current.cache_n = update.cache_n.or(current.cache_n);
        current.predicted_n = update.predicted_n.or(current.predicted_n);
    }

    /// Ends the stream at `now`; a stream without its final chunk is an error.
    pub(crate) fn finish(self, now: Instant) -> Result<CallOutcome, String> {
        // A stream is whole when it said so, or when it carried a finish reason and usage (some
        // servers close the connection right after the usage chunk, before `[DONE]`).
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

/// Reads a response body in a backend's dialect.
#[derive(Debug)]
pub(crate) enum BodyReader {
    OpenAi(SseReader),
    Ollama(NdjsonReader),
}

impl BodyReader {
    /// A reader at the start of a body in the dialect `api` speaks.
    pub(crate) fn new(api: Api) -> Self {
        match api {
            Api::OpenAi => BodyReader::OpenAi(SseReader::default()),
            Api::Ollama => BodyReader::Ollama(NdjsonReader::default()),
        }
    }

    /// Feeds the next bytes of the body, received at `now`.
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        now: Instant,
        reply: &mut Reply,
    ) -> Result<(), StreamFailure> {
        match self {
            BodyReader::OpenAi(reader) => reader.push(bytes, now, reply),
            BodyReader::Ollama(reader) => reader.push(bytes, now, reply),
        }
    }

    /// Takes whatever the body left unterminated when it ended.
    pub(crate) fn end(&mut self, now: Instant, reply: &mut Reply) -> Result<(), StreamFailure> {
        match self {
            BodyReader::OpenAi(reader) => reader.end(now, reply),
            BodyReader::Ollama(reader) => reader.end(now, reply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_does_not_start_the_first_token_clock() {
        let mut reply = Reply::new(Instant::now(), Local::now());
        let t = Instant::now();
        reply.text(Some(""), None, t);
        assert!(!reply.started());
        reply.text(None, Some("hmm"), t);
        assert!(reply.started());
    }

    #[test]
    fn a_stream_without_its_final_chunk_is_cut() {
        let mut reply = Reply::new(Instant::now(), Local::now());
        reply.text(Some("partial"), None, Instant::now());
        let err = reply.finish(Instant::now()).unwrap_err();
        assert!(err.contains("no finish reason"), "{err}");
    }

    #[test]
    fn later_timings_fill_in_without_erasing_earlier_ones() {
        let mut reply = Reply::new(Instant::now(), Local::now());
        reply.merge_timings(ServerTimings {
            prompt_ms: Some(12.0),
            ..ServerTimings::default()
        });
        reply.merge_timings(ServerTimings {
            queue_ms: Some(3.0),
            ..ServerTimings::default()
        });
        let timings = reply.timings.unwrap();
        assert_eq!(
            (timings.prompt_ms, timings.queue_ms),
            (Some(12.0), Some(3.0))
        );
    }
}
