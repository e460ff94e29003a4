//! The live display: a line per finished call and per finished submission, in the original
//! system's style, and on a terminal one progress bar under them.
//!
//! On a terminal (stderr, with `TERM` not `dumb`) the lines scroll above a single indicatif bar
//! that shows the graded, failed and remaining counts, an ETA and each server's current rate.
//! Elsewhere (a log file, a CI job, a pipe) the same lines are written plainly, with no cursor
//! movement. `NO_COLOR` turns the bar's colours off. Every string shown is made by a pure
//! function here and snapshot-tested, as nextest does with its own display.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

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

/// How many of a server's latest calls its current rate is taken over.
pub const RATE_WINDOW: usize = 4;

/// Where a batch stands, as the progress bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Submissions in the batch.
    pub total: usize,
    pub graded: usize,
    pub failed: usize,
    pub duplicates: usize,
    /// Time since the batch started.
    pub elapsed: Duration,
    /// Each server's current rate in tokens per second, by name.
    pub rates: Vec<(String, f64)>,
}

impl Progress {
    /// Submissions finished, whatever their status.
    pub fn done(&self) -> usize {
        self.graded + self.failed + self.duplicates
    }

    /// Submissions not finished yet.
    pub fn remaining(&self) -> usize {
        self.total.saturating_sub(self.done())
    }

    /// The time left if the rest go at the pace so far; `None` before the first one finishes.
    /// [`eta_text`] shows it.
    pub fn eta(&self) -> Option<Duration> {
        let done = self.done();
        (done > 0).then(|| self.elapsed.mul_f64(self.remaining() as f64 / done as f64))
    }
}

/// A duration as the bar shows it: `45s`, `4m 10s`, `2h 05m`.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64().round() as u64;
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h {:02}m", seconds / 3600, seconds / 60 % 60),
    }
}

/// The whole line the bar shows after its counter: counts, ETA and each server's current rate.
///
/// `12 graded · 1 failed · 17 left · ETA 4m 10s · local-code 31.2 tok/s · local-feedback 28.4 tok/s`
///
/// On the terminal the three parts are drawn separately ([`counts_text`] as the bar's prefix,
/// [`eta_text`] at every redraw, [`rates_text`] as its message), so that the ETA counts down
/// between finished submissions.
pub fn progress_message(progress: &Progress) -> String {
    format!(
        "{} · {}{}",
        counts_text(progress),
        eta_text(progress.elapsed, progress.done(), progress.total),
        rates_text(&progress.rates)
    )
}

/// `12 graded · 1 failed · 17 left`, with duplicates when there are any.
pub fn counts_text(progress: &Progress) -> String {
    let mut parts = vec![
        format!("{} graded", progress.graded),
        format!("{} failed", progress.failed),
    ];
    if progress.duplicates > 0 {
        parts.push(format!("{} duplicate", progress.duplicates));
    }
    parts.push(format!("{} left", progress.remaining()));
    parts.join(" · ")
}

/// `ETA 4m 10s` at the pace so far, `ETA -` before the first submission is done, `done` after
/// the last.
pub fn eta_text(elapsed: Duration, done: usize, total: usize) -> String {
    let remaining = total.saturating_sub(done);
    if done == 0 {
        "ETA -".to_string()
    } else if remaining == 0 {
        "done".to_string()
    } else {
        let eta = elapsed.mul_f64(remaining as f64 / done as f64);
        format!("ETA {}", short_duration(eta))
    }
}

/// ` · local-code 31.2 tok/s · local-feedback 28.4 tok/s`, empty before any call finished.
pub fn rates_text(rates: &[(String, f64)]) -> String {
    rates
        .iter()
        .map(|(server, rate)| format!(" · {server} {rate:.1} tok/s"))
        .collect()
}

/// The bar's indicatif template, with colours or without (`NO_COLOR`). `{eta_left}` is drawn by
/// [`eta_text`].
pub fn bar_template(colour: bool) -> &'static str {
    if colour {
        "{spinner:.green} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {prefix} · {eta_left}{msg}"
    } else {
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {prefix} · {eta_left}{msg}"
    }
}

/// Each server's rate over its latest [`RATE_WINDOW`] calls: Σ output tokens over Σ call time.
#[derive(Debug, Clone, Default)]
pub struct ServerRates {
    calls: BTreeMap<String, VecDeque<(u64, f64)>>,
}

impl ServerRates {
    /// Takes a finished call into its server's window.
    pub fn record(&mut self, call: &CallRecord) {
        let window = self.calls.entry(call.server.clone()).or_default();
        window.push_back((call.output_tokens, call.generation_time_seconds));
        if window.len() > RATE_WINDOW {
            window.pop_front();
        }
    }

    /// The current rates, by server name.
    pub fn rates(&self) -> Vec<(String, f64)> {
        self.calls
            .iter()
            .map(|(server, window)| {
                let tokens: u64 = window.iter().map(|w| w.0).sum();
                let seconds: f64 = window.iter().map(|w| w.1).sum();
                let rate = if seconds > 0.0 {
                    tokens as f64 / seconds
                } else {
                    0.0
                };
                (server.clone(), rate)
            })
            .collect()
    }
}

