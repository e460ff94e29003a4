//! Grading: what each role is asked, and what its reply must be before it counts.
//!
//! The code-analysis role scores every rubric criterion with evidence; the feedback role writes
//! what the student reads. This module builds both requests ([`prompt`]), checks both replies
//! ([`validate`]) and joins a submission's answers into its result record. It sends nothing:
//! calls are the scheduler's.

pub mod prompt;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::backend::client::CallOutcome;
use crate::backend::{ChatRequest, Role};
use crate::config::Config;
use crate::record::{
    CallRecord, CodeAnalysis, FailedCall, Feedback, Grade, PerformanceDiagnostics, RecordError,
    ResultRecord, Status, SubmissionInfo,
};
use crate::rubric::Rubric;
use crate::submission::Submission;
pub use prompt::Fence;
pub use validate::{Extraction, ReplyError};

/// What every submission of a batch is graded with.
#[derive(Debug, Clone)]
pub struct GradingPlan {
    pub config: Arc<Config>,
    /// Hash of everything that shapes a grade: rubric, prompts, models and settings.
    pub grading_key: String,
}

impl GradingPlan {
    /// The plan for a configuration.
    pub fn new(config: Arc<Config>) -> Self {
        let grading_key = grading_key(&config);
        GradingPlan {
            config,
            grading_key,
        }
    }

    pub fn rubric(&self) -> &Rubric {
        &self.config.rubric
    }

    /// The first request of a role's call on a submission.
    pub fn request(&self, role: Role, submission: &Submission) -> ChatRequest {
        let fence = Fence::for_submission(&submission.sha256, &self.grading_key);
        prompt::request(
            role,
            self.rubric(),
            &submission.text,
            &fence,
            &self.config.grading,
        )
    }
}

/// The hash that decides whether a submission graded before must be graded again.
pub fn grading_key(config: &Config) -> String {
    let mut h = Sha256::new();
    h.update(prompt::fingerprint(&config.rubric).as_bytes());
    h.update(config.rubric.text.as_bytes());
    for role in Role::ALL {
        let mut models: Vec<&str> = config
            .backends_for(role)
            .map(|b| b.model.as_str())
            .collect();
        models.sort_unstable();
        models.dedup();
        h.update(format!("{role}={}\n", models.join(",")).as_bytes());
    }
    let g = &config.grading;
    h.update(
        format!(
            "temperature={} seed={:?} max_tokens={},{} max_chars={}",
            g.temperature,
            g.seed,
            g.code_analysis_max_tokens,
            g.feedback_max_tokens,
            g.max_submission_chars
        )
        .as_bytes(),
    );
    hex::encode(&h.finalize()[..16])
}

/// A role's reply, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleOutput {
    CodeAnalysis {
        grade: Grade,
        analysis: CodeAnalysis,
        extraction: Extraction,
    },
    Feedback {
        feedback: Feedback,
        /// The feedback model's own overall score, compared with the computed grade.
        overall_score: Option<f64>,
        extraction: Extraction,
    },
}

/// Checks a role's reply: cut-off answers, reasoning leaked into the answer, JSON and rubric.
pub fn interpret(
    role: Role,
    rubric: &Rubric,
    outcome: &CallOutcome,
    max_tokens: u32,
) -> Result<RoleOutput, ReplyError> {
    if outcome.finish_reason.as_deref() == Some("length") {
        return Err(ReplyError::Truncated { max_tokens });
    }
    let (answer, _reasoning) = validate::strip_reasoning(&outcome.content);
    let (value, extraction) = validate::extract_json(&answer)?;
    match role {
        Role::CodeAnalysis => {
            let (grade, analysis) = validate::code_analysis(&value, rubric)?;
            Ok(RoleOutput::CodeAnalysis {
                grade,
                analysis,
                extraction,
            })
        }
        Role::Feedback => {
            let (feedback, overall_score) = validate::feedback(&value, rubric)?;
            Ok(RoleOutput::Feedback {
                feedback,
                overall_score,
                extraction,
            })
        }
    }
}

/// A role's call that ended without a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleFailure {
    pub role: Role,
    /// `connect`, `http_status`, `invalid_grade`, ...
    pub kind: String,
    pub message: String,
}

