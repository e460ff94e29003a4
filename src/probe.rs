//! `tandem probe`: measures each configured server with standard prompts, before a night's work
//! or after a change to the servers.
//!
//! For each backend, in turn so that servers sharing a machine do not disturb each other's
//! figures, the probe sends warm-up requests (not measured), then for a short and a long prompt
//! and each concurrency level 1, 2, 4, … up to a limit, a fixed number of requests with that
//! many in flight. Each level's figures are computed from the calls as a batch's are
//! ([`crate::diagnostics::call_record`]): time to first token, decode and prompt rates, latency
//! at p50 / p95 / p99, and output throughput (Σ output tokens over the level's wall time, never
//! a sum of per-request rates), with categories against the configured thresholds.
//!
//! Every request's prompt starts with its own number, so that a server's prompt cache cannot
//! serve one request from another's work and flatter the prompt rate.
//!
//! This module measures and lays out; `tandem probe` (the CLI) prints and writes the files.
//! [`latest_batching_gains`] reads the newest probe back for the batch recommendations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::backend::{CallError, ChatClient, ChatRequest, Message, Role};
use crate::config::{BackendConfig, Concurrency, Config, Threshold};
use crate::diagnostics::batch::{Percentiles, server_threshold};
use crate::diagnostics::{CallContext, call_record, categorise, now, rate};
use crate::record::{CallRecord, Category, PromptEvalSource};
use crate::report::ReportError;

/// The JSON file a probe writes in its folder.
pub const JSON_FILE: &str = "probe.json";
/// The CSV file a probe writes in its folder.
pub const CSV_FILE: &str = "probe.csv";
/// Probe folders in the reports folder are named this, then the time.
pub const FOLDER_PREFIX: &str = "probe-";

/// The short standard prompt: a one-line question, so that decoding dominates the call.
pub const SHORT_PROMPT: &str = "In two sentences, explain to a business student what a \
     p-value tells them about a difference in average order value between two regions.";

/// The long standard prompt's instructions; the sample submission follows them.
const LONG_INSTRUCTIONS: &str = "Review the student's analysis below for a course in business \
     analytics. The assignment: load sales.csv (order_id, order_date, region, product, units, \
     unit_price), clean it, compute revenue by region and by month, find the top region and \
     products, make one chart, and recommend an action to the sales director. Say in one \
     paragraph what the work does well and what it should fix first.";

/// A student's analysis script, long enough that evaluating the prompt takes real time.
const LONG_SUBMISSION: &str = r#"import pandas as pd
import matplotlib.pyplot as plt

# Load the orders and fix the types pandas guessed wrong.
sales = pd.read_csv("sales.csv")
sales["order_date"] = pd.to_datetime(sales["order_date"], errors="coerce")
sales["units"] = pd.to_numeric(sales["units"], errors="coerce")
sales["unit_price"] = pd.to_numeric(sales["unit_price"], errors="coerce")

# Some orders were exported twice; keep the first copy of each order id.
before = len(sales)
sales = sales.drop_duplicates(subset="order_id", keep="first")
print(f"removed {before - len(sales)} duplicate orders")

# Missing prices cannot be guessed, missing units are taken as zero.
sales = sales.dropna(subset=["unit_price", "order_date"])
sales["units"] = sales["units"].fillna(0).astype(int)

sales["revenue"] = sales["units"] * sales["unit_price"]
sales["month"] = sales["order_date"].dt.to_period("M")

by_region = sales.groupby("region")["revenue"].sum().sort_values(ascending=False)
by_month = sales.pivot_table(index="month", columns="region", values="revenue", aggfunc="sum")
top_products = sales.groupby("product")["revenue"].sum().nlargest(3)

print("Revenue by region:")
print(by_region.round(2))
print("Revenue by month and region:")
print(by_month.round(0))
print("Top three products:")
print(top_products.round(2))

share = by_region / by_region.sum()
growth = by_month.pct_change().mean()

