//! The plain-text batch reports: the summary shown at the end of `tandem run`, and the fuller
//! report of `tandem report`.
//!
//! Tables with a row per server and a few lines for the batch, with no colour or terminal
//! codes, so the output reads the same in a log file and can be compared in snapshot tests.

use std::fmt::Write;

use super::{Recommendation, ReportSettings};
use crate::diagnostics::batch::{BatchSummary, Percentiles};
use crate::record::{Category, ResultRecord, Status};

/// How many of the slowest submissions the report lists.
pub const SLOWEST: usize = 5;
/// The width recommendations are wrapped to.
const WRAP: usize = 100;

const HEADER: [&str; 12] = [
    "server",
    "roles",
    "requests",
    "failures",
    "out_tokens",
    "busy_s",
    "util_%",
    "tok/s",
    "ttft_p50",
    "ttft_p95",
    "decode_p50",
    "category",
];

/// Renders a batch's figures as a table of servers followed by the batch's headline line.
///
/// Times are in seconds and rates in tokens per second, to three decimals, utilisation in
/// percent; a figure that does not apply shows as `-`.
pub fn render_terminal_summary(summary: &BatchSummary) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|h| h.to_string()).collect()];
    for server in &summary.servers {
        let roles: Vec<&str> = server.roles.iter().map(|r| r.as_str()).collect();
        rows.push(vec![
            server.name.clone(),
            if roles.is_empty() {
                "-".into()
            } else {
                roles.join(",")
            },
            server.requests.to_string(),
            server.failures.to_string(),
            server.output_tokens.to_string(),
            fixed(server.busy_seconds, 3),
            fixed(server.utilisation * 100.0, 1),
            fixed(server.output_tokens_per_second, 3),
            optional(server.ttft_seconds.map(|p| p.p50)),
            optional(server.ttft_seconds.map(|p| p.p95)),
            optional(server.decode_tokens_per_second_p50),
            category(server.category),
        ]);
    }

    let mut out = table(&rows, &[0, 1, 11]);
    if summary.servers.is_empty() {
        out.push_str("(no server answered a call)\n");
    }

    let _ = writeln!(
        out,
        "batch: {} submissions ({} graded, {} failed, {} duplicate), {} calls, {} requests",
        summary.submissions,
        summary.graded,
        summary.failed,
        summary.duplicates,
        summary.calls,
        summary.attempts,
    );
    let _ = writeln!(
        out,
        "  wall {} s, {} output tokens",
        fixed(summary.wall_seconds, 3),
        summary.output_tokens,
    );
    let _ = writeln!(
        out,
        "  combined throughput {} tok/s, parallel efficiency {} of {} servers, category {}",
        fixed(summary.combined_throughput_tokens_per_second, 3),
        fixed(summary.parallel_efficiency, 3),
        summary.servers.len(),
        category(summary.category),
    );
    if !summary.failed_submissions_by_kind.is_empty() {
        let _ = writeln!(
            out,
            "  failed submissions: {}",
            counts(&summary.failed_submissions_by_kind)
        );
    }
    if !summary.retried_attempts_by_kind.is_empty() {
        let _ = writeln!(
            out,
            "  retried attempts: {}",
            counts(&summary.retried_attempts_by_kind)
        );
    }
    out
}

