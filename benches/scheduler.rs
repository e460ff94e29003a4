//! The original scheme against tandem's scheduler, on fake servers timed like the seed's.
//!
//! The original system graded one submission at a time, its two calls in parallel: code
//! analysis at about 30 tok/s for about 400 output tokens, feedback at about 37 tok/s for about
//! 725, each after a timed prefill. Here the fake servers run twenty times faster (decode 600
//! and 740 tok/s, prefill 3 600 and 3 160 tok/s), so a night's pattern plays out in seconds.
//! Forty synthetic submissions of varied size (so prompt length and reply length vary) are
//! graded by the original scheme and by tandem's scheduler in each setting, each run on fresh
//! servers; the three settings run side by side (`--sequential` runs them one after another):
//!
//! - (a) servers that serve one request at a time;
//! - (b) servers that decode up to four requests at once, with aggregate throughput k^0.7 for k
//!   calls, graded with a fixed concurrency of 1, 2 and 4 and with `"auto"`;
//! - (c) a pair where the code-analysis server can also take feedback calls.
//!
//! For each run it prints wall time, the ratio to the original scheme, throughput, parallel
//! efficiency, utilisation per server, the lower bound on wall time and the distance from it.
//! The lower bound is the busiest server's work at its best rate, from the calls the servers
//! logged: prefill and decode back to back on a one-request server; on a batching server the
//! least time in which its decode rate curve and its slots can get through all the prefill and
//! decode; in (c) the best fractional split of feedback work between the two servers.
//!
//! Last, it measures memory: the peak resident set of a separate process that pushes 1 000 and
//! then 10 000 small submissions through the scheduler's bounded window to very fast servers.
//!
//! It prints figures and asserts none. Run it with `scripts/bench`; pass `a`, `b`, `c` or
//! `memory` to run only those parts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tandem::backend::Role;
use tandem::config::{Config, Thresholds};
use tandem::diagnostics::batch::{BatchSummary, summarise};
use tandem::fake_server::{Batching, FakeServer, Reply, reply_matching_schema};
use tandem::grading::{self, GradingPlan};
use tandem::record::{ResultRecord, Status, Student};
use tandem::scheduler::{Observer, Options, Policy, Quiet, Scheduler};
use tandem::submission::{Format, Submission};

const SUBMISSIONS: usize = 40;
/// Output tokens of a typical reply, before a submission's scale (0.7 to 1.3) is applied.
const CODE_TOKENS: f64 = 400.0;
const FEEDBACK_TOKENS: f64 = 725.0;

const RUBRIC: &str = r#"
title = "Regional sales analysis"
task = "Load sales.csv, clean it, total revenue by region and month, chart it, recommend."
[[criterion]]
id = "data_loading"
name = "Loads and cleans the data"
points = 2
description = "Reads the CSV, fixes types, handles missing values and duplicates."
[[criterion]]
id = "analysis"
name = "Revenue analysis"
points = 3
description = "Totals revenue by region and by month; names the top region and products."
[[criterion]]
id = "interpretation"
name = "Business recommendation"
points = 3
description = "A concrete recommendation backed by the figures."
"#;

/// How fast one kind of server is.
#[derive(Debug, Clone, Copy)]
struct Speed {
    prefill: f64,
    decode: f64,
}

/// The seed's code-analysis server, twenty times faster: 228 prompt tokens in 1.27 s, about
/// 30 tok/s of output.
const CODE_SPEED: Speed = Speed {
    prefill: 3_600.0,
    decode: 600.0,
};
/// The seed's feedback server, twenty times faster: 438 prompt tokens in 2.77 s, about
/// 37 tok/s of output.
const FEEDBACK_SPEED: Speed = Speed {
    prefill: 3_160.0,
    decode: 740.0,
};

/// One fake server of a setting.
#[derive(Clone)]
struct ServerSpec {
    name: &'static str,
    roles: &'static [&'static str],
    speed: Speed,
    slots: usize,
    batching: Batching,
    concurrency: String,
}

