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

/// Asks a server whether it is ready: `GET /health` (llama.cpp, mlx-lm, vLLM), falling back to
/// `GET /v1/models` where there is no health endpoint. A server still loading its model answers
/// 503, which is an error here.
pub async fn probe_health(client: &ChatClient) -> Result<(), CallError> {
    match client.get("/health").await {
        Ok(()) => Ok(()),
        Err(CallError::Http { status: 404, .. }) => client.get("/v1/models").await,
        Err(other) => Err(other),
    }
}

/// A role that no configured backend can serve right now.
#[derive(Debug, thiserror::Error)]
#[error("no backend for the `{role}` role is reachable: {failures}")]
pub struct Unreachable {
    pub role: Role,
    /// Each backend's URL and what went wrong with it.
    pub failures: String,
}

/// Checks every backend before a batch. A server still loading its model (HTTP 503) is waited
/// for; one that cannot be reached fails the check unless `wait` allows time for it to start.
/// Returns the names of the backends found ready.
pub async fn check_backends(
    config: &crate::config::Config,
    wait: std::time::Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<String>, Unreachable> {
    use std::time::{Duration, Instant};

    let loading_patience = wait.max(Duration::from_secs(300));
    let started = Instant::now();
    let mut ready = Vec::new();
    let mut failures: Vec<(Vec<Role>, String)> = Vec::new();
    for backend in &config.backends {
        let client = match ChatClient::new(
            backend,
            config.grading.connect_timeout,
            Duration::from_secs(10),
        ) {
            Ok(client) => client,
            Err(e) => {
                failures.push((backend.roles.clone(), format!("{} ({})", backend.url, e)));
                continue;
            }
        };
        let mut announced = false;
        loop {
            match probe_health(&client).await {
                Ok(()) => {
                    ready.push(backend.name.clone());
                    break;
                }
                Err(CallError::Http { status: 503, .. })
                    if started.elapsed() < loading_patience =>
                {
                    if !announced {
                        say(&format!(
                            "waiting for {} ({}): the server is still loading its model",
                            backend.name, backend.url
                        ));
                        announced = true;
                    }
                }
                Err(CallError::Connect { .. }) if started.elapsed() < wait => {
                    if !announced {
                        say(&format!(
                            "waiting for {} ({}) to start",
                            backend.name, backend.url
                        ));
                        announced = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %backend.name, error = %e, "backend not reachable");
                    failures.push((backend.roles.clone(), e.to_string()));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for role in Role::ALL {
        let serves = |name: &String| {
            config
                .backends
                .iter()
                .any(|b| &b.name == name && b.roles.contains(&role))
        };
        if !ready.iter().any(serves) {
            let failures: Vec<&str> = failures
                .iter()
                .filter(|(roles, _)| roles.contains(&role))
                .map(|(_, e)| e.as_str())
                .collect();
            return Err(Unreachable {
                role,
                failures: failures.join("; "),
            });
        }
    }
    Ok(ready)
}
