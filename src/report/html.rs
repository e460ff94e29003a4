//! `report.html`: one self-contained page with a batch's figures, charts and recommendations.
//!
//! The page holds everything it shows: inline CSS, SVG drawn by [`super::svg`], no script, no
//! font file and no link to anything outside itself, so it opens offline from the reports folder
//! or an e-mail attachment. It shows the headline figures, the recommendations, a table per
//! server, each server's timeline of calls (idle time and overlapping calls are visible at a
//! glance), output tokens over the batch, the distributions of time to first token and decode
//! rate, the score distribution per criterion, the failures and flags, and every submission.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ReportSettings;
use super::recommend::{Recommendation, batch_calls};
use super::svg::{self, TimelineCall, TimelineLane, escape, server_colour};
use super::terminal::slowest_submissions;
use crate::backend::Role;
use crate::diagnostics::batch::BatchSummary;
use crate::diagnostics::seconds_between;
use crate::record::{Category, ResultRecord, Status};

const STYLE: &str = r#"
:root { --text: #1f2933; --muted: #6b7280; --line: #e3e6ea; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { font-size: 26px; margin: 0 0 2px; }
header p { margin: 0; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr));
  gap: 12px; margin-top: 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 13px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px 18px; margin-top: 18px; }
h2 { font-size: 18px; margin: 0 0 2px; }
h3 { font-size: 15px; margin: 10px 0 2px; }
p.caption { color: var(--muted); margin: 0 0 10px; font-size: 13.5px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
.scroll { overflow-x: auto; }
th, td { padding: 6px 7px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12.5px; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; white-space: nowrap; }
.excellent { background: #dcf5e7; color: #146c43; }
.good { background: #e0ecff; color: #1d4ed8; }
.needs_optimisation { background: #fde2e1; color: #b42318; }
.failed { background: #fde2e1; color: #b42318; }
.graded { background: #dcf5e7; color: #146c43; }
.duplicate { background: #eceff3; color: #4b5563; }
.legend { margin: 4px 0 8px; }
.legend span { display: inline-flex; align-items: center; margin-right: 18px; font-size: 13px; }
.legend i { width: 12px; height: 12px; border-radius: 2px; display: inline-block;
  margin-right: 6px; }
.pale { opacity: 0.35; }
td.name { white-space: nowrap; }
td.name .model { color: var(--muted); font-size: 12.5px; padding-left: 18px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
.scores { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr));
  gap: 10px 18px; }
svg { width: 100%; height: auto; display: block; }
ul.recs { margin: 6px 0 0; padding-left: 20px; }
ul.recs li { margin: 6px 0; }
.none { color: var(--muted); margin: 4px 0 0; }
footer { color: var(--muted); font-size: 12.5px; margin-top: 20px; }
"#;

/// The whole page for a batch.
pub fn render_page(
    batch_id: &str,
    records: &[ResultRecord],
    summary: &BatchSummary,
    settings: &ReportSettings,
    recommendations: &[Recommendation],
) -> String {
    let mut records: Vec<&ResultRecord> = records.iter().collect();
    records.sort_by(|a, b| a.submission.id.cmp(&b.submission.id));

    let mut page = String::new();
    let title = if settings.assignment.is_empty() {
        format!("Batch {batch_id}")
    } else {
        format!("{} · batch {batch_id}", settings.assignment)
    };
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n<main>\n",
        escape(&title)
    );

    header(&mut page, batch_id, summary, settings);
    cards(&mut page, summary);
    recommendations_section(&mut page, recommendations);
    servers_section(&mut page, summary);
    timeline_section(&mut page, &records, summary);
    throughput_section(&mut page, &records, summary);
    distributions_section(&mut page, &records, summary);
    scores_section(&mut page, &records);
    failures_section(&mut page, &records, summary);
    submissions_section(&mut page, &records);

    page.push_str(
        "<footer>Made by tandem from the batch's result records; \
         <code>tandem report --rebuild</code> makes it again.</footer>\n</main>\n</body>\n</html>\n",
    );
    page
}

fn header(page: &mut String, batch_id: &str, summary: &BatchSummary, settings: &ReportSettings) {
    let heading = if settings.assignment.is_empty() {
        "Batch report".to_string()
    } else {
        settings.assignment.clone()
    };
    let when = match (summary.started_at, summary.finished_at) {
        (Some(start), Some(end)) => format!(
            " · {} to {}",
            start.format("%Y-%m-%d %H:%M:%S"),
            end.format("%H:%M:%S (%:z)")
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        page,
        "<header><h1>{}</h1><p>Batch {}{}</p></header>",
        escape(&heading),
        escape(batch_id),
        escape(&when)
    );
}

fn cards(page: &mut String, summary: &BatchSummary) {
    page.push_str("<div class=\"cards\">");
    {
        let mut card = |value: String, label: String| {
            let _ = write!(
                page,
                "<div class=\"card\"><div class=\"value\">{value}</div><div class=\"label\">{label}</div></div>"
            );
        };
        card(
            format!("{} / {}", summary.graded, summary.submissions),
            format!(
                "graded · {} failed · {} duplicate",
                summary.failed, summary.duplicates
            ),
        );
        card(
            svg::clock(summary.wall_seconds),
            format!("wall time ({:.1} s)", summary.wall_seconds),
        );
        card(
            format!("{:.1}", summary.combined_throughput_tokens_per_second),
            format!(
                "output tok/s combined {}",
                badge(summary.category.map(Category::as_str))
            ),
        );
        card(
            format!("{:.2}", summary.parallel_efficiency),
            format!(
                "parallel efficiency (servers working on average, of {})",
                summary.servers.len()
            ),
        );
        card(
            thousands(summary.output_tokens),
            format!(
                "output tokens · {} prompt tokens",
                thousands(summary.prompt_tokens)
            ),
        );
        card(
            summary
                .ttft_seconds
                .map_or("–".to_string(), |p| format!("{:.2} s", p.p50)),
            "time to first token, median".to_string(),
        );
    }
    page.push_str("</div>\n");
}

fn recommendations_section(page: &mut String, recommendations: &[Recommendation]) {
    page.push_str("<section id=\"recommendations\"><h2>Recommendations</h2>");
    if recommendations.is_empty() {
        page.push_str(
            "<p class=\"none\">Nothing stands out: no server bounds the batch, no reply was cut \
             at max_tokens, and decode rates held.</p>",
        );
    } else {
        page.push_str("<ul class=\"recs\">");
        for r in recommendations {
            let _ = write!(page, "<li>{}</li>", escape(&r.text));
        }
        page.push_str("</ul>");
    }
    page.push_str("</section>\n");
}

fn servers_section(page: &mut String, summary: &BatchSummary) {
    page.push_str(
        "<section id=\"servers\"><h2>Servers</h2><p class=\"caption\">Rates in tokens per \
         second; a server's rate is its output over the time it was busy, its category against \
         the threshold of its role. The batch row's rate is output over the wall time.</p>\
         <div class=\"scroll\"><table><thead><tr><th>server · model</th><th>roles</th>\
         <th class=\"num\">requests</th><th class=\"num\">retried</th>\
         <th class=\"num\">out tokens</th><th class=\"num\">busy s</th>\
         <th class=\"num\">busy</th><th class=\"num\">tok/s</th>\
         <th class=\"num\">TTFT p50 / p95 / p99 s</th><th class=\"num\">decode p50</th>\
         <th>category</th></tr></thead><tbody>",
    );
    for (i, s) in summary.servers.iter().enumerate() {
        let roles: Vec<&str> = s.roles.iter().map(|r| r.as_str()).collect();
        let _ = write!(
            page,
            "<tr><td class=\"name\"><span class=\"legend\"><span><i style=\"background:{}\"></i>{}</span></span>\
             <div class=\"model\">{}</div></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{:.0}%</td>\
             <td class=\"num\">{:.1}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{}</td></tr>",
            server_colour(i),
            escape(&s.name),
            escape(&s.model),
            roles.join(", "),
            s.requests,
            s.failures,
            thousands(s.output_tokens),
            s.busy_seconds,
            s.utilisation * 100.0,
            s.output_tokens_per_second,
            s.ttft_seconds.map_or("–".into(), |p| format!(
                "{:.2} / {:.2} / {:.2}",
                p.p50, p.p95, p.p99
            )),
            s.decode_tokens_per_second_p50
                .map_or("–".into(), |d| format!("{d:.1}")),
            badge(s.category.map(Category::as_str)),
        );
    }
    let _ = write!(
        page,
        "<tr><td><strong>batch</strong></td><td></td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td>\
         <td class=\"num\"></td><td class=\"num\">{:.1}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td>{}</td></tr>",
        summary.attempts,
        summary.retried_attempts_by_kind.values().sum::<u64>(),
        thousands(summary.output_tokens),
        summary.busy_seconds,
        summary.combined_throughput_tokens_per_second,
        summary.ttft_seconds.map_or("–".into(), |p| format!(
            "{:.2} / {:.2} / {:.2}",
            p.p50, p.p95, p.p99
        )),
        summary
            .decode_tokens_per_second_p50
            .map_or("–".into(), |d| format!("{d:.1}")),
        badge(summary.category.map(Category::as_str)),
    );
    page.push_str("</tbody></table></div></section>\n");
}

fn timeline_section(page: &mut String, records: &[&ResultRecord], summary: &BatchSummary) {
    let Some(start) = summary.started_at else {
        return;
    };
    let calls = batch_calls(records.iter().copied());
    let lanes: Vec<TimelineLane> = summary
        .servers
        .iter()
        .filter(|s| s.calls > 0)
        .map(|s| TimelineLane {
            name: s.name.clone(),
            note: format!("busy {:.0}% · {} calls", s.utilisation * 100.0, s.calls),
            calls: calls
                .iter()
                .filter(|(_, c)| c.server == s.name)
                .map(|(id, c)| TimelineCall {
                    start: seconds_between(start, c.sent_at),
                    first: seconds_between(start, c.first_token_at),
                    end: seconds_between(start, c.finished_at),
                    role: role_index(c.role),
                    label: format!(
                        "{id} · {} · {:.1} s · first token {:.2} s · {} tokens · {:.1} tok/s",
                        c.role,
                        c.generation_time_seconds,
                        c.time_to_first_token_seconds,
                        c.output_tokens,
                        c.tokens_per_second
                    ),
                })
                .collect(),
        })
        .collect();
    let _ = writeln!(
        page,
        "<section id=\"timeline\"><h2>Timeline of calls</h2><p class=\"caption\">A lane per \
         server, a bar per call from its request to its last token; the pale start of a bar is \
         the wait for the first token. Grey is idle time; stacked bars ran at the same time. \
         Parallel efficiency {:.2}: on average {:.2} of {} servers were working.</p>\
         <div class=\"legend\"><span><i style=\"background:{}\"></i>code analysis</span>\
         <span><i style=\"background:{}\"></i>feedback</span>\
         <span><i class=\"pale\" style=\"background:#555\"></i>waiting for the first token</span></div>{}</section>",
        summary.parallel_efficiency,
        summary.parallel_efficiency,
        summary.servers.len(),
        svg::ROLE_COLOURS[0],
        svg::ROLE_COLOURS[1],
        svg::timeline(&lanes, summary.wall_seconds, 1190.0),
    );
}

fn throughput_section(page: &mut String, records: &[&ResultRecord], summary: &BatchSummary) {
    let Some(start) = summary.started_at else {
        return;
    };
    let wall = summary.wall_seconds.max(1.0);
    let bucket = svg::bucket_seconds(wall, 48);
    let series: Vec<(String, Vec<f64>)> = summary
        .servers
        .iter()
        .map(|s| {
            let spans: Vec<(f64, f64, f64)> = calls_of(records)
                .filter(|c| c.server == s.name)
                .map(|c| {
                    (
                        seconds_between(start, c.first_token_at),
                        seconds_between(start, c.finished_at),
                        c.output_tokens as f64,
                    )
                })
                .collect();
            let per_minute = svg::tokens_per_bucket(&spans, wall, bucket)
                .into_iter()
                .map(|t| t * 60.0 / bucket)
                .collect();
            (s.name.clone(), per_minute)
        })
        .collect();
    let _ = writeln!(
        page,
        "<section id=\"throughput\"><h2>Throughput over the batch</h2><p class=\"caption\">\
         Output tokens per minute, each call's tokens spread over its decoding time, stacked by \
         server. Over the whole batch: {:.1} tokens per second.</p>{}{}</section>",
        summary.combined_throughput_tokens_per_second,
        legend(summary),
        svg::stacked_time_bars(&series, bucket, "output tokens per minute", 1190.0),
    );
}

fn distributions_section(page: &mut String, records: &[&ResultRecord], summary: &BatchSummary) {
    if summary.calls == 0 {
        return;
    }
    let by_server = |figure: &dyn Fn(&crate::record::CallRecord) -> Option<f64>| {
        summary
            .servers
            .iter()
            .map(|s| {
                let values = calls_of(records)
                    .filter(|c| c.server == s.name)
                    .filter_map(figure)
                    .collect();
                (s.name.clone(), values)
            })
            .collect::<Vec<(String, Vec<f64>)>>()
    };
    let ttft = by_server(&|c| Some(c.time_to_first_token_seconds));
    let decode = by_server(&|c| c.decode_tokens_per_second);
    let mut ttft_markers = Vec::new();
    if let Some(p) = summary.ttft_seconds {
        ttft_markers.push(("p50", p.p50));
        ttft_markers.push(("p95", p.p95));
    }
    let decode_markers: Vec<(&str, f64)> = summary
        .decode_tokens_per_second_p50
        .map(|d| ("p50", d))
        .into_iter()
        .collect();
    let _ = writeln!(
        page,
        "<section id=\"distributions\"><h2>Latency and decode rate</h2><p class=\"caption\">\
         How many calls took how long to their first token, and how fast they decoded after \
         it, stacked by server; dashed lines mark the batch's percentiles.</p>{}\
         <div class=\"pair\"><div><h3>Time to first token</h3>{}</div>\
         <div><h3>Decode rate</h3>{}</div></div></section>",
        legend(summary),
        svg::stacked_histogram(
            &ttft,
            14,
            "seconds to the first token",
            &ttft_markers,
            590.0
        ),
        svg::stacked_histogram(
            &decode,
            14,
            "decode tokens per second",
            &decode_markers,
            590.0
        ),
    );
}

fn scores_section(page: &mut String, records: &[&ResultRecord]) {
    // Criteria in the order they first appear, with every score given for each.
    let mut criteria: Vec<(String, String, f64)> = Vec::new();
    let mut scores: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut totals: Vec<f64> = Vec::new();
    let mut max_total: f64 = 0.0;
    for grade in records
        .iter()
        .filter(|r| r.status == Status::Graded)
        .filter_map(|r| r.grade.as_ref())
    {
        totals.push(grade.score);
        max_total = max_total.max(grade.max_score);
        for c in &grade.criteria {
            if !criteria.iter().any(|(id, _, _)| id == &c.id) {
                criteria.push((c.id.clone(), c.name.clone(), c.max));
            }
            scores.entry(c.id.clone()).or_default().push(c.score);
        }
    }
    if totals.is_empty() {
        return;
    }
    page.push_str(
        "<section id=\"scores\"><h2>Scores</h2><p class=\"caption\">How many graded submissions \
         got each score, in total and per criterion of the rubric.</p><div class=\"scores\">",
    );
    let mean = totals.iter().sum::<f64>() / totals.len() as f64;
    page.push_str(&svg::score_bars(
        &format!("Total (mean {mean:.1} of {})", number(max_total)),
        &score_counts(&totals, max_total),
        "#4b5563",
    ));
    for (id, name, max) in &criteria {
        let values = scores.get(id).map(Vec::as_slice).unwrap_or_default();
        page.push_str(&svg::score_bars(
            &format!("{name} (of {})", number(*max)),
            &score_counts(values, *max),
            "#2a9d8f",
        ));
    }
    page.push_str("</div></section>\n");
}

/// How many values fall on each score from 0 to `max`, in steps of 1 (or ½ when a value is not
/// whole); values between steps go to the step below.
pub fn score_counts(values: &[f64], max: f64) -> Vec<(f64, usize)> {
    let step = if values.iter().all(|v| v.fract() == 0.0) && max.fract() == 0.0 {
        1.0
    } else {
        0.5
    };
    let top = values.iter().copied().fold(max, f64::max);
    let n = (top / step).floor() as usize + 1;
    let mut counts: Vec<(f64, usize)> = (0..n).map(|i| (i as f64 * step, 0)).collect();
    for v in values {
        let i = ((v.max(0.0) / step).floor() as usize).min(n - 1);
        counts[i].1 += 1;
    }
    counts
}

fn failures_section(page: &mut String, records: &[&ResultRecord], summary: &BatchSummary) {
    page.push_str("<section id=\"failures\"><h2>Failures and flags</h2>");
    let failed: Vec<&&ResultRecord> = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    if failed.is_empty() {
        page.push_str("<p class=\"none\">No submission failed.</p>");
    } else {
        let kinds: Vec<String> = summary
            .failed_submissions_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = write!(
            page,
            "<p class=\"caption\">{} failed: {}. Each has a failure record in the outbox and is \
             left out of the gradebook.</p><table><thead><tr><th>submission</th><th>student</th>\
             <th>kind</th><th>what went wrong</th></tr></thead><tbody>",
            failed.len(),
            escape(&kinds.join(", "))
        );
        for r in failed {
            let (kind, message) = r
                .error
                .as_ref()
                .map_or(("unknown", ""), |e| (e.kind.as_str(), e.message.as_str()));
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.submission.id),
                escape(r.submission.student.name.as_deref().unwrap_or("")),
                escape(kind),
                escape(message)
            );
        }
        page.push_str("</tbody></table>");
    }
    if !summary.retried_attempts_by_kind.is_empty() {
        let kinds: Vec<String> = summary
            .retried_attempts_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = write!(
            page,
            "<p class=\"caption\" style=\"margin-top:10px\">Attempts that failed and were tried \
             again: {}.</p>",
            escape(&kinds.join(", "))
        );
    }
    let flagged: Vec<&&ResultRecord> = records.iter().filter(|r| !r.flags.is_empty()).collect();
    if !flagged.is_empty() {
        page.push_str(
            "<h3>Flagged for review</h3><table><thead><tr><th>submission</th><th>student</th>\
             <th>flags</th></tr></thead><tbody>",
        );
        for r in flagged {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.submission.id),
                escape(r.submission.student.name.as_deref().unwrap_or("")),
                escape(&r.flags.join(", "))
            );
        }
        page.push_str("</tbody></table>");
    }
    page.push_str("</section>\n");
}

fn submissions_section(page: &mut String, records: &[&ResultRecord]) {
    if records.is_empty() {
        return;
    }
    let slowest: Vec<String> = slowest_submissions(records.iter().copied(), 1)
        .iter()
        .map(|r| r.submission.id.clone())
        .collect();
    page.push_str(
        "<section id=\"submissions\"><h2>Submissions</h2><p class=\"caption\">Every record of \
         the batch; wall time runs from a submission's first request to its last token.</p>\
         <table><thead><tr><th>submission</th><th>student</th><th>status</th>\
         <th class=\"num\">score</th><th class=\"num\">wall s</th>\
         <th class=\"num\">tok/s combined</th><th class=\"num\">efficiency</th><th>flags</th>\
         </tr></thead><tbody>",
    );
    for r in records {
        let status = match r.status {
            Status::Graded => "graded",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
            Status::Superseded => "superseded",
        };
        let score = r.grade.as_ref().map_or(String::new(), |g| {
            format!("{} / {}", number(g.score), number(g.max_score))
        });
        let m = r.performance_diagnostics.combined_metrics.as_ref();
        let slow = if slowest.contains(&r.submission.id) {
            " (slowest)"
        } else {
            ""
        };
        let _ = write!(
            page,
            "<tr><td>{}{slow}</td><td>{}</td><td><span class=\"badge {status}\">{status}</span></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&r.submission.id),
            escape(r.submission.student.name.as_deref().unwrap_or("")),
            score,
            m.map_or(String::new(), |m| format!("{:.1}", m.wall_time_seconds)),
            m.map_or(String::new(), |m| format!(
                "{:.1}",
                m.combined_throughput_tokens_per_second
            )),
            m.map_or(String::new(), |m| format!("{:.2}", m.parallel_efficiency)),
            escape(&r.flags.join(", "))
        );
    }
    page.push_str("</tbody></table></section>\n");
}

fn calls_of<'a>(
    records: &'a [&'a ResultRecord],
) -> impl Iterator<Item = &'a crate::record::CallRecord> + 'a {
    records
        .iter()
        .filter(|r| r.status != Status::Duplicate)
        .flat_map(|r| r.performance_diagnostics.calls.values())
}