fig, ax = plt.subplots(figsize=(8, 4))
by_region.plot(kind="bar", ax=ax, color="steelblue")
ax.set_title("Revenue by region, January to June 2024")
ax.set_xlabel("Region")
ax.set_ylabel("Revenue (USD)")
plt.tight_layout()
plt.savefig("revenue_by_region.png")

# Recommendation
# North brings in the most revenue (about 30% of the total) and grew every month, while East is
# last and flat. Laptops, monitors and headsets make up most of the revenue everywhere. I would
# move part of the East marketing budget to bundles of laptops with monitors in the North and
# test the same bundle in East for one quarter before deciding whether to cut East further.
for region, value in share.items():
    print(f"{region}: {value:.1%} of revenue, average monthly growth {growth[region]:.1%}")
"#;

/// How a probe runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOptions {
    /// Requests per prompt and concurrency level (at least the level itself, so it is reached).
    pub requests: usize,
    /// The highest concurrency level; `None` uses [`default_max_concurrency`] per backend.
    pub max_concurrency: Option<usize>,
    /// The `max_tokens` of every request.
    pub max_tokens: u32,
    /// Unmeasured requests per prompt before the measured ones.
    pub warmup: usize,
    /// Probe only the backends of these names; all when empty.
    pub backends: Vec<String>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            requests: 4,
            max_concurrency: None,
            max_tokens: 128,
            warmup: 1,
            backends: Vec::new(),
        }
    }
}

/// A probe's figures for every backend it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// When the first backend's warm-up began.
    pub started_at: DateTime<FixedOffset>,
    /// When the last backend's last level ended.
    pub finished_at: DateTime<FixedOffset>,
    /// The requests asked for per prompt and level.
    pub requests_per_level: usize,
    /// The `max_tokens` of every request.
    pub max_tokens: u32,
    pub backends: Vec<BackendProbe>,
}

/// One backend's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendProbe {
    pub name: String,
    pub url: String,
    pub model: String,
    pub roles: Vec<Role>,
    /// One entry per prompt and concurrency level, in the order they ran.
    pub levels: Vec<LevelResult>,
    /// Why the backend could not be probed at all, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The figures of one prompt at one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelResult {
    /// `short` or `long`.
    pub prompt: String,
    /// Requests kept in flight.
    pub concurrency: usize,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed, by their error's kind.
    pub failures_by_kind: BTreeMap<String, u64>,
    /// Median prompt tokens of the answered requests.
    pub prompt_tokens_p50: Option<f64>,
    /// Σ output tokens of the answered requests.
    pub output_tokens: u64,
    /// Answered requests whose reply stopped at `max_tokens`.
    pub cut_at_max_tokens: usize,
    pub ttft_seconds: Option<Percentiles>,
    /// (output tokens − 1) / (t_end − t_first) per request.
    pub decode_tokens_per_second: Option<Percentiles>,
    /// Prompt tokens evaluated (less any the server took from its cache) over the prompt
    /// evaluation time.
    pub prompt_tokens_per_second: Option<Percentiles>,
    /// `server` when every prompt time came from the server's timings, else `ttft`.
    pub prompt_eval_source: Option<PromptEvalSource>,
    /// Output tokens over the whole request time, per request (the original system's figure).
    pub tokens_per_second: Option<Percentiles>,
    /// End-to-end time of each request, from sending it to its last token.
    pub latency_seconds: Option<Percentiles>,
    /// First request sent to last token received, over the level.
    pub wall_seconds: f64,
    /// Σ output tokens / wall seconds.
    pub output_tokens_per_second: f64,
    /// The figures' categories against the backend's role threshold.
    pub categories: LevelCategories,
}

/// Categories of a level's rates against the backend's role threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LevelCategories {
    /// The median decode rate.
    pub decode: Option<Category>,
    /// The median per-request tokens per second.
    pub tokens_per_second: Option<Category>,
    /// The level's output throughput.
    pub output_throughput: Option<Category>,
}

