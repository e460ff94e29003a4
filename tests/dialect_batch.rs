//! The sample class, graded by fake servers of every dialect tandem speaks, gets the same grades
//! from each, and every call's figures are the ones its server reported: token counts from the
//! server, the server's own prefill time where it sends one (`prompt_eval_source: server`:
//! llama.cpp, vLLM with per-request metrics, Ollama's native API) and the measured time to first
//! token where it does not (`ttft`: mlx-lm, vLLM without metrics, Ollama's `/v1`).

mod dialect_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use dialect_support::{Backend, Class};
use serde_json::Value;
use tandem::batch::{self, RunOptions};
use tandem::config::Config;
use tandem::fake_server::{Dialect, FakeServer, FakeServerBuilder, Stats};
use tandem::progress::LiveDisplay;
use tandem::record::{PromptEvalSource, ResultRecord, Status, TokenSource};
use tokio_util::sync::CancellationToken;

/// The submissions of the sample class that cannot be loaded, and fail before any call.
const BROKEN: usize = 2;

fn fake(dialect: Dialect, model: &str) -> FakeServerBuilder {
    FakeServer::builder()
        .dialect(dialect)
        .model(model)
        .require_model(true)
        .prefill_tok_per_s(40_000.0)
        .decode_tok_per_s(4_000.0)
        .slots(2)
}

/// Grades the class with one fake server per role, speaking `api`.
async fn grade(
    class: &Class,
    code: &FakeServer,
    feedback: &FakeServer,
    model: &str,
    api: &str,
) -> Vec<ResultRecord> {
    let (code_url, feedback_url) = (code.url(), feedback.url());
    let path = class.config(
        &[
            Backend {
                name: "code",
                roles: "role = \"code_analysis\"",
                url: &code_url,
                model,
                api,
                extra: "",
            },
            Backend {
                name: "feedback",
                roles: "role = \"feedback\"",
                url: &feedback_url,
                model,
                api,
                extra: "",
            },
        ],
        "",
    );
    let config = Arc::new(Config::load(&path).unwrap());
    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    let outcomes = batch::run(
        config,
        RunOptions::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.into_iter().next().unwrap().records
}

/// What a server measured for one request, as tandem would have read it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Slot to first token, rounded to the microsecond as records are.
    prefill_seconds: f64,
}

fn served(stats: &Stats) -> Vec<Served> {
    stats
        .requests_log
        .iter()
        .filter_map(|log| {
            let prefill = log.first_token? - log.started?;
            Some(Served {
                prompt_tokens: log.prompt_tokens,
                completion_tokens: log.completion_tokens,
                prefill_seconds: (prefill.as_secs_f64() * 1e6).round() / 1e6,
            })
        })
        .collect()
}

/// Checks every call of every graded record against what its server logged.
fn check_figures(
    records: &[ResultRecord],
    servers: [(&str, &FakeServer); 2],
    source: PromptEvalSource,
) {
    let graded: Vec<&ResultRecord> = records
        .iter()
        .filter(|r| r.status == Status::Graded)
        .collect();
    assert_eq!(graded.len(), records.len() - BROKEN, "{records:#?}");
    for (name, server) in servers {
        let served = served(&server.stats());
        for record in &graded {
            let call = record
                .performance_diagnostics
                .calls
                .values()
                .find(|c| c.server == name)
                .unwrap_or_else(|| panic!("{} has no call on {name}", record.submission.id));
            assert_eq!(call.prompt_eval_source, source, "{call:#?}");
            assert_eq!(call.token_source, TokenSource::Server, "{call:#?}");
            let matching = served.iter().find(|s| {
                s.prompt_tokens == call.prompt_tokens && s.completion_tokens == call.output_tokens
            });
            let Some(matching) = matching else {
                panic!("no request on {name} reported the tokens of {call:#?}: {served:#?}");
            };
            assert!(
                call.prompt_tokens > 0 && call.output_tokens > 0,
                "{call:#?}"
            );
            match source {
                PromptEvalSource::Server => {
                    assert!(
                        served.iter().any(|s| s.prompt_tokens == call.prompt_tokens
                            && (s.prefill_seconds - call.prompt_eval_time_seconds).abs() < 2e-6),
                        "{name}: prompt_eval_time {} is not a prefill time the server \
                         reported ({:?})",
                        call.prompt_eval_time_seconds,
                        matching
                    );
                    assert!(
                        call.prompt_eval_time_seconds <= call.time_to_first_token_seconds,
                        "{call:#?}"
                    );
                }
                PromptEvalSource::Ttft => assert_eq!(
                    call.prompt_eval_time_seconds, call.time_to_first_token_seconds,
                    "{call:#?}"
                ),
            }
        }
    }
}

fn scores(records: &[ResultRecord]) -> BTreeMap<String, Option<f64>> {
    records
        .iter()
        .map(|r| (r.submission.id.clone(), r.grade.as_ref().map(|g| g.score)))
        .collect()
}

#[tokio::test]
async fn llama_cpp_servers_grade_the_class_with_their_prefill_times() {
    let class = Class::all();
    let model = "gemma-3-270m";
    let code = fake(Dialect::LlamaCpp, model).start().await;
    let feedback = fake(Dialect::LlamaCpp, model).start().await;
    let records = grade(&class, &code, &feedback, model, "openai").await;
    check_figures(
        &records,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Server,
    );
}

