//! A night's batch built by hand for the report tests: 30 submissions on two servers, one for
//! each role, with the marks a real night leaves: a code-analysis server whose decode rate sags
//! as it warms up, a feedback server that waits on it, a reply cut at `max_tokens`, a retried
//! timeout, a failed grade, a notebook that could not be read, a flagged submission and student
//! names in several scripts.
//!
//! The feedback server may run at most two submissions ahead of the code-analysis server (the
//! scheduler's window), so its lane shows the idle time that waiting costs.

#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, FixedOffset};
use tandem::backend::Role;
use tandem::config::{Concurrency, Thresholds};
use tandem::diagnostics::combined_metrics;
use tandem::record::{
    CallRecord, Category, CriterionScore, Feedback, Grade, PerformanceDiagnostics,
    PromptEvalSource, RecordError, ResultRecord, RetryNote, Status, Student, SubmissionInfo,
    TokenSource,
};
use tandem::report::{BackendSettings, ReportSettings};

/// The batch id of the night.
pub const BATCH: &str = "2026-12-04T21-00-00";

/// Students, with names in Latin, Greek, Chinese and Cyrillic scripts and an apostrophe.
pub const STUDENTS: [&str; 30] = [
    "adamsalice",
    "brownbob",
    "müllerzoë",
    "álvarezjosé",
    "o'brienseán",
    "søren kierkegaard",
    "李雷",
    "ελένη παππά",
    "ivanovaanna",
    "dupontclaire",
    "nguyenminh",
    "kowalskipiotr",
    "smithjane",
    "garcíalucía",
    "rossimarco",
    "yilmazayşe",
    "tanakayuki",
    "okaforchidi",
    "larsenfreja",
    "novákjan",
    "silvaana",
    "khanimran",
    "moreaulouis",
    "fischerlena",
    "costajoão",
    "leesoo",
    "haddadrami",
    "kimjiho",
    "patelpriya",
    "walshniamh",
];

/// The rubric's criteria: id, name, points.
pub const CRITERIA: [(&str, &str, f64); 4] = [
    ("data_loading", "Loads and cleans the data", 2.0),
    ("analysis", "Revenue analysis", 3.0),
    ("visualisation", "Chart", 2.0),
    ("interpretation", "Business recommendation", 3.0),
];

fn at(ms: i64) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-12-04T21:00:00+01:00").unwrap() + Duration::milliseconds(ms)
}

/// A small deterministic sequence in [0, 1) so the night looks uneven but never changes.
fn jitter(i: usize, salt: u64) -> f64 {
    let mut x = (i as u64 + 1)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(salt);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    (x % 10_000) as f64 / 10_000.0
}

/// A call from `sent` ms, prefilling `prompt` tokens at `prefill` tok/s, then decoding
/// `output` tokens at `decode` tok/s.
#[allow(clippy::too_many_arguments)]
fn call(
    role: Role,
    server: &str,
    sent: i64,
    prompt: u64,
    prefill: f64,
    output: u64,
    decode: f64,
) -> CallRecord {
    let ttft_ms = (prompt as f64 / prefill * 1000.0).round() as i64;
    let decode_ms = ((output - 1) as f64 / decode * 1000.0).round() as i64;
    let end = sent + ttft_ms + decode_ms;
    let generation = (end - sent) as f64 / 1000.0;
    let (url, model) = match role {
        Role::CodeAnalysis => ("http://127.0.0.1:8081", "Qwen3-Coder-30B"),
        Role::Feedback => ("http://127.0.0.1:8082", "gpt-oss-120b"),
    };
    CallRecord {
        role,
        model: model.to_string(),
        server: server.to_string(),
        server_url: url.to_string(),
        prompt_tokens: prompt,
        output_tokens: output,
        total_tokens: prompt + output,
        generation_time_seconds: generation,
        tokens_per_second: output as f64 / generation,
        prompt_eval_time_seconds: ttft_ms as f64 / 1000.0,
        prompt_eval_source: PromptEvalSource::Server,
        time_to_first_token_seconds: ttft_ms as f64 / 1000.0,
        decode_tokens_per_second: Some((output - 1) as f64 / (decode_ms as f64 / 1000.0)),
        queue_wait_seconds: 0.0,
        token_source: TokenSource::Server,
        finish_reason: Some("stop".to_string()),
        attempts: 1,
        category: Category::Good,
        cached_prompt_tokens: None,
        sent_at: at(sent),
        first_token_at: at(sent + ttft_ms),
        finished_at: at(end),
        retries: Vec::new(),
    }
}

fn end_ms(call: &CallRecord) -> i64 {
    (call.finished_at - at(0)).num_milliseconds()
}

fn info(i: usize) -> SubmissionInfo {
    let name = STUDENTS[i];
    let file = format!(
        "{}_{}_{}_analysis.ipynb",
        name.replace(' ', ""),
        104_300 + i,
        5_532_600 + i
    );
    SubmissionInfo {
        id: format!("{}_{}_analysis.ipynb", name.replace(' ', "-"), 104_300 + i),
        files: vec![file],
        format: "notebook".to_string(),
        sha256: format!("{i:064x}"),
        bytes: 20_000 + 731 * i as u64,
        student: Student {
            name: Some(name.to_string()),
            lms_id: Some((104_300 + i).to_string()),
            late: i % 11 == 3,
        },
        original: None,
    }
}

