//! The real llama-server, not a fake: tandem waits while it loads its model, grades part of the
//! sample class on it, and every call's figures come from the server (`prompt_eval_source:
//! server` from its `timings.prompt_ms`, token counts from its `usage`).
//!
//! The server and model are the ones `scripts/setup-servers` builds and caches
//! (`$TANDEM_CACHE`, default `~/.cache/tandem`), or those named by `TANDEM_LLAMA_SERVER` and
//! `TANDEM_LLAMA_MODEL`. Without them the test says so and passes without running.
//!
//! It takes about two minutes of both cores, so it runs only when asked:
//! `cargo test --all-features --test dialect_real_llama -- --ignored --nocapture`.

mod dialect_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialect_support::{Backend, Class};
use tandem::batch::{self, RunOptions};
use tandem::config::Config;
use tandem::progress::LiveDisplay;
use tandem::record::{PromptEvalSource, TokenSource};
use tokio_util::sync::CancellationToken;

/// The llama-server binary and model to run, if this machine has them.
fn server_and_model() -> Option<(PathBuf, PathBuf)> {
    if let (Some(server), Some(model)) = (
        std::env::var_os("TANDEM_LLAMA_SERVER"),
        std::env::var_os("TANDEM_LLAMA_MODEL"),
    ) {
        return Some((server.into(), model.into()));
    }
    let cache = std::env::var_os("TANDEM_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tandem")))?;
    let model = cache.join("models/gemma-3-270m-q4_k_m.gguf");
    let server = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/llama-server"))
        .find(|p| p.is_file())?;
    model.is_file().then_some((server, model))
}

/// A llama-server this test started; stopped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
#[ignore = "runs the real llama-server for about two minutes; run with --ignored"]
async fn the_real_llama_server_grades_with_its_own_prefill_times() {
    let Some((server, model)) = server_and_model() else {
        eprintln!("skipped: no llama-server and model (run scripts/setup-servers)");
        return;
    };
    let port = free_port();
    let _running = Running(
        Command::new(server)
            .args(["-m".as_ref(), model.as_os_str()])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "-c",
                "16384",
                "-np",
                "2",
                "-t",
                "2",
                "--alias",
                "gemma-3-270m",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let class = Class::with(|name| name.starts_with("novakpetr"));
    let url = format!("http://127.0.0.1:{port}");
    let path = class.config(
        &[Backend {
            name: "llama",
            roles: "roles = [\"code_analysis\", \"feedback\"]",
            url: &url,
            model: "gemma-3-270m",
            api: "openai",
            extra: "",
        }],
        // The settings of examples/tandem.toml, with time for two calls to share two cores.
        "temperature = 0.0\nseed = 42\ncode_analysis_max_tokens = 1024\n\
         feedback_max_tokens = 1024\nread_timeout_seconds = 300\nretries = 0\n",
    );
    let config = Arc::new(Config::load(&path).unwrap());

    // The server listens before its model is loaded, answering 503 until then: tandem waits.
    let said = Mutex::new(Vec::<String>::new());
    let say = |line: &str| said.lock().unwrap().push(line.to_string());
    let ready = tandem::backend::check_backends(&config, Duration::from_secs(60), &say)
        .await
        .unwrap_or_else(|e| panic!("{e}; said {:?}", said.lock().unwrap()));
    assert_eq!(ready, vec!["llama".to_string()]);

    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    let outcome = batch::run(
        config,
        RunOptions::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .remove(0);
    assert_eq!(outcome.records.len(), 1);
    for record in &outcome.records {
        eprintln!("{}: {:?}", record.submission.id, record.status);
        for call in record.performance_diagnostics.calls.values() {
            eprintln!(
                "{}",
                tandem::progress::call_line(&record.submission.id, call)
            );
            eprintln!(
                "  prompt {} tokens, prompt_eval {} s ({:?}), ttft {} s, decode {:?} tok/s",
                call.prompt_tokens,
                call.prompt_eval_time_seconds,
                call.prompt_eval_source,
                call.time_to_first_token_seconds,
                call.decode_tokens_per_second
            );
        }
        let calls = &record.performance_diagnostics.calls;
        assert_eq!(calls.len(), 2, "{record:#?}");
        for call in calls.values() {
            assert_eq!(
                call.prompt_eval_source,
                PromptEvalSource::Server,
                "{call:#?}"
            );
            assert_eq!(call.token_source, TokenSource::Server, "{call:#?}");
            assert!(
                call.prompt_tokens > 100 && call.output_tokens > 0,
                "{call:#?}"
            );
            assert!(call.prompt_eval_time_seconds > 0.0, "{call:#?}");
            // The server's prefill excludes the network and any wait for a slot.
            assert!(
                call.prompt_eval_time_seconds <= call.time_to_first_token_seconds,
                "{call:#?}"
            );
            assert_eq!(call.server_url.trim_end_matches('/'), url);
        }
    }
}
