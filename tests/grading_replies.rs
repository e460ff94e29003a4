//! Replies that models really send: JSON in fences or prose, reasoning leaked into the answer or
//! sent apart, scores out of range, answers cut off. Every record ends as a valid grade or as a
//! failure that says why; reasoning never reaches the feedback, and its tokens are counted.

#[path = "red_team/harness.rs"]
mod harness;

use std::collections::BTreeMap;

use harness::{Extra, Workspace, code_reply, fast, feedback_reply};
use regex::Regex;
use serde_json::Value;
use tandem::fake_server::{Dialect, Reply};
use tandem::record::{ResultRecord, Status};

/// Reasoning text that must never reach a record.
const LEAK: &str = "REASONING-LEAK";

/// The case a request is about: the `case: NAME` line of its submission.
fn case(body: &Value) -> String {
    let submission = harness::fenced_submission(&harness::prompt(body));
    Regex::new(r"case: (\w+)")
        .unwrap()
        .captures(&submission)
        .map(|c| c[1].to_string())
        .unwrap_or_default()
}

/// Whether a request is the corrective one sent after an invalid reply.
fn corrective(body: &Value) -> bool {
    body["messages"].as_array().is_some_and(|m| m.len() > 2)
}

fn code_analysis(body: &Value) -> String {
    let valid = code_reply(body, |_, max| max - 1);
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(0);
    let long = format!("{valid}{}", " ".repeat(40_000));
    match case(body).as_str() {
        "fenced" => format!("```json\n{valid}\n```"),
        "prose" => format!("Here is my assessment of the work: {valid} I hope this helps."),
        "think" => format!("<think>The student wants full marks. {LEAK}</think>\n{valid}"),
        "harmony" => format!(
            "<|channel|>analysis<|message|>{LEAK}<|end|><|start|>assistant<|channel|>final \
             <|constrain|>json<|message|>{valid}<|return|>"
        ),
        "harmony_only" => format!("<|channel|>analysis<|message|>{LEAK} maybe {valid}"),
        "out_of_range" => code_reply(body, |_, max| max + 5),
        "out_of_range_once" if !corrective(body) => code_reply(body, |_, max| max + 5),
        "negative" => code_reply(body, |_, _| -1),
        "non_integer" => valid.replace(r#""score":1,"#, r#""score":1.5,"#),
        "missing_criterion" => valid.replace(r#""analysis":"#, r#""analysis_x":"#),
        "truncated" => long,
        "truncated_once" if max_tokens <= 1024 => long,
        "reasoning_budget" => format!("<think>{LEAK} {}", "hmm ".repeat(10_000)),
        "no_json" => "The work is solid; I would give it seven points.".to_string(),
        _ => valid,
    }
}

fn feedback(body: &Value) -> String {
    let reply = feedback_reply(harness::schema_max(body) - 4);
    match case(body).as_str() {
        "think" => format!("<think>{LEAK}: be nice</think>{reply}"),
        "harmony" => format!(
            "<|channel|>analysis<|message|>{LEAK}<|end|><|start|>assistant<|channel|>final\
             <|message|>{reply}"
        ),
        "prose" => format!("Feedback below.\n```\n{reply}\n```"),
        "template" => reply.replace("Clear work with one gap.", "<two sentences to the student>"),
        _ => reply,
    }
}

/// What each case must end as: `graded`, or the failure kind.
fn expectations() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("valid", "graded"),
        ("fenced", "graded"),
        ("prose", "graded"),
        ("think", "graded"),
        ("harmony", "graded"),
        ("harmony_only", "invalid_json"),
        ("out_of_range", "invalid_grade"),
        ("out_of_range_once", "graded"),
        ("negative", "invalid_grade"),
        ("non_integer", "invalid_grade"),
        ("missing_criterion", "invalid_grade"),
        ("truncated", "truncated"),
        ("truncated_once", "graded"),
        ("reasoning_budget", "truncated"),
        ("no_json", "invalid_json"),
        ("template", "graded"),
    ])
}

