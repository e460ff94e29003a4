//! `tandem probe` against in-process fake servers: levels, warm-up, files, the command line,
//! and what a server that batches looks like next to one that does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, FixedOffset};
use tandem::backend::Role;
use tandem::config::{Config, Threshold};
use tandem::fake_server::{Batching, Dialect, FakeServer, Reply};
use tandem::probe::{
    self, BackendProbe, ProbeOptions, ProbeReport, batching_gain, latest_batching_gains,
    level_result, render_table,
};
use tandem::record::{CallRecord, Category, PromptEvalSource, TokenSource};

const RUBRIC: &str = r#"
title = "Probe homework"
task = "Anything."

[[criterion]]
id = "work"
name = "Does the work"
points = 2
description = "Does it."
"#;

/// A configuration in a fresh folder with one backend per (name, url, max_concurrency), each
/// serving both roles.
fn config(dir: &Path, backends: &[(&str, &str, usize)]) -> Config {
    std::fs::write(dir.join("rubric.toml"), RUBRIC).unwrap();
    let mut text = String::from("[assignment]\nrubric = \"rubric.toml\"\n");
    for (name, url, concurrency) in backends {
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\nroles = [\"code_analysis\", \"feedback\"]\n\
             url = \"{url}\"\nmodel = \"fake-model\"\nmax_concurrency = {concurrency}\n"
        ));
    }
    let path = dir.join("tandem.toml");
    std::fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap()
}

