//! Why a call produced no answer, and how each server's error shapes map to tandem's kinds.
//!
//! Servers disagree on how they say what went wrong: llama.cpp and vLLM send an OpenAI-style
//! `{"error": {"message": …}}` (vLLM's older builds a flat `{"object": "error", "message": …}`),
//! Ollama and mlx-lm a bare `{"error": "…"}`, FastAPI `{"detail": …}`, and some a plain-text
//! body. [`classify`] reads whichever it gets, keeps the server's own message, and picks the kind
//! the scheduler and the reports count: a prompt too long for the context, a model the server
//! does not have, a busy server, a refused key, or any other HTTP status.

use serde_json::Value;

/// How much of an error body is kept in a message.
const BODY_EXCERPT_CHARS: usize = 300;

/// Why a call produced no answer. Each kind is counted separately in the batch's reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The server could not be reached (refused, reset, DNS, TLS).
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The stream went quiet for longer than the read timeout.
    #[error("{url} sent nothing for {} s (read timeout)", .read_timeout.as_secs_f64())]
    Timeout {
        url: String,
        read_timeout: std::time::Duration,
    },
    /// The stream kept its connection alive with comments (mlx-lm's prefill progress,
    /// llama.cpp's pings) but carried no data event for the token-silence limit, a multiple of
    /// the read timeout. Counted as a timeout.
    #[error(
        "{url} sent only keep-alives, no data, for {} s (the token-silence limit, {} x the read \
         timeout)",
        .silence.as_secs_f64(),
        crate::backend::client::TOKEN_SILENCE_FACTOR
    )]
    KeepAlivesOnly {
        url: String,
        silence: std::time::Duration,
    },
    /// An HTTP status with no more specific kind (a 500, a 400 about something else).
    #[error("{url} answered HTTP {status}: {excerpt}")]
    Http {
        url: String,
        status: u16,
        excerpt: String,
    },
    /// The prompt and the reply budget do not fit the model's context, as the server said
    /// (llama.cpp's `exceed_context_size_error`, vLLM's "maximum context length") or as tandem
    /// worked out from the backend's `context_length` before sending anything.
    #[error("the prompt does not fit the context of {url}: {detail}")]
    ContextOverflow {
        url: String,
        detail: String,
        /// The prompt's tokens, where the server (or the estimate) says.
        prompt_tokens: Option<u64>,
        /// The context size in tokens, where the server (or the configuration) says.
        context_tokens: Option<u64>,
    },
    /// The server does not have the model the backend names, or could not load it (HTTP 404 on
    /// the chat endpoint). Sending the same request again cannot help.
    #[error("{url} could not find or load the model `{model}`: {detail}")]
    ModelNotFound {
        url: String,
        model: String,
        detail: String,
    },
    /// The server is busy or still loading (HTTP 503 or 429): worth trying again later.
    #[error("{url} is busy (HTTP {status}): {detail}")]
    Busy {
        url: String,
        status: u16,
        detail: String,
    },
    /// The server refused the request's key (HTTP 401 or 403).
    #[error("{url} refused the request (HTTP {status}): {detail}")]
    Unauthorized {
        url: String,
        status: u16,
        detail: String,
    },
    /// The connection closed before the stream's final chunk.
    #[error("the stream from {url} ended before its final chunk: {detail}")]
    StreamCut { url: String, detail: String },
    /// The server reported an error inside a stream it had begun with HTTP 200.
    #[error("{url} sent an error inside its stream: {detail}")]
    ServerError { url: String, detail: String },
    /// The stream could not be read (not UTF-8, not JSON).
    #[error("cannot decode the stream from {url}: {detail}")]
    Decode { url: String, detail: String },
}

