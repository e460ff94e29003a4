//! Recommendations: what a finished batch's figures suggest changing before the next night.
//!
//! Each check is a pure function of the batch's summary, its records and the report settings,
//! and says nothing unless its figures cross a stated bound: which server bounds the batch (and
//! what another server or a second role would save), a decode rate that sags over the night,
//! prompts whose evaluation dominates their calls, replies cut at `max_tokens`, and servers whose
//! concurrency could rise. They replace the original system's hand-written advice; every
//! sentence names the figures it rests on, so the instructor can judge it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{BackendSettings, ReportSettings};
use crate::backend::Role;
use crate::config::Concurrency;
use crate::diagnostics::batch::{BatchSummary, ServerSummary, percentile};
use crate::record::{CallRecord, PromptEvalSource, ResultRecord, Status};

/// The busiest server bounds the batch only when it worked at least this share of the wall time.
pub const BOUND_MIN_UTILISATION: f64 = 0.6;
/// ... and at least this share of the wall time more than the next busiest server.
pub const BOUND_MIN_GAP: f64 = 0.1;
/// A server counts as saturated at this utilisation.
pub const SATURATED_UTILISATION: f64 = 0.9;
/// A probe's throughput gain from one request in flight to two that shows the server batches.
pub const BATCHING_GAIN: f64 = 1.2;
/// Fewest calls with a decode rate on a server before its trend over the night is judged.
pub const MIN_CALLS_FOR_TREND: usize = 8;
/// A last-quarter median decode rate this much below the first quarter's is a sag.
pub const DECODE_SAG: f64 = 0.15;
/// A call's prompt evaluation dominates it when it takes more than this share of the call.
pub const PROMPT_DOMINATES: f64 = 0.5;
/// Prompt evaluation is worth a recommendation when it dominates this share of a server's
/// calls for a role.
pub const PROMPT_DOMINATED_SHARE: f64 = 0.25;
/// How many submissions a recommendation names as examples.
const EXAMPLES: usize = 3;

/// One piece of advice drawn from the figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// A stable name for the check that made it: `bound_by_server`, `raise_concurrency`,
    /// `cut_at_max_tokens`, `prompt_dominates`, `decode_sag`.
    pub kind: &'static str,
    /// The server it is about, where it is about one.
    pub server: Option<String>,
    /// What the figures show and what to do, in a sentence or two.
    pub text: String,
}

/// Every recommendation for a batch, most consequential first.
pub fn recommend(
    summary: &BatchSummary,
    records: &[ResultRecord],
    settings: &ReportSettings,
) -> Vec<Recommendation> {
    let calls = batch_calls(records);
    let mut out = Vec::new();
    out.extend(bound_by_server(summary));
    out.extend(raise_concurrency(summary, settings));
    out.extend(cut_at_max_tokens(&calls, settings));
    out.extend(prompt_dominates(&calls));
    out.extend(decode_sag(&calls));
    out
}

/// The calls of a batch with the submission each was made for; duplicates made none.
pub fn batch_calls<'a>(
    records: impl IntoIterator<Item = &'a ResultRecord>,
) -> Vec<(&'a str, &'a CallRecord)> {
    let mut calls: Vec<(&str, &CallRecord)> = records
        .into_iter()
        .filter(|r| r.status != Status::Duplicate)
        .flat_map(|r| {
            r.performance_diagnostics
                .calls
                .values()
                .map(|c| (r.submission.id.as_str(), c))
        })
        .collect();
    calls.sort_by(|a, b| (a.1.sent_at, a.0).cmp(&(b.1.sent_at, b.0)));
    calls
}