impl LevelResult {
    /// Requests that failed.
    pub fn failures(&self) -> u64 {
        self.failures_by_kind.values().sum()
    }
}

/// The probe's highest concurrency level for a backend when none is asked for: the ceiling of
/// an `auto` backend, otherwise its fixed concurrency but at least 4, so that a server held to
/// one request shows whether it could take more.
pub fn default_max_concurrency(backend: &BackendConfig) -> usize {
    match backend.max_concurrency {
        Concurrency::Auto { ceiling } => ceiling.max(1),
        Concurrency::Fixed(n) => n.max(4),
    }
}

/// The concurrency levels up to `max`: 1, 2, 4, … and `max` itself.
pub fn concurrency_levels(max: usize) -> Vec<usize> {
    let max = max.max(1);
    let mut levels = Vec::new();
    let mut level = 1;
    while level < max {
        levels.push(level);
        level *= 2;
    }
    levels.push(max);
    levels
}

/// The standard prompts by name, request `n`'s copy: its number leads, so no two share a prefix.
pub fn standard_prompt(name: &str, n: usize) -> Vec<Message> {
    let system = format!(
        "Probe request {n}. You are a teaching assistant for a course in business analytics."
    );
    let user = match name {
        "long" => format!("{LONG_INSTRUCTIONS}\n\n<submission>\n{LONG_SUBMISSION}</submission>"),
        _ => SHORT_PROMPT.to_string(),
    };
    vec![Message::system(system), Message::user(user)]
}

/// The names of the standard prompts, in the order they are probed.
pub const PROMPTS: [&str; 2] = ["short", "long"];

/// Computes a level's figures from its answered calls, failures and wall time.
pub fn level_result(
    prompt: &str,
    concurrency: usize,
    calls: &[CallRecord],
    failures_by_kind: BTreeMap<String, u64>,
    wall_seconds: f64,
    threshold: Option<Threshold>,
) -> LevelResult {
    let output_tokens: u64 = calls.iter().map(|c| c.output_tokens).sum();
    let throughput = rate(output_tokens, wall_seconds);
    let prompt_rates = calls.iter().filter_map(|c| {
        let evaluated = c
            .prompt_tokens
            .saturating_sub(c.cached_prompt_tokens.unwrap_or(0));
        (c.prompt_eval_time_seconds > 0.0 && evaluated > 0)
            .then(|| evaluated as f64 / c.prompt_eval_time_seconds)
    });
    let source = if calls.is_empty() {
        None
    } else if calls
        .iter()
        .all(|c| c.prompt_eval_source == PromptEvalSource::Server)
    {
        Some(PromptEvalSource::Server)
    } else {
        Some(PromptEvalSource::Ttft)
    };
    let decode = Percentiles::of(calls.iter().filter_map(|c| c.decode_tokens_per_second));
    let per_request = Percentiles::of(calls.iter().map(|c| c.tokens_per_second));
    let category = |value: Option<f64>| Some(categorise(value?, threshold?));

    LevelResult {
        prompt: prompt.to_string(),
        concurrency,
        requests: calls.len() + failures_by_kind.values().sum::<u64>() as usize,
        failures_by_kind,
        prompt_tokens_p50: Percentiles::of(calls.iter().map(|c| c.prompt_tokens as f64))
            .map(|p| p.p50),
        output_tokens,
        cut_at_max_tokens: calls
            .iter()
            .filter(|c| c.finish_reason.as_deref() == Some("length"))
            .count(),
        ttft_seconds: Percentiles::of(calls.iter().map(|c| c.time_to_first_token_seconds)),
        decode_tokens_per_second: decode,
        prompt_tokens_per_second: Percentiles::of(prompt_rates),
        prompt_eval_source: source,
        tokens_per_second: per_request,
        latency_seconds: Percentiles::of(calls.iter().map(|c| c.generation_time_seconds)),
        wall_seconds,
        output_tokens_per_second: throughput,
        categories: LevelCategories {
            decode: category(decode.map(|p| p.p50)),
            tokens_per_second: category(per_request.map(|p| p.p50)),
            output_throughput: category((!calls.is_empty()).then_some(throughput)),
        },
    }
}