/// What one run measured.
struct RunResult {
    label: String,
    graded: usize,
    summary: BatchSummary,
    lower_bound: f64,
    /// Each adaptive backend's limits, with when they were set.
    limits: Vec<(String, String)>,
    /// Per role: prompt tokens and output tokens of the requests sent, least, mean and most.
    sizes: Vec<(Role, [u64; 3], [u64; 3])>,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let parts: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if args.first().map(String::as_str) == Some("memory-child") {
        memory_child(&args[1..]);
        return;
    }
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|a| *a == part);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let submissions = synthetic_submissions(SUBMISSIONS);
    println!(
        "tandem scheduler benchmark: {} submissions, code analysis {} tok/s decode / {} tok/s \
         prefill for ~{} tokens, feedback {} / {} for ~{}",
        SUBMISSIONS,
        CODE_SPEED.decode,
        CODE_SPEED.prefill,
        CODE_TOKENS,
        FEEDBACK_SPEED.decode,
        FEEDBACK_SPEED.prefill,
        FEEDBACK_TOKENS
    );
    let sequential = args.iter().any(|a| a == "--sequential");
    println!(
        "settings (a), (b) and (c) run {}; the runs within a setting one after another",
        if sequential {
            "one after another"
        } else {
            "side by side, each on its own servers"
        }
    );
    let started = Instant::now();
    let settings = runtime.block_on(async {
        let a = async {
            if wanted("a") {
                Some(setting_a(&submissions).await)
            } else {
                None
            }
        };
        let b = async {
            if wanted("b") {
                Some(setting_b(&submissions).await)
            } else {
                None
            }
        };
        let c = async {
            if wanted("c") {
                Some(setting_c(&submissions).await)
            } else {
                None
            }
        };
        if sequential {
            vec![a.await, b.await, c.await]
        } else {
            let (a, b, c) = tokio::join!(a, b, c);
            vec![a, b, c]
        }
    });
    for setting in settings.into_iter().flatten() {
        print_setting(&setting);
    }
    if wanted("memory") {
        memory(&runtime);
    }
    println!("\nbenchmark took {:.0} s", started.elapsed().as_secs_f64());
}

/// A setting's runs, ready to print.
struct Setting {
    title: &'static str,
    target: &'static str,
    results: Vec<RunResult>,
}

async fn setting_a(submissions: &[Arc<Submission>]) -> Setting {
    let servers = |concurrency: &str| {
        vec![
            spec(
                "code",
                &["code_analysis"],
                CODE_SPEED,
                1,
                Batching::Linear,
                concurrency,
            ),
            spec(
                "feedback",
                &["feedback"],
                FEEDBACK_SPEED,
                1,
                Batching::Linear,
                concurrency,
            ),
        ]
    };
    let original = run("original", &servers("1"), Policy::OneAtATime, submissions).await;
    let tandem = run("tandem", &servers("1"), Policy::Tandem, submissions).await;
    Setting {
        title: "(a) servers that serve one request at a time",
        target: "target: tandem within 5% of the lower bound",
        results: vec![original, tandem],
    }
}

async fn setting_b(submissions: &[Arc<Submission>]) -> Setting {
    let servers = |concurrency: &str| {
        vec![
            spec(
                "code",
                &["code_analysis"],
                CODE_SPEED,
                4,
                Batching::Power(0.7),
                concurrency,
            ),
            spec(
                "feedback",
                &["feedback"],
                FEEDBACK_SPEED,
                4,
                Batching::Power(0.7),
                concurrency,
            ),
        ]
    };
    let mut results = vec![run("original", &servers("1"), Policy::OneAtATime, submissions).await];
    for concurrency in ["1", "2", "4"] {
        let label = format!("tandem, fixed {concurrency}");
        results.push(run(&label, &servers(concurrency), Policy::Tandem, submissions).await);
    }
    let auto = servers("\"auto\"");
    results.push(run("tandem, auto", &auto, Policy::Tandem, submissions).await);
    Setting {
        title: "(b) servers that decode up to 4 at once, aggregate rate k^0.7",
        target: "targets: tandem >= 2x the original's throughput; auto within 10% of the best fixed",
        results,
    }
}

async fn setting_c(submissions: &[Arc<Submission>]) -> Setting {
    let servers = vec![
        spec(
            "code+feedback",
            &["code_analysis", "feedback"],
            CODE_SPEED,
            1,
            Batching::Linear,
            "1",
        ),
        spec(
            "feedback",
            &["feedback"],
            FEEDBACK_SPEED,
            1,
            Batching::Linear,
            "1",
        ),
    ];
    let original = run("original", &servers, Policy::OneAtATime, submissions).await;
    let tandem = run("tandem", &servers, Policy::Tandem, submissions).await;
    Setting {
        title: "(c) one-request servers, the code-analysis server can also take feedback",
        target: "target: tandem parallel efficiency >= 1.9",
        results: vec![original, tandem],
    }
}

