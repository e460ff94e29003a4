//! The result record: one JSON file per submission in `outbox/<batch>/`.
//!
//! This module owns the shape of what tandem writes for each submission, graded or failed, and
//! nothing else: figures are computed in [`crate::diagnostics`], grades in [`crate::grading`].
//! Field names follow the original system's diagnostics (`generation_time_seconds`,
//! `tokens_per_second`, ...) so that its users find them where they used to be.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::backend::Role;

/// Whether a submission ended with a grade or with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both roles answered and both answers validated.
    Graded,
    /// Something stopped the submission; `error` says what.
    Failed,
    /// The same bytes were already graded under the same grading configuration.
    Duplicate,
    /// A newer resubmission of the same file by the same student was graded instead.
    Superseded,
}

/// One submission's record, as written to the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRecord {
    pub status: Status,
    /// The batch this record belongs to (the name of its outbox folder).
    pub batch: String,
    pub submission: SubmissionInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_analysis: Option<CodeAnalysis>,
    /// Markers for human review, such as `possible_prompt_injection`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// What the prompt-injection scan found, when it found anything: the reason for a
    /// `possible_prompt_injection` flag, for the reviewer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub injection: Vec<InjectionMatch>,
    /// Hash of everything that shapes a grade: rubric, prompts, models and settings.
    pub grading_key: String,
    /// How the submission was graded: sampling settings, seeds sent, pseudonym used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grading: Option<GradingUsed>,
    /// Other records this one points at: the earlier result of a duplicate, the resubmission
    /// that superseded this one, other students' byte-identical work.
    #[serde(flatten, default)]
    pub links: Links,
    pub performance_diagnostics: PerformanceDiagnostics,
}

/// One attempt to steer the grader found in a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectionMatch {
    /// What kind of attempt: `ignore_instructions`, `score_demand`, `role_play`, `fake_marker`,
    /// `fake_result`, `addresses_grader`, `hidden_text` or `invisible_text`.
    pub pattern: String,
    /// Where it was: `text`, `comment`, `hidden_html`, `base64` or `invisible`.
    pub location: String,
    /// A short excerpt of the submission around it, on one line.
    pub excerpt: String,
}

/// The settings a submission's calls were made with, so a grade can be reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradingUsed {
    pub temperature: f64,
    /// The seed each role's call carried; `null` where the backend does not take one.
    pub seeds: BTreeMap<Role, Option<u64>>,
    /// The version of tandem's prompts.
    pub prompt_version: String,
    /// Whether the feedback call was shown the code analysis (chain mode).
    pub feedback_sees_code_analysis: bool,
    /// The opaque id that stood for the student in every prompt; `submission.student` says
    /// who it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_pseudonym: Option<String>,
    /// How many places in the submission's text named the student and were replaced.
    pub identities_replaced: usize,
}

/// Another record, by where it lives in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordRef {
    pub batch: String,
    pub id: String,
    /// The record's file relative to the outbox, `BATCH/ID.json`.
    pub path: String,
}

impl RecordRef {
    /// The reference to record `id` of `batch`.
    pub fn new(batch: &str, id: &str) -> RecordRef {
        RecordRef {
            batch: batch.to_string(),
            id: id.to_string(),
            path: format!("{batch}/{id}.json"),
        }
    }
}

/// The records a record points at; each key is left out of the JSON when it does not apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// For a `duplicate`: the record of the earlier grade of the same bytes by the same student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<RecordRef>,
    /// For a `superseded` record: the record of the resubmission graded instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<RecordRef>,
    /// Records of other students whose work is byte-identical to this one (flag
    /// `identical_submission`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identical_to: Vec<RecordRef>,
}

impl Links {
    /// Whether the record points at nothing.
    pub fn is_empty(&self) -> bool {
        self.duplicate_of.is_none() && self.superseded_by.is_none() && self.identical_to.is_empty()
    }
}

/// What was graded: the files, their format and hash, and who handed them in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubmissionInfo {
    /// Unique within the batch; also the record's file name without `.json`.
    pub id: String,
    /// The files of the submission, relative to the inbox entry that held them.
    pub files: Vec<String>,
    /// `notebook`, `python`, `r`, `rmarkdown`, `sql`, `markdown`, `text` or `mixed`.
    pub format: String,
    /// SHA-256 of the submission's bytes (of all its files, in order, for a folder).
    pub sha256: String,
    pub bytes: u64,
    pub student: Student,
    /// Where the original bytes are kept, relative to the state folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
}

