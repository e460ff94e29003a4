//! Batch figures: how each server and the batch as a whole did over a night's work.
//!
//! [`summarise`] computes a [`BatchSummary`] from result records alone, so that the reports of
//! any finished batch can be rebuilt from its outbox folder. The definitions are DESIGN.md's
//! "What each figure means": the batch's wall time runs from the first request sent to the last
//! token received; a server is busy while at least one of its calls is in flight (the union of
//! their intervals, so a batching server's overlapping calls are not counted twice); parallel
//! efficiency is the servers' busy time over the wall time; throughput is output tokens over the
//! wall time, never a sum of per-request rates. Writing the figures out is the report module's
//! job.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::{categorise, rate, seconds_between};
use crate::backend::Role;
use crate::config::{Threshold, Thresholds};
use crate::record::{CallRecord, Category, FailedCall, ResultRecord, Status};

/// A batch's figures, per server and over the whole batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSummary {
    /// When the batch's first request was sent; `None` when no call answered.
    pub started_at: Option<DateTime<FixedOffset>>,
    /// When the batch's last answering call received its last token.
    pub finished_at: Option<DateTime<FixedOffset>>,
    /// Last t_end − first t_send over every call of the batch; zero without calls.
    pub wall_seconds: f64,
    /// Result records in the batch, whatever their status.
    pub submissions: u64,
    /// Records with status `graded`.
    pub graded: u64,
    /// Records with status `failed`.
    pub failed: u64,
    /// Records with status `duplicate`, which were not graded again.
    pub duplicates: u64,
    /// Calls that answered (one per role per submission that got that far).
    pub calls: u64,
    /// Requests sent, counting retries and the requests of calls that never answered.
    pub attempts: u64,
    /// Failed submissions counted by their error's kind (`invalid_grade`, `http_status`, ...).
    pub failed_submissions_by_kind: BTreeMap<String, u64>,
    /// Attempts that failed and were tried again, counted by the retry note's kind, over calls
    /// that answered and calls that did not.
    pub retried_attempts_by_kind: BTreeMap<String, u64>,
    /// One entry per server that answered or was tried, sorted by name.
    pub servers: Vec<ServerSummary>,
    /// Σ prompt tokens over every call.
    pub prompt_tokens: u64,
    /// Σ output tokens over every call.
    pub output_tokens: u64,
    /// Σ busy seconds over the servers (server-seconds of work).
    pub busy_seconds: f64,
    /// Σ output tokens / wall seconds.
    pub combined_throughput_tokens_per_second: f64,
    /// Σ busy seconds over servers / wall seconds: how many servers worked on average.
    pub parallel_efficiency: f64,
    /// Time to first token over every call of the batch.
    pub ttft_seconds: Option<Percentiles>,
    /// Generation time (t_end − t_send) over every call of the batch.
    pub generation_time_seconds: Option<Percentiles>,
    /// Median decode rate over the calls that report one.
    pub decode_tokens_per_second_p50: Option<f64>,
    /// The combined throughput against `thresholds.combined`; `None` when no call answered.
    pub category: Option<Category>,
}

/// One server's figures over a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSummary {
    /// The backend's configured name, as recorded in its calls.
    pub name: String,
    /// The URL of the server's earliest call; empty when it only appears in retry notes.
    pub url: String,
    /// The model of the server's earliest call; empty when it only appears in retry notes.
    pub model: String,
    /// The roles of the calls it answered or was tried for, in [`Role::ALL`] order.
    pub roles: Vec<Role>,
    /// Calls it answered.
    pub calls: u64,
    /// Requests it was sent: the calls it answered plus the attempts that failed on it.
    pub requests: u64,
    /// Attempts that failed on it: those named by retry notes, and the last request of each call
    /// that never answered.
    pub failures: u64,
    /// Σ prompt tokens over its calls.
    pub prompt_tokens: u64,
    /// Σ output tokens over its calls.
    pub output_tokens: u64,
    /// Length of the union of its calls' [t_send, t_end] intervals.
    pub busy_seconds: f64,
    /// busy seconds / batch wall seconds.
    pub utilisation: f64,
    /// Σ output tokens / busy seconds: its rate while it was working.
    pub output_tokens_per_second: f64,
    /// Σ output tokens / batch wall seconds: its share of the batch's throughput.
    pub output_tokens_per_wall_second: f64,
    /// Time to first token over its calls.
    pub ttft_seconds: Option<Percentiles>,
    /// Generation time (t_end − t_send) over its calls.
    pub generation_time_seconds: Option<Percentiles>,
    /// Median decode rate over its calls that report one.
    pub decode_tokens_per_second_p50: Option<f64>,
    /// [`Self::output_tokens_per_second`] against its role's threshold (see
    /// [`server_threshold`]); `None` when it answered no call.
    pub category: Option<Category>,
}

