//! The CSV reports: their columns, one flat row struct per file, and the bytes they become.
//!
//! Each function here returns a whole file's bytes; [`super::write_batch_reports`] puts them in
//! place. Files follow RFC 4180 in UTF-8 with a snake_case header row; numbers are plain (no
//! units), seconds and rates rounded to three decimals, times in ISO 8601, and a cell is empty
//! where a figure does not apply.
//!
//! The Canvas gradebook (`gradebook-canvas.csv`) follows Canvas's import layout instead: the
//! identity columns `Student`, `ID`, `SIS User ID`, `SIS Login ID`, `Section`, then one column
//! named after the assignment, a `Points Possible` row under the header, and a row per graded
//! submission whose LMS name gave a Canvas user id.
//!
//! Every text cell that could come from outside (a file name, a student's name, a model's words,
//! a server's error message) goes through [`text_cell`]: one starting with `=`, `+`, `-`, `@`, a
//! tab or a carriage return gets a leading `'`, so that a spreadsheet shows it instead of
//! evaluating it as a formula (the OWASP advice on CSV injection). Number cells are never
//! touched, so a negative figure stays a number.
//!
//! In `summary.csv` a server row's `requests` are the requests it was sent and its `failures`
//! the attempts that failed on it and were tried again. The `batch` row's `requests` are all
//! requests sent for the calls that answered, retries included, and its `failures` are those
//! retried attempts plus the failed submissions, so that a batch with failures never reads 0.

use std::path::Path;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use csv::{ReaderBuilder, StringRecord, Writer, WriterBuilder};
use serde::Serialize;

use super::ReportError;
use crate::backend::Role;
use crate::diagnostics::batch::{BatchSummary, Percentiles};
use crate::record::{CallRecord, Category, ResultRecord, Status};
use crate::submission::{Lms, parse_lms_name};

/// The identity columns of a Canvas gradebook, in the order Canvas's import expects them.
pub const CANVAS_IDENTITY_COLUMNS: [&str; 5] =
    ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"];

/// A text cell as written to a CSV: text a spreadsheet would read as a formula (starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return) gets a leading `'`; anything else is as given.
/// Only for text: a number cell must stay a number.
pub fn text_cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    }
}

/// [`text_cell`] for an optional cell.
fn text_opt(text: Option<&String>) -> Option<String> {
    text.map(|t| text_cell(t))
}

/// One row of `summary.csv`: a server, or the whole batch.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    pub scope: &'static str,
    pub name: String,
    pub url: String,
    pub model: String,
    pub roles: String,
    pub requests: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub busy_seconds: Option<f64>,
    pub utilisation: Option<f64>,
    pub output_tokens_per_second: Option<f64>,
    pub ttft_p50_seconds: Option<f64>,
    pub ttft_p95_seconds: Option<f64>,
    pub decode_tokens_per_second_p50: Option<f64>,
    pub wall_seconds: Option<f64>,
    pub combined_throughput_tokens_per_second: Option<f64>,
    pub parallel_efficiency: Option<f64>,
    pub category: Option<&'static str>,
}

/// One row of `submissions.csv`: a submission and the figures of its calls.
#[derive(Debug, Clone, Serialize)]
pub struct SubmissionRow {
    pub id: String,
    pub student: Option<String>,
    pub lms_id: Option<String>,
    pub status: &'static str,
    pub score: Option<f64>,
    pub max_score: Option<f64>,
    pub flags: String,
    pub code_analysis_server: Option<String>,
    pub code_analysis_prompt_tokens: Option<u64>,
    pub code_analysis_output_tokens: Option<u64>,
    pub code_analysis_generation_time_seconds: Option<f64>,
    pub code_analysis_tokens_per_second: Option<f64>,
    pub code_analysis_ttft_seconds: Option<f64>,
    pub feedback_server: Option<String>,
    pub feedback_prompt_tokens: Option<u64>,
    pub feedback_output_tokens: Option<u64>,
    pub feedback_generation_time_seconds: Option<f64>,
    pub feedback_tokens_per_second: Option<f64>,
    pub feedback_ttft_seconds: Option<f64>,
    pub wall_time_seconds: Option<f64>,
    pub parallel_efficiency: Option<f64>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// The records this one points at: `duplicate_of BATCH/ID.json`, `superseded_by ...`,
    /// `identical_to ...`, separated by `;`.
    pub refers_to: String,
}

