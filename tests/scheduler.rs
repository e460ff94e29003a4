//! The scheduler against fake model servers that inject each fault: concurrency limits, keeping
//! servers busy, cross-role help, failover, the circuit breaker, retries and what the records
//! say about them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tandem::backend::Role;
use tandem::config::{Config, Thresholds};
use tandem::diagnostics::batch::summarise;
use tandem::fake_server::{
    FakeServer, FakeServerBuilder, Fault, Reply, When, reply_matching_schema,
};
use tandem::grading::{self, GradingPlan};
use tandem::record::{ResultRecord, Status, Student};
use tandem::scheduler::{BreakerSettings, Observer, Options, Policy, Scheduler, Timing};
use tandem::submission::{Format, Submission};

const RUBRIC: &str = r#"
title = "Sales"
task = "Analyse sales.csv by region."
[[criterion]]
id = "loading"
name = "Loads the data"
points = 2
description = "Reads the CSV."
[[criterion]]
id = "analysis"
name = "Analysis"
points = 3
description = "Totals revenue by region."
"#;

/// A backend of a test configuration.
struct Backend<'a> {
    name: &'a str,
    roles: &'a [&'a str],
    url: String,
    concurrency: &'a str,
}

impl<'a> Backend<'a> {
    fn new(name: &'a str, roles: &'a [&'a str], server: &FakeServer, concurrency: &'a str) -> Self {
        Backend {
            name,
            roles,
            url: server.url(),
            concurrency,
        }
    }
}

/// A configuration in a temporary folder, with `retries` and the backends given.
fn config(dir: &TempDir, retries: u32, backends: &[Backend]) -> Arc<Config> {
    std::fs::write(dir.path().join("rubric.toml"), RUBRIC).unwrap();
    let mut text = format!(
        "[assignment]\nrubric = \"rubric.toml\"\n\n[grading]\nretries = {retries}\n\
         read_timeout_seconds = 5\nconnect_timeout_seconds = 2\n"
    );
    for b in backends {
        let roles: Vec<String> = b.roles.iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!(
            "\n[[backend]]\nname = \"{}\"\nroles = [{}]\nurl = \"{}\"\nmodel = \"fake\"\n\
             max_concurrency = {}\n",
            b.name,
            roles.join(", "),
            b.url,
            b.concurrency
        ));
    }
    let path = dir.path().join("tandem.toml");
    Arc::new(Config::from_toml(&path, &text).unwrap())
}

/// Short pauses, so faults play out in a test's time.
fn quick_timing() -> Timing {
    Timing {
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        breaker: BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_millis(150),
            cooldown_max: Duration::from_millis(600),
        },
        outage_limit: Duration::from_secs(30),
    }
}

fn options(policy: Policy) -> Options {
    Options {
        policy,
        window: None,
        timing: quick_timing(),
    }
}

/// A submission whose text carries a marker the fake servers' logs can be searched for.
fn submission(n: usize, text: &str) -> Arc<Submission> {
    Arc::new(Submission {
        id: format!("sub-{n:02}"),
        entry: PathBuf::from(format!("sub-{n:02}.py")),
        files: vec![format!("sub-{n:02}.py")],
        format: Format::Python,
        sha256: format!("{n:064}"),
        bytes: text.len() as u64,
        student: Student::default(),
        text: format!("# SUBMISSION-{n:02}\n{text}"),
    })
}

fn submissions(count: usize) -> Vec<Arc<Submission>> {
    (0..count)
        .map(|n| submission(n, "import pandas as pd\nsales = pd.read_csv('sales.csv')\n"))
        .collect()
}

/// What an observer saw, with the time it saw it.
#[derive(Debug, Clone)]
enum Event {
    Retried { role: Role, server: String },
    Backend { server: String, in_service: bool },
    Limit { server: String, limit: usize },
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(Instant, Event)>>,
}

impl Recorder {
    fn events(&self) -> Vec<(Instant, Event)> {
        self.events.lock().unwrap().clone()
    }