/// The 50th, 95th and 99th nearest-rank percentiles of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Percentiles {
    /// The percentiles of some values, in any order; `None` when there are none.
    ///
    /// Values that are not finite are left out.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Percentiles> {
        let sorted = sorted_finite(values);
        Some(Percentiles {
            p50: percentile(&sorted, 50.0)?,
            p95: percentile(&sorted, 95.0)?,
            p99: percentile(&sorted, 99.0)?,
        })
    }
}

/// The nearest-rank percentile `p` (in percent, 0 to 100) of values sorted in ascending order.
///
/// The result is always one of the values: the one at rank ⌈p/100 · n⌉ (at least the first).
/// `None` for no values, or for a `p` outside 0..=100.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    // Multiplying before dividing keeps integer percentiles exact: 95 · 20 / 100 is 19, where
    // 0.95 · 20 rounds up to a hair above 19 and would pick the next rank.
    let rank = (p * sorted.len() as f64 / 100.0).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The threshold a server's rate is held to, given the roles it served.
///
/// A server that served one role is held to that role's threshold. A server that served both is
/// held to the more lenient of the two, bound by bound: the role thresholds describe the models
/// usually put on each role, and a server running one model for both should not be marked down
/// for failing the expectation set for the other. `None` without roles.
pub fn server_threshold(roles: &[Role], thresholds: &Thresholds) -> Option<Threshold> {
    roles
        .iter()
        .map(|&role| thresholds.for_role(role))
        .reduce(|a, b| Threshold {
            excellent: a.excellent.min(b.excellent),
            good: a.good.min(b.good),
        })
}

