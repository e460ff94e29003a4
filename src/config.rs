//! The configuration file, `tandem.toml`: read, checked, and turned into a [`Config`].
//!
//! The file's structs mirror the TOML exactly and reject unknown keys; [`Config::load`] then
//! validates them into the types the rest of tandem trusts (resolved paths, parsed URLs, roles
//! that each have a backend). Every error names the file and the key at fault on one line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::backend::Role;
use crate::rubric::{Rubric, RubricError};

/// A configuration that could not be used, naming the file and key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(transparent)]
    Rubric(#[from] RubricError),
}

impl ConfigError {
    fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `tandem.toml` exactly as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    paths: PathsFile,
    assignment: Option<AssignmentFile>,
    #[serde(default)]
    backend: Vec<BackendFile>,
    #[serde(default)]
    thresholds: ThresholdsFile,
    #[serde(default)]
    grading: GradingFile,
    #[serde(default)]
    inbox: InboxFile,
    #[serde(default)]
    feedback: FeedbackFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PathsFile {
    inbox: PathBuf,
    outbox: PathBuf,
    reports: PathBuf,
    state: PathBuf,
}

impl Default for PathsFile {
    fn default() -> Self {
        PathsFile {
            inbox: "inbox".into(),
            outbox: "outbox".into(),
            reports: "reports".into(),
            state: ".tandem".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignmentFile {
    rubric: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    name: String,
    role: Option<String>,
    roles: Option<Vec<String>>,
    url: String,
    model: String,
    max_concurrency: Option<toml::Value>,
    api_key_env: Option<String>,
    api: Option<String>,
    context_length: Option<u32>,
    seed: Option<bool>,
    structured_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ThresholdsFile {
    code_analysis: Threshold,
    feedback: Threshold,
    combined: Threshold,
}

impl Default for ThresholdsFile {
    fn default() -> Self {
        let t = Thresholds::default();
        ThresholdsFile {
            code_analysis: t.code_analysis,
            feedback: t.feedback,
            combined: t.combined,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GradingFile {
    temperature: f64,
    seed: Option<u64>,
    code_analysis_max_tokens: u32,
    feedback_max_tokens: u32,
    max_submission_chars: usize,
    read_timeout_seconds: f64,
    connect_timeout_seconds: f64,
    retries: u32,
    disagreement_share: f64,
}

impl Default for GradingFile {
    fn default() -> Self {
        let g = GradingSettings::default();
        GradingFile {
            temperature: g.temperature,
            seed: g.seed,
            code_analysis_max_tokens: g.code_analysis_max_tokens,
            feedback_max_tokens: g.feedback_max_tokens,
            max_submission_chars: g.max_submission_chars,
            read_timeout_seconds: g.read_timeout.as_secs_f64(),
            connect_timeout_seconds: g.connect_timeout.as_secs_f64(),
            retries: g.retries,
            disagreement_share: g.disagreement_share,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FeedbackFile {
    sees_code_analysis: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct InboxFile {
    settle_seconds: f64,
    max_file_bytes: u64,
}

impl Default for InboxFile {
    fn default() -> Self {
        let i = InboxSettings::default();
        InboxFile {
            settle_seconds: i.settle.as_secs_f64(),
            max_file_bytes: i.max_file_bytes,
        }
    }
}

/// A validated configuration: every path resolved, every backend usable.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages).
    pub source: PathBuf,
    pub paths: Paths,
    pub rubric: Rubric,
    pub backends: Vec<BackendConfig>,
    pub thresholds: Thresholds,
    pub grading: GradingSettings,
    pub inbox: InboxSettings,
}

/// The folders tandem reads and writes, resolved against the config file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub reports: PathBuf,
    pub state: PathBuf,
}

/// The dialect a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions` with server-sent events.
    OpenAi,
    /// Ollama's native `POST /api/chat` with newline-delimited JSON.
    Ollama,
}

/// How many calls a backend may have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Exactly this many.
    Fixed(usize),
    /// Chosen at run time from the server's throughput and latency, never above `ceiling`.
    Auto { ceiling: usize },
}

impl Concurrency {
    /// The most calls that may ever be in flight on the backend.
    pub fn ceiling(self) -> usize {
        match self {
            Concurrency::Fixed(n) => n,
            Concurrency::Auto { ceiling } => ceiling,
        }
    }
}

/// One model server from the configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: String,
    pub roles: Vec<Role>,
    /// The server's base URL, without `/v1`.
    pub url: Url,
    pub model: String,
    pub max_concurrency: Concurrency,
    /// Name of the environment variable holding a bearer key; the key itself is never stored.
    pub api_key_env: Option<String>,
    pub api: Api,
    /// The server's context window in tokens, where known; prompts that cannot fit are refused.
    pub context_length: Option<u32>,
    /// Whether the grading seed is sent to this server (`seed = false` in its `[[backend]]`).
    /// mlx_lm.server serves a request that carries a seed alone, outside its batch, so set it
    /// false there to keep batching.
    pub send_seed: bool,
    /// Whether the reply schema is sent as `response_format` (`structured_output = false` for a
    /// server that rejects it); the prompt asks for the same JSON either way.
    pub structured_output: bool,
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("url", &{
                let mut shown = self.url.clone();
                let _ = shown.set_password(None);
                let _ = shown.set_username("");
                shown.to_string()
            })
            .field("model", &self.model)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

/// Category boundaries for one figure, in tokens per second.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub excellent: f64,
    pub good: f64,
}

/// Thresholds per role and for the combined throughput.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub code_analysis: Threshold,
    pub feedback: Threshold,
    pub combined: Threshold,
}

impl Thresholds {
    /// The threshold that applies to a role's calls.
    pub fn for_role(&self, role: Role) -> Threshold {
        match role {
            Role::CodeAnalysis => self.code_analysis,
            Role::Feedback => self.feedback,
        }
    }
}

impl Default for Thresholds {
    /// The original system's boundaries.
    fn default() -> Self {
        Thresholds {
            code_analysis: Threshold {
                excellent: 30.0,
                good: 20.0,
            },
            feedback: Threshold {
                excellent: 35.0,
                good: 25.0,
            },
            combined: Threshold {
                excellent: 60.0,
                good: 40.0,
            },
        }
    }
}

/// Settings that shape each grading call.
#[derive(Debug, Clone, PartialEq)]
pub struct GradingSettings {
    pub temperature: f64,
    /// Sent with every request when set, so a grade can be reproduced.
    pub seed: Option<u64>,
    pub code_analysis_max_tokens: u32,
    pub feedback_max_tokens: u32,
    /// Normalised submission text beyond this many characters is cut with a marker.
    pub max_submission_chars: usize,
    /// `read_timeout_seconds`: longest silence allowed between two chunks of a stream; restarts
    /// with each chunk. A stream carrying only keep-alive comments (no data event) for four
    /// times this long also ends with a timeout, so keep-alives cannot hold a call open forever.
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// How many times a failed request is sent again before its call fails.
    pub retries: u32,
    /// Share of the maximum score by which the feedback model's overall score may differ from
    /// the computed total before the record is flagged `scores_disagree`.
    pub disagreement_share: f64,
    /// Chain mode (`[feedback] sees_code_analysis = true`): the feedback call is made after the
    /// code analysis and is shown its scores and findings, so the feedback cannot contradict
    /// the grade.
    pub feedback_sees_code_analysis: bool,
}

impl GradingSettings {
    /// The output budget for a role's calls.
    pub fn max_tokens(&self, role: Role) -> u32 {
        match role {
            Role::CodeAnalysis => self.code_analysis_max_tokens,
            Role::Feedback => self.feedback_max_tokens,
        }
    }
}

impl Default for GradingSettings {
    fn default() -> Self {
        GradingSettings {
            temperature: 0.0,
            seed: Some(42),
            code_analysis_max_tokens: 1024,
            feedback_max_tokens: 768,
            max_submission_chars: 12_000,
            read_timeout: Duration::from_secs(180),
            connect_timeout: Duration::from_secs(5),
            retries: 1,
            disagreement_share: 0.3,
            feedback_sees_code_analysis: false,
        }
    }
}

/// How the inbox is read.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxSettings {
    /// A file is taken only after its size and mtime have held this long.
    pub settle: Duration,
    /// Files larger than this fail with a record instead of being graded.
    pub max_file_bytes: u64,
}

impl Default for InboxSettings {
    fn default() -> Self {
        InboxSettings {
            settle: Duration::from_millis(1000),
            max_file_bytes: 2 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads and validates a configuration file, and the rubric it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::from_toml(path, &text)?;
        config.check_inbox_holds_no_settings()?;
        Ok(config)
    }

    /// Refuses an inbox that holds the configuration or the rubric: everything in the inbox
    /// is claimed as a submission, and tandem would move its own settings away.
    fn check_inbox_holds_no_settings(&self) -> Result<(), ConfigError> {
        let Ok(inbox) = self.paths.inbox.canonicalize() else {
            return Ok(());
        };
        for (what, file) in [
            ("configuration", &self.source),
            ("rubric", &self.rubric.source),
        ] {
            let inside = file
                .canonicalize()
                .is_ok_and(|resolved| resolved.starts_with(&inbox));
            if inside {
                return Err(ConfigError::invalid(
                    &self.source,
                    "paths.inbox",
                    format!(
                        "{} holds the {what} file {}; everything in the inbox is taken as a \
                         submission, so choose a folder of its own",
                        self.paths.inbox.display(),
                        file.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Validates configuration text as if it had been read from `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            line: err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: err.message().trim().replace('\n', " "),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: &Path| normalise(&base.join(p));

        let paths = Paths {
            inbox: resolve(&file.paths.inbox),
            outbox: resolve(&file.paths.outbox),
            reports: resolve(&file.paths.reports),
            state: resolve(&file.paths.state),
        };

        let assignment = file.assignment.ok_or_else(|| {
            ConfigError::invalid(path, "assignment.rubric", "missing: name the rubric file")
        })?;
        let rubric_path = resolve(&assignment.rubric);
        if !rubric_path.is_file() {
            return Err(ConfigError::invalid(
                path,
                "assignment.rubric",
                format!("{}: no such file", rubric_path.display()),
            ));
        }
        let rubric = Rubric::load(&rubric_path)?;

        let mut backends = Vec::new();
        for (i, raw) in file.backend.into_iter().enumerate() {
            backends.push(validate_backend(path, i, raw)?);
        }
        for role in Role::ALL {
            if !backends.iter().any(|b| b.roles.contains(&role)) {
                return Err(ConfigError::invalid(
                    path,
                    "backend",
                    format!(
                        "no backend serves the `{role}` role; add a [[backend]] with role = \"{role}\""
                    ),
                ));
            }
        }
        let mut seen = BTreeMap::new();
        for (i, b) in backends.iter().enumerate() {
            if let Some(first) = seen.insert(b.name.clone(), i) {
                return Err(ConfigError::invalid(
                    path,
                    format!("backend[{i}].name"),
                    format!("`{}` is also the name of backend[{first}]", b.name),
                ));
            }
        }

        let thresholds = Thresholds {
            code_analysis: file.thresholds.code_analysis,
            feedback: file.thresholds.feedback,
            combined: file.thresholds.combined,
        };
        for (key, t) in [
            ("thresholds.code_analysis", thresholds.code_analysis),
            ("thresholds.feedback", thresholds.feedback),
            ("thresholds.combined", thresholds.combined),
        ] {
            if !(t.excellent.is_finite()
                && t.good.is_finite()
                && t.good >= 0.0
                && t.excellent >= t.good)
            {
                return Err(ConfigError::invalid(
                    path,
                    key,
                    "needs 0 <= good <= excellent (tokens per second)",
                ));
            }
        }

        let g = file.grading;
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(ConfigError::invalid(
                    path,
                    key,
                    "must be a positive number of seconds",
                ))
            }
        };
        let grading = GradingSettings {
            temperature: if (0.0..=2.0).contains(&g.temperature) {
                g.temperature
            } else {
                return Err(ConfigError::invalid(
                    path,
                    "grading.temperature",
                    "must be within 0..2",
                ));
            },
            seed: g.seed,
            code_analysis_max_tokens: nonzero(
                path,
                "grading.code_analysis_max_tokens",
                g.code_analysis_max_tokens,
            )?,
            feedback_max_tokens: nonzero(
                path,
                "grading.feedback_max_tokens",
                g.feedback_max_tokens,
            )?,
            max_submission_chars: if g.max_submission_chars >= 200 {
                g.max_submission_chars
            } else {
                return Err(ConfigError::invalid(
                    path,
                    "grading.max_submission_chars",
                    "must be at least 200",
                ));
            },
            read_timeout: positive("grading.read_timeout_seconds", g.read_timeout_seconds)?,
            connect_timeout: positive(
                "grading.connect_timeout_seconds",
                g.connect_timeout_seconds,
            )?,
            retries: g.retries,
            disagreement_share: if (0.0..=1.0).contains(&g.disagreement_share) {
                g.disagreement_share
            } else {
                return Err(ConfigError::invalid(
                    path,
                    "grading.disagreement_share",
                    "must be a share of the maximum score, within 0..1",
                ));
            },
            feedback_sees_code_analysis: file.feedback.sees_code_analysis,
        };

        let inbox = InboxSettings {
            settle: if file.inbox.settle_seconds.is_finite() && file.inbox.settle_seconds >= 0.0 {
                Duration::from_secs_f64(file.inbox.settle_seconds)
            } else {
                return Err(ConfigError::invalid(
                    path,
                    "inbox.settle_seconds",
                    "must be zero or more seconds",
                ));
            },
            max_file_bytes: if file.inbox.max_file_bytes > 0 {
                file.inbox.max_file_bytes
            } else {
                return Err(ConfigError::invalid(
                    path,
                    "inbox.max_file_bytes",
                    "must be above zero",
                ));
            },
        };

        Ok(Config {
            source: path.to_path_buf(),
            paths,
            rubric,
            backends,
            thresholds,
            grading,
            inbox,
        })
    }

    /// The backends that serve a role, in configuration order.
    pub fn backends_for(&self, role: Role) -> impl Iterator<Item = &BackendConfig> {
        self.backends
            .iter()
            .filter(move |b| b.roles.contains(&role))
    }
}

/// Removes `.` and `name/..` pairs from a path without touching the filesystem, so that
/// messages show `outbox` rather than `examples/../outbox`.
fn normalise(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn nonzero(path: &Path, key: &str, v: u32) -> Result<u32, ConfigError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(ConfigError::invalid(path, key, "must be above zero"))
    }
}

fn validate_backend(path: &Path, i: usize, raw: BackendFile) -> Result<BackendConfig, ConfigError> {
    let key = |k: &str| format!("backend[{i}].{k}");
    if raw.name.trim().is_empty() {
        return Err(ConfigError::invalid(path, key("name"), "must not be empty"));
    }

    let role_names = match (raw.role, raw.roles) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                path,
                key("roles"),
                "give `role` or `roles`, not both",
            ));
        }
        (Some(one), None) => vec![one],
        (None, Some(many)) if !many.is_empty() => many,
        _ => {
            return Err(ConfigError::invalid(
                path,
                key("role"),
                "missing: `code_analysis` or `feedback`",
            ));
        }
    };
    let mut roles = Vec::new();
    for name in role_names {
        let role: Role = name
            .parse()
            .map_err(|msg: String| ConfigError::invalid(path, key("role"), msg))?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }

    let url = Url::parse(raw.url.trim()).map_err(|e| {
        ConfigError::invalid(path, key("url"), format!("`{}` is not a URL: {e}", raw.url))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(
            path,
            key("url"),
            format!(
                "`{}` must be an http:// or https:// URL with a host",
                raw.url
            ),
        ));
    }
    if raw.model.trim().is_empty() {
        return Err(ConfigError::invalid(
            path,
            key("model"),
            "must not be empty",
        ));
    }

    let max_concurrency = match raw.max_concurrency {
        None => Concurrency::Fixed(1),
        Some(toml::Value::Integer(n)) if (1..=256).contains(&n) => Concurrency::Fixed(n as usize),
        Some(toml::Value::String(s)) if s == "auto" => Concurrency::Auto { ceiling: 8 },
        Some(toml::Value::String(s)) if s.starts_with("auto:") => match s[5..].parse::<usize>() {
            Ok(n) if (1..=256).contains(&n) => Concurrency::Auto { ceiling: n },
            _ => {
                return Err(ConfigError::invalid(
                    path,
                    key("max_concurrency"),
                    format!(
                        "`{s}`: the ceiling after `auto:` must be a whole number from 1 to 256"
                    ),
                ));
            }
        },
        Some(other) => {
            return Err(ConfigError::invalid(
                path,
                key("max_concurrency"),
                format!("`{other}` must be a whole number from 1 to 256, \"auto\" or \"auto:N\""),
            ));
        }
    };

    let api = match raw.api.as_deref() {
        None | Some("openai") => Api::OpenAi,
        Some("ollama") => Api::Ollama,
        Some(other) => {
            return Err(ConfigError::invalid(
                path,
                key("api"),
                format!("unknown api `{other}` (expected `openai` or `ollama`)"),
            ));
        }
    };

    if let Some(var) = &raw.api_key_env
        && (var.is_empty() || var.contains('='))
    {
        return Err(ConfigError::invalid(
            path,
            key("api_key_env"),
            "must name an environment variable",
        ));
    }

    Ok(BackendConfig {
        name: raw.name,
        roles,
        url,
        model: raw.model,
        max_concurrency,
        api_key_env: raw.api_key_env,
        api,
        context_length: raw.context_length,
        send_seed: raw.seed.unwrap_or(true),
        structured_output: raw.structured_output.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_against_the_config_folder_and_normalised() {
        assert_eq!(
            normalise(Path::new("examples/../outbox")),
            PathBuf::from("outbox")
        );
        assert_eq!(normalise(Path::new("./a/./b/../c")), PathBuf::from("a/c"));
        assert_eq!(normalise(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(
            normalise(Path::new("/srv/class/../inbox")),
            PathBuf::from("/srv/inbox")
        );
        assert_eq!(normalise(Path::new("a/..")), PathBuf::from("."));
    }
}
