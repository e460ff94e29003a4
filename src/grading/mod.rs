//! Grading: what each role is asked, and what its reply must be before it counts.
//!
//! The code-analysis role scores every rubric criterion with evidence; the feedback role writes
//! what the student reads. This module prepares a submission for its prompts (pseudonymised by
//! [`pseudonym`], invisible characters removed), builds both requests ([`prompt`]), checks both
//! replies ([`validate`]), scans the submission for attempts to steer the grader
//! ([`injection`]) and joins a submission's answers into its result record. It sends nothing:
//! calls are the scheduler's.
//!
//! In chain mode (`[feedback] sees_code_analysis = true`) a submission's feedback call waits for
//! its code analysis and is shown its scores; [`GradingPlan::first_roles`] and
//! [`GradingPlan::follow_up`] tell the scheduler so.

pub mod injection;
pub mod prompt;
pub mod pseudonym;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::backend::client::CallOutcome;
use crate::backend::{ChatRequest, Role};
use crate::config::Config;
use crate::record::{
    CallRecord, CodeAnalysis, FailedCall, Feedback, Grade, GradingUsed, PerformanceDiagnostics,
    RecordError, ResultRecord, Status, SubmissionInfo,
};
use crate::rubric::Rubric;
use crate::submission::Submission;
pub use prompt::Fence;
pub use pseudonym::Pseudonymiser;
pub use validate::{Extraction, ReplyError};

/// The flag on a record whose submission seems to try to steer the grader.
pub const INJECTION_FLAG: &str = "possible_prompt_injection";
/// The flag on a record whose two models' scores differ by more than the configured share.
pub const DISAGREEMENT_FLAG: &str = "scores_disagree";
/// The flag on a record whose reply copied a placeholder of the reply format (`<a strength>`)
/// instead of writing it, as small models do.
pub const TEMPLATE_FLAG: &str = "reply_copies_template";
/// The failure kind of a feedback call not made because the code analysis it needed failed.
pub const SKIPPED: &str = "skipped";

/// What every submission of a batch is graded with.
#[derive(Debug, Clone)]
pub struct GradingPlan {
    /// The configuration the batch runs under.
    pub config: Arc<Config>,
    /// Hash of everything that shapes a grade: rubric, prompts, models and settings.
    pub grading_key: String,
    /// Replaces students' names and ids in the text models see.
    pub pseudonyms: Pseudonymiser,
}

/// A submission's text as every prompt carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Pseudonymised, with characters that hide text from a reader removed.
    pub text: String,
    /// The opaque id that stands for the student in the text.
    pub pseudonym: String,
    /// Places where the student was named and was replaced.
    pub identities_replaced: usize,
}

/// What the scheduler does once one of a submission's calls has ended (chain mode).
#[derive(Debug)]
pub enum FollowUp {
    /// Make this call next.
    Call { role: Role, request: ChatRequest },
    /// Do not make the role's call; count this result for it instead.
    Skip(Box<RoleResult>),
}

impl GradingPlan {
    /// The plan for a configuration. The pseudonym key is read from the state folder, or made
    /// there when the folder exists and holds none.
    pub fn new(config: Arc<Config>) -> Self {
        let pseudonyms = Pseudonymiser::for_state_folder(&config.paths.state);
        Self::with_pseudonyms(config, pseudonyms)
    }

    /// The plan for a configuration with a given pseudonymiser.
    pub fn with_pseudonyms(config: Arc<Config>, pseudonyms: Pseudonymiser) -> Self {
        let grading_key = grading_key(&config);
        GradingPlan {
            config,
            grading_key,
            pseudonyms,
        }
    }

    /// The rubric every submission is graded against.
    pub fn rubric(&self) -> &Rubric {
        &self.config.rubric
    }

    /// Whether the feedback call is shown the code analysis (chain mode).
    pub fn chained(&self) -> bool {
        self.config.grading.feedback_sees_code_analysis
    }

    /// The roles whose calls start as soon as a submission is admitted: both, or in chain mode
    /// only the code analysis.
    pub fn first_roles(&self) -> &'static [Role] {
        if self.chained() {
            &[Role::CodeAnalysis]
        } else {
            &Role::ALL
        }
    }

    /// A submission's text as its prompts carry it.
    pub fn prepare(&self, submission: &Submission) -> Prepared {
        let named = self.pseudonyms.apply(submission);
        let (text, _) = injection::strip_smuggling(&named.text);
        Prepared {
            text,
            pseudonym: named.pseudonym,
            identities_replaced: named.replaced,
        }
    }

    fn fence(&self, submission: &Submission) -> Fence {
        Fence::for_submission(&submission.sha256, &self.grading_key)
    }

    /// The first request of a role's call on a submission.
    pub fn request(&self, role: Role, submission: &Submission) -> ChatRequest {
        prompt::request(
            role,
            self.rubric(),
            &self.prepare(submission).text,
            &self.fence(submission),
            &self.config.grading,
        )
    }

    /// What follows a finished call: in chain mode, a code analysis that validated is followed
    /// by the feedback call with its findings, and one that failed by no feedback call at all.
    /// `None` when nothing follows.
    pub fn follow_up(&self, submission: &Submission, result: &RoleResult) -> Option<FollowUp> {
        if !self.chained() || result.role != Role::CodeAnalysis {
            return None;
        }
        Some(match &result.output {
            Ok(RoleOutput::CodeAnalysis {
                grade, analysis, ..
            }) => FollowUp::Call {
                role: Role::Feedback,
                request: prompt::feedback_with_findings(
                    self.rubric(),
                    &self.prepare(submission).text,
                    &self.fence(submission),
                    &self.config.grading,
                    grade,
                    analysis,
                ),
            },
            _ => FollowUp::Skip(Box::new(RoleResult {
                role: Role::Feedback,
                call: None,
                failed_call: None,
                output: Err(RoleFailure {
                    role: Role::Feedback,
                    kind: SKIPPED.into(),
                    message: "not asked, since the code analysis it builds on failed".into(),
                }),
            })),
        })
    }

    /// The settings a submission's calls were made with, for its record.
    fn used(&self, calls: &BTreeMap<Role, CallRecord>, prepared: &Prepared) -> GradingUsed {
        let g = &self.config.grading;
        let seeds = calls
            .iter()
            .map(|(role, call)| {
                let sends = self
                    .config
                    .backends
                    .iter()
                    .find(|b| b.name == call.server)
                    .is_none_or(|b| b.send_seed);
                (*role, g.seed.filter(|_| sends))
            })
            .collect();
        GradingUsed {
            temperature: g.temperature,
            seeds,
            prompt_version: prompt::PROMPT_VERSION.to_string(),
            feedback_sees_code_analysis: g.feedback_sees_code_analysis,
            student_pseudonym: Some(prepared.pseudonym.clone()),
            identities_replaced: prepared.identities_replaced,
        }
    }
}