fn spec(
    name: &'static str,
    roles: &'static [&'static str],
    speed: Speed,
    slots: usize,
    batching: Batching,
    concurrency: &str,
) -> ServerSpec {
    ServerSpec {
        name,
        roles,
        speed,
        slots,
        batching,
        concurrency: concurrency.to_string(),
    }
}

/// Submissions from 400 to 6 000 characters in a fixed shuffled order, then sorted largest
/// first as a batch admits them. Each carries the scales (0.7 to 1.3) of the replies it gets:
/// the code analysis of a larger submission is longer, the feedback's length varies on its own.
fn synthetic_submissions(count: usize) -> Vec<Arc<Submission>> {
    let line = "revenue = sales.groupby('region')['units'].sum() * price  # step\n";
    let last = (count - 1).max(1);
    let mut list: Vec<Arc<Submission>> = (0..count)
        .map(|n| {
            let rank = (n * 17 + 5) % count;
            let chars = 400 + rank * 5_600 / last;
            let code_scale = 0.7 + 0.6 * rank as f64 / last as f64;
            let feedback_scale = 0.7 + 0.6 * ((n * 23 + 11) % count) as f64 / last as f64;
            let mut text = format!(
                "# reply-scale:code_analysis={code_scale:.3} reply-scale:feedback={feedback_scale:.3}\n"
            );
            while text.len() < chars {
                text.push_str(line);
            }
            text.truncate(chars);
            Arc::new(Submission {
                id: format!("student-{n:02}"),
                entry: format!("student-{n:02}.py").into(),
                files: vec![format!("student-{n:02}.py")],
                format: Format::Python,
                sha256: format!("{n:064}"),
                bytes: text.len() as u64,
                student: Student::default(),
                text,
            })
        })
        .collect();
    list.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    list
}

fn role_of(body: &Value) -> Role {
    let schema = &body["response_format"]["json_schema"]["schema"];
    if schema["properties"].get("strengths").is_some() {
        Role::Feedback
    } else {
        Role::CodeAnalysis
    }
}

/// A schema-valid reply, padded with whitespace inside the object to its role's length scaled
/// by the submission's `reply-scale:ROLE=`; the fake server cuts replies into four-character
/// tokens.
fn reply() -> Reply {
    Reply::func(|body| {
        let json = reply_matching_schema(&body["response_format"]["json_schema"]["schema"]);
        let text = body["messages"][1]["content"].as_str().unwrap_or_default();
        let role = role_of(body);
        let marker = format!("reply-scale:{role}=");
        let scale = text
            .find(&marker)
            .and_then(|at| text[at + marker.len()..].split_whitespace().next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(1.0);
        let base = match role {
            Role::CodeAnalysis => CODE_TOKENS,
            Role::Feedback => FEEDBACK_TOKENS,
        };
        let chars = (base * scale).round() as usize * 4;
        if json.len() >= chars {
            return json;
        }
        format!("{{{}{}", " ".repeat(chars - json.len()), &json[1..])
    })
}

/// Writes a configuration for the servers into `dir`.
fn write_config(dir: &Path, specs: &[ServerSpec], urls: &[String]) -> Arc<Config> {
    std::fs::write(dir.join("rubric.toml"), RUBRIC).expect("writing the rubric");
    let mut text = String::from(
        "[assignment]\nrubric = \"rubric.toml\"\n\n[grading]\nretries = 2\n\
         code_analysis_max_tokens = 1024\nfeedback_max_tokens = 1200\n",
    );
    for (spec, url) in specs.iter().zip(urls) {
        let roles: Vec<String> = spec.roles.iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\nroles = [{}]\nurl = \"{url}\"\nmodel = \"fake\"\n\
             max_concurrency = {}\n",
            spec.name,
            roles.join(", "),
            spec.concurrency
        ));
    }
    let path = dir.join("tandem.toml");
    std::fs::write(&path, &text).expect("writing the configuration");
    Arc::new(Config::from_toml(&path, &text).expect("a valid benchmark configuration"))
}

/// Records each adaptive backend's limits as they change, with the time since the run began.
struct Limits {
    started: Instant,
    changes: Mutex<Vec<(String, usize, f64)>>,
}

impl Observer for Limits {
    fn limit_changed(&self, server: &str, limit: usize) {
        let at = self.started.elapsed().as_secs_f64();
        self.changes
            .lock()
            .unwrap()
            .push((server.to_string(), limit, at));
    }
}

