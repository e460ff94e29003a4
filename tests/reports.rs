//! Batch figures and the reports written from them, on a small batch built by hand.
//!
//! The batch has two servers, each serving one role. Times are seconds after 21:00:00+01:00:
//!
//! ```text
//! mac-studio-2 (code_analysis)  s1 [0, 10]   s2 [5, 15]   s3 [16, 20]   busy 19 of 20
//! mac-studio-1 (feedback)       s1 [0, 12]   s2 [12, 20] (after a timeout)  busy 20 of 20
//! ```
//!
//! s3 failed after its code-analysis call answered (an invalid grade) and s4 is a duplicate with
//! no calls. The servers' calls add up to 44 seconds but they were busy for 39, so the batch's
//! parallel efficiency is 1.95, not 2.2.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use chrono::{DateTime, Duration, FixedOffset};
use tandem::backend::Role;
use tandem::config::Thresholds;
use tandem::diagnostics::batch::{BatchSummary, summarise};
use tandem::diagnostics::combined_metrics;
use tandem::record::{
    CallRecord, Category, CriterionScore, Feedback, Grade, PerformanceDiagnostics,
    PromptEvalSource, RecordError, ResultRecord, RetryNote, Status, Student, SubmissionInfo,
    TokenSource,
};
use tandem::report::{ReportError, ReportSettings, render_terminal_summary, write_batch_reports};

const BATCH: &str = "2026-12-04T2100";

fn at(ms: i64) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-12-04T21:00:00+01:00").unwrap() + Duration::milliseconds(ms)
}

/// A call on `server` sent at `sent`, first token at `first`, done at `end` (milliseconds).
fn call(
    role: Role,
    server: &str,
    (sent, first, end): (i64, i64, i64),
    tokens: (u64, u64),
) -> CallRecord {
    let (prompt_tokens, output_tokens) = tokens;
    let generation = (end - sent) as f64 / 1000.0;
    let ttft = (first - sent) as f64 / 1000.0;
    let (url, model) = match server {
        "mac-studio-1" => ("http://10.55.0.1:5001", "gpt-oss-120b"),
        _ => ("http://10.55.0.2:5002", "Qwen3-Coder-30B"),
    };
    CallRecord {
        role,
        model: model.to_string(),
        server: server.to_string(),
        server_url: url.to_string(),
        prompt_tokens,
        output_tokens,
        total_tokens: prompt_tokens + output_tokens,
        generation_time_seconds: generation,
        tokens_per_second: output_tokens as f64 / generation,
        prompt_eval_time_seconds: ttft,
        prompt_eval_source: PromptEvalSource::Ttft,
        time_to_first_token_seconds: ttft,
        decode_tokens_per_second: Some(
            (output_tokens - 1) as f64 / ((end - first) as f64 / 1000.0),
        ),
        queue_wait_seconds: 0.0,
        token_source: TokenSource::Server,
        finish_reason: Some("stop".to_string()),
        attempts: 1,
        category: Category::Good,
        cached_prompt_tokens: None,
        sent_at: at(sent),
        first_token_at: at(first),
        finished_at: at(end),
        retries: Vec::new(),
    }
}

fn record(
    id: &str,
    name: &str,
    lms_id: &str,
    status: Status,
    calls: Vec<CallRecord>,
) -> ResultRecord {
    let thresholds = Thresholds::default();
    let calls: BTreeMap<Role, CallRecord> = calls.into_iter().map(|c| (c.role, c)).collect();
    let combined = combined_metrics(calls.values(), thresholds.combined);
    ResultRecord {
        status,
        batch: BATCH.to_string(),
        submission: SubmissionInfo {
            id: id.to_string(),
            files: vec![format!("{id}.ipynb")],
            format: "notebook".to_string(),
            sha256: "0".repeat(64),
            bytes: 2048,
            student: Student {
                name: Some(name.to_string()),
                lms_id: Some(lms_id.to_string()),
                late: false,
            },
            original: None,
        },
        error: None,
        grade: None,
        feedback: None,
        code_analysis: None,
        flags: Vec::new(),
        injection: Vec::new(),
        grading_key: "key".to_string(),
        grading: None,
        links: Default::default(),
        performance_diagnostics: PerformanceDiagnostics {
            timestamp: at(30_000),
            calls,
            failed_calls: Default::default(),
            combined_metrics: combined,
        },
    }
}

