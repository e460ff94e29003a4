//! The plain-text batch summary shown at the end of `tandem run` and by `tandem report`.
//!
//! One line per server and a few lines for the batch, with no colour or terminal codes, so the
//! output reads the same in a log file and can be compared in snapshot tests.

use std::fmt::Write;

use crate::diagnostics::batch::BatchSummary;
use crate::record::Category;

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

    let mut widths = vec![0; HEADER.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            // Names and words read from the left, numbers line up on the right.
            let text_column = matches!(column, 0 | 1 | 11);
            let pad = " ".repeat(width - cell.chars().count());
            if text_column {
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