impl CallError {
    /// A stable name for the kind, used in records and failure counts.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Connect { .. } => "connect",
            CallError::Timeout { .. } | CallError::KeepAlivesOnly { .. } => "timeout",
            CallError::Http { .. } => "http_status",
            CallError::ContextOverflow { .. } => "context_overflow",
            CallError::ModelNotFound { .. } => "model_not_found",
            CallError::Busy { .. } => "server_busy",
            CallError::Unauthorized { .. } => "unauthorized",
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
            | CallError::KeepAlivesOnly { .. }
            | CallError::Busy { .. }
            | CallError::StreamCut { .. }
            | CallError::ServerError { .. } => true,
            CallError::Http { status, .. } => *status == 408 || *status >= 500,
            CallError::ContextOverflow { .. }
            | CallError::ModelNotFound { .. }
            | CallError::Unauthorized { .. }
            | CallError::Decode { .. } => false,
        }
    }

    /// Whether the error says something about the server's health, as opposed to the request
    /// (a prompt too long for the context): only the former should count towards taking a
    /// backend out of service.
    pub fn counts_against_server(&self) -> bool {
        !matches!(self, CallError::ContextOverflow { .. })
    }

    /// The URL the error names.
    pub fn url(&self) -> &str {
        match self {
            CallError::Connect { url, .. }
            | CallError::Timeout { url, .. }
            | CallError::KeepAlivesOnly { url, .. }
            | CallError::Http { url, .. }
            | CallError::ContextOverflow { url, .. }
            | CallError::ModelNotFound { url, .. }
            | CallError::Busy { url, .. }
            | CallError::Unauthorized { url, .. }
            | CallError::StreamCut { url, .. }
            | CallError::ServerError { url, .. }
            | CallError::Decode { url, .. } => url,
        }
    }
}

/// Maps an HTTP error answer to its kind, keeping the server's own message.
///
/// `model` is the model the request named, for the model-not-found message.
pub fn classify(url: &str, model: &str, status: u16, body: &str) -> CallError {
    let message = server_message(body);
    let url = url.to_string();
    if is_context_overflow(body) {
        let (prompt_tokens, context_tokens) = overflow_counts(body);
        return CallError::ContextOverflow {
            url,
            detail: with_counts(message, prompt_tokens, context_tokens),
            prompt_tokens,
            context_tokens,
        };
    }
    match status {
        // A 404 on the chat endpoint is about the model unless the route itself is missing:
        // vLLM and Ollama say "model … does not exist / not found", and mlx-lm answers 404 with
        // the exception whenever loading the requested model fails.
        404 if !is_missing_route(&message) => CallError::ModelNotFound {
            url,
            model: model.to_string(),
            detail: message,
        },
        401 | 403 => CallError::Unauthorized {
            url,
            status,
            detail: message,
        },
        429 | 503 => CallError::Busy {
            url,
            status,
            detail: message,
        },
        _ => CallError::Http {
            url,
            status,
            excerpt: message,
        },
    }
}

/// The message an error body carries: `error.message`, `error` as a string, `message` or
/// `detail`, else the body itself, on one line.
pub fn server_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(value) => message_of(&value).unwrap_or_else(|| body.to_string()),
        Err(_) => body.to_string(),
    };
    excerpt(&text)
}

fn message_of(value: &Value) -> Option<String> {
    let error = value.get("error");
    let candidates = [
        error.and_then(|e| e.get("message")),
        error.filter(|e| e.is_string()),
        value.get("message"),
        value.get("detail"),
    ];
    candidates.into_iter().flatten().find_map(|v| match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Null => None,
        Value::String(_) => None,
        other => Some(other.to_string()),
    })
}

/// The start of a text, on one line.
pub fn excerpt(body: &str) -> String {
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

/// Recognises the context-overflow errors of llama.cpp, vLLM, Ollama and OpenAI-style servers.
pub fn is_context_overflow(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("exceed_context_size")
        || lower.contains("context length")
        || lower.contains("context_length_exceeded")
        || lower.contains("exceeds the available context")
        || lower.contains("maximum context")
}

/// The prompt and context token counts of an overflow error, where the body gives them:
/// llama.cpp's `n_prompt_tokens` and `n_ctx` fields, or the numbers in vLLM's sentence
/// ("maximum context length is 8192 tokens. However, you requested 9000 tokens …").
fn overflow_counts(body: &str) -> (Option<u64>, Option<u64>) {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        let error = value.get("error").unwrap_or(&value);
        let prompt = error.get("n_prompt_tokens").and_then(Value::as_u64);
        let context = error.get("n_ctx").and_then(Value::as_u64);
        if prompt.is_some() || context.is_some() {
            return (prompt, context);
        }
    }
    let lower = body.to_ascii_lowercase();
    let context = number_after(&lower, "maximum context length is ");
    let prompt = number_after(&lower, "prompt contains at least ")
        .or_else(|| number_after(&lower, "tokens ("))
        .or_else(|| number_after(&lower, "you requested "));
    (prompt, context)
}