/// The fixed columns of `grades.csv`; one score column per criterion follows `max_score`, and
/// `feedback_summary` comes last.
#[derive(Debug, Clone, Serialize)]
pub struct GradeRow {
    pub id: String,
    pub student: Option<String>,
    pub lms_id: Option<String>,
    pub late: bool,
    pub status: &'static str,
    pub score: Option<f64>,
    pub max_score: Option<f64>,
}

/// One row of `reports/batches.csv`: a batch's headline figures, for comparing nights.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub batch: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub submissions: u64,
    pub graded: u64,
    pub failed: u64,
    pub duplicates: u64,
    pub wall_seconds: f64,
    pub output_tokens: u64,
    pub combined_throughput_tokens_per_second: f64,
    pub parallel_efficiency: f64,
    pub servers: u64,
    pub category: Option<&'static str>,
}

/// The rows of `summary.csv`: one per server, then the batch.
pub fn summary_rows(batch_id: &str, summary: &BatchSummary) -> Vec<SummaryRow> {
    let mut rows: Vec<SummaryRow> = summary
        .servers
        .iter()
        .map(|server| SummaryRow {
            scope: "server",
            name: text_cell(&server.name),
            url: text_cell(&server.url),
            model: text_cell(&server.model),
            roles: text_cell(&join(server.roles.iter().map(|r| r.as_str()))),
            requests: server.requests,
            failures: server.failures,
            prompt_tokens: server.prompt_tokens,
            output_tokens: server.output_tokens,
            busy_seconds: Some(round3(server.busy_seconds)),
            utilisation: Some(round3(server.utilisation)),
            output_tokens_per_second: Some(round3(server.output_tokens_per_second)),
            ttft_p50_seconds: p50(server.ttft_seconds),
            ttft_p95_seconds: p95(server.ttft_seconds),
            decode_tokens_per_second_p50: server.decode_tokens_per_second_p50.map(round3),
            wall_seconds: None,
            combined_throughput_tokens_per_second: None,
            parallel_efficiency: None,
            category: server.category.map(Category::as_str),
        })
        .collect();

    let retried: u64 = summary.retried_attempts_by_kind.values().sum();
    rows.push(SummaryRow {
        scope: "batch",
        name: text_cell(batch_id),
        url: String::new(),
        model: String::new(),
        roles: String::new(),
        requests: summary.attempts,
        failures: retried + summary.failed,
        prompt_tokens: summary.prompt_tokens,
        output_tokens: summary.output_tokens,
        busy_seconds: Some(round3(summary.busy_seconds)),
        utilisation: None,
        output_tokens_per_second: None,
        ttft_p50_seconds: p50(summary.ttft_seconds),
        ttft_p95_seconds: p95(summary.ttft_seconds),
        decode_tokens_per_second_p50: summary.decode_tokens_per_second_p50.map(round3),
        wall_seconds: Some(round3(summary.wall_seconds)),
        combined_throughput_tokens_per_second: Some(round3(
            summary.combined_throughput_tokens_per_second,
        )),
        parallel_efficiency: Some(round3(summary.parallel_efficiency)),
        category: summary.category.map(Category::as_str),
    });
    rows
}

