//! The figures: what each call, submission and batch measured, computed one way everywhere.
//!
//! Definitions follow DESIGN.md's "What each figure means". This module only computes; the
//! record module holds the shapes and the report module writes them out. Per-call and
//! per-submission figures live here; batch figures in [`batch`].

pub mod batch;

use std::time::Duration;

use chrono::Local;

use crate::backend::Role;
use crate::backend::client::{CallOutcome, Usage};
use crate::config::{BackendConfig, Threshold};
use crate::record::{
    CallRecord, Category, CombinedMetrics, PromptEvalSource, RetryNote, TokenSource,
};

/// The category of a rate against its threshold.
pub fn categorise(tokens_per_second: f64, threshold: Threshold) -> Category {
    if tokens_per_second >= threshold.excellent {
        Category::Excellent
    } else if tokens_per_second >= threshold.good {
        Category::Good
    } else {
        Category::NeedsOptimisation
    }
}

/// A rough token count for text, used only when a server reports no usage.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Everything about a call besides the server's reply that goes into its record.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    pub role: Role,
    pub backend: &'a BackendConfig,
    /// The URL the request went to.
    pub server_url: &'a str,
    /// The characters of the prompt, for an estimate if the server gives no usage.
    pub prompt_chars: usize,
    pub queue_wait: Duration,
    pub attempts: u32,
    pub retries: Vec<RetryNote>,
    pub threshold: Threshold,
}

/// Computes a call's figures from what the client measured.
pub fn call_record(ctx: CallContext<'_>, outcome: &CallOutcome) -> CallRecord {
    let timeline = &outcome.timeline;
    let first = timeline.first.unwrap_or(timeline.end);

    let (usage, token_source) = match outcome.usage {
        Some(usage) if usage.completion_tokens > 0 || outcome.content.is_empty() => {
            (usage, TokenSource::Server)
        }
        _ => {
            let prompt_tokens = (ctx.prompt_chars as u64).div_ceil(4);
            let completion_tokens =
                estimate_tokens(&outcome.content) + estimate_tokens(&outcome.reasoning);
            let usage = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
                cached_tokens: None,
            };
            (usage, TokenSource::Estimated)
        }
    };

    let generation = timeline.since_sent(timeline.end);
    let ttft = timeline.since_sent(first);
    let decode_span = timeline.end.saturating_duration_since(first).as_secs_f64();
    let decode_tokens_per_second = (usage.completion_tokens >= 2 && decode_span > 0.0)
        .then(|| (usage.completion_tokens - 1) as f64 / decode_span);
    let server_prefill = outcome
        .timings
        .and_then(|t| t.prompt_ms)
        .filter(|ms| ms.is_finite() && *ms >= 0.0);
    let (prompt_eval_time_seconds, prompt_eval_source) = match server_prefill {
        Some(ms) => (ms / 1000.0, PromptEvalSource::Server),
        None => (ttft, PromptEvalSource::Ttft),
    };
    let tokens_per_second = rate(usage.completion_tokens, generation);

    CallRecord {
        role: ctx.role,
        model: ctx.backend.model.clone(),
        server: ctx.backend.name.clone(),
        server_url: ctx.server_url.to_string(),
        prompt_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        generation_time_seconds: round6(generation),
        tokens_per_second: round3(tokens_per_second),
        prompt_eval_time_seconds: round6(prompt_eval_time_seconds),
        prompt_eval_source,
        time_to_first_token_seconds: round6(ttft),
        decode_tokens_per_second: decode_tokens_per_second.map(round3),
        queue_wait_seconds: round6(ctx.queue_wait.as_secs_f64()),
        token_source,
        finish_reason: outcome.finish_reason.clone(),
        attempts: ctx.attempts,
        category: categorise(tokens_per_second, ctx.threshold),
        cached_prompt_tokens: outcome
            .usage
            .and_then(|u| u.cached_tokens)
            .or(outcome.timings.and_then(|t| t.cache_n)),
        sent_at: timeline.sent_wall.fixed_offset(),
        first_token_at: timeline.wall(first).fixed_offset(),
        finished_at: timeline.wall(timeline.end).fixed_offset(),
        retries: ctx.retries,
    }
}

/// A submission's combined figures over its calls; `None` without calls.
pub fn combined_metrics<'a>(
    calls: impl IntoIterator<Item = &'a CallRecord>,
    threshold: Threshold,
) -> Option<CombinedMetrics> {
    let calls: Vec<&CallRecord> = calls.into_iter().collect();
    let start = calls.iter().map(|c| c.sent_at).min()?;
    let end = calls.iter().map(|c| c.finished_at).max()?;
    let wall = seconds_between(start, end);
    let generation: f64 = calls.iter().map(|c| c.generation_time_seconds).sum();
    let output: u64 = calls.iter().map(|c| c.output_tokens).sum();
    let throughput = rate(output, wall);
    Some(CombinedMetrics {
        total_tokens_processed: calls.iter().map(|c| c.total_tokens).sum(),
        total_output_tokens: output,
        wall_time_seconds: round6(wall),
        parallel_efficiency: round3(if wall > 0.0 { generation / wall } else { 0.0 }),
        combined_throughput_tokens_per_second: round3(throughput),
        category: categorise(throughput, threshold),
    })
}

/// Seconds from one wall-clock time to a later one (zero if it is not later).
pub fn seconds_between(
    from: chrono::DateTime<chrono::FixedOffset>,
    to: chrono::DateTime<chrono::FixedOffset>,
) -> f64 {
    (to - from).to_std().map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Tokens per second, zero for an empty span.
pub fn rate(tokens: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// The local time now, with its offset, for record timestamps.
pub fn now() -> chrono::DateTime<chrono::FixedOffset> {
    Local::now().fixed_offset()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round6(x: f64) -> f64 {
    (x * 1_000_000.0).round() / 1_000_000.0
}