fn number_after(text: &str, marker: &str) -> Option<u64> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn with_counts(message: String, prompt: Option<u64>, context: Option<u64>) -> String {
    match (prompt, context) {
        (Some(p), Some(c))
            if !(message.contains(&p.to_string()) && message.contains(&c.to_string())) =>
        {
            format!("{message} (prompt {p} tokens, context {c} tokens)")
        }
        _ => message,
    }
}

/// A 404 that says the path does not exist rather than the model: llama.cpp's "File Not
/// Found", Ollama's "404 page not found", FastAPI's and mlx-lm's "Not Found", or nothing.
fn is_missing_route(message: &str) -> bool {
    let lower = message.trim().to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "" | "(empty body)" | "not found" | "file not found" | "404 page not found"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:1/v1/chat/completions";

    #[test]
    fn llama_cpp_overflow_keeps_its_message_and_token_counts() {
        let body = r#"{"error":{"code":400,"message":"the request exceeds the available context size. try increasing the context size or enable context shift","type":"exceed_context_size_error","n_prompt_tokens":14429,"n_ctx":8192}}"#;
        let error = classify(URL, "m", 400, body);
        let CallError::ContextOverflow {
            detail,
            prompt_tokens,
            context_tokens,
            ..
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!((*prompt_tokens, *context_tokens), (Some(14429), Some(8192)));
        assert!(
            detail.contains("exceeds the available context size"),
            "{detail}"
        );
        assert!(
            detail.contains("14429") && detail.contains("8192"),
            "{detail}"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn vllm_overflow_counts_come_from_its_sentence() {
        let body = r#"{"object":"error","message":"This model's maximum context length is 16384 tokens. However, you requested 122946 tokens (112946 in the messages, 10000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#;
        let error = classify(URL, "m", 400, body);
        assert!(
            matches!(
                error,
                CallError::ContextOverflow {
                    prompt_tokens: Some(112946),
                    context_tokens: Some(16384),
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_404_naming_the_model_is_model_not_found_and_a_missing_route_is_not() {
        let ollama = r#"{"error":"model \"qwen3\" not found, try pulling it first"}"#;
        let error = classify(URL, "qwen3", 404, ollama);
        assert_eq!(error.kind(), "model_not_found");
        assert!(
            error.to_string().contains("try pulling it first"),
            "{error}"
        );
        assert!(!error.is_retryable());

        let route = r#"{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}"#;
        assert_eq!(classify(URL, "m", 404, route).kind(), "http_status");
        assert_eq!(
            classify(URL, "m", 404, "404 page not found").kind(),
            "http_status"
        );
    }

    #[test]
    fn busy_and_stuck_servers_are_retryable_with_their_messages() {
        let busy = classify(
            URL,
            "m",
            503,
            r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#,
        );
        assert_eq!(busy.kind(), "server_busy");
        assert!(busy.is_retryable());
        assert!(
            busy.to_string().contains("maximum pending requests"),
            "{busy}"
        );

        let stuck = classify(
            URL,
            "m",
            500,
            r#"{"error":{"code":500,"message":"Invalid input batch","type":"server_error"}}"#,
        );
        assert_eq!(stuck.kind(), "http_status");
        assert!(stuck.is_retryable());
        assert!(
            stuck.to_string().ends_with("Invalid input batch"),
            "{stuck}"
        );
    }

    #[test]
    fn messages_are_found_in_every_envelope() {
        assert_eq!(server_message(r#"{"error":{"message":"a"}}"#), "a");
        assert_eq!(server_message(r#"{"error":"b"}"#), "b");
        assert_eq!(server_message(r#"{"object":"error","message":"c"}"#), "c");
        assert_eq!(server_message(r#"{"detail":"d"}"#), "d");
        assert_eq!(server_message("plain\n text"), "plain text");
        assert_eq!(server_message(""), "(empty body)");
    }
}
