//! Backends: the model servers tandem sends calls to, and the client that talks to them.
//!
//! A backend is one server from the configuration with the roles it serves. This module owns the
//! wire protocol (the OpenAI-compatible chat API, streamed as server-sent events) and turns each
//! request into a [`client::CallOutcome`] carrying the timestamps every figure is computed from.
//! Which backend gets which call is the scheduler's business, not this module's.

pub mod client;
pub mod sse;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use client::{CallError, CallOutcome, ChatClient, ChatRequest, Message};

/// The job a model does for a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Judges the work against the rubric, criterion by criterion.
    CodeAnalysis,
    /// Writes what the student reads.
    Feedback,
}

impl Role {
    /// Every role, in the order calls are listed.
    pub const ALL: [Role; 2] = [Role::CodeAnalysis, Role::Feedback];

    /// The role's name in configs, records and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::CodeAnalysis => "code_analysis",
            Role::Feedback => "feedback",
        }
    }

    /// A short upper-case tag for the live display, in the original system's style.
    pub fn tag(self) -> &'static str {
        match self {
            Role::CodeAnalysis => "CODE",
            Role::Feedback => "FEEDBACK",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "code_analysis" => Ok(Role::CodeAnalysis),
            "feedback" => Ok(Role::Feedback),
            other => Err(format!(
                "unknown role `{other}` (expected `code_analysis` or `feedback`)"
            )),
        }
    }
}