/// Renders the report of `tandem report`: the summary, each server's latencies, the slowest
/// submissions, the failures by kind, the flags to review and the recommendations.
pub fn render_terminal_report(
    batch_id: &str,
    records: &[ResultRecord],
    summary: &BatchSummary,
    settings: &ReportSettings,
    recommendations: &[Recommendation],
) -> String {
    let mut out = String::new();
    if settings.assignment.is_empty() {
        let _ = writeln!(out, "Batch {batch_id}");
    } else {
        let _ = writeln!(out, "Batch {batch_id} · {}", settings.assignment);
    }
    if let (Some(start), Some(end)) = (summary.started_at, summary.finished_at) {
        let _ = writeln!(
            out,
            "{} to {}",
            start.format("%Y-%m-%d %H:%M:%S"),
            end.format("%Y-%m-%d %H:%M:%S")
        );
    }
    out.push('\n');
    out.push_str(&render_terminal_summary(summary));

    if !summary.servers.is_empty() {
        out.push_str("\nLatency in seconds (time to first token; whole call)\n");
        let mut rows = vec![
            [
                "server", "ttft_p50", "ttft_p95", "ttft_p99", "call_p50", "call_p95", "call_p99",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut latency_row = |name: &str, ttft: Option<Percentiles>, call: Option<Percentiles>| {
            let mut row = vec![name.to_string()];
            for p in [ttft, call] {
                row.push(optional(p.map(|p| p.p50)));
                row.push(optional(p.map(|p| p.p95)));
                row.push(optional(p.map(|p| p.p99)));
            }
            rows.push(row);
        };
        for server in &summary.servers {
            latency_row(
                &server.name,
                server.ttft_seconds,
                server.generation_time_seconds,
            );
        }
        latency_row(
            "batch",
            summary.ttft_seconds,
            summary.generation_time_seconds,
        );
        out.push_str(&table(&rows, &[0]));
    }

    let slowest = slowest_submissions(records, SLOWEST);
    if !slowest.is_empty() {
        out.push_str("\nSlowest submissions (wall seconds)\n");
        let mut rows = Vec::new();
        for record in slowest {
            let wall = record
                .performance_diagnostics
                .combined_metrics
                .as_ref()
                .map_or(0.0, |m| m.wall_time_seconds);
            let calls: Vec<String> = record
                .performance_diagnostics
                .calls
                .values()
                .map(|c| {
                    format!(
                        "{} {} s on {}",
                        c.role,
                        fixed(c.generation_time_seconds, 1),
                        c.server
                    )
                })
                .collect();
            rows.push(vec![
                format!("  {}", record.submission.id),
                fixed(wall, 3),
                calls.join(", "),
            ]);
        }
        out.push_str(&table(&rows, &[0, 2]));
    }

    let failed: Vec<&ResultRecord> = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    if !failed.is_empty() {
        out.push_str("\nFailures by kind\n");
        for (kind, n) in &summary.failed_submissions_by_kind {
            let _ = writeln!(out, "  {kind} ({n})");
            for record in &failed {
                let (this_kind, message) = record
                    .error
                    .as_ref()
                    .map_or(("unknown", ""), |e| (e.kind.as_str(), e.message.as_str()));
                if this_kind == kind {
                    let _ = writeln!(out, "    {}: {}", record.submission.id, message);
                }
            }
        }
    }

    let flagged: Vec<&ResultRecord> = records.iter().filter(|r| !r.flags.is_empty()).collect();
    if !flagged.is_empty() {
        out.push_str("\nFlagged for review\n");
        for record in flagged {
            let _ = writeln!(
                out,
                "  {}: {}",
                record.submission.id,
                record.flags.join(", ")
            );
        }
    }

    if !recommendations.is_empty() {
        out.push_str("\nRecommendations\n");
        for recommendation in recommendations {
            out.push_str(&wrap(&recommendation.text, "  - ", "    ", WRAP));
        }
    }
    out
}

/// The submissions with the longest wall time, longest first; ties in id order.
pub fn slowest_submissions<'a>(
    records: impl IntoIterator<Item = &'a ResultRecord>,
    n: usize,
) -> Vec<&'a ResultRecord> {
    let mut timed: Vec<(&ResultRecord, f64)> = records
        .into_iter()
        .filter(|r| r.status != Status::Duplicate)
        .filter_map(|r| {
            let m = r.performance_diagnostics.combined_metrics.as_ref()?;
            Some((r, m.wall_time_seconds))
        })
        .collect();
    timed.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| a.0.submission.id.cmp(&b.0.submission.id))
    });
    timed.into_iter().take(n).map(|(r, _)| r).collect()
}

/// Lays out rows as columns two spaces apart: the `text_columns` read from the left, the others
/// (numbers) line up on the right. Trailing spaces are trimmed.
pub(crate) fn table(rows: &[Vec<String>], text_columns: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(width - cell.chars().count());
            if text_columns.contains(&column) {
                line.push_str(cell);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Wraps text at word boundaries to `width` characters, the first line after `first`, the
/// others after `rest`.
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        let fits = line.chars().count() + 1 + word.chars().count() <= width;
        if !empty && !fits {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

fn counts(by_kind: &std::collections::BTreeMap<String, u64>) -> String {
    by_kind
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fixed(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| fixed(v, 3))
}

fn category(category: Option<Category>) -> String {
    category.map_or("-", Category::as_str).to_string()
}