/// The hash that decides whether a submission graded before must be graded again: it changes
/// with the rubric, the prompts, any role's models, and every setting that changes a request or
/// a record's verdict.
pub fn grading_key(config: &Config) -> String {
    let mut h = Sha256::new();
    h.update(prompt::fingerprint(&config.rubric).as_bytes());
    h.update(config.rubric.text.as_bytes());
    for role in Role::ALL {
        let mut models: Vec<String> = config
            .backends_for(role)
            .map(|b| {
                format!(
                    "{} seed={} schema={}",
                    b.model, b.send_seed, b.structured_output
                )
            })
            .collect();
        models.sort_unstable();
        models.dedup();
        h.update(format!("{role}={}\n", models.join(",")).as_bytes());
    }
    let g = &config.grading;
    h.update(
        format!(
            "temperature={} seed={:?} max_tokens={},{} max_chars={} disagreement={} chain={}",
            g.temperature,
            g.seed,
            g.code_analysis_max_tokens,
            g.feedback_max_tokens,
            g.max_submission_chars,
            g.disagreement_share,
            g.feedback_sees_code_analysis,
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
    // The answer alone is graded; reasoning, leaked into the content or sent apart by the
    // server, is dropped here (its tokens are in the call's usage all the same).
    let (answer, leaked) = validate::strip_reasoning(&outcome.content);
    if outcome.finish_reason.as_deref() == Some("length") {
        let reasoned = !leaked.trim().is_empty() || !outcome.reasoning.trim().is_empty();
        let note = if answer.is_empty() && reasoned {
            "; the model spent it on reasoning"
        } else {
            ""
        };
        return Err(ReplyError::Truncated { max_tokens, note });
    }
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

/// Joins a submission's role results into its record: the grade from the code analysis, the
/// feedback, the failures if any, and the flags for human review (`possible_prompt_injection`
/// with what the scan found, `scores_disagree`, `reply_wrapped_in_prose`,
/// `reply_copies_template`). Flags are set on failed records too.
pub fn assemble(
    plan: &GradingPlan,
    batch: &str,
    submission: &Submission,
    info: SubmissionInfo,
    mut flags: Vec<String>,
    results: Vec<RoleResult>,
) -> ResultRecord {
    let injection = injection::scan(&submission.text);
    if !injection.is_empty() {
        flags.push(INJECTION_FLAG.into());
    }
    let prepared = plan.prepare(submission);
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
    let copied = |text: &str| {
        let text = text.trim();
        text.len() > 2 && text.starts_with('<') && text.ends_with('>') && !text.contains('\n')
    };
    let template_feedback = feedback.as_ref().is_some_and(|f: &Feedback| {
        copied(&f.summary) || f.strengths.iter().chain(&f.improvements).any(|s| copied(s))
    });
    let template_evidence = grade
        .as_ref()
        .is_some_and(|g| g.criteria.iter().any(|c| copied(&c.evidence)));
    if template_feedback || template_evidence {
        flags.push(TEMPLATE_FLAG.into());
    }
    if let (Some(g), Some(o)) = (&grade, overall)
        && (g.score - o).abs() > plan.config.grading.disagreement_share * g.max_score
    {
        flags.push(DISAGREEMENT_FLAG.into());
    }
    // A call skipped because another failed says nothing the other's failure does not.
    if failures.iter().any(|f| f.kind != SKIPPED) {
        failures.retain(|f| f.kind != SKIPPED);
    }
    flags.sort();
    flags.dedup();

    let used = plan.used(&calls, &prepared);
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
        injection,
        grading_key: plan.grading_key.clone(),
        grading: Some(used),
        links: Default::default(),
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
        injection: Vec::new(),
        grading_key: plan.grading_key.clone(),
        grading: None,
        links: Default::default(),
        performance_diagnostics: PerformanceDiagnostics {
            timestamp: crate::diagnostics::now(),
            calls: BTreeMap::new(),
            failed_calls: BTreeMap::new(),
            combined_metrics: None,
        },
    }
}
