//! A batch graded by two real llama-server instances running a real model (Gemma 3 270M),
//! built and assembled from PyPI packages by `scripts/setup-servers`.
//!
//! This is the one test where nothing is faked: the servers' token counts, timings and
//! failure modes are their own. It runs a small class (two submissions that load and one empty
//! file) so that it takes seconds, not minutes, on two cores.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use tandem::record::{PromptEvalSource, ResultRecord, Status, TokenSource};

/// The llama-server binary and the model file: from the environment when `scripts/test` set
/// them, otherwise from `scripts/setup-servers`, which builds them once into its cache.
fn server_and_model() -> (PathBuf, PathBuf) {
    if let (Some(server), Some(model)) = (
        std::env::var_os("TANDEM_LLAMA_SERVER"),
        std::env::var_os("TANDEM_MODEL"),
    ) {
        return (server.into(), model.into());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/setup-servers"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/setup-servers runs");
    assert!(output.status.success(), "scripts/setup-servers failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines().rev();
    let model = lines.next().expect("setup-servers prints the model path");
    let server = lines.next().expect("setup-servers prints the server path");
    (server.into(), model.into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A llama-server process, stopped when dropped.
struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    fn start(server: &Path, model: &Path, log: &Path) -> LlamaServer {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(server)
            .args(["-m"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "-c",
                "4096",
                "-np",
                "1",
                "-t",
                "1",
                "--alias",
                "gemma-3-270m",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("llama-server starts");
        LlamaServer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grades_a_small_class_on_two_real_llama_servers() {
    let (server, model) = server_and_model();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    let code = LlamaServer::start(&server, &model, &dir.join("code.log"));
    let feedback = LlamaServer::start(&server, &model, &dir.join("feedback.log"));

    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let class = root.join("examples/class");
    for name in [
        "kowalskimarta_late_104341_5532560_sales.py",
        "novakpetr_104318_5532477_revenue.sql",
        "duboisclaire_104389_5532703_analysis.py",
    ] {
        std::fs::copy(class.join(name), inbox.join(name)).unwrap();
    }
    std::fs::copy(root.join("examples/rubric.toml"), dir.join("rubric.toml")).unwrap();
    let config = format!(
        r#"
[assignment]
rubric = "rubric.toml"

[[backend]]
name = "real-code"
role = "code_analysis"
url = "{code}"
model = "gemma-3-270m"

[[backend]]
name = "real-feedback"
role = "feedback"
url = "{feedback}"
model = "gemma-3-270m"

[grading]
code_analysis_max_tokens = 1024
feedback_max_tokens = 1024

[inbox]
settle_seconds = 0
"#,
        code = code.url(),
        feedback = feedback.url(),
    );
    std::fs::write(dir.join("tandem.toml"), config).unwrap();

    // `--wait` covers the seconds the servers take to open their ports; while they load the
    // model they answer 503, which tandem waits out by itself.
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .current_dir(dir)
        .args(["run", "--wait", "120"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    eprintln!("batch took {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(
        output.status.code(),
        Some(3),
        "the empty file fails, the rest is graded"
    );

    let batch_dir = only_subfolder(&dir.join("outbox"));
    let batch = batch_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let records: Vec<ResultRecord> = std::fs::read_dir(&batch_dir)
        .unwrap()
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 3, "one record per input");

    for record in &records {
        if record.submission.files[0].starts_with("duboisclaire") {
            assert_eq!(record.status, Status::Failed);
            assert_eq!(record.error.as_ref().unwrap().kind, "empty");
            continue;
        }
        assert_eq!(
            record.status,
            Status::Graded,
            "{}: {:?}",
            record.submission.id,
            record.error
        );
        let grade = record.grade.as_ref().unwrap();
        let sum: f64 = grade.criteria.iter().map(|c| c.score).sum();
        assert_eq!(grade.score, sum, "the total is computed by tandem");
        assert!(grade.score <= grade.max_score);

        let calls = &record.performance_diagnostics.calls;
        assert_eq!(calls.len(), 2, "both roles answered");
        let servers: Vec<&str> = calls.values().map(|c| c.server.as_str()).collect();
        assert!(servers.contains(&"real-code") && servers.contains(&"real-feedback"));
        for call in calls.values() {
            // Real figures from the server: its own token counts and its own prefill time.
            assert_eq!(call.token_source, TokenSource::Server);
            assert_eq!(call.prompt_eval_source, PromptEvalSource::Server);
            assert!(
                call.prompt_tokens > 100,
                "the prompt holds the rubric and the work"
            );
            assert!(call.output_tokens > 0);
            assert_eq!(call.total_tokens, call.prompt_tokens + call.output_tokens);
            assert!(call.prompt_eval_time_seconds > 0.0);
            assert!(call.prompt_eval_time_seconds <= call.time_to_first_token_seconds + 0.05);
            assert!(call.time_to_first_token_seconds < call.generation_time_seconds);
            let expected_rate = call.output_tokens as f64 / call.generation_time_seconds;
            assert!((call.tokens_per_second - expected_rate).abs() < 0.01 * expected_rate + 0.01);
            assert!(call.decode_tokens_per_second.unwrap() > call.tokens_per_second);
            assert_eq!(call.finish_reason.as_deref(), Some("stop"));
        }
        let combined = record
            .performance_diagnostics
            .combined_metrics
            .as_ref()
            .unwrap();
        assert!(combined.wall_time_seconds > 0.0);
        assert!(combined.parallel_efficiency > 0.0 && combined.parallel_efficiency <= 2.0 + 1e-6);
    }

    let reports = dir.join("reports").join(&batch);
    for file in ["summary.csv", "submissions.csv"] {
        let text = std::fs::read_to_string(reports.join(file)).unwrap();
        assert!(text.lines().count() >= 2, "{file} has a header and rows");
    }
    let summary = std::fs::read_to_string(reports.join("summary.csv")).unwrap();
    assert!(summary.contains("real-code") && summary.contains("real-feedback"));
}

fn only_subfolder(dir: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(folders.len(), 1, "one batch in {}", dir.display());
    folders.into_iter().next().unwrap()
}