    fn push(&self, event: Event) {
        self.events.lock().unwrap().push((Instant::now(), event));
    }
}

impl Observer for Recorder {
    fn call_retried(&self, _submission: &str, role: Role, server: &str, _error: &str) {
        self.push(Event::Retried {
            role,
            server: server.to_string(),
        });
    }

    fn backend_state(&self, server: &str, in_service: bool, _reason: &str) {
        self.push(Event::Backend {
            server: server.to_string(),
            in_service,
        });
    }

    fn limit_changed(&self, server: &str, limit: usize) {
        self.push(Event::Limit {
            server: server.to_string(),
            limit,
        });
    }
}

/// Runs the scheduler over the submissions, in order, and returns their records as they
/// finished.
async fn grade(
    config: Arc<Config>,
    options: Options,
    observer: Arc<dyn Observer>,
    input: Vec<Arc<Submission>>,
) -> Vec<ResultRecord> {
    let plan = Arc::new(GradingPlan::new(config));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let scheduler = Scheduler::new(
        plan.clone(),
        &options,
        observer,
        CancellationToken::new(),
        done_tx,
    )
    .unwrap();
    let (tx, rx) = mpsc::channel(scheduler.window());
    let feeder = tokio::spawn(async move {
        for s in input {
            tx.send(s).await.unwrap();
        }
    });
    let run = tokio::time::timeout(Duration::from_secs(60), scheduler.run(rx));
    run.await.expect("the scheduler finishes within a minute");
    feeder.await.unwrap();
    let mut records = Vec::new();
    while let Ok(done) = done_rx.try_recv() {
        records.push(grading::assemble(
            &plan,
            "test",
            &done.submission,
            done.submission.info(),
            Vec::new(),
            done.results,
        ));
    }
    records
}

/// The role a logged request was made for, from the schema it asked for.
fn role_of(body: &Value) -> Role {
    let schema = &body["response_format"]["json_schema"]["schema"];
    if schema["properties"].get("strengths").is_some() {
        Role::Feedback
    } else {
        Role::CodeAnalysis
    }
}

/// The submission number a logged request was made for, from its marker.
fn submission_of(body: &Value) -> usize {
    let text = body["messages"][1]["content"].as_str().unwrap_or_default();
    let at = text.find("SUBMISSION-").expect("request carries a marker") + "SUBMISSION-".len();
    text[at..at + 2].parse().unwrap()
}

/// A schema-valid reply padded with whitespace to about `tokens` four-character tokens.
fn padded(json: String, tokens: usize) -> String {
    let target = tokens * 4;
    if json.len() >= target {
        return json;
    }
    format!("{{{}{}", " ".repeat(target - json.len()), &json[1..])
}

/// Replies of `long` tokens to requests whose submission text holds `marker`, `short` else.
fn reply_long_when(marker: &'static str, long: usize, short: usize) -> Reply {
    Reply::func(move |body| {
        let json = reply_matching_schema(&body["response_format"]["json_schema"]["schema"]);
        let text = body["messages"][1]["content"].as_str().unwrap_or_default();
        padded(json, if text.contains(marker) { long } else { short })
    })
}

fn fake() -> FakeServerBuilder {
    FakeServer::builder()
        .prefill_tok_per_s(50_000.0)
        .decode_tok_per_s(2_000.0)
}

fn record(records: &[ResultRecord], n: usize) -> &ResultRecord {
    let id = format!("sub-{n:02}");
    records
        .iter()
        .find(|r| r.submission.id == id)
        .unwrap_or_else(|| panic!("no record for {id}"))
}