/// Grades the submissions once on fresh servers and measures the run.
async fn run(
    label: &str,
    specs: &[ServerSpec],
    policy: Policy,
    submissions: &[Arc<Submission>],
) -> RunResult {
    let mut servers = Vec::new();
    for spec in specs {
        servers.push(
            FakeServer::builder()
                .prefill_tok_per_s(spec.speed.prefill)
                .decode_tok_per_s(spec.speed.decode)
                .slots(spec.slots)
                .batching(spec.batching.clone())
                .reply(reply())
                .start()
                .await,
        );
    }
    let urls: Vec<String> = servers.iter().map(FakeServer::url).collect();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = write_config(dir.path(), specs, &urls);
    let plan = Arc::new(GradingPlan::new(config));
    let limits = Arc::new(Limits {
        started: Instant::now(),
        changes: Mutex::new(Vec::new()),
    });

    let records = grade(&plan, policy, limits.clone(), submissions.to_vec()).await;
    let summary = summarise(&records, &Thresholds::default());
    let graded = records
        .iter()
        .filter(|r| r.status == Status::Graded)
        .count();
    let logs: Vec<Vec<(Role, u64, u64)>> = servers
        .iter()
        .map(|server| {
            server
                .stats()
                .requests_log
                .iter()
                .map(|r| (role_of(&r.body), r.prompt_tokens, r.completion_tokens))
                .collect()
        })
        .collect();
    let lower_bound = lower_bound(specs, &logs);
    let sizes = Role::ALL
        .iter()
        .map(|&role| {
            let calls: Vec<_> = logs.iter().flatten().filter(|c| c.0 == role).collect();
            let spread = |values: Vec<u64>| {
                let n = values.len().max(1) as u64;
                let least = values.iter().copied().min().unwrap_or(0);
                let most = values.iter().copied().max().unwrap_or(0);
                [least, values.iter().sum::<u64>() / n, most]
            };
            (
                role,
                spread(calls.iter().map(|c| c.1).collect()),
                spread(calls.iter().map(|c| c.2).collect()),
            )
        })
        .collect();

    let recorded = limits.changes.lock().unwrap().clone();
    let limits = specs
        .iter()
        .filter(|s| s.concurrency.contains("auto"))
        .map(|s| {
            let mut path = String::from("1");
            for (_, limit, at) in recorded.iter().filter(|(n, ..)| n == s.name) {
                path.push_str(&format!(" → {limit} ({at:.1} s)"));
            }
            (s.name.to_string(), path)
        })
        .collect();
    RunResult {
        label: label.to_string(),
        graded,
        summary,
        lower_bound,
        limits,
        sizes,
    }
}

/// Runs a scheduler over the submissions and returns their records.
async fn grade(
    plan: &Arc<GradingPlan>,
    policy: Policy,
    observer: Arc<dyn Observer>,
    input: Vec<Arc<Submission>>,
) -> Vec<ResultRecord> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let options = Options {
        policy,
        ..Options::default()
    };
    let scheduler = Scheduler::new(
        plan.clone(),
        &options,
        observer,
        CancellationToken::new(),
        done_tx,
    )
    .expect("a scheduler for the benchmark's servers");
    let (tx, rx) = mpsc::channel(scheduler.window());
    let feeder = tokio::spawn(async move {
        for submission in input {
            if tx.send(submission).await.is_err() {
                break;
            }
        }
    });
    let collector = {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut records = Vec::new();
            while let Some(done) = done_rx.recv().await {
                records.push(grading::assemble(
                    &plan,
                    "bench",
                    &done.submission,
                    done.submission.info(),
                    Vec::new(),
                    done.results,
                ));
            }
            records
        })
    };
    scheduler.run(rx).await;
    feeder.await.expect("the feeder ends");
    collector.await.expect("the collector ends")
}

/// Seconds a one-request server needs for a call: prefill, then one token after another.
fn serial_seconds(speed: Speed, prompt: u64, output: u64) -> f64 {
    prompt as f64 / speed.prefill + output.saturating_sub(1) as f64 / speed.decode
}