async fn run_all_cases() -> (Vec<ResultRecord>, tandem::fake_server::FakeServer) {
    let code = fast(Reply::func(code_analysis))
        .reasoning_tokens(6)
        .start()
        .await;
    let feedback = fast(Reply::func(feedback))
        .dialect(Dialect::Mlx)
        .reasoning_tokens(12)
        .start()
        .await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    for case in expectations().keys() {
        workspace.write(
            &format!("case_{case}.py"),
            &format!("# case: {case}\nimport pandas as pd\nsales = pd.read_csv('sales.csv')\n"),
        );
    }
    let records = workspace.run().await;
    drop(code);
    (records, feedback)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_ends_as_a_valid_grade_or_a_failure_that_says_why() {
    let (records, _feedback) = run_all_cases().await;
    let expectations = expectations();
    assert_eq!(records.len(), expectations.len());

    for record in &records {
        let case = record
            .submission
            .id
            .trim_start_matches("case_")
            .trim_end_matches(".py");
        let want = expectations[case];
        match record.status {
            Status::Graded => {
                assert_eq!(want, "graded", "{case} was graded");
                let grade = record.grade.as_ref().unwrap();
                let sum: f64 = grade.criteria.iter().map(|c| c.score).sum();
                assert_eq!(grade.score, sum, "{case}: the total is tandem's sum");
                assert!(grade.score <= grade.max_score);
                for c in &grade.criteria {
                    assert!((0.0..=c.max).contains(&c.score) && c.score.fract() == 0.0);
                }
                assert!(record.feedback.is_some() && record.error.is_none());
            }
            Status::Failed => {
                let error = record.error.as_ref().unwrap();
                assert_eq!(want, error.kind, "{case}: {}", error.message);
                assert!(
                    error.message.starts_with("code_analysis: "),
                    "{}",
                    error.message
                );
                assert!(record.grade.is_none() && record.feedback.is_none());
            }
            Status::Duplicate | Status::Superseded => panic!("{case}: {:?}", record.status),
        }
        let text = serde_json::to_string(record).unwrap();
        assert!(!text.contains(LEAK), "{case}: reasoning reached the record");
    }

    let by_case = |name: &str| {
        records
            .iter()
            .find(|r| r.submission.id == format!("case_{name}.py"))
            .unwrap()
    };
    assert!(
        by_case("prose")
            .flags
            .contains(&"reply_wrapped_in_prose".into())
    );
    assert!(
        by_case("fenced").flags.is_empty(),
        "{:?}",
        by_case("fenced").flags
    );
    assert!(
        by_case("template")
            .flags
            .contains(&"reply_copies_template".into())
    );
    assert!(
        !by_case("valid")
            .flags
            .contains(&"reply_copies_template".into())
    );
    let cut = by_case("truncated").error.clone().unwrap().message;
    assert!(cut.contains("cut off"), "{cut}");
    let spent = by_case("reasoning_budget").error.clone().unwrap().message;
    assert!(spent.contains("spent it on reasoning"), "{spent}");
    let range = by_case("out_of_range").error.clone().unwrap().message;
    assert!(
        range.contains("outside 0..") && range.contains("after 2 requests"),
        "{range}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_chance_is_one_corrective_request_or_one_larger_budget() {
    let (records, _feedback) = run_all_cases().await;
    let call = |name: &str| {
        let record = records
            .iter()
            .find(|r| r.submission.id == format!("case_{name}.py"))
            .unwrap();
        record.performance_diagnostics.calls[&tandem::backend::Role::CodeAnalysis].clone()
    };
    let corrected = call("out_of_range_once");
    assert_eq!(corrected.attempts, 2);
    assert_eq!(corrected.retries[0].kind, "invalid_grade");
    let enlarged = call("truncated_once");
    assert_eq!(enlarged.attempts, 2);
    assert_eq!(enlarged.retries[0].kind, "truncated");
    assert_eq!(call("valid").attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_tokens_are_counted_though_never_graded() {
    let (records, feedback) = run_all_cases().await;
    let logs = feedback.stats().requests_log;
    let mut checked = 0;
    for record in records.iter().filter(|r| r.status == Status::Graded) {
        let call = &record.performance_diagnostics.calls[&tandem::backend::Role::Feedback];
        let marker = format!(
            "case: {}\n",
            record
                .submission
                .id
                .trim_start_matches("case_")
                .trim_end_matches(".py")
        );
        let log = logs
            .iter()
            .find(|l| harness::prompt(&l.body).contains(&marker))
            .unwrap();
        // The server's count holds the 12 reasoning tokens sent in `reasoning` deltas.
        assert_eq!(call.output_tokens, log.completion_tokens, "{marker}");
        let answer_tokens = serde_json::to_string(&record.feedback).unwrap().len() as u64 / 4;
        assert!(call.output_tokens >= 12 + answer_tokens / 2, "{call:?}");
        checked += 1;
    }
    assert!(checked >= 7);
}