/// How much more output a backend gave with two requests in flight than with one: the mean,
/// over the prompts probed at both levels, of the ratio of their output throughputs.
pub fn batching_gain(backend: &BackendProbe) -> Option<f64> {
    let at = |prompt: &str, c: usize| {
        backend
            .levels
            .iter()
            .find(|l| l.prompt == prompt && l.concurrency == c && l.output_tokens > 0)
            .map(|l| l.output_tokens_per_second)
    };
    let gains: Vec<f64> = PROMPTS
        .iter()
        .filter_map(|p| {
            let one = at(p, 1)?;
            let two = at(p, 2)?;
            (one > 0.0).then(|| two / one)
        })
        .collect();
    (!gains.is_empty()).then(|| gains.iter().sum::<f64>() / gains.len() as f64)
}

/// Each backend's [`batching_gain`] from the newest probe in a reports folder; empty when there
/// is none or it cannot be read.
pub fn latest_batching_gains(reports: &Path) -> BTreeMap<String, f64> {
    let newest = std::fs::read_dir(reports).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.join(JSON_FILE).is_file()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(FOLDER_PREFIX))
            })
            .max()
    });
    let Some(folder) = newest else {
        return BTreeMap::new();
    };
    let path = folder.join(JSON_FILE);
    let report: ProbeReport = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(report) => report,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "probe report not used");
            return BTreeMap::new();
        }
    };
    report
        .backends
        .iter()
        .filter_map(|b| Some((b.name.clone(), batching_gain(b)?)))
        .collect()
}

/// Probes every configured backend (or those named in the options), one after another.
///
/// `say` receives a line as each backend and level starts.
pub async fn run(
    config: &Config,
    options: &ProbeOptions,
    say: &(dyn Fn(&str) + Sync),
) -> ProbeReport {
    let started_at = now();
    let mut backends = Vec::new();
    for backend in &config.backends {
        if !options.backends.is_empty() && !options.backends.contains(&backend.name) {
            continue;
        }
        backends.push(probe_backend(config, backend, options, say).await);
    }
    ProbeReport {
        started_at,
        finished_at: now(),
        requests_per_level: options.requests,
        max_tokens: options.max_tokens,
        backends,
    }
}

async fn probe_backend(
    config: &Config,
    backend: &BackendConfig,
    options: &ProbeOptions,
    say: &(dyn Fn(&str) + Sync),
) -> BackendProbe {
    let mut result = BackendProbe {
        name: backend.name.clone(),
        url: backend.url.to_string(),
        model: backend.model.clone(),
        roles: backend.roles.clone(),
        levels: Vec::new(),
        error: None,
    };
    let client = match ChatClient::new(
        backend,
        config.grading.connect_timeout,
        config.grading.read_timeout,
    ) {
        Ok(client) => client,
        Err(error) => {
            result.error = Some(error.to_string());
            return result;
        }
    };
    let threshold = server_threshold(&backend.roles, &config.thresholds);
    let max = options
        .max_concurrency
        .unwrap_or_else(|| default_max_concurrency(backend));
    let prober = Prober {
        config,
        backend,
        client: &client,
        max_tokens: options.max_tokens,
        threshold,
    };

    say(&format!(
        "probing {} ({}): warming up",
        backend.name, backend.url
    ));
    let mut counter = 0;
    for prompt in PROMPTS {
        for _ in 0..options.warmup {
            counter += 1;
            if let Err(error) = prober.send(prompt, counter).await {
                if matches!(error, CallError::Connect { .. }) {
                    result.error = Some(error.to_string());
                    return result;
                }
                tracing::warn!(backend = %backend.name, %error, "warm-up request failed");
            }
        }
    }

    for prompt in PROMPTS {
        for concurrency in concurrency_levels(max) {
            let n = options.requests.max(concurrency);
            say(&format!(
                "probing {}: {prompt} prompt, {n} requests, {concurrency} in flight",
                backend.name
            ));
            let first = counter + 1;
            counter += n;
            result
                .levels
                .push(prober.level(prompt, concurrency, first..=counter).await);
        }
    }
    result
}