/// The server the batch waited on, and what another server or a second role would save.
///
/// The estimates assume the batch's wall time scales with the busiest server's busy time: a
/// second server like it halves that server's share of the work; giving the least busy server
/// its roles as well shares the two servers' work evenly between them.
pub fn bound_by_server(summary: &BatchSummary) -> Option<Recommendation> {
    let wall = summary.wall_seconds;
    let mut servers: Vec<&ServerSummary> = summary.servers.iter().filter(|s| s.calls > 0).collect();
    servers.sort_by(|a, b| b.busy_seconds.total_cmp(&a.busy_seconds));
    let bound = *servers.first()?;
    if wall <= 0.0 || bound.utilisation < BOUND_MIN_UTILISATION {
        return None;
    }
    let busy = bound.busy_seconds;
    let roles = role_list(&bound.roles);

    let Some(next) = servers.get(1) else {
        return Some(Recommendation {
            kind: "bound_by_server",
            server: Some(bound.name.clone()),
            text: format!(
                "{} did all the work, busy {} of the {} s batch. A second server for {} would \
                 cut the batch to about {} s.",
                bound.name,
                percent(bound.utilisation),
                one_decimal(wall),
                roles,
                one_decimal(wall * 0.5),
            ),
        });
    };
    let gap = busy - next.busy_seconds;
    if gap < BOUND_MIN_GAP * wall {
        return None;
    }

    let scaled = |new_busy: f64| wall * new_busy / busy;
    let with_another = scaled((busy / 2.0).max(next.busy_seconds));
    let mut text = format!(
        "{} bounds the batch: busy {} of the {} s wall time, against {} for {}, which waited \
         about {} s for it. Another server for {} would cut the batch to about {} s",
        bound.name,
        percent(bound.utilisation),
        one_decimal(wall),
        percent(next.utilisation),
        next.name,
        one_decimal(gap),
        roles,
        one_decimal(with_another),
    );
    let idlest = *servers.last().expect("at least two servers");
    let already = bound.roles.iter().all(|r| idlest.roles.contains(r));
    if !already {
        let shared = scaled(((busy + idlest.busy_seconds) / 2.0).max(next.busy_seconds));
        text.push_str(&format!(
            "; giving {} the {} role as well, if its model can do that work, to about {} s",
            idlest.name,
            roles,
            one_decimal(shared),
        ));
    }
    text.push('.');
    Some(Recommendation {
        kind: "bound_by_server",
        server: Some(bound.name.clone()),
        text,
    })
}

/// Saturated servers held to one call at a time that could take more.
///
/// A server counts as able to take more when its newest probe measured a throughput gain of at
/// least [`BATCHING_GAIN`] from one request in flight to two; without a probe the advice says
/// how to find out. A probe that measured no gain keeps the check quiet.
pub fn raise_concurrency(summary: &BatchSummary, settings: &ReportSettings) -> Vec<Recommendation> {
    let mut out = Vec::new();
    for server in &summary.servers {
        let Some(backend) = settings.backend(&server.name) else {
            continue;
        };
        if server.calls == 0
            || server.utilisation < SATURATED_UTILISATION
            || backend.max_concurrency.ceiling() > 1
        {
            continue;
        }
        let setting = concurrency_setting(backend);
        let text = match backend.batching_gain {
            Some(gain) if gain >= BATCHING_GAIN => format!(
                "{} was busy {} of the batch with {setting}, and its last probe measured {:.2}× \
                 the output throughput with two requests in flight: set max_concurrency = 2 or \
                 more.",
                server.name,
                percent(server.utilisation),
                gain,
            ),
            Some(_) => continue,
            None => format!(
                "{} was busy {} of the batch with {setting}. If its server runs several \
                 requests at once (llama-server --parallel, vLLM, a batching mlx_lm.server), a \
                 higher max_concurrency may finish sooner: `tandem probe` measures whether it \
                 gains.",
                server.name,
                percent(server.utilisation),
            ),
        };
        out.push(Recommendation {
            kind: "raise_concurrency",
            server: Some(server.name.clone()),
            text,
        });
    }
    out
}

