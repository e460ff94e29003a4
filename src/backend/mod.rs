//! Backends: the model servers tandem sends calls to, and the client that talks to them.
//!
//! A backend is one server from the configuration with the roles it serves. This module owns the
//! wire protocols ([`dialect`]: the OpenAI-compatible chat API streamed as server-sent events,
//! and Ollama's native NDJSON chat), turns each request into a [`client::CallOutcome`] carrying
//! the timestamps every figure is computed from, maps each server's error shapes to tandem's
//! kinds ([`error`]), and checks before a batch that every role has a server ready
//! ([`check_backends`]). Which backend gets which call is the scheduler's business, not this
//! module's.

pub mod client;
pub mod dialect;
pub mod error;
pub mod ollama;
pub mod openai;
pub mod sse;

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Api, BackendConfig};
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

/// How a server answered a health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// `GET /health` answered 200 (llama.cpp, mlx-lm, vLLM).
    Ready,
    /// The server has no `/health`, but its model list answered (LM Studio and others).
    Listed,
    /// Ollama's root answered "Ollama is running".
    Ollama,
}

/// Asks a server whether it is ready, the way its dialect allows.
///
/// An `openai` backend is asked `GET /health` (llama.cpp, mlx-lm, vLLM); where that route does
/// not exist, Ollama's root (`GET /`, "Ollama is running") and then `GET /v1/models`. An `ollama`
/// backend is asked `GET /`. A server still loading its model answers 503, which is an error
/// here ([`CallError::Busy`]).
pub async fn probe(client: &ChatClient) -> Result<Health, CallError> {
    if client.api() == Api::Ollama {
        return client.get("/").await.map(|_| Health::Ollama);
    }
    match client.get("/health").await {
        Ok(_) => Ok(Health::Ready),
        Err(CallError::Http { status: 404, .. }) => {
            if let Ok(text) = client.get("/").await
                && text.contains("Ollama is running")
            {
                return Ok(Health::Ollama);
            }
            client.get("/v1/models").await.map(|_| Health::Listed)
        }
        Err(other) => Err(other),
    }
}

/// [`probe`], for callers that only need to know whether the server is ready.
pub async fn probe_health(client: &ChatClient) -> Result<(), CallError> {
    probe(client).await.map(|_| ())
}