/// What every request of one backend's probe shares.
struct Prober<'a> {
    config: &'a Config,
    backend: &'a BackendConfig,
    client: &'a ChatClient,
    max_tokens: u32,
    threshold: Option<Threshold>,
}

impl Prober<'_> {
    async fn send(&self, prompt: &str, n: usize) -> Result<CallRecord, CallError> {
        let messages = standard_prompt(prompt, n);
        let prompt_chars = messages.iter().map(|m| m.content.chars().count()).sum();
        let request = ChatRequest {
            messages,
            max_tokens: self.max_tokens,
            temperature: self.config.grading.temperature,
            seed: self.config.grading.seed,
            json_schema: None,
        };
        let outcome = self.client.chat(&request).await?;
        let role = self
            .backend
            .roles
            .first()
            .copied()
            .unwrap_or(Role::CodeAnalysis);
        Ok(call_record(
            CallContext {
                role,
                backend: self.backend,
                server_url: self.client.endpoint(),
                prompt_chars,
                queue_wait: Duration::ZERO,
                attempts: 1,
                retries: Vec::new(),
                threshold: self
                    .threshold
                    .unwrap_or(self.config.thresholds.for_role(role)),
            },
            &outcome,
        ))
    }

    async fn level(
        &self,
        prompt: &str,
        concurrency: usize,
        numbers: std::ops::RangeInclusive<usize>,
    ) -> LevelResult {
        let started = Instant::now();
        let outcomes: Vec<Result<CallRecord, CallError>> = futures::stream::iter(numbers)
            .map(|n| self.send(prompt, n))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed().as_secs_f64();

        let mut calls = Vec::new();
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for outcome in outcomes {
            match outcome {
                Ok(call) => calls.push(call),
                Err(error) => {
                    tracing::warn!(backend = %self.backend.name, %error, "probe request failed");
                    *failures.entry(error.kind().to_string()).or_default() += 1;
                }
            }
        }
        let wall = match (
            calls.iter().map(|c| c.sent_at).min(),
            calls.iter().map(|c| c.finished_at).max(),
        ) {
            (Some(start), Some(end)) => crate::diagnostics::seconds_between(start, end),
            _ => elapsed,
        };
        level_result(prompt, concurrency, &calls, failures, wall, self.threshold)
    }
}

/// One row of `probe.csv`: a backend's figures for one prompt at one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRow {
    pub server: String,
    pub url: String,
    pub model: String,
    pub roles: String,
    pub prompt: String,
    pub concurrency: usize,
    pub requests: usize,
    pub failures: u64,
    pub prompt_tokens_p50: Option<f64>,
    pub output_tokens: u64,
    pub cut_at_max_tokens: usize,
    pub ttft_p50_seconds: Option<f64>,
    pub ttft_p95_seconds: Option<f64>,
    pub ttft_p99_seconds: Option<f64>,
    pub prompt_tokens_per_second_p50: Option<f64>,
    pub prompt_eval_source: Option<&'static str>,
    pub decode_tokens_per_second_p50: Option<f64>,
    pub decode_tokens_per_second_p95: Option<f64>,
    pub tokens_per_second_p50: Option<f64>,
    pub latency_p50_seconds: Option<f64>,
    pub latency_p95_seconds: Option<f64>,
    pub latency_p99_seconds: Option<f64>,
    pub wall_seconds: f64,
    pub output_tokens_per_second: f64,
    pub decode_category: Option<&'static str>,
    pub tokens_per_second_category: Option<&'static str>,
    pub output_throughput_category: Option<&'static str>,
}