/// Who submitted, as far as the file name or LMS layout reveals it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Student {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The LMS's id for the student (Canvas user id, Moodle participant id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lms_id: Option<String>,
    #[serde(default)]
    pub late: bool,
}

/// Why a submission failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    /// A stable, machine-readable kind such as `empty`, `not_utf8`, `http_status`, `invalid_grade`.
    pub kind: String,
    /// A sentence naming the file, server or criterion at fault and what is wrong.
    pub message: String,
}

/// The grade, as computed by tandem from the code-analysis model's per-criterion scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub score: f64,
    pub max_score: f64,
    pub criteria: Vec<CriterionScore>,
}

/// One rubric criterion's score and the evidence the model gave for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CriterionScore {
    pub id: String,
    pub name: String,
    pub score: f64,
    pub max: f64,
    pub evidence: String,
}

/// The student-facing text written by the feedback model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub summary: String,
    pub strengths: Vec<String>,
    pub improvements: Vec<String>,
}

/// The code-analysis model's findings beyond the scores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeAnalysis {
    pub summary: String,
}

/// Per-call and per-submission figures, under the original system's names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerformanceDiagnostics {
    /// When the record was made, in local time with its offset.
    pub timestamp: DateTime<FixedOffset>,
    /// The calls that finished, keyed by role (`code_analysis`, `feedback`).
    pub calls: BTreeMap<Role, CallRecord>,
    /// The calls that ended without an answer, keyed by role, with every attempt they made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_calls: BTreeMap<Role, FailedCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_metrics: Option<CombinedMetrics>,
}

/// Where a prompt-evaluation time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptEvalSource {
    /// The server's own prefill timing (llama.cpp `timings.prompt_ms`, Ollama, vLLM metrics).
    Server,
    /// The measured time to first token, which also holds any queueing on the server.
    Ttft,
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The server's `usage` object.
    Server,
    /// Counted by tandem from the text because the server reported none.
    Estimated,
}

/// A performance category against the configured thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Excellent,
    Good,
    NeedsOptimisation,
}

impl Category {
    /// The category's name as it appears in records and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Excellent => "excellent",
            Category::Good => "good",
            Category::NeedsOptimisation => "needs_optimisation",
        }
    }
}

/// One call to a model server: the seed's figures plus what tandem measures on top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub role: Role,
    pub model: String,
    /// The backend's configured name.
    pub server: String,
    pub server_url: String,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// t_end − t_send of the attempt that produced the answer.
    pub generation_time_seconds: f64,
    /// output_tokens / generation_time_seconds.
    pub tokens_per_second: f64,
    pub prompt_eval_time_seconds: f64,
    pub prompt_eval_source: PromptEvalSource,
    /// t_first − t_send: the first content or reasoning delta.
    pub time_to_first_token_seconds: f64,
    /// (output_tokens − 1) / (t_end − t_first); absent with fewer than two tokens.
    pub decode_tokens_per_second: Option<f64>,
    /// Time the call waited for a free slot on a backend before it was sent.
    pub queue_wait_seconds: f64,
    pub token_source: TokenSource,
    pub finish_reason: Option<String>,
    /// Requests sent for this call, counting retries.
    pub attempts: u32,
    pub category: Category,
    /// Prompt tokens the server took from its cache, where it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_prompt_tokens: Option<u64>,
    /// t_send, t_first and t_end as wall-clock times, so batches can be rebuilt from records.
    pub sent_at: DateTime<FixedOffset>,
    pub first_token_at: DateTime<FixedOffset>,
    pub finished_at: DateTime<FixedOffset>,
    /// What went wrong on the attempts before the one that answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryNote>,
}

/// A call that ended without an answer: what each of its requests met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCall {
    pub role: Role,
    /// The backend of its last request.
    pub server: String,
    /// Requests sent for this call, the last one included.
    pub attempts: u32,
    /// What went wrong on the requests that were tried again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryNote>,
    /// What ended it: the last request's failure, or why no backend could take it.
    pub last_error: RetryNote,
}

/// One failed attempt of a call that was tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryNote {
    pub server: String,
    pub kind: String,
    pub message: String,
}

/// A submission's figures over its calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedMetrics {
    pub total_tokens_processed: u64,
    pub total_output_tokens: u64,
    /// Last t_end − first t_send over the submission's calls.
    pub wall_time_seconds: f64,
    /// Σ generation time / wall time.
    pub parallel_efficiency: f64,
    /// Σ output tokens / wall time.
    pub combined_throughput_tokens_per_second: f64,
    pub category: Category,
}