#[tokio::test]
async fn mlx_servers_grade_the_class_with_measured_time_to_first_token() {
    let class = Class::all();
    let model = "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit";
    let code = fake(Dialect::Mlx, model)
        .reasoning_tokens(6)
        .keepalive_every(64)
        .start()
        .await;
    let feedback = fake(Dialect::Mlx, model).start().await;
    let records = grade(&class, &code, &feedback, model, "openai").await;
    check_figures(
        &records,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Ttft,
    );
    for body in code.bodies().iter().chain(feedback.bodies().iter()) {
        assert_eq!(body["model"], model);
        assert!(body["max_tokens"].as_u64().is_some(), "{body}");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
}

#[tokio::test]
async fn vllm_servers_give_prefill_times_only_with_per_request_metrics() {
    let model = "Qwen/Qwen3-Coder-30B-A3B-Instruct";

    let class = Class::all();
    let code = fake(Dialect::Vllm, model)
        .per_request_metrics(true)
        .start()
        .await;
    let feedback = fake(Dialect::Vllm, model)
        .per_request_metrics(true)
        .start()
        .await;
    let with_metrics = grade(&class, &code, &feedback, model, "openai").await;
    check_figures(
        &with_metrics,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Server,
    );

    let class = Class::all();
    let code = fake(Dialect::Vllm, model).start().await;
    let feedback = fake(Dialect::Vllm, model).start().await;
    let without = grade(&class, &code, &feedback, model, "openai").await;
    check_figures(
        &without,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Ttft,
    );
    assert_eq!(scores(&with_metrics), scores(&without));
}

#[tokio::test]
async fn ollama_native_api_gives_prefill_times_and_its_v1_does_not() {
    let model = "qwen3:8b";

    let class = Class::all();
    let code = fake(Dialect::Ollama, model).start().await;
    let feedback = fake(Dialect::Ollama, model)
        .reasoning_tokens(4)
        .start()
        .await;
    let native = grade(&class, &code, &feedback, model, "ollama").await;
    check_figures(
        &native,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Server,
    );
    for body in code.bodies() {
        assert!(
            body["options"]["num_ctx"].as_u64().unwrap() >= 4096,
            "{body}"
        );
        assert!(body["options"]["num_predict"].as_u64().is_some(), "{body}");
        assert!(body["format"].is_object(), "{body}");
    }

    let class = Class::all();
    let code = fake(Dialect::Ollama, model).start().await;
    let feedback = fake(Dialect::Ollama, model).start().await;
    let v1 = grade(&class, &code, &feedback, model, "openai").await;
    check_figures(
        &v1,
        [("code", &code), ("feedback", &feedback)],
        PromptEvalSource::Ttft,
    );
    assert_eq!(scores(&native), scores(&v1));
}

#[tokio::test]
async fn every_dialect_gives_the_class_the_same_grades() {
    let mut all = Vec::new();
    for (dialect, api) in [
        (Dialect::LlamaCpp, "openai"),
        (Dialect::Mlx, "openai"),
        (Dialect::Vllm, "openai"),
        (Dialect::Ollama, "ollama"),
    ] {
        let class = Class::all();
        let code = fake(dialect, "m").start().await;
        let feedback = fake(dialect, "m").start().await;
        all.push((
            dialect,
            scores(&grade(&class, &code, &feedback, "m", api).await),
        ));
    }
    let (_, first) = &all[0];
    assert_eq!(
        first.values().filter(|s| s.is_some()).count(),
        first.len() - BROKEN
    );
    for (dialect, scores) in &all[1..] {
        assert_eq!(scores, first, "{dialect:?}");
    }
}

/// Ollama's `/v1` cannot be given a context size, so a prompt longer than the server's default
/// is cut without a word; the native API sets `num_ctx` from the prompt and nothing is cut.
#[tokio::test]
async fn ollama_native_api_sets_the_context_so_long_prompts_are_not_cut() {
    let model = "qwen3:8b";
    // A server whose default context (OLLAMA_CONTEXT_LENGTH) is smaller than the prompts.
    let small = |b: FakeServerBuilder| b.context_size(512);

    let class = Class::with(|name| name.starts_with("okaforamara"));
    let code = small(fake(Dialect::Ollama, model)).start().await;
    let feedback = small(fake(Dialect::Ollama, model)).start().await;
    let native = grade(&class, &code, &feedback, model, "ollama").await;
    let body: Value = code.bodies().remove(0);
    let evaluated = code.stats().requests_log[0].prompt_tokens;
    assert!(
        evaluated > 512,
        "the prompt is too short to test truncation: {evaluated}"
    );
    let num_ctx = body["options"]["num_ctx"].as_u64().unwrap();
    assert!(num_ctx >= evaluated + body["options"]["num_predict"].as_u64().unwrap());
    let call = &native[0]
        .performance_diagnostics
        .calls
        .values()
        .next()
        .unwrap();
    assert!(call.prompt_tokens > 512, "{call:#?}");

    let class = Class::with(|name| name.starts_with("okaforamara"));
    let code = small(fake(Dialect::Ollama, model)).start().await;
    let feedback = small(fake(Dialect::Ollama, model)).start().await;
    let v1 = grade(&class, &code, &feedback, model, "openai").await;
    for call in v1[0].performance_diagnostics.calls.values() {
        assert_eq!(call.prompt_tokens, 512, "{call:#?}");
    }
}