/// The rows of `probe.csv`, a row per backend, prompt and level.
pub fn csv_rows(report: &ProbeReport) -> Vec<ProbeRow> {
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let p = |p: Option<Percentiles>, f: fn(&Percentiles) -> f64| p.as_ref().map(f).map(r3);
    let mut rows = Vec::new();
    for backend in &report.backends {
        for level in &backend.levels {
            rows.push(ProbeRow {
                server: crate::report::csv::text_cell(&backend.name),
                url: crate::report::csv::text_cell(&backend.url),
                model: crate::report::csv::text_cell(&backend.model),
                roles: backend
                    .roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(";"),
                prompt: crate::report::csv::text_cell(&level.prompt),
                concurrency: level.concurrency,
                requests: level.requests,
                failures: level.failures(),
                prompt_tokens_p50: level.prompt_tokens_p50.map(r3),
                output_tokens: level.output_tokens,
                cut_at_max_tokens: level.cut_at_max_tokens,
                ttft_p50_seconds: p(level.ttft_seconds, |p| p.p50),
                ttft_p95_seconds: p(level.ttft_seconds, |p| p.p95),
                ttft_p99_seconds: p(level.ttft_seconds, |p| p.p99),
                prompt_tokens_per_second_p50: p(level.prompt_tokens_per_second, |p| p.p50),
                prompt_eval_source: level.prompt_eval_source.map(|s| match s {
                    PromptEvalSource::Server => "server",
                    PromptEvalSource::Ttft => "ttft",
                }),
                decode_tokens_per_second_p50: p(level.decode_tokens_per_second, |p| p.p50),
                decode_tokens_per_second_p95: p(level.decode_tokens_per_second, |p| p.p95),
                tokens_per_second_p50: p(level.tokens_per_second, |p| p.p50),
                latency_p50_seconds: p(level.latency_seconds, |p| p.p50),
                latency_p95_seconds: p(level.latency_seconds, |p| p.p95),
                latency_p99_seconds: p(level.latency_seconds, |p| p.p99),
                wall_seconds: r3(level.wall_seconds),
                output_tokens_per_second: r3(level.output_tokens_per_second),
                decode_category: level.categories.decode.map(Category::as_str),
                tokens_per_second_category: level
                    .categories
                    .tokens_per_second
                    .map(Category::as_str),
                output_throughput_category: level
                    .categories
                    .output_throughput
                    .map(Category::as_str),
            });
        }
    }
    rows
}

/// The bytes of `probe.csv`; `path` names the file in errors.
pub fn csv_bytes(path: &Path, report: &ProbeReport) -> Result<Vec<u8>, ReportError> {
    let encode = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in csv_rows(report) {
        writer.serialize(row).map_err(encode)?;
    }
    writer.into_inner().map_err(|e| ReportError::Write {
        path: path.to_path_buf(),
        source: e.into_error(),
    })
}

/// Where [`write`] put a probe's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFiles {
    pub dir: PathBuf,
    pub json: PathBuf,
    pub csv: PathBuf,
}

