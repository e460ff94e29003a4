//! `tandem run`, the built binary, grading the sample class in `examples/class/` against two
//! fake llama.cpp servers (one per role) in a temporary folder.
//!
//! Most tests read the outcome of one shared run of the whole class; the tests about retries
//! run their own small batches.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Value, json};
use tandem::fake_server::{
    Dialect, FakeServer, FakeServerBuilder, Fault, Reply, Stats, When, reply_matching_schema,
};
use tempfile::TempDir;

use common::{examples, run_tandem};

/// Output budgets in the test configuration, to be found in every request.
const CODE_MAX_TOKENS: u64 = 900;
const FEEDBACK_MAX_TOKENS: u64 = 700;

/// Tokens each fake reports beyond those it streams, so that the server's counts can be told
/// from any count tandem could make from the text.
const CODE_EXTRA_TOKENS: u64 = 3;
const FEEDBACK_EXTRA_TOKENS: u64 = 2;

/// The two sample files that cannot be graded, and the kind of their failure.
const BROKEN: [(&str, &str); 2] = [
    (
        "chenwei_104372_5532688_analysis.ipynb",
        "malformed_notebook",
    ),
    ("duboisclaire_104389_5532703_analysis.py", "empty"),
];

/// Every field DESIGN.md lists for a call.
const CALL_FIELDS: [&str; 18] = [
    "model",
    "server",
    "server_url",
    "prompt_tokens",
    "output_tokens",
    "total_tokens",
    "generation_time_seconds",
    "tokens_per_second",
    "prompt_eval_time_seconds",
    "role",
    "time_to_first_token_seconds",
    "decode_tokens_per_second",
    "queue_wait_seconds",
    "prompt_eval_source",
    "token_source",
    "finish_reason",
    "attempts",
    "category",
];

const COMBINED_FIELDS: [&str; 5] = [
    "total_tokens_processed",
    "total_output_tokens",
    "wall_time_seconds",
    "parallel_efficiency",
    "combined_throughput_tokens_per_second",
];

/// A fast fake llama-server.
fn fast_server() -> FakeServerBuilder {
    FakeServer::builder()
        .dialect(Dialect::LlamaCpp)
        .prefill_tok_per_s(200_000.0)
        .decode_tok_per_s(20_000.0)
}

/// A valid code-analysis reply whose scores vary with the submission, with a `total` that a
/// grader must ignore.
fn varied_scores() -> Reply {
    Reply::func(|body| {
        let schema = &body["response_format"]["json_schema"]["schema"];
        let mut reply: Value = serde_json::from_str(&reply_matching_schema(schema)).unwrap();
        let seed =
            submission_text(body["messages"][1]["content"].as_str().unwrap_or("")).len() as u64;
        let criteria = schema["properties"]["criteria"]["properties"]
            .as_object()
            .expect("the code-analysis schema lists the criteria");
        for (i, (id, criterion)) in criteria.iter().enumerate() {
            let points = criterion["properties"]["score"]["maximum"]
                .as_u64()
                .unwrap();
            reply["criteria"][id]["score"] = json!((seed + i as u64) % (points + 1));
        }
        reply["total"] = json!(99);
        reply.to_string()
    })
}

/// The submission inside a prompt, between its fence markers (the whole prompt if none are
/// found), so that the fake's scores depend on the work and not on the prompt's wording.
fn submission_text(prompt: &str) -> &str {
    let start = prompt
        .find("<<<SUBMISSION ")
        .and_then(|at| prompt[at..].find('\n').map(|nl| at + nl + 1));
    let end = prompt.find("<<<END SUBMISSION ");
    match (start, end) {
        (Some(start), Some(end)) if start <= end => &prompt[start..end],
        _ => prompt,
    }
}

/// A temporary folder with an inbox holding some of the sample class, the sample rubric, and
/// a `tandem.toml` pointing at two fake servers.
struct Class {
    dir: TempDir,
}