fn grade(scores: [f64; 2]) -> Grade {
    let criterion = |id: &str, name: &str, score: f64, max: f64| CriterionScore {
        id: id.to_string(),
        name: name.to_string(),
        score,
        max,
        evidence: "cell 3".to_string(),
    };
    Grade {
        score: scores.iter().sum(),
        max_score: 10.0,
        criteria: vec![
            criterion("loading", "Loads the data", scores[0], 4.0),
            criterion("analysis", "Analyses it", scores[1], 6.0),
        ],
    }
}

fn feedback(summary: &str) -> Feedback {
    Feedback {
        summary: summary.to_string(),
        strengths: Vec::new(),
        improvements: Vec::new(),
    }
}

fn settings() -> ReportSettings {
    ReportSettings {
        assignment: "Sales analysis".to_string(),
        ..ReportSettings::default()
    }
}

fn batch() -> Vec<ResultRecord> {
    let mut s1 = record(
        "s1",
        "Alice Adams",
        "1001",
        Status::Graded,
        vec![
            call(
                Role::CodeAnalysis,
                "mac-studio-2",
                (0, 1_500, 10_000),
                (1200, 200),
            ),
            call(
                Role::Feedback,
                "mac-studio-1",
                (0, 2_000, 12_000),
                (900, 300),
            ),
        ],
    );
    s1.grade = Some(grade([4.0, 5.5]));
    s1.feedback = Some(feedback("Clear work; label the axes."));

    let mut retried = call(
        Role::Feedback,
        "mac-studio-1",
        (12_000, 13_000, 20_000),
        (950, 240),
    );
    retried.attempts = 2;
    retried.retries.push(RetryNote {
        server: "mac-studio-1".to_string(),
        kind: "timeout".to_string(),
        message: "mac-studio-1: no data for 120 s".to_string(),
    });
    let mut s2 = record(
        "s2",
        "Bob Brown",
        "1002",
        Status::Graded,
        vec![
            call(
                Role::CodeAnalysis,
                "mac-studio-2",
                (5_000, 6_000, 15_000),
                (1100, 250),
            ),
            retried,
        ],
    );
    s2.submission.student.late = true;
    s2.flags = vec!["possible_prompt_injection".to_string(), "late".to_string()];
    s2.grade = Some(grade([3.0, 2.0]));
    s2.feedback = Some(feedback(
        "The model is fitted, but \"why\" is never said,\nso explain it.",
    ));

    let mut s3 = record(
        "s3",
        "Smith, Carol",
        "1003",
        Status::Failed,
        vec![call(
            Role::CodeAnalysis,
            "mac-studio-2",
            (16_000, 16_500, 20_000),
            (1000, 100),
        )],
    );
    s3.error = Some(RecordError {
        kind: "invalid_grade".to_string(),
        message: "criterion \"analysis\" scored 9 of 6".to_string(),
    });

    let s4 = record("s4", "Dan Duke", "1004", Status::Duplicate, Vec::new());

    // Out of order on purpose: reports must not depend on the order records are read in.
    vec![s3, s1, s4, s2]
}

fn summary() -> BatchSummary {
    summarise(&batch(), &Thresholds::default())
}

fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn busy_time_counts_overlapping_calls_on_one_server_once() {
    let summary = summary();
    let coder = summary
        .servers
        .iter()
        .find(|s| s.name == "mac-studio-2")
        .unwrap();

    // [0, 10] and [5, 15] overlap: 15 seconds, not 20; then [16, 20] adds 4.
    assert_close(coder.busy_seconds, 19.0);
    assert_close(coder.utilisation, 0.95);
    assert_eq!(coder.calls, 3);
    assert_eq!(coder.roles, vec![Role::CodeAnalysis]);

    let writer = summary
        .servers
        .iter()
        .find(|s| s.name == "mac-studio-1")
        .unwrap();
    assert_close(writer.busy_seconds, 20.0);
    assert_close(writer.utilisation, 1.0);
}

#[test]
fn parallel_efficiency_is_busy_time_over_wall_and_at_most_the_server_count() {
    let summary = summary();
    let call_seconds: f64 = batch()
        .iter()
        .flat_map(|r| r.performance_diagnostics.calls.values())
        .map(|c| c.generation_time_seconds)
        .sum();

    assert_close(summary.wall_seconds, 20.0);
    assert_close(summary.parallel_efficiency, 39.0 / 20.0);
    assert!(summary.parallel_efficiency <= summary.servers.len() as f64);
    // Summing call times would claim more servers than there are.
    assert!(call_seconds / summary.wall_seconds > summary.servers.len() as f64);
}