/// The least time a server with `slots` slots and aggregate decode rate `decode × f(k)` needs
/// for `prefill` seconds of prefill (each occupying a slot, not shared) and `tokens` decoded
/// tokens: the smallest T for which some mix of states (k slots decoding, the rest
/// prefilling) does both within T. Found by bisection; the mix needs at most two states.
fn batching_lower_bound(
    slots: usize,
    batching: &Batching,
    decode: f64,
    prefill: f64,
    tokens: f64,
) -> f64 {
    let states: Vec<(f64, f64)> = (0..=slots)
        .map(|k| {
            let rate = if k == 0 {
                0.0
            } else {
                decode * batching.aggregate(k)
            };
            (rate, (slots - k) as f64)
        })
        .collect();
    let feasible = |t: f64| {
        let (need_rate, need_prefill) = (tokens / t, prefill / t);
        for a in &states {
            for b in &states {
                for step in 0..=200 {
                    let w = step as f64 / 200.0;
                    let rate = w * a.0 + (1.0 - w) * b.0;
                    let pre = w * a.1 + (1.0 - w) * b.1;
                    if rate >= need_rate && pre >= need_prefill {
                        return true;
                    }
                }
            }
        }
        false
    };
    let (mut low, mut high) = (0.0, 1.0);
    while !feasible(high) {
        high *= 2.0;
    }
    for _ in 0..60 {
        let mid = (low + high) / 2.0;
        if feasible(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    high
}

/// The lower bound on a run's wall time from the calls each server logged.
fn lower_bound(specs: &[ServerSpec], logs: &[Vec<(Role, u64, u64)>]) -> f64 {
    let dual = specs.iter().position(|s| s.roles.len() > 1);
    if let (Some(a), 2) = (dual, specs.len()) {
        // (c): server A must do every code call; feedback calls may go to either. Each call's
        // work is measured at the speed of the server that would do it.
        let b = 1 - a;
        let calls: Vec<&(Role, u64, u64)> = logs.iter().flatten().collect();
        let code_a: f64 = calls
            .iter()
            .filter(|c| c.0 == Role::CodeAnalysis)
            .map(|c| serial_seconds(specs[a].speed, c.1, c.2))
            .sum();
        let feedback = calls.iter().filter(|c| c.0 == Role::Feedback);
        let fb_a: f64 = feedback
            .clone()
            .map(|c| serial_seconds(specs[a].speed, c.1, c.2))
            .sum();
        let fb_b: f64 = feedback
            .map(|c| serial_seconds(specs[b].speed, c.1, c.2))
            .sum();
        let share = ((fb_b - code_a) / (fb_a + fb_b)).clamp(0.0, 1.0);
        return (code_a + share * fb_a).max((1.0 - share) * fb_b);
    }
    specs
        .iter()
        .zip(logs)
        .map(|(spec, calls)| {
            if spec.slots == 1 {
                calls
                    .iter()
                    .map(|c| serial_seconds(spec.speed, c.1, c.2))
                    .sum()
            } else {
                let prefill: f64 = calls.iter().map(|c| c.1 as f64 / spec.speed.prefill).sum();
                let tokens: f64 = calls.iter().map(|c| c.2.saturating_sub(1) as f64).sum();
                batching_lower_bound(
                    spec.slots,
                    &spec.batching,
                    spec.speed.decode,
                    prefill,
                    tokens,
                )
            }
        })
        .fold(0.0, f64::max)
}

fn print_setting(setting: &Setting) {
    let results = &setting.results;
    if results.is_empty() {
        return;
    }
    println!("\n{}", setting.title);
    println!("  {}", setting.target);
    let original = results[0].summary.wall_seconds;
    let mut names: Vec<&str> = Vec::new();
    for server in results.iter().flat_map(|r| &r.summary.servers) {
        if !names.contains(&server.name.as_str()) {
            names.push(&server.name);
        }
    }
    let mut header = format!(
        "  {:<18} {:>6} {:>8} {:>9} {:>8} {:>8}",
        "run", "graded", "wall s", "speed-up", "tok/s", "par.eff"
    );
    for name in &names {
        header.push_str(&format!(" {:>15}", format!("util {name}")));
    }
    header.push_str(&format!(" {:>8} {:>9}", "bound s", "over it"));
    println!("{header}");
    for r in results {
        let s = &r.summary;
        let mut line = format!(
            "  {:<18} {:>6} {:>8.2} {:>8.2}x {:>8.0} {:>8.2}",
            r.label,
            format!("{}/{}", r.graded, s.submissions),
            s.wall_seconds,
            original / s.wall_seconds,
            s.combined_throughput_tokens_per_second,
            s.parallel_efficiency
        );
        for name in &names {
            let util = s
                .servers
                .iter()
                .find(|x| x.name == *name)
                .map_or(0.0, |x| x.utilisation);
            line.push_str(&format!(" {:>14.0}%", util * 100.0));
        }
        line.push_str(&format!(
            " {:>8.2} {:>8.1}%",
            r.lower_bound,
            (s.wall_seconds / r.lower_bound - 1.0) * 100.0
        ));
        println!("{line}");
    }
    for r in results {
        for (name, path) in &r.limits {
            println!("  {} limit of {name}: {path}", r.label);
        }
    }
    let sizes: Vec<String> = results[0]
        .sizes
        .iter()
        .map(|(role, p, o)| {
            format!(
                "{role} {}..{}..{} in, {}..{}..{} out",
                p[0], p[1], p[2], o[0], o[1], o[2]
            )
        })
        .collect();
    println!(
        "  tokens per call (least..mean..most): {}",
        sizes.join("; ")
    );
}

/// Measures the scheduler's memory in child processes, so that the fake servers' own logs
/// (every request body) and the earlier settings do not count.
fn memory(runtime: &tokio::runtime::Runtime) {
    println!("\nmemory: submissions pushed through the scheduler's bounded window");
    let _guard = runtime.enter();
    let (servers, urls) = runtime.block_on(async {
        let mut servers = Vec::new();
        for _ in 0..2 {
            servers.push(
                FakeServer::builder()
                    .prefill_tok_per_s(10_000_000.0)
                    .decode_tok_per_s(1_000_000.0)
                    .tokens_per_chunk(64)
                    .slots(8)
                    .start()
                    .await,
            );
        }
        let urls: Vec<String> = servers.iter().map(FakeServer::url).collect();
        (servers, urls)
    });
    let dir = tempfile::tempdir().expect("a temporary folder");
    let specs = [
        spec(
            "code",
            &["code_analysis"],
            CODE_SPEED,
            8,
            Batching::Linear,
            "8",
        ),
        spec(
            "feedback",
            &["feedback"],
            FEEDBACK_SPEED,
            8,
            Batching::Linear,
            "8",
        ),
    ];
    write_config(dir.path(), &specs, &urls);
    let exe = std::env::current_exe().expect("the benchmark's own path");
    for count in [1_000, 10_000] {
        let output = std::process::Command::new(&exe)
            .arg("memory-child")
            .arg(dir.path().join("tandem.toml"))
            .arg(count.to_string())
            .output()
            .expect("running the memory child");
        print!("{}", String::from_utf8_lossy(&output.stdout));
        if !output.status.success() {
            println!(
                "  child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    drop(servers);
}

/// Peak and current resident set of this process, in kilobytes, from /proc/self/status.
fn resident_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The child of [`memory`]: grades `count` generated submissions with the configuration given
/// and prints its peak resident set.
fn memory_child(args: &[String]) {
    let config_path = Path::new(&args[0]);
    let count: usize = args[1].parse().expect("a submission count");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (before, _) = resident_kb();
    let started = Instant::now();
    let (graded, window) = runtime.block_on(async {
        let config = Arc::new(Config::load(config_path).expect("the parent's configuration"));
        let plan = Arc::new(GradingPlan::new(config));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let scheduler = Scheduler::new(
            plan.clone(),
            &Options::default(),
            Arc::new(Quiet),
            CancellationToken::new(),
            done_tx,
        )
        .expect("a scheduler");
        let window = scheduler.window();
        let (tx, rx) = mpsc::channel(window);
        let feeder = tokio::spawn(async move {
            for n in 0..count {
                let text = format!("# submission {n}\n{}", "x = 1\n".repeat(150));
                let submission = Arc::new(Submission {
                    id: format!("s{n:05}"),
                    entry: format!("s{n:05}.py").into(),
                    files: vec![format!("s{n:05}.py")],
                    format: Format::Python,
                    sha256: format!("{n:064}"),
                    bytes: text.len() as u64,
                    student: Student::default(),
                    text,
                });
                if tx.send(submission).await.is_err() {
                    break;
                }
            }
        });
        let collector = tokio::spawn(async move {
            let mut graded = 0;
            while let Some(done) = done_rx.recv().await {
                let record = grading::assemble(
                    &plan,
                    "memory",
                    &done.submission,
                    done.submission.info(),
                    Vec::new(),
                    done.results,
                );
                graded += usize::from(record.status == Status::Graded);
            }
            graded
        });
        scheduler.run(rx).await;
        feeder.await.expect("the feeder ends");
        (collector.await.expect("the collector ends"), window)
    });
    let (peak, now) = resident_kb();
    println!(
        "  {count:>6} submissions ({graded} graded) through a window of {window}: peak RSS \
         {:.1} MB (before grading {:.1} MB, at the end {:.1} MB), {:.1} s",
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
        now as f64 / 1024.0,
        started.elapsed().as_secs_f64()
    );
}