/// A reply far longer than any `max_tokens` the tests ask for.
fn long_reply() -> Reply {
    Reply::fixed("The analysis loads the data and compares regions. ".repeat(40))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_each_prompt_at_each_level_and_leaves_warm_up_out() {
    let server = FakeServer::builder()
        .dialect(Dialect::LlamaCpp)
        .slots(4)
        .prefill_tok_per_s(20_000.0)
        .decode_tok_per_s(800.0)
        .reply(long_reply())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &[("fake", &server.url(), 2)]);
    let options = ProbeOptions {
        requests: 3,
        max_concurrency: Some(2),
        max_tokens: 24,
        warmup: 1,
        backends: Vec::new(),
    };

    let report = probe::run(&config, &options, &|_| {}).await;

    let backend = &report.backends[0];
    assert_eq!(backend.error, None);
    let levels: Vec<(&str, usize, usize)> = backend
        .levels
        .iter()
        .map(|l| (l.prompt.as_str(), l.concurrency, l.requests))
        .collect();
    assert_eq!(
        levels,
        [
            ("short", 1, 3),
            ("short", 2, 3),
            ("long", 1, 3),
            ("long", 2, 3)
        ]
    );
    // Two warm-up requests reached the server; the levels count only their own twelve.
    assert_eq!(server.stats().requests, 14);
    assert_eq!(server.stats().peak_in_flight, 2);
    for level in &backend.levels {
        assert_eq!(level.failures(), 0);
        assert_eq!(level.output_tokens, 3 * 24, "{level:?}");
        assert_eq!(level.cut_at_max_tokens, 3);
        assert_eq!(level.prompt_eval_source, Some(PromptEvalSource::Server));
        assert!(level.ttft_seconds.is_some() && level.latency_seconds.is_some());
        assert!(level.decode_tokens_per_second.unwrap().p50 > 0.0);
        assert!(level.prompt_tokens_per_second.unwrap().p50 > 0.0);
        assert!(level.output_tokens_per_second > 0.0);
        assert!(level.categories.output_throughput.is_some());
    }
    let short = backend.levels[0].prompt_tokens_p50.unwrap();
    let long = backend.levels[2].prompt_tokens_p50.unwrap();
    assert!(
        long > 5.0 * short,
        "long prompt {long} tokens, short {short}"
    );

    // No two requests share the start of their prompt, so no cache can serve one from another.
    let starts: std::collections::BTreeSet<String> = server
        .bodies()
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(starts.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_batches_gains_from_a_second_request_and_a_single_slot_does_not() {
    let batching = FakeServer::builder()
        .slots(4)
        .batching(Batching::Linear)
        .prefill_tok_per_s(50_000.0)
        .decode_tok_per_s(200.0)
        .reply(long_reply())
        .start()
        .await;
    let single = FakeServer::builder()
        .slots(1)
        .prefill_tok_per_s(50_000.0)
        .decode_tok_per_s(200.0)
        .reply(long_reply())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[
            ("batching", &batching.url(), 1),
            ("single", &single.url(), 1),
        ],
    );
    let options = ProbeOptions {
        requests: 4,
        max_concurrency: Some(2),
        max_tokens: 40,
        warmup: 0,
        backends: Vec::new(),
    };

    let report = probe::run(&config, &options, &|_| {}).await;
    let files = probe::write(&config.paths.reports, &report).unwrap();

    let gain = |name: &str| batching_gain(report.backends.iter().find(|b| b.name == name).unwrap());
    let (batches, does_not) = (gain("batching").unwrap(), gain("single").unwrap());
    assert!(batches > 1.5, "batching server gained only {batches:.2}×");
    assert!(does_not < 1.25, "single-slot server gained {does_not:.2}×");

    // The batch reports read the newest probe back for their recommendations.
    // JSON keeps a rate to within a unit in the last place.
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
    let read_back = latest_batching_gains(&config.paths.reports);
    assert!(
        close(read_back.get("batching").copied(), batches),
        "{read_back:?}"
    );
    let settings = tandem::report::ReportSettings::from_config(&config);
    assert!(close(
        settings.backend("single").unwrap().batching_gain,
        does_not
    ));

    let json: ProbeReport = serde_json::from_slice(&std::fs::read(&files.json).unwrap()).unwrap();
    assert_eq!(json.backends.len(), 2);
    for (read, written) in json.backends.iter().zip(&report.backends) {
        assert_eq!(read.name, written.name);
        assert_eq!(read.levels.len(), written.levels.len());
        for (r, w) in read.levels.iter().zip(&written.levels) {
            assert_eq!((r.requests, r.output_tokens), (w.requests, w.output_tokens));
            assert!((r.output_tokens_per_second - w.output_tokens_per_second).abs() < 1e-9);
        }
    }
    let mut csv = csv::Reader::from_path(&files.csv).unwrap();
    assert_eq!(csv.records().count(), 2 * 2 * 2);
}

#[tokio::test]
async fn an_unreachable_server_is_reported_not_probed() {
    let dir = tempfile::tempdir().unwrap();
    let refused = FakeServer::refused_url().await;
    let config = config(dir.path(), &[("gone", &refused, 1)]);

    let report = probe::run(&config, &ProbeOptions::default(), &|_| {}).await;

    let backend = &report.backends[0];
    assert!(backend.levels.is_empty());
    let error = backend.error.as_deref().unwrap();
    assert!(error.contains(&refused), "{error}");
    assert!(render_table(&report).contains("not probed: "));
}

fn at(ms: i64) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-12-04T18:00:00+01:00").unwrap() + Duration::milliseconds(ms)
}

/// A call sent at `sent` ms taking `ttft` ms to its first token and `decode` ms after it.
fn call(sent: i64, ttft: i64, decode: i64, prompt: u64, output: u64) -> CallRecord {
    let generation = (ttft + decode) as f64 / 1000.0;
    CallRecord {
        role: Role::CodeAnalysis,
        model: "fake-model".into(),
        server: "fake".into(),
        server_url: "http://127.0.0.1:9/v1/chat/completions".into(),
        prompt_tokens: prompt,
        output_tokens: output,
        total_tokens: prompt + output,
        generation_time_seconds: generation,
        tokens_per_second: output as f64 / generation,
        prompt_eval_time_seconds: ttft as f64 / 1000.0,
        prompt_eval_source: PromptEvalSource::Ttft,
        time_to_first_token_seconds: ttft as f64 / 1000.0,
        decode_tokens_per_second: Some((output - 1) as f64 / (decode as f64 / 1000.0)),
        queue_wait_seconds: 0.0,
        token_source: TokenSource::Server,
        finish_reason: Some("stop".into()),
        attempts: 1,
        category: Category::Good,
        cached_prompt_tokens: None,
        sent_at: at(sent),
        first_token_at: at(sent + ttft),
        finished_at: at(sent + ttft + decode),
        retries: Vec::new(),
    }
}