/// Replies that stopped at `max_tokens` (`finish_reason: length`), per role.
pub fn cut_at_max_tokens(
    calls: &[(&str, &CallRecord)],
    settings: &ReportSettings,
) -> Vec<Recommendation> {
    let mut by_role: BTreeMap<Role, Vec<&str>> = BTreeMap::new();
    for (id, call) in calls {
        if call.finish_reason.as_deref() == Some("length") {
            by_role.entry(call.role).or_default().push(id);
        }
    }
    by_role
        .into_iter()
        .map(|(role, ids)| {
            let limit = settings
                .max_tokens
                .get(&role)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            Recommendation {
                kind: "cut_at_max_tokens",
                server: None,
                text: format!(
                    "{} {} {} stopped at max_tokens{limit} before {} finished: raise \
                     `[grading] {}_max_tokens` or ask for shorter answers. {}",
                    ids.len(),
                    role,
                    if ids.len() == 1 { "reply" } else { "replies" },
                    if ids.len() == 1 { "it" } else { "they" },
                    role,
                    examples(&ids),
                ),
            }
        })
        .collect()
}

/// Servers on which evaluating the prompt took most of many calls of a role.
pub fn prompt_dominates(calls: &[(&str, &CallRecord)]) -> Vec<Recommendation> {
    let mut groups: BTreeMap<(&str, Role), Vec<(&str, &CallRecord)>> = BTreeMap::new();
    for &(id, call) in calls {
        groups
            .entry((call.server.as_str(), call.role))
            .or_default()
            .push((id, call));
    }

    let mut out = Vec::new();
    for ((server, role), group) in groups {
        let dominated: Vec<(&str, &CallRecord)> = group
            .iter()
            .copied()
            .filter(|(_, c)| {
                c.generation_time_seconds > 0.0
                    && c.prompt_eval_time_seconds > PROMPT_DOMINATES * c.generation_time_seconds
            })
            .collect();
        if dominated.is_empty()
            || (dominated.len() as f64) < PROMPT_DOMINATED_SHARE * group.len() as f64
        {
            continue;
        }
        let share = median(
            dominated
                .iter()
                .map(|(_, c)| c.prompt_eval_time_seconds / c.generation_time_seconds),
        );
        let tokens = median(dominated.iter().map(|(_, c)| c.prompt_tokens as f64));
        let measured = if dominated
            .iter()
            .all(|(_, c)| c.prompt_eval_source == PromptEvalSource::Ttft)
        {
            " (measured as time to first token, which includes any wait on the server)"
        } else {
            ""
        };
        let ids: Vec<&str> = dominated.iter().map(|(id, _)| *id).collect();
        out.push(Recommendation {
            kind: "prompt_dominates",
            server: Some(server.to_string()),
            text: format!(
                "Evaluating the prompt took more than half of {} of {} {role} calls on {server}{measured}, \
                 a median {} of the call for {} prompt tokens: shorten what every prompt repeats \
                 (the rubric, the reference solution) or let the server cache the shared start. {}",
                dominated.len(),
                group.len(),
                percent(share),
                tokens.round(),
                examples(&ids),
            ),
        });
    }
    out
}

/// Servers whose median decode rate fell from the first quarter of their calls to the last.
pub fn decode_sag(calls: &[(&str, &CallRecord)]) -> Vec<Recommendation> {
    let mut by_server: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // `calls` is in send order, so each server's rates are too.
    for (_, call) in calls {
        if let Some(rate) = call.decode_tokens_per_second.filter(|r| r.is_finite()) {
            by_server
                .entry(call.server.as_str())
                .or_default()
                .push(rate);
        }
    }

    let mut out = Vec::new();
    for (server, rates) in by_server {
        let Some((first, last)) = quartile_medians(&rates) else {
            continue;
        };
        if first <= 0.0 || last >= first * (1.0 - DECODE_SAG) {
            continue;
        }
        out.push(Recommendation {
            kind: "decode_sag",
            server: Some(server.to_string()),
            text: format!(
                "The decode rate on {server} sagged from {} tok/s in the first quarter of its \
                 calls to {} tok/s in the last, {} lower: check the machine for thermal \
                 throttling or memory pressure over a long night.",
                one_decimal(first),
                one_decimal(last),
                percent(1.0 - last / first),
            ),
        });
    }
    out
}