/// Whether colours may be used, by the `NO_COLOR` convention.
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// What the display counts over a batch.
struct State {
    total: usize,
    graded: usize,
    failed: usize,
    duplicates: usize,
    started: Instant,
    rates: ServerRates,
}

impl State {
    fn new(total: usize) -> Self {
        State {
            total,
            graded: 0,
            failed: 0,
            duplicates: 0,
            started: Instant::now(),
            rates: ServerRates::default(),
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            total: self.total,
            graded: self.graded,
            failed: self.failed,
            duplicates: self.duplicates,
            elapsed: self.started.elapsed(),
            rates: self.rates.rates(),
        }
    }
}

/// Where the display writes.
enum Output {
    /// Lines only, to any writer.
    Plain(Mutex<Box<dyn Write + Send>>),
    /// Lines above a bar on the terminal's stderr; the bar of the batch under way, if any.
    Terminal {
        bar: Mutex<Option<ProgressBar>>,
        colour: bool,
    },
}

/// Prints the live lines of a batch, and on a terminal its progress bar.
pub struct LiveDisplay {
    output: Output,
    state: Mutex<State>,
}

impl LiveDisplay {
    /// A display on stderr: a bar with lines above it on a terminal, plain lines otherwise.
    pub fn stderr() -> Self {
        let terminal =
            std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        if terminal {
            LiveDisplay {
                output: Output::Terminal {
                    bar: Mutex::new(None),
                    colour: colour_allowed(),
                },
                state: Mutex::new(State::new(0)),
            }
        } else {
            Self::new(Box::new(std::io::stderr()))
        }
    }

    /// A display writing plain lines to any writer.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        LiveDisplay {
            output: Output::Plain(Mutex::new(out)),
            state: Mutex::new(State::new(0)),
        }
    }

    /// Starts a batch of `total` submissions: counts start again, and on a terminal a new bar.
    pub fn set_total(&self, total: usize) {
        *self.state.lock().unwrap() = State::new(total);
        if let Output::Terminal { bar, colour } = &self.output {
            let new =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            new.set_style(
                ProgressStyle::with_template(bar_template(*colour))
                    .expect("the bar templates are valid")
                    .with_key(
                        "eta_left",
                        |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                            let total = state.len().unwrap_or(0) as usize;
                            let text = eta_text(state.elapsed(), state.pos() as usize, total);
                            let _ = out.write_str(&text);
                        },
                    )
                    .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            let progress = self.state.lock().unwrap().progress();
            new.set_prefix(counts_text(&progress));
            new.set_message(rates_text(&progress.rates));
            new.enable_steady_tick(Duration::from_millis(200));
            if let Some(old) = bar.lock().unwrap().replace(new) {
                old.finish_and_clear();
            }
        }
    }

    /// Prints a line as it is (above the bar, on a terminal).
    pub fn line(&self, text: &str) {
        match &self.output {
            Output::Plain(out) => {
                let mut out = out.lock().unwrap();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Output::Terminal { bar, .. } => match bar.lock().unwrap().as_ref() {
                Some(bar) => bar.println(text),
                None => eprintln!("{text}"),
            },
        }
    }

    /// Reports a finished submission; the bar goes when the batch's last one is in.
    pub fn submission_finished(&self, record: &ResultRecord) {
        let (done, total, progress) = {
            let mut state = self.state.lock().unwrap();
            match record.status {
                Status::Graded => state.graded += 1,
                Status::Failed => state.failed += 1,
                Status::Duplicate | Status::Superseded => state.duplicates += 1,
            }
            let progress = state.progress();
            let done = progress.done();
            state.total = state.total.max(done);
            (done, state.total, progress)
        };
        self.line(&submission_line(record, done, total));
        if let Output::Terminal { bar, .. } = &self.output {
            let mut bar = bar.lock().unwrap();
            if let Some(current) = bar.as_ref() {
                current.set_position(done as u64);
                current.set_prefix(counts_text(&progress));
                current.set_message(rates_text(&progress.rates));
                if done >= total {
                    current.finish_and_clear();
                    *bar = None;
                }
            }
        }
    }

    fn refresh(&self) {
        if let Output::Terminal { bar, .. } = &self.output
            && let Some(bar) = bar.lock().unwrap().as_ref()
        {
            let progress = self.state.lock().unwrap().progress();
            bar.set_prefix(counts_text(&progress));
            bar.set_message(rates_text(&progress.rates));
        }
    }
}

impl Drop for LiveDisplay {
    fn drop(&mut self) {
        if let Output::Terminal { bar, .. } = &self.output
            && let Some(bar) = bar.lock().unwrap().take()
        {
            bar.finish_and_clear();
        }
    }
}

impl Observer for LiveDisplay {
    fn call_finished(&self, submission: &str, call: &CallRecord) {
        self.state.lock().unwrap().rates.record(call);
        self.line(&call_line(submission, call));
        self.refresh();
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
