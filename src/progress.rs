//! The live display: a line per finished call and per finished submission, in the original
//! system's style, written to stderr while a batch runs.
//!
//! Lines are plain text with no cursor movement, so they read the same in a terminal, a log
//! file and a CI job. The functions that format them are pure and tested on their own.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Role;
use crate::record::{CallRecord, ResultRecord, Status};
use crate::scheduler::Observer;

/// The seed's marker for a role's lines.
fn icon(role: Role) -> &'static str {
    match role {
        Role::CodeAnalysis => "🔧",
        Role::Feedback => "📝",
    }
}

/// One finished call: `🔧 [CODE] mac-studio-2 · smith-jane: 356 tokens in 11.7s (30.4 tok/s)`.
pub fn call_line(submission: &str, call: &CallRecord) -> String {
    let estimated = match call.token_source {
        crate::record::TokenSource::Server => "",
        crate::record::TokenSource::Estimated => " (estimated)",
    };
    format!(
        "{} [{}] {} · {}: {} tokens{} in {:.1}s ({:.1} tok/s, first token {:.2}s)",
        icon(call.role),
        call.role.tag(),
        call.server,
        submission,
        call.output_tokens,
        estimated,
        call.generation_time_seconds,
        call.tokens_per_second,
        call.time_to_first_token_seconds,
    )
}

/// One finished submission, with its place in the batch.
pub fn submission_line(record: &ResultRecord, done: usize, total: usize) -> String {
    let id = &record.submission.id;
    let flags = if record.flags.is_empty() {
        String::new()
    } else {
        format!(" [{}]", record.flags.join(", "))
    };
    match record.status {
        Status::Graded => {
            let score = record
                .grade
                .as_ref()
                .map(|g| format!("{}/{}", g.score, g.max_score))
                .unwrap_or_default();
            let figures = record
                .performance_diagnostics
                .combined_metrics
                .as_ref()
                .map(|m| {
                    format!(
                        ", {:.1}s wall, {:.1} tok/s combined, efficiency {:.2}",
                        m.wall_time_seconds,
                        m.combined_throughput_tokens_per_second,
                        m.parallel_efficiency
                    )
                })
                .unwrap_or_default();
            format!("✅ [{done}/{total}] graded {id}: {score}{figures}{flags}")
        }
        Status::Failed => {
            let (kind, message) = record
                .error
                .as_ref()
                .map(|e| (e.kind.as_str(), e.message.as_str()))
                .unwrap_or(("unknown", ""));
            format!("❌ [{done}/{total}] failed {id}: {kind}: {message}")
        }
        Status::Duplicate => format!("♻️  [{done}/{total}] duplicate {id}: already graded"),
        Status::Superseded => {
            let by = record
                .links
                .superseded_by
                .as_ref()
                .map_or("", |r| r.id.as_str());
            format!("⏭️  [{done}/{total}] superseded {id}: a newer resubmission is graded ({by})")
        }
    }
}

/// Prints the live lines of a batch to a writer (stderr in the CLI).
pub struct LiveDisplay {
    out: Mutex<Box<dyn Write + Send>>,
    total: AtomicUsize,
    done: AtomicUsize,
}

impl LiveDisplay {
    /// A display writing to stderr.
    pub fn stderr() -> Self {
        Self::new(Box::new(std::io::stderr()))
    }

    /// A display writing to any writer.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        LiveDisplay {
            out: Mutex::new(out),
            total: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    /// Sets how many submissions the batch holds.
    pub fn set_total(&self, total: usize) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Prints a line as it is.
    pub fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Reports a finished submission.
    pub fn submission_finished(&self, record: &ResultRecord) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total.load(Ordering::Relaxed).max(done);
        self.line(&submission_line(record, done, total));
    }
}

impl Observer for LiveDisplay {
    fn call_finished(&self, submission: &str, call: &CallRecord) {
        self.line(&call_line(submission, call));
    }

    fn call_retried(&self, submission: &str, role: Role, server: &str, error: &str) {
        self.line(&format!(
            "↻ [{}] {server} · {submission}: retrying after: {error}",
            role.tag()
        ));
    }

    fn backend_state(&self, server: &str, in_service: bool, reason: &str) {
        if in_service {
            self.line(&format!("✔ backend {server} is back in service ({reason})"));
        } else {
            self.line(&format!(
                "⚠ backend {server} taken out of service: {reason}"
            ));
        }
    }
}