impl Class {
    fn new(files: &[String], code: &FakeServer, feedback: &FakeServer) -> Class {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox");
        fs::create_dir(&inbox).unwrap();
        for name in files {
            fs::copy(examples().join("class").join(name), inbox.join(name)).unwrap();
        }
        fs::copy(
            examples().join("rubric.toml"),
            dir.path().join("rubric.toml"),
        )
        .unwrap();
        let config = format!(
            r#"[paths]
inbox = "inbox"
outbox = "outbox"
reports = "reports"
state = "state"

[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code-server"
role = "code_analysis"
url = "{code}"
model = "fake-model"
max_concurrency = 2

[[backend]]
name = "feedback-server"
role = "feedback"
url = "{feedback}"
model = "fake-model"
max_concurrency = 2

[grading]
code_analysis_max_tokens = {CODE_MAX_TOKENS}
feedback_max_tokens = {FEEDBACK_MAX_TOKENS}
read_timeout_seconds = 10

[inbox]
settle_seconds = 0
"#,
            code = code.url(),
            feedback = feedback.url(),
        );
        fs::write(dir.path().join("tandem.toml"), config).unwrap();
        Class { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    async fn run(&self) -> std::process::Output {
        run_tandem(self.root(), &["run", "--config", "tandem.toml"]).await
    }

    /// The one batch in the outbox.
    fn batch(&self) -> String {
        let batches = names_in(&self.root().join("outbox"));
        assert_eq!(batches.len(), 1, "batches: {batches:?}");
        batches.into_iter().next().unwrap()
    }

    /// The batch's records, by submission id.
    fn records(&self) -> BTreeMap<String, Value> {
        let dir = self.root().join("outbox").join(self.batch());
        names_in(&dir)
            .into_iter()
            .map(|name| {
                assert!(name.ends_with(".json"), "{name} in the outbox");
                let text = fs::read_to_string(dir.join(&name)).unwrap();
                let record: Value = serde_json::from_str(&text).unwrap();
                let id = record["submission"]["id"].as_str().unwrap().to_string();
                assert_eq!(format!("{id}.json"), name);
                (id, record)
            })
            .collect()
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn sample_files() -> Vec<String> {
    names_in(&examples().join("class")).into_iter().collect()
}

fn gradable_files(n: usize) -> Vec<String> {
    sample_files()
        .into_iter()
        .filter(|name| BROKEN.iter().all(|(broken, _)| broken != name))
        .take(n)
        .collect()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The whole sample class, graded once for the tests that read its outcome.
struct SampleRun {
    class: Class,
    status: Option<i32>,
    stderr: String,
    code_url: String,
    feedback_url: String,
    code: Stats,
    feedback: Stats,
}

fn sample_run() -> &'static SampleRun {
    static RUN: OnceLock<SampleRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let code = fast_server()
                .extra_completion_tokens(CODE_EXTRA_TOKENS)
                .reply(varied_scores())
                .start()
                .await;
            let feedback = fast_server()
                .extra_completion_tokens(FEEDBACK_EXTRA_TOKENS)
                .start()
                .await;
            let class = Class::new(&sample_files(), &code, &feedback);
            let output = class.run().await;
            SampleRun {
                status: output.status.code(),
                stderr: stderr(&output),
                code_url: code.url(),
                feedback_url: feedback.url(),
                code: code.stats(),
                feedback: feedback.stats(),
                class,
            }
        })
    })
}

fn graded(records: &BTreeMap<String, Value>) -> Vec<&Value> {
    records
        .values()
        .filter(|r| r["status"] == "graded")
        .collect()
}

#[test]
fn a_class_with_unreadable_files_exits_with_status_3() {
    let run = sample_run();
    assert_eq!(run.status, Some(3), "stderr:\n{}", run.stderr);
}

#[test]
fn every_input_ends_in_exactly_one_record() {
    let run = sample_run();
    let records = run.class.records();
    assert_eq!(records.len(), sample_files().len(), "{:?}", records.keys());

    let files: BTreeSet<String> = records
        .values()
        .flat_map(|r| r["submission"]["files"].as_array().unwrap().clone())
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(files, sample_files().into_iter().collect());
    let statuses: Vec<&str> = records
        .values()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "graded").count(), 12);
    assert_eq!(statuses.iter().filter(|s| **s == "failed").count(), 2);
}