/// A submission's row of `submissions.csv`.
pub fn submission_row(record: &ResultRecord) -> SubmissionRow {
    let calls = &record.performance_diagnostics.calls;
    let code = calls.get(&Role::CodeAnalysis);
    let feedback = calls.get(&Role::Feedback);
    let combined = record.performance_diagnostics.combined_metrics.as_ref();
    let student = &record.submission.student;

    SubmissionRow {
        id: text_cell(&record.submission.id),
        student: text_opt(student.name.as_ref()),
        lms_id: text_opt(student.lms_id.as_ref()),
        status: status_name(record.status),
        score: record.grade.as_ref().map(|g| round3(g.score)),
        max_score: record.grade.as_ref().map(|g| round3(g.max_score)),
        flags: text_cell(&join(record.flags.iter().map(String::as_str))),
        code_analysis_server: code.map(|c| text_cell(&c.server)),
        code_analysis_prompt_tokens: code.map(|c| c.prompt_tokens),
        code_analysis_output_tokens: code.map(|c| c.output_tokens),
        code_analysis_generation_time_seconds: code.map(|c| round3(c.generation_time_seconds)),
        code_analysis_tokens_per_second: code.map(|c| round3(c.tokens_per_second)),
        code_analysis_ttft_seconds: code.map(ttft),
        feedback_server: feedback.map(|c| text_cell(&c.server)),
        feedback_prompt_tokens: feedback.map(|c| c.prompt_tokens),
        feedback_output_tokens: feedback.map(|c| c.output_tokens),
        feedback_generation_time_seconds: feedback.map(|c| round3(c.generation_time_seconds)),
        feedback_tokens_per_second: feedback.map(|c| round3(c.tokens_per_second)),
        feedback_ttft_seconds: feedback.map(ttft),
        wall_time_seconds: combined.map(|m| round3(m.wall_time_seconds)),
        parallel_efficiency: combined.map(|m| round3(m.parallel_efficiency)),
        error_kind: record.error.as_ref().map(|e| text_cell(&e.kind)),
        error_message: record.error.as_ref().map(|e| text_cell(&e.message)),
        refers_to: text_cell(&refers_to(&record.links)),
    }
}

fn refers_to(links: &crate::record::Links) -> String {
    let duplicate = links
        .duplicate_of
        .iter()
        .map(|r| format!("duplicate_of {}", r.path));
    let superseded = links
        .superseded_by
        .iter()
        .map(|r| format!("superseded_by {}", r.path));
    let identical = links
        .identical_to
        .iter()
        .map(|r| format!("identical_to {}", r.path));
    let all: Vec<String> = duplicate.chain(superseded).chain(identical).collect();
    all.join(";")
}

/// The batch's row of `reports/batches.csv`.
pub fn batch_row(batch_id: &str, summary: &BatchSummary) -> BatchRow {
    BatchRow {
        batch: text_cell(batch_id),
        started_at: summary.started_at.map(|t| text_cell(&iso8601(t))),
        finished_at: summary.finished_at.map(|t| text_cell(&iso8601(t))),
        submissions: summary.submissions,
        graded: summary.graded,
        failed: summary.failed,
        duplicates: summary.duplicates,
        wall_seconds: round3(summary.wall_seconds),
        output_tokens: summary.output_tokens,
        combined_throughput_tokens_per_second: round3(
            summary.combined_throughput_tokens_per_second,
        ),
        parallel_efficiency: round3(summary.parallel_efficiency),
        servers: summary.servers.len() as u64,
        category: summary.category.map(Category::as_str),
    }
}

/// The bytes of `summary.csv`; `path` names the file in errors.
pub fn summary_csv(
    path: &Path,
    batch_id: &str,
    summary: &BatchSummary,
) -> Result<Vec<u8>, ReportError> {
    serialize_all(path, summary_rows(batch_id, summary))
}

/// The bytes of `submissions.csv`, a row per record in the given order.
pub fn submissions_csv(path: &Path, records: &[&ResultRecord]) -> Result<Vec<u8>, ReportError> {
    serialize_all(path, records.iter().map(|r| submission_row(r)))
}

/// The bytes of `grades.csv`, a row per record in the given order.
///
/// The criterion columns are the criteria of every graded record, in the order they first
/// appear (the rubric's order when all records share one); a record without a score for a
/// criterion leaves its cell empty.
pub fn grades_csv(path: &Path, records: &[&ResultRecord]) -> Result<Vec<u8>, ReportError> {
    let mut criteria: Vec<&str> = Vec::new();
    for grade in records.iter().filter_map(|r| r.grade.as_ref()) {
        for criterion in &grade.criteria {
            if !criteria.contains(&criterion.id.as_str()) {
                criteria.push(&criterion.id);
            }
        }
    }

    let encode = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    // Each row is the fixed columns, as the struct serialises them, then the dynamic ones.
    let mut header = fixed_record(path, &grade_row(None))?.0;
    header.extend(criteria.iter().map(|id| text_cell(id)));
    header.push_field("feedback_summary");

    let mut writer = Writer::from_writer(Vec::new());
    writer.write_record(&header).map_err(encode)?;
    for record in records {
        let mut row = fixed_record(path, &grade_row(Some(record)))?.1;
        for id in &criteria {
            let score = record
                .grade
                .as_ref()
                .and_then(|g| g.criteria.iter().find(|c| c.id == *id))
                .map(|c| number(c.score));
            row.push_field(score.as_deref().unwrap_or(""));
        }
        let summary = record.feedback.as_ref().map(|f| text_cell(&f.summary));
        row.push_field(summary.as_deref().unwrap_or(""));
        writer.write_record(&row).map_err(encode)?;
    }
    finish(path, writer)
}