fn grade(i: usize) -> Grade {
    let criteria: Vec<CriterionScore> = CRITERIA
        .iter()
        .enumerate()
        .map(|(k, (id, name, max))| {
            let share = 0.35 + 0.65 * jitter(i, 17 + k as u64);
            CriterionScore {
                id: id.to_string(),
                name: name.to_string(),
                score: (share * max).round(),
                max: *max,
                evidence: "cell 4".to_string(),
            }
        })
        .collect();
    Grade {
        score: criteria.iter().map(|c| c.score).sum(),
        max_score: 10.0,
        criteria,
    }
}

/// The night's records, in submission order.
pub fn night() -> Vec<ResultRecord> {
    let thresholds = Thresholds::default();
    let mut records = Vec::new();
    let mut code_free = 0i64;
    let mut feedback_free = 0i64;
    let mut code_starts: Vec<i64> = Vec::new();
    for i in 0..STUDENTS.len() {
        let info = info(i);
        if i == 7 {
            // A notebook that could not be read never reached a server.
            records.push(ResultRecord {
                status: Status::Failed,
                batch: BATCH.to_string(),
                submission: SubmissionInfo {
                    format: "unknown".to_string(),
                    ..info
                },
                error: Some(RecordError {
                    kind: "malformed_notebook".to_string(),
                    message: "ελένη-παππά_analysis.ipynb: not a notebook: expected `cells` at \
                              line 1"
                        .to_string(),
                }),
                grade: None,
                feedback: None,
                code_analysis: None,
                flags: Vec::new(),
                injection: Vec::new(),
                grading: None,
                links: Default::default(),
                grading_key: "key".to_string(),
                performance_diagnostics: PerformanceDiagnostics {
                    timestamp: at(0),
                    calls: BTreeMap::new(),
                    failed_calls: Default::default(),
                    combined_metrics: None,
                },
            });
            continue;
        }

        // The code-analysis server slows from 32 to about 23 tok/s as the night goes on.
        let progress = i as f64 / STUDENTS.len() as f64;
        let code_decode = 32.0 - 9.0 * progress + 1.5 * jitter(i, 3);
        let code_sent = code_free + 40 + (300.0 * jitter(i, 5)) as i64;
        let code = call(
            Role::CodeAnalysis,
            "local-code",
            code_sent,
            1_400 + (900.0 * jitter(i, 7)) as u64,
            380.0,
            220 + (160.0 * jitter(i, 11)) as u64,
            code_decode,
        );
        code_free = end_ms(&code);
        code_starts.push(code_sent);

        // The scheduler's window lets the feedback server run two submissions ahead at most.
        let window_start = if code_starts.len() > 2 {
            code_starts[code_starts.len() - 3]
        } else {
            0
        };
        let feedback_sent = feedback_free.max(window_start) + 60;
        let mut feedback = call(
            Role::Feedback,
            "local-feedback",
            feedback_sent,
            1_100 + (500.0 * jitter(i, 13)) as u64,
            520.0,
            150 + (140.0 * jitter(i, 19)) as u64,
            36.0 + 3.0 * jitter(i, 23),
        );
        if i == 12 {
            feedback.finish_reason = Some("length".to_string());
        }
        if i == 20 {
            feedback.attempts = 2;
            feedback.retries.push(RetryNote {
                server: "local-feedback".to_string(),
                kind: "timeout".to_string(),
                message: "http://127.0.0.1:8082 sent nothing for 120 s (read timeout)".to_string(),
            });
        }
        feedback_free = end_ms(&feedback);

        let calls: BTreeMap<Role, CallRecord> =
            [(Role::CodeAnalysis, code), (Role::Feedback, feedback)].into();
        let combined = combined_metrics(calls.values(), thresholds.combined);
        let failed = i == 12;
        records.push(ResultRecord {
            status: if failed {
                Status::Failed
            } else {
                Status::Graded
            },
            batch: BATCH.to_string(),
            submission: info,
            error: failed.then(|| RecordError {
                kind: "invalid_grade".to_string(),
                message: "the feedback reply stopped at max_tokens (1024) before its JSON closed"
                    .to_string(),
            }),
            grade: (!failed).then(|| grade(i)),
            feedback: (!failed).then(|| Feedback {
                summary: "Clear cleaning steps; say which region to act on and why.".to_string(),
                strengths: Vec::new(),
                improvements: Vec::new(),
            }),
            code_analysis: None,
            flags: if i == 4 {
                vec!["possible_prompt_injection".to_string()]
            } else {
                Vec::new()
            },
            injection: Vec::new(),
            grading: None,
            links: Default::default(),
            grading_key: "key".to_string(),
            performance_diagnostics: PerformanceDiagnostics {
                timestamp: at(0),
                calls,
                failed_calls: Default::default(),
                combined_metrics: combined,
            },
        });
    }
    records
}

/// The settings of the night: two single-slot servers never probed.
pub fn settings() -> ReportSettings {
    let backend = |name: &str, role| BackendSettings {
        name: name.to_string(),
        roles: vec![role],
        max_concurrency: Concurrency::Fixed(1),
        batching_gain: None,
    };
    ReportSettings {
        assignment: "Regional sales analysis".to_string(),
        thresholds: Thresholds::default(),
        backends: vec![
            backend("local-code", Role::CodeAnalysis),
            backend("local-feedback", Role::Feedback),
        ],
        max_tokens: BTreeMap::from([(Role::CodeAnalysis, 1024), (Role::Feedback, 1024)]),
    }
}