#[test]
fn throughput_is_output_tokens_over_wall_time() {
    let summary = summary();

    assert_eq!(summary.output_tokens, 200 + 300 + 250 + 240 + 100);
    assert_close(summary.combined_throughput_tokens_per_second, 1090.0 / 20.0);
    assert_eq!(summary.category, Some(Category::Good));

    let coder = &summary.servers[1];
    assert_eq!(coder.name, "mac-studio-2");
    assert_close(coder.output_tokens_per_second, 550.0 / 19.0);
    assert_close(coder.output_tokens_per_wall_second, 550.0 / 20.0);
    assert_eq!(coder.category, Some(Category::Good));
}

#[test]
fn latency_percentiles_use_nearest_rank() {
    let summary = summary();
    let coder = summary
        .servers
        .iter()
        .find(|s| s.name == "mac-studio-2")
        .unwrap();
    let ttft = coder.ttft_seconds.unwrap();

    // Time to first token on mac-studio-2: 1.5, 1.0 and 0.5 seconds.
    assert_close(ttft.p50, 1.0);
    assert_close(ttft.p95, 1.5);
    assert_close(ttft.p99, 1.5);
    let generation = coder.generation_time_seconds.unwrap();
    assert_close(generation.p50, 10.0);
    assert_close(generation.p99, 10.0);
    assert_close(summary.ttft_seconds.unwrap().p50, 1.0);
}

#[test]
fn counts_submissions_requests_and_failures_by_kind() {
    let summary = summary();

    assert_eq!((summary.submissions, summary.graded), (4, 2));
    assert_eq!((summary.failed, summary.duplicates), (1, 1));
    assert_eq!(summary.calls, 5);
    assert_eq!(summary.attempts, 6);
    assert_eq!(
        summary.failed_submissions_by_kind.get("invalid_grade"),
        Some(&1)
    );
    assert_eq!(summary.retried_attempts_by_kind.get("timeout"), Some(&1));

    let writer = summary
        .servers
        .iter()
        .find(|s| s.name == "mac-studio-1")
        .unwrap();
    assert_eq!((writer.requests, writer.failures), (3, 1));
}

#[test]
fn a_server_that_only_failed_is_listed_without_a_category() {
    let mut records = batch();
    let s2 = records
        .iter_mut()
        .find(|r| r.submission.id == "s2")
        .unwrap();
    let feedback = s2
        .performance_diagnostics
        .calls
        .get_mut(&Role::Feedback)
        .unwrap();
    feedback.retries[0].server = "gpu-box".to_string();

    let summary = summarise(&records, &Thresholds::default());
    let gpu = summary
        .servers
        .iter()
        .find(|s| s.name == "gpu-box")
        .unwrap();

    assert_eq!((gpu.requests, gpu.failures, gpu.calls), (1, 1, 0));
    assert_eq!(gpu.roles, vec![Role::Feedback]);
    assert_eq!(gpu.busy_seconds, 0.0);
    assert_eq!(gpu.category, None);
}

#[test]
fn a_server_serving_both_roles_is_held_to_the_lenient_threshold() {
    let records = vec![record(
        "s1",
        "Alice Adams",
        "1001",
        Status::Graded,
        vec![
            // 28 tok/s over 10 busy seconds: excellent against the code-analysis bound (28),
            // only good against the feedback one (35).
            call(
                Role::CodeAnalysis,
                "mac-studio-2",
                (0, 500, 10_000),
                (100, 140),
            ),
            call(Role::Feedback, "mac-studio-2", (0, 500, 10_000), (100, 140)),
        ],
    )];
    let thresholds = Thresholds {
        code_analysis: tandem::config::Threshold {
            excellent: 28.0,
            good: 20.0,
        },
        ..Thresholds::default()
    };

    let summary = summarise(&records, &thresholds);

    assert_eq!(summary.servers.len(), 1);
    assert_close(summary.servers[0].output_tokens_per_second, 28.0);
    assert_eq!(summary.servers[0].category, Some(Category::Excellent));
    assert_close(summary.parallel_efficiency, 1.0);
}

#[test]
fn writes_the_batch_csv_reports() {
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    let dir = reports.join(BATCH);

    let files =
        write_batch_reports(&dir, &reports, BATCH, &batch(), &summary(), &settings()).unwrap();

    assert_eq!(files.summary, dir.join("summary.csv"));
    insta::assert_snapshot!("summary_csv", read(&files.summary));
    insta::assert_snapshot!("submissions_csv", read(&files.submissions));
    insta::assert_snapshot!("grades_csv", read(&files.grades));
    insta::assert_snapshot!("batches_csv", read(&files.batches));
    insta::assert_snapshot!(
        "gradebook_canvas_csv",
        read(files.gradebook.as_ref().unwrap())
    );
}