/// A probe report made by hand, so its table and CSV can be pinned.
fn handmade() -> ProbeReport {
    let threshold = Some(Threshold {
        excellent: 30.0,
        good: 20.0,
    });
    let one = [
        call(0, 200, 4_000, 60, 121),
        call(4_300, 250, 4_200, 60, 121),
    ];
    let two = [call(0, 300, 5_000, 60, 121), call(0, 400, 5_500, 60, 121)];
    let long = [
        call(0, 2_000, 4_100, 700, 121),
        call(6_200, 2_100, 4_000, 700, 121),
    ];
    let failed = BTreeMap::from([("timeout".to_string(), 1)]);
    ProbeReport {
        started_at: at(0),
        finished_at: at(60_000),
        requests_per_level: 2,
        max_tokens: 128,
        backends: vec![BackendProbe {
            name: "fake".into(),
            url: "http://127.0.0.1:9/".into(),
            model: "fake-model".into(),
            roles: vec![Role::CodeAnalysis],
            levels: vec![
                level_result("short", 1, &one, BTreeMap::new(), 8.75, threshold),
                level_result("short", 2, &two, failed, 5.9, threshold),
                level_result("long", 1, &long, BTreeMap::new(), 12.3, threshold),
            ],
            error: None,
        }],
    }
}

#[test]
fn level_figures_come_from_the_calls_and_the_wall_time() {
    let report = handmade();
    let one = &report.backends[0].levels[0];

    // 242 tokens over 8.75 s of wall time, not the sum of two per-request rates.
    assert!((one.output_tokens_per_second - 242.0 / 8.75).abs() < 1e-9);
    assert_eq!(one.categories.output_throughput, Some(Category::Good));
    // 120 tokens after the first over 4.0 and 4.2 s: the nearest-rank median of 30 and 28.6
    // tok/s is the lower, good but not excellent; the faster call alone would be excellent.
    assert!((one.decode_tokens_per_second.unwrap().p50 - 120.0 / 4.2).abs() < 1e-9);
    assert_eq!(one.decode_tokens_per_second.unwrap().p99, 30.0);
    assert_eq!(one.categories.decode, Some(Category::Good));
    // 60 prompt tokens over times to first token of 0.2 and 0.25 s.
    assert_eq!(one.prompt_tokens_per_second.unwrap().p50, 240.0);
    assert_eq!(one.prompt_tokens_per_second.unwrap().p95, 300.0);
    assert_eq!(report.backends[0].levels[1].requests, 3);
    assert_eq!(report.backends[0].levels[1].failures(), 1);
}

#[test]
fn probe_table_and_csv_header() {
    let report = handmade();
    insta::assert_snapshot!("probe_table", render_table(&report));
    let bytes = probe::csv_bytes(Path::new("probe.csv"), &report).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    insta::assert_snapshot!("probe_csv_header", text.lines().next().unwrap());
}

fn tandem_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_prints_json_and_writes_its_files() {
    let server = FakeServer::builder()
        .dialect(Dialect::Mlx)
        .slots(2)
        .prefill_tok_per_s(20_000.0)
        .decode_tok_per_s(1_000.0)
        .reply(long_reply())
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &[("mlx", &server.url(), 1)]);
    let config_path = config.source.clone();

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tandem_bin())
            .args([
                "probe",
                "--json",
                "--requests",
                "2",
                "--max-concurrency",
                "2",
            ])
            .args(["--max-tokens", "16", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: ProbeReport = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.backends[0].levels.len(), 4);
    // mlx_lm.server reports no prefill time, so the prompt rate comes from the first token.
    assert_eq!(
        report.backends[0].levels[0].prompt_eval_source,
        Some(PromptEvalSource::Ttft)
    );
    let folders: Vec<PathBuf> = std::fs::read_dir(&config.paths.reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 1);
    assert!(folders[0].join("probe.json").is_file() && folders[0].join("probe.csv").is_file());
}