/// The medians of the first and the last quarter of values in time order; `None` for fewer
/// than [`MIN_CALLS_FOR_TREND`] values.
pub fn quartile_medians(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < MIN_CALLS_FOR_TREND {
        return None;
    }
    let quarter = values.len() / 4;
    let first = median(values[..quarter].iter().copied());
    let last = median(values[values.len() - quarter..].iter().copied());
    Some((first, last))
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0).unwrap_or(0.0)
}

fn concurrency_setting(backend: &BackendSettings) -> String {
    match backend.max_concurrency {
        Concurrency::Fixed(n) => format!("max_concurrency = {n}"),
        Concurrency::Auto { ceiling } => format!("max_concurrency = auto (ceiling {ceiling})"),
    }
}

fn role_list(roles: &[Role]) -> String {
    match roles {
        [] => "its work".to_string(),
        roles => roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" and "),
    }
}

fn examples(ids: &[&str]) -> String {
    let shown: Vec<&str> = ids.iter().copied().take(EXAMPLES).collect();
    let more = ids.len().saturating_sub(EXAMPLES);
    let list = shown.join(", ");
    match (ids.len(), more) {
        (1, _) => format!("Submission: {list}."),
        (_, 0) => format!("Submissions: {list}."),
        _ => format!("Submissions: {list} and {more} more."),
    }
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

fn one_decimal(x: f64) -> String {
    format!("{x:.1}")
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, FixedOffset};

    use super::*;
    use crate::config::Thresholds;
    use crate::diagnostics::batch::summarise;
    use crate::record::{
        Category, PerformanceDiagnostics, PromptEvalSource, Student, SubmissionInfo, TokenSource,
    };

    fn at(ms: i64) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-12-04T21:00:00+01:00").unwrap()
            + Duration::milliseconds(ms)
    }

    /// A call on `server` from `sent` to `end` milliseconds, its first token after `ttft` ms.
    fn call(role: Role, server: &str, sent: i64, end: i64, ttft: i64, decode: f64) -> CallRecord {
        let generation = (end - sent) as f64 / 1000.0;
        CallRecord {
            role,
            model: "m".into(),
            server: server.into(),
            server_url: format!("http://127.0.0.1/{server}"),
            prompt_tokens: 800,
            output_tokens: 200,
            total_tokens: 1000,
            generation_time_seconds: generation,
            tokens_per_second: 200.0 / generation,
            prompt_eval_time_seconds: ttft as f64 / 1000.0,
            prompt_eval_source: PromptEvalSource::Server,
            time_to_first_token_seconds: ttft as f64 / 1000.0,
            decode_tokens_per_second: Some(decode),
            queue_wait_seconds: 0.0,
            token_source: TokenSource::Server,
            finish_reason: Some("stop".into()),
            attempts: 1,
            category: Category::Good,
            cached_prompt_tokens: None,
            sent_at: at(sent),
            first_token_at: at(sent + ttft),
            finished_at: at(end),
            retries: Vec::new(),
        }
    }

    fn record(id: &str, calls: Vec<CallRecord>) -> ResultRecord {
        ResultRecord {
            status: Status::Graded,
            batch: "b".into(),
            submission: SubmissionInfo {
                id: id.into(),
                student: Student::default(),
                ..SubmissionInfo::default()
            },
            error: None,
            grade: None,
            feedback: None,
            code_analysis: None,
            flags: Vec::new(),
            injection: Vec::new(),
            grading: None,
            links: Default::default(),
            grading_key: "k".into(),
            performance_diagnostics: PerformanceDiagnostics {
                timestamp: at(0),
                calls: calls.into_iter().map(|c| (c.role, c)).collect(),
                failed_calls: Default::default(),
                combined_metrics: None,
            },
        }
    }

    /// `n` submissions one after another: code analysis takes `code_ms`, feedback `feedback_ms`,
    /// each on its own server, both sent when the previous submission's slower call ended.
    fn sequential(n: usize, code_ms: i64, feedback_ms: i64) -> Vec<ResultRecord> {
        let step = code_ms.max(feedback_ms);
        (0..n)
            .map(|i| {
                let start = i as i64 * step;
                record(
                    &format!("s{i:02}"),
                    vec![
                        call(
                            Role::CodeAnalysis,
                            "coder",
                            start,
                            start + code_ms,
                            200,
                            30.0,
                        ),
                        call(
                            Role::Feedback,
                            "writer",
                            start,
                            start + feedback_ms,
                            200,
                            30.0,
                        ),
                    ],
                )
            })
            .collect()
    }

    fn settings(concurrency: Concurrency, gain: Option<f64>) -> ReportSettings {
        let backend = |name: &str, role| BackendSettings {
            name: name.into(),
            roles: vec![role],
            max_concurrency: concurrency,
            batching_gain: gain,
        };
        ReportSettings {
            assignment: "Homework".into(),
            thresholds: Thresholds::default(),
            backends: vec![
                backend("coder", Role::CodeAnalysis),
                backend("writer", Role::Feedback),
            ],
            max_tokens: BTreeMap::from([(Role::CodeAnalysis, 1024), (Role::Feedback, 512)]),
        }
    }

    fn kinds(recommendations: &[Recommendation]) -> Vec<&'static str> {
        recommendations.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn names_the_server_that_bounds_the_batch_and_what_help_would_save() {
        // The coder works 10 s per submission, the writer 4 s: the batch takes 40 s.
        let records = sequential(4, 10_000, 4_000);
        let summary = summarise(&records, &Thresholds::default());

        let bound = bound_by_server(&summary).expect("the coder bounds the batch");

        assert_eq!(bound.server.as_deref(), Some("coder"));
        assert!(
            bound.text.contains("busy 100% of the 40.0 s"),
            "{}",
            bound.text
        );
        assert!(
            bound.text.contains("against 40% for writer"),
            "{}",
            bound.text
        );
        assert!(bound.text.contains("waited about 24.0 s"), "{}", bound.text);
        // Half of the coder's 40 s is 20 s, more than the writer's 16 s.
        assert!(bound.text.contains("to about 20.0 s"), "{}", bound.text);
        // Sharing 56 s of work between two servers: 28 s.
        assert!(
            bound
                .text
                .contains("giving writer the code_analysis role as well"),
            "{}",
            bound.text
        );
        assert!(bound.text.contains("to about 28.0 s"), "{}", bound.text);
    }

    #[test]
    fn balanced_servers_bound_nothing() {
        let records = sequential(4, 10_000, 9_500);
        let summary = summarise(&records, &Thresholds::default());

        assert_eq!(bound_by_server(&summary), None);
    }

    #[test]
    fn a_lone_server_is_told_what_a_second_would_save() {
        let records: Vec<ResultRecord> = (0..3)
            .map(|i| {
                let start = i * 5_000;
                record(
                    &format!("s{i}"),
                    vec![call(
                        Role::CodeAnalysis,
                        "coder",
                        start,
                        start + 5_000,
                        100,
                        30.0,
                    )],
                )
            })
            .collect();
        let summary = summarise(&records, &Thresholds::default());

        let bound = bound_by_server(&summary).unwrap();

        assert!(bound.text.contains("did all the work"), "{}", bound.text);
        assert!(bound.text.contains("about 7.5 s"), "{}", bound.text);
    }

    #[test]
    fn saturated_single_slot_server_that_batches_should_take_more() {
        let records = sequential(4, 10_000, 4_000);
        let summary = summarise(&records, &Thresholds::default());

        let advice = raise_concurrency(&summary, &settings(Concurrency::Fixed(1), Some(1.8)));

        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].server.as_deref(), Some("coder"));
        assert!(advice[0].text.contains("1.80×"), "{}", advice[0].text);
    }

    #[test]
    fn concurrency_advice_waits_for_a_probe_or_keeps_quiet_when_the_probe_saw_no_gain() {
        let records = sequential(4, 10_000, 4_000);
        let summary = summarise(&records, &Thresholds::default());

        let unknown = raise_concurrency(&summary, &settings(Concurrency::Fixed(1), None));
        assert_eq!(kinds(&unknown), ["raise_concurrency"]);
        assert!(
            unknown[0].text.contains("tandem probe"),
            "{}",
            unknown[0].text
        );

        let no_gain = raise_concurrency(&summary, &settings(Concurrency::Fixed(1), Some(1.02)));
        assert!(no_gain.is_empty(), "{no_gain:?}");

        let already = raise_concurrency(&summary, &settings(Concurrency::Fixed(2), Some(1.8)));
        assert!(already.is_empty(), "{already:?}");
    }

    #[test]
    fn counts_replies_cut_at_max_tokens_per_role() {
        let mut records = sequential(5, 4_000, 4_000);
        for record in &mut records[..2] {
            let feedback = record
                .performance_diagnostics
                .calls
                .get_mut(&Role::Feedback)
                .unwrap();
            feedback.finish_reason = Some("length".into());
        }

        let advice = cut_at_max_tokens(
            &batch_calls(&records[..]),
            &settings(Concurrency::Fixed(1), None),
        );

        assert_eq!(kinds(&advice), ["cut_at_max_tokens"]);
        let text = &advice[0].text;
        assert!(
            text.starts_with("2 feedback replies stopped at max_tokens (512)"),
            "{text}"
        );
        assert!(text.contains("feedback_max_tokens"), "{text}");
        assert!(text.contains("Submissions: s00, s01."), "{text}");
    }

    #[test]
    fn flags_prompt_evaluation_that_dominates_a_servers_calls() {
        let mut records = sequential(4, 4_000, 4_000);
        for record in &mut records[..2] {
            let code = record
                .performance_diagnostics
                .calls
                .get_mut(&Role::CodeAnalysis)
                .unwrap();
            code.prompt_eval_time_seconds = 3.0;
        }

        let advice = prompt_dominates(&batch_calls(&records[..]));

        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].server.as_deref(), Some("coder"));
        assert!(
            advice[0]
                .text
                .contains("2 of 4 code_analysis calls on coder"),
            "{}",
            advice[0].text
        );
        assert!(
            advice[0].text.contains("a median 75%"),
            "{}",
            advice[0].text
        );
    }

    #[test]
    fn one_slow_prompt_among_many_is_not_a_pattern() {
        let mut records = sequential(8, 4_000, 4_000);
        let code = records[0]
            .performance_diagnostics
            .calls
            .get_mut(&Role::CodeAnalysis)
            .unwrap();
        code.prompt_eval_time_seconds = 3.0;

        assert!(prompt_dominates(&batch_calls(&records[..])).is_empty());
    }

    #[test]
    fn detects_a_decode_rate_that_sags_over_the_night() {
        let mut records = sequential(12, 4_000, 4_000);
        for (i, record) in records.iter_mut().enumerate() {
            let code = record
                .performance_diagnostics
                .calls
                .get_mut(&Role::CodeAnalysis)
                .unwrap();
            // 40 tok/s falling by 1.5 tok/s per call: 40, 38.5 and 37 in the first quarter,
            // 26.5, 25 and 23.5 in the last.
            code.decode_tokens_per_second = Some(40.0 - 1.5 * i as f64);
        }

        let advice = decode_sag(&batch_calls(&records[..]));

        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].server.as_deref(), Some("coder"));
        assert!(
            advice[0].text.contains("from 38.5 tok/s"),
            "{}",
            advice[0].text
        );
        assert!(
            advice[0].text.contains("to 25.0 tok/s"),
            "{}",
            advice[0].text
        );
        assert!(advice[0].text.contains("35% lower"), "{}", advice[0].text);
    }

    #[test]
    fn a_steady_or_short_night_shows_no_sag() {
        let steady = sequential(12, 4_000, 4_000);
        assert!(decode_sag(&batch_calls(&steady[..])).is_empty());
        assert_eq!(quartile_medians(&[40.0, 30.0, 20.0, 10.0]), None);
    }

    #[test]
    fn a_quiet_batch_gets_no_advice() {
        let records = sequential(4, 4_000, 3_900);
        let summary = summarise(&records, &Thresholds::default());

        let advice = recommend(&summary, &records, &settings(Concurrency::Fixed(2), None));

        assert!(advice.is_empty(), "{advice:?}");
    }
}