#[test]
fn gradebook_is_left_out_without_lms_ids_and_for_moodle_participants() {
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    let mut records = batch();
    write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary(),
        &settings(),
    )
    .unwrap();
    assert!(reports.join(BATCH).join("gradebook-canvas.csv").is_file());

    // A Moodle participant id is not a Canvas user id.
    for record in &mut records {
        record.submission.files = vec![format!(
            "Alice Adams_{}_assignsubmission_file_hw.ipynb",
            record.submission.student.lms_id.as_deref().unwrap()
        )];
    }
    let files = write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary(),
        &settings(),
    )
    .unwrap();
    assert_eq!(files.gradebook, None);
    assert!(!reports.join(BATCH).join("gradebook-canvas.csv").exists());

    for record in &mut records {
        record.submission.student.lms_id = None;
        record.submission.files = vec!["hw.ipynb".to_string()];
    }
    let files = write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary(),
        &settings(),
    )
    .unwrap();
    assert_eq!(files.gradebook, None);
}

#[test]
fn reports_parse_back_as_rectangular_csv() {
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    let files = write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &batch(),
        &summary(),
        &settings(),
    )
    .unwrap();

    for (path, rows) in [
        (&files.summary, 3),
        (&files.submissions, 4),
        (&files.grades, 4),
    ] {
        let mut reader = csv::Reader::from_path(path).unwrap();
        let width = reader.headers().unwrap().len();
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), rows, "{}", path.display());
        assert!(
            records.iter().all(|r| r.len() == width),
            "{}",
            path.display()
        );
    }

    let mut grades = csv::Reader::from_path(&files.grades).unwrap();
    let bob = grades
        .records()
        .map(Result::unwrap)
        .find(|r| &r[0] == "s2")
        .unwrap();
    assert_eq!(
        &bob[9],
        "The model is fitted, but \"why\" is never said,\nso explain it."
    );
}

#[test]
fn leaves_no_temporary_files_behind() {
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &batch(),
        &summary(),
        &settings(),
    )
    .unwrap();

    let mut names: Vec<String> = fs::read_dir(reports.join(BATCH))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "gradebook-canvas.csv",
            "grades.csv",
            "report.html",
            "submissions.csv",
            "summary.csv"
        ]
    );
}

#[test]
fn batches_csv_keeps_one_row_per_batch() {
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    let records = batch();
    let summary = summary();

    write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary,
        &settings(),
    )
    .unwrap();
    write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary,
        &settings(),
    )
    .unwrap();
    let once = read(&reports.join("batches.csv"));
    assert_eq!(once.lines().count(), 2, "{once}");

    let later = &records[..2];
    let later_summary = summarise(later, &Thresholds::default());
    write_batch_reports(
        &reports.join("next"),
        &reports,
        "next",
        later,
        &later_summary,
        &settings(),
    )
    .unwrap();
    // Rebuilding the first batch from fewer records replaces its row where it stands.
    write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        later,
        &later_summary,
        &settings(),
    )
    .unwrap();

    let text = read(&reports.join("batches.csv"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("batch,started_at,finished_at,"));
    assert!(lines[1].starts_with(&format!("{BATCH},")), "{text}");
    assert!(lines[2].starts_with("next,"), "{text}");
    assert_eq!(lines[1].split(',').nth(3), Some("2"), "{text}");
    assert_eq!(text.matches("batch,started_at").count(), 1);
}

#[test]
fn refuses_to_rewrite_a_batches_csv_with_other_columns() {
    let root = tempfile::tempdir().unwrap();
    let batches = root.path().join("batches.csv");
    fs::write(&batches, "night,grade\nmonday,A\n").unwrap();

    let error = write_batch_reports(
        &root.path().join(BATCH),
        root.path(),
        BATCH,
        &batch(),
        &summary(),
        &settings(),
    )
    .unwrap_err();

    assert!(matches!(error, ReportError::BatchesHeader { .. }));
    assert!(
        error.to_string().contains(&batches.display().to_string()),
        "{error}"
    );
    assert_eq!(read(&batches), "night,grade\nmonday,A\n");
}