fn all_graded(records: &[ResultRecord], count: usize) {
    assert_eq!(records.len(), count);
    for r in records {
        assert_eq!(
            r.status,
            Status::Graded,
            "{}: {:?}",
            r.submission.id,
            r.error
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_each_backends_max_concurrency_exactly() {
    let long = |tokens| {
        Reply::func(move |body: &Value| {
            padded(
                reply_matching_schema(&body["response_format"]["json_schema"]["schema"]),
                tokens,
            )
        })
    };
    let code = fake().slots(8).reply(long(100)).start().await;
    let feedback = fake().slots(8).reply(long(100)).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "3"),
            Backend::new("feedback", &["feedback"], &feedback, "2"),
        ],
    );
    let records = grade(
        config,
        options(Policy::Tandem),
        Arc::new(Recorder::default()),
        submissions(16),
    )
    .await;

    all_graded(&records, 16);
    assert_eq!(code.stats().peak_in_flight, 3);
    assert_eq!(feedback.stats().peak_in_flight, 2);
    assert_eq!(code.stats().requests, 16);
    assert_eq!(feedback.stats().requests, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_two_one_slot_servers_busy_across_submissions() {
    // Even submissions take the code server long, odd ones the feedback server: the original
    // scheme leaves one server idle half of every submission; the scheduler must not.
    // Few tokens at a modest rate, so that reading the stream never lags behind the server.
    let code = fake()
        .slots(1)
        .decode_tok_per_s(500.0)
        .reply(reply_long_when("LONG-CODE", 75, 15))
        .start()
        .await;
    let feedback = fake()
        .slots(1)
        .decode_tok_per_s(500.0)
        .reply(reply_long_when("LONG-FEEDBACK", 75, 15))
        .start()
        .await;
    let input: Vec<_> = (0..16)
        .map(|n| {
            let marker = if n % 2 == 0 {
                "LONG-CODE"
            } else {
                "LONG-FEEDBACK"
            };
            submission(n, marker)
        })
        .collect();
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "1"),
        ],
    );

    let tandem = grade(
        config.clone(),
        options(Policy::Tandem),
        Arc::new(Recorder::default()),
        input.clone(),
    )
    .await;
    all_graded(&tandem, 16);
    let summary = summarise(&tandem, &Thresholds::default());
    for server in &summary.servers {
        assert!(
            server.utilisation > 0.8,
            "{} busy {:.2} of the batch",
            server.name,
            server.utilisation
        );
    }
    // Each server's next request arrives right after its previous one ended: the idle time
    // between its calls is a small share of the batch, however the machine's load spreads it.
    let wall = Duration::from_secs_f64(summary.wall_seconds);
    for server in [&code, &feedback] {
        let log = server.stats().requests_log;
        let idle: Duration = log
            .windows(2)
            .map(|pair| {
                pair[1]
                    .received
                    .saturating_duration_since(pair[0].finished.unwrap())
            })
            .sum();
        assert!(idle < wall / 6, "idle {idle:?} of {wall:?}");
    }

    let original = grade(
        config,
        options(Policy::OneAtATime),
        Arc::new(Recorder::default()),
        input,
    )
    .await;
    all_graded(&original, 16);
    let before = summarise(&original, &Thresholds::default());
    assert!(
        before.parallel_efficiency < 1.5 && summary.parallel_efficiency > 1.6,
        "original {:.2}, tandem {:.2}",
        before.parallel_efficiency,
        summary.parallel_efficiency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_role_server_takes_the_other_roles_work_when_its_own_runs_out() {
    let both = fake().slots(1).start().await;
    let slow_feedback = fake().slots(1).decode_tok_per_s(150.0).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("both", &["code_analysis", "feedback"], &both, "1"),
            Backend::new("feedback", &["feedback"], &slow_feedback, "1"),
        ],
    );
    let records = grade(
        config,
        options(Policy::Tandem),
        Arc::new(Recorder::default()),
        submissions(10),
    )
    .await;

    all_graded(&records, 10);
    let mut feedback_by = BTreeMap::new();
    for r in &records {
        let calls = &r.performance_diagnostics.calls;
        assert_eq!(calls[&Role::CodeAnalysis].server, "both");
        *feedback_by
            .entry(calls[&Role::Feedback].server.clone())
            .or_insert(0) += 1;
    }
    assert!(
        feedback_by.get("both").copied().unwrap_or(0) >= 3,
        "{feedback_by:?}"
    );
    assert!(
        feedback_by.get("feedback").copied().unwrap_or(0) >= 1,
        "{feedback_by:?}"
    );
    // The servers' own logs agree with the records.
    let helped = both
        .bodies()
        .iter()
        .filter(|b| role_of(b) == Role::Feedback)
        .count();
    assert_eq!(helped, feedback_by["both"]);
    // Its own role comes first: with both roles' calls waiting at the start, it took a code
    // call, and it made all of them.
    let bodies = both.bodies();
    assert_eq!(role_of(&bodies[0]), Role::CodeAnalysis);
    let code_calls = bodies
        .iter()
        .filter(|b| role_of(b) == Role::CodeAnalysis)
        .count();
    assert_eq!(code_calls, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_another_backend_when_one_refuses_connections() {
    let live = fake().slots(4).start().await;
    let feedback = fake().slots(4).start().await;
    let dir = TempDir::new().unwrap();
    let mut backends = vec![
        Backend::new("dead", &["code_analysis"], &live, "2"),
        Backend::new("live", &["code_analysis"], &live, "2"),
        Backend::new("feedback", &["feedback"], &feedback, "2"),
    ];
    backends[0].url = FakeServer::refused_url().await;
    let config = config(&dir, 1, &backends);
    let recorder = Arc::new(Recorder::default());
    let records = grade(
        config,
        options(Policy::Tandem),
        recorder.clone(),
        submissions(8),
    )
    .await;

    all_graded(&records, 8);
    let mut failed_over = 0;
    for r in &records {
        let call = &r.performance_diagnostics.calls[&Role::CodeAnalysis];
        assert_eq!(call.server, "live");
        assert_eq!(call.attempts as usize, call.retries.len() + 1);
        for note in &call.retries {
            assert_eq!(note.server, "dead");
            assert_eq!(note.kind, "connect");
            failed_over += 1;
        }
    }
    assert!(failed_over >= 1);
    let retried = recorder
        .events()
        .iter()
        .filter(|(_, e)| {
            matches!(e, Event::Retried { role: Role::CodeAnalysis, server } if server == "dead")
        })
        .count();
    assert_eq!(retried, failed_over);
    assert_eq!(live.stats().requests, 8);
    // The dead backend was taken out after three refusals in a row.
    assert!(recorder.events().iter().any(
        |(_, e)| matches!(e, Event::Backend { server, in_service: false } if server == "dead")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_another_backend_on_server_errors_and_busy_replies() {
    for fault in [Fault::server_error(), Fault::busy(), Fault::loading()] {
        let failing = fake()
            .slots(4)
            .fault(fault.clone(), When::Every)
            .start()
            .await;
        let good = fake().slots(4).start().await;
        let feedback = fake().slots(4).start().await;
        let dir = TempDir::new().unwrap();
        let config = config(
            &dir,
            1,
            &[
                Backend::new("failing", &["code_analysis"], &failing, "1"),
                Backend::new("good", &["code_analysis"], &good, "1"),
                Backend::new("feedback", &["feedback"], &feedback, "2"),
            ],
        );
        let records = grade(
            config,
            options(Policy::Tandem),
            Arc::new(Recorder::default()),
            submissions(6),
        )
        .await;

        all_graded(&records, 6);
        let status = match &fault {
            Fault::Status { status, .. } => *status,
            _ => unreachable!(),
        };
        let notes: Vec<_> = records
            .iter()
            .flat_map(|r| {
                r.performance_diagnostics.calls[&Role::CodeAnalysis]
                    .retries
                    .clone()
            })
            .collect();
        assert!(!notes.is_empty(), "{fault:?} was never met");
        assert_eq!(notes.len(), failing.stats().requests);
        // A 503 is the server saying it is busy or loading; a 500 is a plain HTTP failure.
        let kind = if status == 503 {
            "server_busy"
        } else {
            "http_status"
        };
        for note in notes {
            assert_eq!(note.server, "failing");
            assert_eq!(note.kind, kind);
            assert!(
                note.message.contains(&status.to_string()),
                "{}",
                note.message
            );
        }
        for r in &records {
            assert_eq!(
                r.performance_diagnostics.calls[&Role::CodeAnalysis].server,
                "good"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_takes_out_a_failing_backend_probes_its_health_and_brings_it_back() {
    // Its first three calls fail and its first health probe says it is still loading.
    let flaky = fake()
        .slots(1)
        .fault(Fault::server_error(), When::FirstN(3))
        .health_loading_polls(1)
        .start()
        .await;
    let steady = fake().slots(1).decode_tok_per_s(400.0).start().await;
    let feedback = fake().slots(4).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("flaky", &["code_analysis"], &flaky, "1"),
            Backend::new("steady", &["code_analysis"], &steady, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "4"),
        ],
    );
    let recorder = Arc::new(Recorder::default());
    let records = grade(
        config,
        options(Policy::Tandem),
        recorder.clone(),
        submissions(16),
    )
    .await;

    all_graded(&records, 16);
    let changes: Vec<(Instant, bool)> = recorder
        .events()
        .into_iter()
        .filter_map(|(at, e)| match e {
            Event::Backend { server, in_service } if server == "flaky" => Some((at, in_service)),
            _ => None,
        })
        .collect();
    let states: Vec<bool> = changes.iter().map(|(_, s)| *s).collect();
    // Out, then on probation after a probe answered, then back once a call answered.
    assert_eq!(states, [false, true, true], "{changes:?}");
    let stats = flaky.stats();
    assert!(stats.health_polls >= 2, "{} polls", stats.health_polls);
    // No call was sent to it while it was out of service.
    let (out, back) = (changes[0].0, changes[1].0);
    assert!(
        stats
            .requests_log
            .iter()
            .all(|r| r.received <= out || r.received >= back),
        "a call reached the backend while it was out"
    );
    // It took calls again afterwards, and they answered.
    let after: Vec<_> = records
        .iter()
        .map(|r| &r.performance_diagnostics.calls[&Role::CodeAnalysis])
        .filter(|c| c.server == "flaky")
        .collect();
    assert!(!after.is_empty());
    assert_eq!(stats.requests, 3 + after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brings_back_a_server_that_stopped_and_restarted() {
    let mut code = fake().slots(1).start().await;
    let feedback = fake().slots(2).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        6,
        &[
            Backend::new("code", &["code_analysis"], &code, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "2"),
        ],
    );
    code.stop().await;
    let recorder = Arc::new(Recorder::default());
    let grading = tokio::spawn(grade(
        config,
        options(Policy::Tandem),
        recorder.clone(),
        submissions(4),
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    code.restart().await.unwrap();
    let records = grading.await.unwrap();

    all_graded(&records, 4);
    let states: Vec<bool> = recorder
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Backend { in_service, .. } => Some(in_service),
            _ => None,
        })
        .collect();
    assert_eq!(states.first(), Some(&false), "{states:?}");
    assert_eq!(states.last(), Some(&true), "{states:?}");
    let retried: usize = records
        .iter()
        .map(|r| {
            r.performance_diagnostics.calls[&Role::CodeAnalysis]
                .retries
                .len()
        })
        .sum();
    assert!(retried >= 1);
    assert!(records.iter().all(|r| {
        let call = &r.performance_diagnostics.calls[&Role::CodeAnalysis];
        call.retries.iter().all(|n| n.kind == "connect")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_overflow_fails_its_submission_without_a_retry() {
    // The small submissions' prompts fit; the large ones' do not.
    let code = fake().slots(2).context_size(1_500).start().await;
    let feedback = fake().slots(2).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        3,
        &[
            Backend::new("code", &["code_analysis"], &code, "2"),
            Backend::new("feedback", &["feedback"], &feedback, "2"),
        ],
    );
    let big = "x = 1\n".repeat(2_000);
    let input: Vec<_> = (0..7)
        .map(|n| submission(n, if n == 1 { "print('small')" } else { &big }))
        .collect();
    let recorder = Arc::new(Recorder::default());
    let records = grade(config, options(Policy::Tandem), recorder.clone(), input).await;

    assert_eq!(record(&records, 1).status, Status::Graded);
    for n in [0, 2, 3, 4, 5, 6] {
        let r = record(&records, n);
        assert_eq!(r.status, Status::Failed);
        let error = r.error.as_ref().unwrap();
        assert_eq!(error.kind, "context_overflow");
        assert!(error.message.contains("context"), "{}", error.message);
        let failed = &r.performance_diagnostics.failed_calls[&Role::CodeAnalysis];
        assert_eq!(failed.attempts, 1);
        assert!(failed.retries.is_empty());
        assert_eq!(failed.last_error.server, "code");
        // The feedback role still did its work.
        assert!(
            r.performance_diagnostics
                .calls
                .contains_key(&Role::Feedback)
        );
    }
    // One request each, never retried, and the backend was not blamed for the prompts.
    let per_submission = code.bodies().iter().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(submission_of(b)).or_insert(0) += 1;
        m
    });
    assert!(
        per_submission.values().all(|&n| n == 1),
        "{per_submission:?}"
    );
    assert!(recorder.events().is_empty(), "{:?}", recorder.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_exhausts_its_retries_fails_with_the_last_error() {
    let code = fake()
        .slots(1)
        .fault(Fault::server_error(), When::Every)
        .start()
        .await;
    let feedback = fake().slots(1).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        2,
        &[
            Backend::new("code", &["code_analysis"], &code, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "1"),
        ],
    );
    let mut options = options(Policy::Tandem);
    options.timing.breaker.threshold = 100;
    let records = grade(
        config,
        options,
        Arc::new(Recorder::default()),
        submissions(1),
    )
    .await;

    let r = record(&records, 0);
    assert_eq!(r.status, Status::Failed);
    let error = r.error.as_ref().unwrap();
    assert_eq!(error.kind, "http_status");
    assert!(
        error.message.contains("Invalid input batch"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("after 3 requests"),
        "{}",
        error.message
    );
    let failed = &r.performance_diagnostics.failed_calls[&Role::CodeAnalysis];
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.retries.len(), 2);
    assert!(failed.retries.iter().all(|n| n.kind == "http_status"));
    assert_eq!(code.stats().requests, 3);

    // The batch's figures count every request and every failure by kind.
    let summary = summarise(&records, &Thresholds::default());
    assert_eq!(summary.attempts, 4);
    assert_eq!(summary.failed_submissions_by_kind["http_status"], 1);
    assert_eq!(summary.retried_attempts_by_kind["http_status"], 2);
    let server = summary.servers.iter().find(|s| s.name == "code").unwrap();
    assert_eq!(server.failures, 3);
    assert_eq!(server.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_count_every_request_including_cut_streams_and_corrections() {
    // The code server drops its first stream; the feedback server's first reply is not JSON.
    let code = fake()
        .slots(1)
        .fault(Fault::Drop { after_tokens: 3 }, When::Nth(1))
        .start()
        .await;
    let first = Arc::new(AtomicUsize::new(0));
    let seen = first.clone();
    let feedback = fake()
        .slots(1)
        .reply(Reply::func(move |body| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                "I think the work is fine.".to_string()
            } else {
                reply_matching_schema(&body["response_format"]["json_schema"]["schema"])
            }
        }))
        .start()
        .await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "1"),
        ],
    );
    let records = grade(
        config,
        options(Policy::Tandem),
        Arc::new(Recorder::default()),
        submissions(1),
    )
    .await;

    all_graded(&records, 1);
    let calls = &records[0].performance_diagnostics.calls;
    let code_call = &calls[&Role::CodeAnalysis];
    assert_eq!(code_call.attempts, 2);
    assert_eq!(code_call.retries[0].kind, "stream_cut");
    assert_eq!(code.stats().requests, 2);
    let feedback_call = &calls[&Role::Feedback];
    assert_eq!(feedback_call.attempts, 2);
    assert_eq!(feedback_call.retries[0].kind, "invalid_json");
    assert_eq!(feedback.stats().requests, 2);
    let summary = summarise(&records, &Thresholds::default());
    assert_eq!(summary.attempts, 4);
    assert_eq!(summary.retried_attempts_by_kind["stream_cut"], 1);
    assert_eq!(summary.retried_attempts_by_kind["invalid_json"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_sent_in_the_order_submissions_were_admitted() {
    let code = fake().slots(1).start().await;
    let feedback = fake().slots(1).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "1"),
            Backend::new("feedback", &["feedback"], &feedback, "1"),
        ],
    );
    // The batch admits the largest first; the scheduler must keep whatever order it is given.
    let order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5];
    let input: Vec<_> = order.iter().map(|&n| submission(n, "x = 1")).collect();
    let records = grade(
        config,
        options(Policy::Tandem),
        Arc::new(Recorder::default()),
        input,
    )
    .await;

    all_graded(&records, 10);
    for server in [&code, &feedback] {
        let sent: Vec<usize> = server.bodies().iter().map(submission_of).collect();
        assert_eq!(sent, order);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_scheme_grades_one_submission_at_a_time() {
    let code = fake().slots(4).start().await;
    let feedback = fake().slots(4).start().await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "4"),
            Backend::new("feedback", &["feedback"], &feedback, "4"),
        ],
    );
    let records = grade(
        config,
        options(Policy::OneAtATime),
        Arc::new(Recorder::default()),
        submissions(6),
    )
    .await;

    all_graded(&records, 6);
    let (code, feedback) = (code.stats(), feedback.stats());
    assert_eq!(code.peak_in_flight, 1);
    assert_eq!(feedback.peak_in_flight, 1);
    // The k-th request on each server is the same submission, and the next one starts only
    // after both have ended.
    for k in 0..6 {
        let (c, f) = (&code.requests_log[k], &feedback.requests_log[k]);
        assert_eq!(submission_of(&c.body), submission_of(&f.body));
        if k + 1 < 6 {
            let both_done = c.finished.unwrap().max(f.finished.unwrap());
            assert!(code.requests_log[k + 1].received >= both_done);
            assert!(feedback.requests_log[k + 1].received >= both_done);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_raises_the_limit_on_a_batching_server_within_its_ceiling() {
    let reply = || {
        Reply::func(|body: &Value| {
            padded(
                reply_matching_schema(&body["response_format"]["json_schema"]["schema"]),
                200,
            )
        })
    };
    let code = fake()
        .decode_tok_per_s(1_000.0)
        .slots(4)
        .reply(reply())
        .start()
        .await;
    let feedback = fake()
        .decode_tok_per_s(1_000.0)
        .slots(4)
        .reply(reply())
        .start()
        .await;
    let dir = TempDir::new().unwrap();
    let config = config(
        &dir,
        1,
        &[
            Backend::new("code", &["code_analysis"], &code, "\"auto:6\""),
            Backend::new("feedback", &["feedback"], &feedback, "\"auto:6\""),
        ],
    );
    let recorder = Arc::new(Recorder::default());
    let records = grade(
        config,
        options(Policy::Tandem),
        recorder.clone(),
        submissions(40),
    )
    .await;

    all_graded(&records, 40);
    for server in [&code, &feedback] {
        let peak = server.stats().peak_in_flight;
        assert!((2..=6).contains(&peak), "peak {peak}");
    }
    let limits: Vec<usize> = recorder
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::Limit { server, limit } if server == "code" => Some(limit),
            _ => None,
        })
        .collect();
    // Slow start: one call for the baseline, then four. Where it goes from there depends on
    // what the calls measure, which a busy test machine disturbs; the limiter's own tests
    // check the decisions on exact figures.
    assert_eq!(limits.first(), Some(&4), "{limits:?}");
    assert!(limits.iter().all(|&l| (1..=6).contains(&l)), "{limits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_when_their_role_has_had_no_backend_for_too_long() {
    let code = fake().slots(2).start().await;
    let dir = TempDir::new().unwrap();
    let mut backends = vec![
        Backend::new("code", &["code_analysis"], &code, "2"),
        Backend::new("feedback", &["feedback"], &code, "1"),
    ];
    backends[1].url = FakeServer::refused_url().await;
    let config = config(&dir, 10, &backends);
    let mut options = options(Policy::Tandem);
    options.timing.outage_limit = Duration::from_millis(400);
    let records = grade(
        config,
        options,
        Arc::new(Recorder::default()),
        submissions(3),
    )
    .await;

    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.status, Status::Failed);
        let error = r.error.as_ref().unwrap();
        assert_eq!(error.kind, "backend_down");
        assert!(error.message.contains("feedback"), "{}", error.message);
        assert!(
            r.performance_diagnostics
                .calls
                .contains_key(&Role::CodeAnalysis)
        );
    }
    let tried: u32 = records
        .iter()
        .filter_map(|r| r.performance_diagnostics.failed_calls.get(&Role::Feedback))
        .map(|f| f.attempts)
        .sum();
    assert!(tried >= 3, "{tried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_summary_counts_retries_and_failures_by_kind() {
    // End to end through the inbox: one transient 500 on the code server, and one submission
    // too large for the feedback server's context.
    let code = fake()
        .slots(2)
        .fault(Fault::server_error(), When::Nth(1))
        .start()
        .await;
    let feedback = fake().slots(2).context_size(2_500).start().await;
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    for folder in ["inbox", "outbox", "reports", ".tandem"] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    std::fs::write(root.join("rubric.toml"), RUBRIC).unwrap();
    std::fs::write(root.join("inbox/alpha.py"), "import pandas as pd\n").unwrap();
    std::fs::write(root.join("inbox/beta.py"), "print('hello')\n").unwrap();
    std::fs::write(root.join("inbox/gamma.py"), "total = 1\n".repeat(1_000)).unwrap();
    let text = format!(
        "[paths]\ninbox = \"inbox\"\noutbox = \"outbox\"\nreports = \"reports\"\n\
         state = \".tandem\"\n[assignment]\nrubric = \"rubric.toml\"\n[inbox]\n\
         settle_seconds = 0\n[grading]\nretries = 1\n\n\
         [[backend]]\nname = \"code\"\nrole = \"code_analysis\"\nurl = \"{}\"\nmodel = \"m\"\n\
         max_concurrency = 2\n\n\
         [[backend]]\nname = \"feedback\"\nrole = \"feedback\"\nurl = \"{}\"\nmodel = \"m\"\n\
         max_concurrency = 2\n",
        code.url(),
        feedback.url()
    );
    let config = Arc::new(Config::from_toml(&root.join("tandem.toml"), &text).unwrap());
    let display = Arc::new(tandem::progress::LiveDisplay::new(
        Box::new(std::io::sink()),
    ));
    let outcomes = tandem::batch::run(
        config,
        Default::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .unwrap();

    assert_eq!(outcomes.len(), 1);
    let summary = &outcomes[0].summary;
    assert_eq!(summary.submissions, 3);
    assert_eq!(summary.graded, 2);
    assert_eq!(summary.failed, 1);
    assert_eq!(
        summary.failed_submissions_by_kind,
        BTreeMap::from([("context_overflow".to_string(), 1)])
    );
    assert_eq!(
        summary.retried_attempts_by_kind,
        BTreeMap::from([("http_status".to_string(), 1)])
    );
    assert_eq!(summary.attempts, 3 + 3 + 1);
    let failed = outcomes[0]
        .records
        .iter()
        .find(|r| r.status == Status::Failed)
        .unwrap();
    assert_eq!(failed.submission.id, "gamma.py");
    let records_on_disk = std::fs::read_dir(root.join("outbox").join(&outcomes[0].batch))
        .unwrap()
        .count();
    assert_eq!(records_on_disk, 3);
}