/// Checks that an Ollama server has the backend's model pulled (`GET /api/tags`). A list that
/// cannot be read is not an error: the first call will say what is wrong.
async fn check_ollama_model(client: &ChatClient) -> Result<(), CallError> {
    let Ok(text) = client.get("/api/tags").await else {
        return Ok(());
    };
    let Ok(list) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let wanted = client.model();
    let tagged = if wanted.contains(':') {
        wanted.to_string()
    } else {
        format!("{wanted}:latest")
    };
    let names: std::collections::BTreeSet<&str> = list["models"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| [m["name"].as_str(), m["model"].as_str()])
        .flatten()
        .collect();
    if names.iter().any(|n| *n == wanted || *n == tagged) {
        return Ok(());
    }
    Err(CallError::ModelNotFound {
        url: format!("{}/api/tags", client.base_url().trim_end_matches("/v1")),
        model: wanted.to_string(),
        detail: format!(
            "it is not among the models pulled on this server ({}); run `ollama pull {wanted}` \
             there",
            names.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// A role that no configured backend can serve right now.
#[derive(Debug, thiserror::Error)]
#[error("no backend for the `{role}` role is reachable: {failures}")]
pub struct Unreachable {
    pub role: Role,
    /// Each backend's URL and what went wrong with it.
    pub failures: String,
}

/// How long a server that answers "still loading" is waited for at least, whatever `wait` says:
/// a large model takes minutes to load, and the server is clearly on its way.
const LOADING_PATIENCE: Duration = Duration::from_secs(300);

/// How often a server that is starting or loading is asked again.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A backend whose `api_key_env` names an environment variable that is not set.
#[derive(Debug, thiserror::Error)]
#[error(
    "{config}: `backend[{index}].api_key_env`: the environment variable `{var}` is not set \
     (backend `{name}` needs its key)"
)]
pub struct MissingKey {
    pub config: std::path::PathBuf,
    pub index: usize,
    pub var: String,
    pub name: String,
}

/// Checks that every key a backend names is in the environment, before any request: a health
/// endpoint usually needs no key, so a missing one would otherwise surface only as a batch of
/// refused calls.
pub fn check_keys(config: &crate::config::Config) -> Result<(), MissingKey> {
    for (index, backend) in config.backends.iter().enumerate() {
        if let Some(var) = &backend.api_key_env {
            let set = std::env::var_os(var).is_some_and(|value| !value.is_empty());
            if !set {
                return Err(MissingKey {
                    config: config.source.clone(),
                    index,
                    var: var.clone(),
                    name: backend.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Checks every backend before a batch, all at once. A server still loading its model (HTTP 503)
/// is waited for, with a message; one that cannot be reached fails the check at once unless
/// `wait` allows time for it to start. An Ollama backend must also have its model pulled.
/// Returns the names of the backends found ready; fails when a role has none, naming each of
/// its backends' URLs and errors.
pub async fn check_backends(
    config: &crate::config::Config,
    wait: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<String>, Unreachable> {
    let checks = config
        .backends
        .iter()
        .map(|backend| check_backend(config, backend, wait, say));
    let results = futures::future::join_all(checks).await;

    let mut ready = Vec::new();
    let mut failures: Vec<(&BackendConfig, String)> = Vec::new();
    for (backend, result) in config.backends.iter().zip(results) {
        match result {
            Ok(()) => ready.push(backend.name.clone()),
            Err(error) => {
                tracing::warn!(backend = %backend.name, %error, "backend not ready");
                failures.push((backend, error.to_string()));
            }
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
                .filter(|(b, _)| b.roles.contains(&role))
                .map(|(_, e)| e.as_str())
                .collect();
            return Err(Unreachable {
                role,
                failures: failures.join("; "),
            });
        }
    }
    for (backend, error) in &failures {
        say(&format!(
            "warning: backend {} is not ready; the other backends of its roles carry on: {error}",
            backend.name
        ));
    }
    Ok(ready)
}

async fn check_backend(
    config: &crate::config::Config,
    backend: &BackendConfig,
    wait: Duration,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), CallError> {
    let client = ChatClient::new(
        backend,
        config.grading.connect_timeout,
        Duration::from_secs(10),
    )?;
    let started = Instant::now();
    let loading_patience = wait.max(LOADING_PATIENCE);
    let mut announced_loading = false;
    let mut announced_start = false;
    loop {
        match probe(&client).await {
            Ok(health) => {
                if announced_loading || announced_start {
                    say(&format!("{} ({}) is ready", backend.name, backend.url));
                }
                if health == Health::Ollama && backend.api == Api::OpenAi {
                    say(&format!(
                        "note: {} ({}) is Ollama; with api = \"ollama\" tandem reads its prefill \
                         time and sets the context size so long prompts are not cut",
                        backend.name, backend.url
                    ));
                }
                if backend.api == Api::Ollama {
                    check_ollama_model(&client).await?;
                }
                return Ok(());
            }
            Err(CallError::Busy { detail, .. }) if started.elapsed() < loading_patience => {
                if !announced_loading {
                    say(&format!(
                        "waiting for {} ({}): the server is still loading its model ({detail})",
                        backend.name, backend.url
                    ));
                    announced_loading = true;
                }
            }
            Err(CallError::Connect { .. } | CallError::Timeout { .. })
                if started.elapsed() < wait =>
            {
                if !announced_start {
                    say(&format!(
                        "waiting up to {} s for {} ({}) to start",
                        wait.as_secs(),
                        backend.name,
                        backend.url
                    ));
                    announced_start = true;
                }
            }
            Err(error) => return Err(error),
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