#[test]
fn errors_name_the_file_at_fault() {
    let root = tempfile::tempdir().unwrap();
    let blocked = root.path().join("reports");
    fs::write(&blocked, "not a folder").unwrap();

    let error = write_batch_reports(
        &blocked.join(BATCH),
        &blocked,
        BATCH,
        &batch(),
        &summary(),
        &settings(),
    )
    .unwrap_err();

    assert!(matches!(error, ReportError::CreateDir { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&blocked.display().to_string()),
        "{error}"
    );
}

#[test]
fn terminal_summary_shows_each_server_and_the_batch() {
    insta::assert_snapshot!("terminal_summary", render_terminal_summary(&summary()));
}

#[test]
fn terminal_summary_of_an_empty_batch() {
    let summary = summarise(&[], &Thresholds::default());
    insta::assert_snapshot!("terminal_summary_empty", render_terminal_summary(&summary));
}

/// Every cell of a CSV file, header included, with the file's name.
fn cells(path: &Path) -> Vec<String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader
        .records()
        .map(Result::unwrap)
        .flat_map(|r| r.iter().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_text_cell_a_spreadsheet_would_evaluate_gets_a_leading_quote() {
    use tandem::report::csv::text_cell;

    for formula in ["=2+3", "+SUM(A1)", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
        assert_eq!(text_cell(formula), format!("'{formula}"));
    }
    for plain in ["", "Alice", "a=b", "'=already quoted", " =1", "3-2"] {
        assert_eq!(text_cell(plain), plain);
    }
}

#[test]
fn formulas_in_names_and_model_text_are_quoted_in_every_csv_and_numbers_are_not() {
    let batch_id = "=1+1 night";
    let mut records = batch();
    for record in &mut records {
        record.batch = batch_id.to_string();
        match record.submission.id.as_str() {
            "s1" => {
                record.submission.student.name = Some("=2+3 Evil".to_string());
                record.feedback = Some(feedback("+SUM(A1:A9) well done"));
                // A penalty makes a criterion, and the total, negative numbers.
                record.grade = Some(grade([-3.0, 1.0]));
            }
            "s2" => {
                record.submission.student.name = Some("\tTabbed".to_string());
                record.feedback = Some(feedback("\rCarriage"));
                record.flags.insert(0, "@flag".to_string());
            }
            "s3" => {
                record.submission.student.name = Some("@SUM(1+1)".to_string());
                let error = record.error.as_mut().unwrap();
                error.message = "-2+3 cmd|' /C calc'!A0".to_string();
            }
            _ => {}
        }
    }
    let mut summary = summarise(&records, &Thresholds::default());
    summary.servers[0].model = "@model".to_string();
    let settings = ReportSettings {
        assignment: "=Sales".to_string(),
        ..ReportSettings::default()
    };
    let root = tempfile::tempdir().unwrap();
    let reports = root.path().join("reports");
    let dir = reports.join("night");
    let write = || write_batch_reports(&dir, &reports, batch_id, &records, &summary, &settings);
    write().unwrap();
    // Written twice: the batch's quoted id is still found and its row replaced.
    let files = write().unwrap();

    let gradebook = files
        .gradebook
        .clone()
        .expect("the students have Canvas ids");
    let all = [
        &files.summary,
        &files.submissions,
        &files.grades,
        &gradebook,
        &files.batches,
    ];
    for path in all {
        for cell in cells(path) {
            let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
            assert!(
                !risky || cell.parse::<f64>().is_ok(),
                "{}: {cell:?} would be evaluated",
                path.display()
            );
        }
    }

    let has = |path: &Path, wanted: &str| cells(path).iter().any(|c| c == wanted);
    for (path, wanted) in [
        (&files.summary, "'=1+1 night"),
        (&files.summary, "'@model"),
        (&files.submissions, "'=2+3 Evil"),
        (&files.submissions, "'\tTabbed"),
        (&files.submissions, "'@SUM(1+1)"),
        (&files.submissions, "'-2+3 cmd|' /C calc'!A0"),
        (&files.submissions, "'@flag;possible_prompt_injection;late"),
        (&files.grades, "'=2+3 Evil"),
        (&files.grades, "'+SUM(A1:A9) well done"),
        (&files.grades, "'\rCarriage"),
        (&gradebook, "'=Sales"),
        (&gradebook, "'=2+3 Evil"),
        (&files.batches, "'=1+1 night"),
    ] {
        assert!(has(path, wanted), "{}: no cell {wanted:?}", path.display());
    }
    // Negative figures stay numbers a spreadsheet can add up.
    for path in [&files.submissions, &files.grades, &gradebook] {
        assert!(has(path, "-2.0"), "{}: the total -2.0", path.display());
    }
    assert!(has(&files.grades, "-3.0"));
    let mut batches = csv::Reader::from_path(&files.batches).unwrap();
    assert_eq!(batches.records().count(), 1, "one row for the batch");
}