/// Writes `probe.json` and `probe.csv` into `reports/probe-<time>/`, named by the probe's start.
pub fn write(reports: &Path, report: &ProbeReport) -> Result<ProbeFiles, ReportError> {
    let stamp = report.started_at.format("%Y-%m-%dT%H-%M-%S");
    let mut dir = reports.join(format!("{FOLDER_PREFIX}{stamp}"));
    let mut n = 2;
    while dir.exists() {
        dir = reports.join(format!("{FOLDER_PREFIX}{stamp}-{n}"));
        n += 1;
    }
    std::fs::create_dir_all(&dir).map_err(|source| ReportError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let files = ProbeFiles {
        json: dir.join(JSON_FILE),
        csv: dir.join(CSV_FILE),
        dir,
    };
    let json = serde_json::to_vec_pretty(report).expect("probe reports serialise");
    crate::report::write_atomically(&files.json, &json)?;
    crate::report::write_atomically(&files.csv, &csv_bytes(&files.csv, report)?)?;
    Ok(files)
}

const TABLE_HEADER: [&str; 15] = [
    "prompt",
    "conc",
    "reqs",
    "fail",
    "prompt_tok",
    "ttft_p50",
    "ttft_p95",
    "ttft_p99",
    "prompt_tok/s",
    "decode_p50",
    "lat_p50",
    "lat_p95",
    "lat_p99",
    "out_tok/s",
    "category out / decode",
];

/// The probe as plain-text tables, one per backend; seconds and rates to two or one decimals.
///
/// `category` is the output throughput's category and then the median decode rate's.
pub fn render_table(report: &ProbeReport) -> String {
    let mut out = String::new();
    for (i, backend) in report.backends.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let roles: Vec<&str> = backend.roles.iter().map(|r| r.as_str()).collect();
        let _ = writeln!(
            out,
            "{} ({}, {}, {})",
            backend.name,
            backend.url,
            backend.model,
            roles.join(",")
        );
        if let Some(error) = &backend.error {
            let _ = writeln!(out, "  not probed: {error}");
            continue;
        }
        let mut rows: Vec<Vec<String>> = vec![TABLE_HEADER.iter().map(|h| h.to_string()).collect()];
        for level in &backend.levels {
            let cell = |p: Option<Percentiles>, f: fn(&Percentiles) -> f64, d: usize| {
                p.as_ref()
                    .map_or("-".to_string(), |p| format!("{:.d$}", f(p)))
            };
            let source = match level.prompt_eval_source {
                Some(PromptEvalSource::Ttft) => "*",
                _ => "",
            };
            rows.push(vec![
                level.prompt.clone(),
                level.concurrency.to_string(),
                level.requests.to_string(),
                level.failures().to_string(),
                level
                    .prompt_tokens_p50
                    .map_or("-".into(), |t| format!("{t:.0}")),
                cell(level.ttft_seconds, |p| p.p50, 2),
                cell(level.ttft_seconds, |p| p.p95, 2),
                cell(level.ttft_seconds, |p| p.p99, 2),
                format!(
                    "{}{source}",
                    cell(level.prompt_tokens_per_second, |p| p.p50, 1)
                ),
                cell(level.decode_tokens_per_second, |p| p.p50, 1),
                cell(level.latency_seconds, |p| p.p50, 2),
                cell(level.latency_seconds, |p| p.p95, 2),
                cell(level.latency_seconds, |p| p.p99, 2),
                format!("{:.1}", level.output_tokens_per_second),
                format!(
                    "{} / {}",
                    level
                        .categories
                        .output_throughput
                        .map_or("-", Category::as_str),
                    level.categories.decode.map_or("-", Category::as_str)
                ),
            ]);
        }
        for line in crate::report::terminal::table(&rows, &[0, 14]).lines() {
            let _ = writeln!(out, "   {line}");
        }
        if let Some(gain) = batching_gain(backend) {
            let _ = writeln!(
                out,
                "  two requests in flight gave {gain:.2}× the output of one"
            );
        }
    }
    if report
        .backends
        .iter()
        .flat_map(|b| &b.levels)
        .any(|l| l.prompt_eval_source == Some(PromptEvalSource::Ttft))
    {
        out.push_str(
            "\n* prompt rate from the time to first token: the server reports no prefill time\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_double_up_to_the_maximum_and_include_it() {
        assert_eq!(concurrency_levels(0), [1]);
        assert_eq!(concurrency_levels(1), [1]);
        assert_eq!(concurrency_levels(4), [1, 2, 4]);
        assert_eq!(concurrency_levels(6), [1, 2, 4, 6]);
    }

    #[test]
    fn every_request_has_its_own_prompt_start() {
        let a = standard_prompt("long", 1);
        let b = standard_prompt("long", 2);
        assert_ne!(a[0].content, b[0].content);
        assert_eq!(a[1].content, b[1].content);
        assert!(a[1].content.len() > 4 * SHORT_PROMPT.len());
    }
}