fn legend(summary: &BatchSummary) -> String {
    let mut out = String::from("<div class=\"legend\">");
    for (i, s) in summary.servers.iter().enumerate() {
        let _ = write!(
            out,
            "<span><i style=\"background:{}\"></i>{}</span>",
            server_colour(i),
            escape(&s.name)
        );
    }
    out.push_str("</div>");
    out
}

fn badge(category: Option<&str>) -> String {
    match category {
        Some(c) => format!("<span class=\"badge {c}\">{}</span>", c.replace('_', " ")),
        None => String::new(),
    }
}

fn role_index(role: Role) -> usize {
    match role {
        Role::CodeAnalysis => 0,
        Role::Feedback => 1,
    }
}

/// A count with a thin space between groups of three digits: `14 639`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(ch);
    }
    out
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(14_639), "14\u{2009}639");
        assert_eq!(thousands(1_000_000), "1\u{2009}000\u{2009}000");
    }

    #[test]
    fn score_counts_cover_every_score_from_zero_to_the_maximum() {
        assert_eq!(
            score_counts(&[0.0, 2.0, 2.0, 3.0], 3.0),
            vec![(0.0, 1), (1.0, 0), (2.0, 2), (3.0, 1)]
        );
        assert_eq!(
            score_counts(&[1.5, 0.2], 2.0),
            vec![(0.0, 1), (0.5, 0), (1.0, 0), (1.5, 1), (2.0, 0)]
        );
    }
}