/// The result of one role for one submission: its call's figures and what it yielded.
#[derive(Debug, Clone)]
pub struct RoleResult {
    pub role: Role,
    /// The figures of the attempt that answered (present even when its reply was invalid).
    pub call: Option<CallRecord>,
    /// The requests of a call that never answered, when any were sent.
    pub failed_call: Option<FailedCall>,
    pub output: Result<RoleOutput, RoleFailure>,
}

/// Share of the maximum by which the two models' totals may differ before it is flagged.
const DISAGREEMENT_SHARE: f64 = 0.3;

/// Joins a submission's role results into its record.
pub fn assemble(
    plan: &GradingPlan,
    batch: &str,
    info: SubmissionInfo,
    mut flags: Vec<String>,
    results: Vec<RoleResult>,
) -> ResultRecord {
    let thresholds = &plan.config.thresholds;
    let mut calls = BTreeMap::new();
    let mut failed_calls = BTreeMap::new();
    let mut grade = None;
    let mut analysis = None;
    let mut feedback = None;
    let mut overall = None;
    let mut failures = Vec::new();
    for result in results {
        if let Some(call) = result.call {
            calls.insert(result.role, call);
        }
        if let Some(failed) = result.failed_call {
            failed_calls.insert(result.role, failed);
        }
        match result.output {
            Ok(RoleOutput::CodeAnalysis {
                grade: g,
                analysis: a,
                extraction,
            }) => {
                grade = Some(g);
                analysis = Some(a);
                if extraction == Extraction::FromProse {
                    flags.push("reply_wrapped_in_prose".into());
                }
            }
            Ok(RoleOutput::Feedback {
                feedback: f,
                overall_score,
                extraction,
            }) => {
                feedback = Some(f);
                overall = overall_score;
                if extraction == Extraction::FromProse {
                    flags.push("reply_wrapped_in_prose".into());
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    if let (Some(g), Some(o)) = (&grade, overall)
        && (g.score - o).abs() > DISAGREEMENT_SHARE * g.max_score
    {
        flags.push("scores_disagree".into());
    }
    flags.sort();
    flags.dedup();

    let combined = crate::diagnostics::combined_metrics(calls.values(), thresholds.combined);
    let diagnostics = PerformanceDiagnostics {
        timestamp: crate::diagnostics::now(),
        calls,
        failed_calls,
        combined_metrics: combined,
    };

    let error = failures.first().map(|f| RecordError {
        kind: f.kind.clone(),
        message: if failures.len() > 1 {
            let all: Vec<String> = failures
                .iter()
                .map(|f| format!("{}: {}", f.role, f.message))
                .collect();
            all.join("; ")
        } else {
            format!("{}: {}", f.role, f.message)
        },
    });
    let status = if error.is_some() {
        Status::Failed
    } else {
        Status::Graded
    };
    ResultRecord {
        status,
        batch: batch.to_string(),
        submission: info,
        error,
        grade: if status == Status::Graded {
            grade
        } else {
            None
        },
        feedback: if status == Status::Graded {
            feedback
        } else {
            None
        },
        code_analysis: if status == Status::Graded {
            analysis
        } else {
            None
        },
        flags,
        grading_key: plan.grading_key.clone(),
        performance_diagnostics: diagnostics,
    }
}

/// The record of a submission that failed before any call: it could not be read.
pub fn failed_before_grading(
    plan: &GradingPlan,
    batch: &str,
    info: SubmissionInfo,
    kind: &str,
    message: String,
) -> ResultRecord {
    ResultRecord {
        status: Status::Failed,
        batch: batch.to_string(),
        submission: info,
        error: Some(RecordError {
            kind: kind.to_string(),
            message,
        }),
        grade: None,
        feedback: None,
        code_analysis: None,
        flags: Vec::new(),
        grading_key: plan.grading_key.clone(),
        performance_diagnostics: PerformanceDiagnostics {
            timestamp: crate::diagnostics::now(),
            calls: BTreeMap::new(),
            failed_calls: BTreeMap::new(),
            combined_metrics: None,
        },
    }
}