#[test]
fn unreadable_files_fail_with_a_record_naming_the_file() {
    let run = sample_run();
    let records = run.class.records();
    let failed: BTreeMap<String, (String, String)> = records
        .values()
        .filter(|r| r["status"] == "failed")
        .map(|r| {
            (
                r["submission"]["files"][0].as_str().unwrap().to_string(),
                (
                    r["error"]["kind"].as_str().unwrap().to_string(),
                    r["error"]["message"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();

    assert_eq!(failed.len(), BROKEN.len());
    for (file, kind) in BROKEN {
        let (got_kind, message) = &failed[file];
        assert_eq!(got_kind, kind);
        assert!(message.contains(file), "{message}");
        assert!(
            !message.contains("claimed"),
            "names the state folder: {message}"
        );
    }
    for record in records.values().filter(|r| r["status"] == "failed") {
        // The LMS name says whose file it is, so the instructor can tell the student.
        let file = record["submission"]["files"][0].as_str().unwrap();
        let lms_id = file.split('_').nth(1).unwrap();
        assert_eq!(
            record["submission"]["student"]["lms_id"], lms_id,
            "{record}"
        );
        assert!(record.get("grade").is_none(), "{record}");
        assert_eq!(record["performance_diagnostics"]["calls"], json!({}));
    }
}

#[test]
fn a_grade_is_the_sum_of_its_criteria_within_the_maximum() {
    let run = sample_run();
    let records = run.class.records();
    let rubric_ids = [
        "data_loading",
        "analysis",
        "visualisation",
        "interpretation",
    ];
    let mut totals = BTreeSet::new();
    for record in graded(&records) {
        let grade = &record["grade"];
        let criteria = grade["criteria"].as_array().unwrap();
        let ids: Vec<&str> = criteria.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, rubric_ids);
        let mut sum = 0.0;
        for criterion in criteria {
            let score = criterion["score"].as_f64().unwrap();
            assert!((0.0..=criterion["max"].as_f64().unwrap()).contains(&score));
            sum += score;
        }
        assert_eq!(grade["score"].as_f64().unwrap(), sum, "{grade}");
        assert_eq!(grade["max_score"].as_f64().unwrap(), 10.0);
        assert!(sum <= 10.0);
        totals.insert(sum as u64);
        assert!(record["feedback"]["summary"].is_string(), "{record}");
    }
    // The fake's scores vary by submission, so a total taken from elsewhere would show.
    assert!(
        totals.len() > 1,
        "every submission scored the same: {totals:?}"
    );
}

#[test]
fn every_graded_record_has_both_calls_with_every_call_field() {
    let run = sample_run();
    let records = run.class.records();
    for record in graded(&records) {
        let calls = &record["performance_diagnostics"]["calls"];
        for (role, server, url) in [
            ("code_analysis", "code-server", &run.code_url),
            ("feedback", "feedback-server", &run.feedback_url),
        ] {
            let call = &calls[role];
            for field in CALL_FIELDS {
                assert!(
                    call.get(field).is_some_and(|v| !v.is_null()),
                    "{role} call lacks `{field}`: {call}"
                );
            }
            assert_eq!(call["role"], role);
            assert_eq!(call["server"], server);
            assert_eq!(call["server_url"].as_str().unwrap(), url.as_str());
            assert_eq!(call["model"], "fake-model");
            assert_eq!(call["token_source"], "server");
            assert_eq!(call["prompt_eval_source"], "server");
            assert_eq!(call["finish_reason"], "stop");
            assert_eq!(call["attempts"], 1);
            let output = call["output_tokens"].as_u64().unwrap();
            let total = call["total_tokens"].as_u64().unwrap();
            assert_eq!(total, call["prompt_tokens"].as_u64().unwrap() + output);
            let generation = call["generation_time_seconds"].as_f64().unwrap();
            let ttft = call["time_to_first_token_seconds"].as_f64().unwrap();
            assert!(0.0 < ttft && ttft <= generation, "{call}");
            let rate = call["tokens_per_second"].as_f64().unwrap();
            assert!(
                (rate - output as f64 / generation).abs() / rate < 0.01,
                "{call}"
            );
        }
    }
}

#[test]
fn token_counts_in_records_are_the_servers_own() {
    let run = sample_run();
    let records = run.class.records();
    for (role, stats, extra) in [
        ("code_analysis", &run.code, CODE_EXTRA_TOKENS),
        ("feedback", &run.feedback, FEEDBACK_EXTRA_TOKENS),
    ] {
        let mut from_server: Vec<(u64, u64)> = stats
            .requests_log
            .iter()
            .map(|r| (r.prompt_tokens, r.completion_tokens + extra))
            .collect();
        let mut in_records: Vec<(u64, u64)> = graded(&records)
            .iter()
            .map(|r| &r["performance_diagnostics"]["calls"][role])
            .map(|c| {
                (
                    c["prompt_tokens"].as_u64().unwrap(),
                    c["output_tokens"].as_u64().unwrap(),
                )
            })
            .collect();
        from_server.sort_unstable();
        in_records.sort_unstable();
        assert_eq!(in_records, from_server, "{role}");
    }
}

#[test]
fn every_request_asks_for_usage_within_its_roles_max_tokens() {
    let run = sample_run();
    for (stats, max_tokens) in [
        (&run.code, CODE_MAX_TOKENS),
        (&run.feedback, FEEDBACK_MAX_TOKENS),
    ] {
        assert_eq!(stats.requests, 12, "one request per gradable submission");
        for body in stats.bodies() {
            assert_eq!(body["max_tokens"], max_tokens);
            assert_eq!(body["stream"], true);
            assert_eq!(body["stream_options"]["include_usage"], true);
            assert_eq!(body["model"], "fake-model");
            assert!(body["response_format"]["json_schema"]["schema"].is_object());
        }
    }
}

#[test]
fn combined_metrics_follow_from_the_two_calls() {
    let run = sample_run();
    let records = run.class.records();
    for record in graded(&records) {
        let diagnostics = &record["performance_diagnostics"];
        let combined = &diagnostics["combined_metrics"];
        for field in COMBINED_FIELDS {
            assert!(combined[field].is_number(), "lacks `{field}`: {combined}");
        }
        let calls: Vec<&Value> = diagnostics["calls"].as_object().unwrap().values().collect();
        let sum = |field: &str| -> f64 { calls.iter().map(|c| c[field].as_f64().unwrap()).sum() };
        let longest = calls
            .iter()
            .map(|c| c["generation_time_seconds"].as_f64().unwrap())
            .fold(0.0, f64::max);
        let wall = combined["wall_time_seconds"].as_f64().unwrap();

        assert_eq!(
            combined["total_output_tokens"].as_f64().unwrap(),
            sum("output_tokens")
        );
        assert_eq!(
            combined["total_tokens_processed"].as_f64().unwrap(),
            sum("total_tokens")
        );
        assert!(
            wall + 1e-3 >= longest,
            "wall {wall} < longest call {longest}"
        );
        let efficiency = sum("generation_time_seconds") / wall;
        let got = combined["parallel_efficiency"].as_f64().unwrap();
        assert!(
            (got - efficiency).abs() < 0.01 * efficiency + 2e-3,
            "{combined}"
        );
        let throughput = sum("output_tokens") / wall;
        let got = combined["combined_throughput_tokens_per_second"]
            .as_f64()
            .unwrap();
        assert!(
            (got - throughput).abs() < 0.01 * throughput + 1e-3,
            "{combined}"
        );
    }
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut reader =
        csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|row| {
            let row = row.unwrap();
            header
                .iter()
                .cloned()
                .zip(row.iter().map(String::from))
                .collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn the_batch_reports_are_csv_files_with_a_header() {
    let run = sample_run();
    let reports = run.class.root().join("reports").join(run.class.batch());

    let (header, rows) = read_csv(&reports.join("summary.csv"));
    assert!(header.contains(&"scope".to_string()), "{header:?}");
    let servers: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["scope"] == "server")
        .map(|r| r["name"].as_str())
        .collect();
    assert_eq!(servers, BTreeSet::from(["code-server", "feedback-server"]));
    let batch_rows: Vec<_> = rows.iter().filter(|r| r["scope"] == "batch").collect();
    assert_eq!(batch_rows.len(), 1);
    assert_eq!(batch_rows[0]["requests"], "24");

    let (header, rows) = read_csv(&reports.join("submissions.csv"));
    assert!(header.contains(&"id".to_string()), "{header:?}");
    let ids: BTreeSet<String> = rows.iter().map(|r| r["id"].clone()).collect();
    let record_ids: BTreeSet<String> = run.class.records().into_keys().collect();
    assert_eq!(ids, record_ids);
    let failed = rows.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!(failed, 2);
}

#[test]
fn originals_are_archived_unchanged_and_the_inbox_is_emptied() {
    let run = sample_run();
    let root = run.class.root();

    assert_eq!(names_in(&root.join("inbox")), BTreeSet::new());
    // Each record says where its original is kept; together they are the whole class, byte for
    // byte, under the names the instructor dropped.
    let mut kept_names = BTreeSet::new();
    for record in run.class.records().values() {
        let original = record["submission"]["original"].as_str().unwrap();
        let kept_path = root.join("state").join(original);
        let name = kept_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let dropped = fs::read(examples().join("class").join(&name)).unwrap();
        let kept = fs::read(&kept_path).unwrap_or_else(|e| panic!("{original}: {e}"));
        assert!(dropped == kept, "{name} changed in the archive");
        kept_names.insert(name);
    }
    assert_eq!(
        kept_names,
        sample_files().into_iter().collect::<BTreeSet<_>>()
    );
}

/// Replaces every figure that depends on timing, the port or the clock, and those that follow
/// the prompts' wording (tested on their own above).
fn redact(value: &mut Value) {
    const VARYING: [&str; 22] = [
        "batch",
        // Keyed by the state folder's own random key, so it differs from run to run.
        "student_pseudonym",
        "grading_key",
        "prompt_tokens",
        "total_tokens",
        "total_tokens_processed",
        "original",
        "timestamp",
        "server_url",
        "sent_at",
        "first_token_at",
        "finished_at",
        "generation_time_seconds",
        "tokens_per_second",
        "prompt_eval_time_seconds",
        "time_to_first_token_seconds",
        "decode_tokens_per_second",
        "queue_wait_seconds",
        "category",
        "wall_time_seconds",
        "parallel_efficiency",
        "combined_throughput_tokens_per_second",
    ];
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if VARYING.contains(&key.as_str()) {
                    *item = json!("[varies]");
                } else {
                    redact(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[test]
fn a_graded_record_reads_as_designed() {
    let run = sample_run();
    let mut record = run.class.records()["okaforamara_104211_5532101_sales_analysis.ipynb"].clone();
    redact(&mut record);
    insta::assert_json_snapshot!("graded_record", record);
}

#[test]
fn a_failed_record_reads_as_designed() {
    let run = sample_run();
    let records = run.class.records();
    let mut record = records
        .values()
        .find(|r| r["error"]["kind"] == "malformed_notebook")
        .unwrap()
        .clone();
    redact(&mut record);
    insta::assert_json_snapshot!("failed_record", record);
}

/// A code-analysis reply in the right shape with `analysis` scored 7 of 3.
fn out_of_range_reply() -> Reply {
    let evidence = |score: u32| json!({"score": score, "evidence": "seen"});
    Reply::fixed(
        json!({
            "criteria": {
                "data_loading": evidence(2),
                "analysis": evidence(7),
                "visualisation": evidence(1),
                "interpretation": evidence(3),
            },
            "summary": "Strong work.",
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_never_validates_is_retried_once_then_fails_without_a_grade() {
    let code = fast_server().reply(out_of_range_reply()).start().await;
    let feedback = fast_server().start().await;
    let class = Class::new(&gradable_files(2), &code, &feedback);
    let output = class.run().await;

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let records = class.records();
    assert_eq!(records.len(), 2);
    for record in records.values() {
        assert_eq!(record["status"], "failed", "{record}");
        assert_eq!(record["error"]["kind"], "invalid_grade", "{record}");
        let message = record["error"]["message"].as_str().unwrap();
        assert!(message.contains("analysis"), "{message}");
        assert!(message.contains('7'), "{message}");
        assert!(
            record.get("grade").is_none(),
            "a grade from an invalid reply: {record}"
        );
        let call = &record["performance_diagnostics"]["calls"]["code_analysis"];
        assert_eq!(call["attempts"], 2, "{call}");
    }

    // Each submission's second request shows the model its reply and what was wrong with it.
    let bodies = code.stats().bodies();
    assert_eq!(bodies.len(), 4);
    let corrections: Vec<&Value> = bodies
        .iter()
        .filter(|b| b["messages"].as_array().unwrap().len() > 2)
        .collect();
    assert_eq!(corrections.len(), 2);
    for body in corrections {
        let last = body["messages"].as_array().unwrap().last().unwrap();
        assert!(
            last["content"].as_str().unwrap().contains("analysis"),
            "{last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_retried_and_the_whole_class_is_graded() {
    let code = fast_server()
        .fault(Fault::server_error(), When::Nth(1))
        .start()
        .await;
    let feedback = fast_server().start().await;
    let class = Class::new(&gradable_files(3), &code, &feedback);
    let output = class.run().await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let records = class.records();
    assert_eq!(records.len(), 3);
    assert!(records.values().all(|r| r["status"] == "graded"));
    let attempts: Vec<u64> = records
        .values()
        .map(|r| {
            r["performance_diagnostics"]["calls"]["code_analysis"]["attempts"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        attempts.iter().filter(|a| **a == 2).count(),
        1,
        "{attempts:?}"
    );
    assert_eq!(
        attempts.iter().filter(|a| **a == 1).count(),
        2,
        "{attempts:?}"
    );
    let retried = records
        .values()
        .map(|r| &r["performance_diagnostics"]["calls"]["code_analysis"])
        .find(|c| c["attempts"] == 2)
        .unwrap();
    assert_eq!(retried["retries"][0]["kind"], "http_status", "{retried}");
    assert_eq!(code.stats().requests, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_inbox_exits_0_with_nothing_written() {
    let code = fast_server().start().await;
    let feedback = fast_server().start().await;
    let class = Class::new(&[], &code, &feedback);
    let output = class.run().await;

    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(code.stats().requests, 0);
    let outbox = class.root().join("outbox");
    assert!(!outbox.exists() || names_in(&outbox).is_empty());
}