/// Length in seconds of the union of time intervals, each given as (start, end).
///
/// Overlapping and touching intervals count once; an interval whose end is not after its start
/// adds nothing.
pub fn union_seconds(
    intervals: impl IntoIterator<Item = (DateTime<FixedOffset>, DateTime<FixedOffset>)>,
) -> f64 {
    let mut intervals: Vec<_> = intervals.into_iter().filter(|(s, e)| e > s).collect();
    intervals.sort();

    let mut total = 0.0;
    let mut current: Option<(DateTime<FixedOffset>, DateTime<FixedOffset>)> = None;
    for (start, end) in intervals {
        current = match current {
            Some((cs, ce)) if start <= ce => Some((cs, ce.max(end))),
            Some((cs, ce)) => {
                total += seconds_between(cs, ce);
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((cs, ce)) = current {
        total += seconds_between(cs, ce);
    }
    total
}

/// Computes a batch's figures from its result records.
///
/// Calls of `duplicate` records are left out: such a record was not graded again, and any calls
/// it carries were made for the earlier result. Calls of `failed` records count, since the
/// servers did that work.
pub fn summarise(records: &[ResultRecord], thresholds: &Thresholds) -> BatchSummary {
    let count = |status: Status| records.iter().filter(|r| r.status == status).count() as u64;

    let mut failed_submissions_by_kind = BTreeMap::new();
    for record in records.iter().filter(|r| r.status == Status::Failed) {
        let kind = record.error.as_ref().map_or("unknown", |e| e.kind.as_str());
        *failed_submissions_by_kind
            .entry(kind.to_string())
            .or_insert(0) += 1;
    }

    let mut calls: Vec<&CallRecord> = records
        .iter()
        .filter(|r| r.status != Status::Duplicate)
        .flat_map(|r| r.performance_diagnostics.calls.values())
        .collect();
    // Sorting by send time makes "the server's earliest call" independent of record order.
    calls.sort_by(|a, b| (a.sent_at, &a.server, a.role).cmp(&(b.sent_at, &b.server, b.role)));

    let failed_calls: Vec<&FailedCall> = records
        .iter()
        .filter(|r| r.status != Status::Duplicate)
        .flat_map(|r| r.performance_diagnostics.failed_calls.values())
        .collect();

    let mut retried_attempts_by_kind = BTreeMap::new();
    let answered_retries = calls.iter().flat_map(|c| &c.retries);
    for note in answered_retries.chain(failed_calls.iter().flat_map(|f| &f.retries)) {
        *retried_attempts_by_kind
            .entry(note.kind.clone())
            .or_insert(0) += 1;
    }

    let started_at = calls.iter().map(|c| c.sent_at).min();
    let finished_at = calls.iter().map(|c| c.finished_at).max();
    let wall = match (started_at, finished_at) {
        (Some(start), Some(end)) => seconds_between(start, end),
        _ => 0.0,
    };

    let servers = server_summaries(&calls, &failed_calls, wall, thresholds);
    let busy_seconds: f64 = servers.iter().map(|s| s.busy_seconds).sum();
    let output_tokens: u64 = calls.iter().map(|c| c.output_tokens).sum();
    let throughput = rate(output_tokens, wall);

    BatchSummary {
        started_at,
        finished_at,
        wall_seconds: wall,
        submissions: records.len() as u64,
        graded: count(Status::Graded),
        failed: count(Status::Failed),
        duplicates: count(Status::Duplicate),
        calls: calls.len() as u64,
        attempts: calls
            .iter()
            .map(|c| u64::from(c.attempts.max(1)))
            .sum::<u64>()
            + failed_calls
                .iter()
                .map(|f| u64::from(f.attempts))
                .sum::<u64>(),
        failed_submissions_by_kind,
        retried_attempts_by_kind,
        servers,
        prompt_tokens: calls.iter().map(|c| c.prompt_tokens).sum(),
        output_tokens,
        busy_seconds,
        combined_throughput_tokens_per_second: throughput,
        parallel_efficiency: ratio(busy_seconds, wall),
        ttft_seconds: Percentiles::of(calls.iter().map(|c| c.time_to_first_token_seconds)),
        generation_time_seconds: Percentiles::of(calls.iter().map(|c| c.generation_time_seconds)),
        decode_tokens_per_second_p50: median(
            calls.iter().filter_map(|c| c.decode_tokens_per_second),
        ),
        category: (!calls.is_empty()).then(|| categorise(throughput, thresholds.combined)),
    }
}

/// Per-server figures, from calls sorted by send time.
fn server_summaries(
    calls: &[&CallRecord],
    failed_calls: &[&FailedCall],
    wall: f64,
    thresholds: &Thresholds,
) -> Vec<ServerSummary> {
    let mut answered: BTreeMap<&str, Vec<&CallRecord>> = BTreeMap::new();
    // Failed attempts per server, with the roles of the calls they were made for.
    let mut failed: BTreeMap<&str, (u64, BTreeSet<Role>)> = BTreeMap::new();
    for call in calls {
        answered.entry(call.server.as_str()).or_default().push(call);
        for note in &call.retries {
            let entry = failed.entry(note.server.as_str()).or_default();
            entry.0 += 1;
            entry.1.insert(call.role);
        }
    }
    for call in failed_calls {
        let last = (call.attempts > 0).then_some(&call.last_error);
        for note in call.retries.iter().chain(last) {
            let entry = failed.entry(note.server.as_str()).or_default();
            entry.0 += 1;
            entry.1.insert(call.role);
        }
    }

    let names: BTreeSet<&str> = answered.keys().chain(failed.keys()).copied().collect();
    names
        .into_iter()
        .map(|name| {
            let own = answered.get(name).map(Vec::as_slice).unwrap_or_default();
            let (failures, failed_roles) = failed.get(name).cloned().unwrap_or_default();
            server_summary(name, own, failures, failed_roles, wall, thresholds)
        })
        .collect()
}

/// One server's figures from the calls it answered and the attempts that failed on it.
fn server_summary(
    name: &str,
    calls: &[&CallRecord],
    failures: u64,
    failed_roles: BTreeSet<Role>,
    wall: f64,
    thresholds: &Thresholds,
) -> ServerSummary {
    let mut roles = failed_roles;
    roles.extend(calls.iter().map(|c| c.role));
    let roles: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| roles.contains(r))
        .collect();

    let busy = union_seconds(calls.iter().map(|c| (c.sent_at, c.finished_at)));
    let output_tokens: u64 = calls.iter().map(|c| c.output_tokens).sum();
    let busy_rate = rate(output_tokens, busy);
    let category = if calls.is_empty() {
        None
    } else {
        server_threshold(&roles, thresholds).map(|t| categorise(busy_rate, t))
    };

    ServerSummary {
        name: name.to_string(),
        url: calls
            .first()
            .map(|c| c.server_url.clone())
            .unwrap_or_default(),
        model: calls.first().map(|c| c.model.clone()).unwrap_or_default(),
        roles,
        calls: calls.len() as u64,
        requests: calls.len() as u64 + failures,
        failures,
        prompt_tokens: calls.iter().map(|c| c.prompt_tokens).sum(),
        output_tokens,
        busy_seconds: busy,
        utilisation: ratio(busy, wall),
        output_tokens_per_second: busy_rate,
        output_tokens_per_wall_second: rate(output_tokens, wall),
        ttft_seconds: Percentiles::of(calls.iter().map(|c| c.time_to_first_token_seconds)),
        generation_time_seconds: Percentiles::of(calls.iter().map(|c| c.generation_time_seconds)),
        decode_tokens_per_second_p50: median(
            calls.iter().filter_map(|c| c.decode_tokens_per_second),
        ),
        category,
    }
}

fn sorted_finite(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    percentile(&sorted_finite(values), 50.0)
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(seconds: i64) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2026-12-04T21:00:00+01:00").unwrap()
            + chrono::Duration::seconds(seconds)
    }

    #[test]
    fn percentile_of_nothing_is_none() {
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn percentile_of_one_value_is_that_value() {
        for p in [0.0, 1.0, 50.0, 95.0, 99.0, 100.0] {
            assert_eq!(percentile(&[4.5], p), Some(4.5));
        }
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 95.0), Some(19.0));
        assert_eq!(percentile(&values, 99.0), Some(20.0));
        assert_eq!(percentile(&values, 100.0), Some(20.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
    }

    #[test]
    fn percentile_rejects_out_of_range_p() {
        assert_eq!(percentile(&[1.0], -1.0), None);
        assert_eq!(percentile(&[1.0], 100.5), None);
        assert_eq!(percentile(&[1.0], f64::NAN), None);
    }

    #[test]
    fn union_counts_overlapping_intervals_once() {
        let busy = union_seconds([(at(0), at(10)), (at(5), at(15)), (at(20), at(22))]);
        assert_eq!(busy, 17.0);
    }

    #[test]
    fn union_merges_nested_and_touching_intervals() {
        let busy = union_seconds([(at(10), at(12)), (at(0), at(10)), (at(2), at(3))]);
        assert_eq!(busy, 12.0);
        assert_eq!(union_seconds([(at(5), at(5)), (at(6), at(4))]), 0.0);
    }

    #[test]
    fn server_serving_both_roles_gets_the_lenient_threshold() {
        let thresholds = Thresholds::default();
        let both = server_threshold(&[Role::CodeAnalysis, Role::Feedback], &thresholds).unwrap();
        assert_eq!(both.excellent, 30.0);
        assert_eq!(both.good, 20.0);
        let feedback = server_threshold(&[Role::Feedback], &thresholds).unwrap();
        assert_eq!(feedback.good, 25.0);
        assert!(server_threshold(&[], &thresholds).is_none());
    }

    #[test]
    fn empty_batch_has_zero_figures_and_no_category() {
        let summary = summarise(&[], &Thresholds::default());
        assert_eq!(summary.wall_seconds, 0.0);
        assert_eq!(summary.parallel_efficiency, 0.0);
        assert!(summary.servers.is_empty());
        assert!(summary.category.is_none());
        assert!(summary.ttft_seconds.is_none());
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_and_taken_from_the_input(
            values in proptest::collection::vec(-1e6f64..1e6, 1..200),
        ) {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let p50 = percentile(&sorted, 50.0).unwrap();
            let p95 = percentile(&sorted, 95.0).unwrap();
            let p99 = percentile(&sorted, 99.0).unwrap();
            prop_assert!(p50 <= p95 && p95 <= p99);
            for p in [p50, p95, p99] {
                prop_assert!(values.contains(&p));
            }
        }

        #[test]
        fn union_is_at_most_the_sum_and_at_least_the_longest(
            spans in proptest::collection::vec((0i64..1000, 0i64..100), 1..30),
        ) {
            let intervals: Vec<_> = spans.iter().map(|&(s, l)| (at(s), at(s + l))).collect();
            let busy = union_seconds(intervals);
            let sum: i64 = spans.iter().map(|&(_, l)| l).sum();
            let longest = spans.iter().map(|&(_, l)| l).max().unwrap();
            prop_assert!(busy <= sum as f64);
            prop_assert!(busy >= longest as f64);
        }
    }
}