/// The bytes of `reports/batches.csv` with this batch's row, given the file as it is now.
///
/// Existing rows are kept in their order; a row for the same batch id is replaced where it
/// stands, otherwise the new row goes last. A missing file starts with the header.
pub fn batches_csv(
    path: &Path,
    batch_id: &str,
    summary: &BatchSummary,
) -> Result<Vec<u8>, ReportError> {
    let encode = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let (header, new_row) = fixed_record(path, &batch_row(batch_id, summary))?;

    let mut rows: Vec<StringRecord> = Vec::new();
    match ReaderBuilder::new().has_headers(true).from_path(path) {
        Ok(mut reader) => {
            let read = |source| ReportError::ReadBatches {
                path: path.to_path_buf(),
                source,
            };
            let found = reader.headers().map_err(read)?.clone();
            if found != header {
                return Err(ReportError::BatchesHeader {
                    path: path.to_path_buf(),
                    found: found.iter().collect::<Vec<_>>().join(","),
                });
            }
            for row in reader.records() {
                rows.push(row.map_err(read)?);
            }
        }
        Err(error) if is_not_found(&error) => {}
        Err(source) => {
            return Err(ReportError::ReadBatches {
                path: path.to_path_buf(),
                source,
            });
        }
    }

    // The file holds the id as a cell, escaped as the new row's is.
    let batch_id = text_cell(batch_id);
    let batch_id = batch_id.as_str();
    match rows.iter_mut().find(|row| row.get(0) == Some(batch_id)) {
        Some(existing) => *existing = new_row,
        None => rows.push(new_row),
    }
    // A batch id that appeared more than once (written by hand, say) keeps only its first row.
    let mut seen_this_batch = false;
    rows.retain(|row| {
        let this_batch = row.get(0) == Some(batch_id);
        let keep = !(this_batch && seen_this_batch);
        seen_this_batch |= this_batch;
        keep
    });

    let mut writer = Writer::from_writer(Vec::new());
    writer.write_record(&header).map_err(encode)?;
    for row in &rows {
        writer.write_record(row).map_err(encode)?;
    }
    finish(path, writer)
}

/// The Canvas user id of a record's student, when its LMS name gave one.
///
/// Moodle's participant ids are not Canvas ids, so a record whose files or id carry Moodle's
/// naming has none here.
pub fn canvas_user_id(record: &ResultRecord) -> Option<&str> {
    let id = record.submission.student.lms_id.as_deref()?;
    let names = record
        .submission
        .files
        .iter()
        .map(String::as_str)
        .chain([record.submission.id.as_str()]);
    let moodle = names.into_iter().any(|name| {
        let base = name.rsplit('/').next().unwrap_or(name);
        base.contains("assignsubmission")
            || parse_lms_name(base).is_some_and(|n| n.lms == Lms::Moodle)
    });
    (!moodle).then_some(id)
}

/// Whether any record names a Canvas student, so that a gradebook is worth writing.
pub fn has_canvas_students(records: &[&ResultRecord]) -> bool {
    records.iter().any(|r| canvas_user_id(r).is_some())
}

/// The bytes of the Canvas gradebook-import file for graded records with a Canvas user id.
///
/// The assignment column is named after `assignment` (the rubric's title; Canvas makes a new
/// assignment of a column it does not know). Failed and duplicate submissions are left out, so
/// that an import never blanks or overwrites a grade with nothing; `grades.csv` lists them.
/// The `Points Possible` row holds the rubric's maximum.
pub fn canvas_gradebook_csv(
    path: &Path,
    assignment: &str,
    records: &[&ResultRecord],
) -> Result<Vec<u8>, ReportError> {
    let encode = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let column = if assignment.trim().is_empty() {
        "tandem grade".to_string()
    } else {
        text_cell(assignment.trim())
    };
    let graded: Vec<(&ResultRecord, &str, f64, f64)> = records
        .iter()
        .filter(|r| r.status == Status::Graded)
        .filter_map(|r| {
            let grade = r.grade.as_ref()?;
            Some((*r, canvas_user_id(r)?, grade.score, grade.max_score))
        })
        .collect();
    let points = graded.iter().map(|g| g.3).fold(0.0, f64::max);

    let mut writer = Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = CANVAS_IDENTITY_COLUMNS.to_vec();
    header.push(&column);
    writer.write_record(&header).map_err(encode)?;
    let points = if graded.is_empty() {
        String::new()
    } else {
        number(points)
    };
    writer
        .write_record(["Points Possible", "", "", "", "", points.as_str()])
        .map_err(encode)?;
    for (record, id, score, _) in graded {
        let name = text_opt(record.submission.student.name.as_ref()).unwrap_or_default();
        writer
            .write_record([name.as_str(), &text_cell(id), "", "", "", &number(score)])
            .map_err(encode)?;
    }
    finish(path, writer)
}

fn grade_row(record: Option<&ResultRecord>) -> GradeRow {
    let Some(record) = record else {
        return GradeRow {
            id: String::new(),
            student: None,
            lms_id: None,
            late: false,
            status: "",
            score: None,
            max_score: None,
        };
    };
    let student = &record.submission.student;
    GradeRow {
        id: text_cell(&record.submission.id),
        student: text_opt(student.name.as_ref()),
        lms_id: text_opt(student.lms_id.as_ref()),
        late: student.late,
        status: status_name(record.status),
        score: record.grade.as_ref().map(|g| round3(g.score)),
        max_score: record.grade.as_ref().map(|g| round3(g.max_score)),
    }
}

/// A row struct as CSV fields, with the header its field names make.
fn fixed_record<T: Serialize>(
    path: &Path,
    row: &T,
) -> Result<(StringRecord, StringRecord), ReportError> {
    let bytes = serialize_all(path, [row])?;
    let mut reader = ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes.as_slice());
    let read = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let header = reader.headers().map_err(read)?.clone();
    let mut record = StringRecord::new();
    reader.read_record(&mut record).map_err(read)?;
    Ok((header, record))
}

fn serialize_all<T: Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = T>,
) -> Result<Vec<u8>, ReportError> {
    let mut writer = WriterBuilder::new()
        .has_headers(true)
        .from_writer(Vec::new());
    for row in rows {
        writer
            .serialize(row)
            .map_err(|source| ReportError::Encode {
                path: path.to_path_buf(),
                source,
            })?;
    }
    finish(path, writer)
}

fn finish(path: &Path, writer: Writer<Vec<u8>>) -> Result<Vec<u8>, ReportError> {
    writer.into_inner().map_err(|error| ReportError::Write {
        path: path.to_path_buf(),
        source: error.into_error(),
    })
}

fn is_not_found(error: &csv::Error) -> bool {
    matches!(error.kind(), csv::ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Graded => "graded",
        Status::Failed => "failed",
        Status::Duplicate => "duplicate",
        Status::Superseded => "superseded",
    }
}

fn ttft(call: &CallRecord) -> f64 {
    round3(call.time_to_first_token_seconds)
}

fn p50(percentiles: Option<Percentiles>) -> Option<f64> {
    percentiles.map(|p| round3(p.p50))
}

fn p95(percentiles: Option<Percentiles>) -> Option<f64> {
    percentiles.map(|p| round3(p.p95))
}

fn join<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join(";")
}

fn iso8601(time: DateTime<FixedOffset>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A figure rounded to three decimals, spelled as the csv crate spells the struct fields' floats.
pub(crate) fn number(x: f64) -> String {
    format!("{:?}", round3(x))
}

/// Rounds a figure to three decimals, the precision every report shows.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
