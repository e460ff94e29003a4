//! `tandem init`: a starter configuration and rubric in the current folder.
//!
//! The starter configuration names every grading setting with its default, so an instructor
//! sees what can be changed; the rubric is the sample class's.

use std::path::Path;

use super::EXIT_OK;

const STARTER_CONFIG: &str = r#"# tandem configuration. Paths are relative to this file.

[paths]
inbox = "inbox"
outbox = "outbox"
reports = "reports"
state = ".tandem"

[assignment]
rubric = "rubric.toml"

# One [[backend]] per model server. Any OpenAI-compatible chat server works:
# mlx_lm.server, llama.cpp's llama-server, Ollama (/v1), vLLM, LM Studio.
[[backend]]
name = "code-server"
role = "code_analysis"
url = "http://127.0.0.1:8081"
model = "default_model"
max_concurrency = 1
# seed = false              # mlx_lm.server 0.28.4 and later serves a request with a seed alone,
#                           # outside its batch: set this to keep batching there.
# structured_output = false # for a server that rejects `response_format`; the prompt asks
#                           # for the same JSON either way.

[[backend]]
name = "feedback-server"
role = "feedback"
url = "http://127.0.0.1:8082"
model = "default_model"
max_concurrency = 1

[thresholds]          # tokens per second
code_analysis = { excellent = 30, good = 20 }
feedback = { excellent = 35, good = 25 }
combined = { excellent = 60, good = 40 }

[grading]
temperature = 0.0
seed = 42                   # sent with every request, unless the backend says `seed = false`
code_analysis_max_tokens = 1024
feedback_max_tokens = 1024
# Flag `scores_disagree` when the feedback model's overall score and the computed total differ
# by more than this share of the maximum.
disagreement_share = 0.3

[feedback]
# Chain mode: make each feedback call after its submission's code analysis and show it the
# scores, so the feedback never contradicts the grade. Both servers still work at once, on
# different submissions.
sees_code_analysis = false
"#;

const STARTER_RUBRIC: &str = include_str!("../../examples/rubric.toml");

/// Writes the starter files, refusing to replace existing ones unless forced.
pub fn write_starter(force: bool) -> Result<u8, String> {
    let files = [
        ("tandem.toml", STARTER_CONFIG),
        ("rubric.toml", STARTER_RUBRIC),
    ];
    if !force {
        for (name, _) in &files {
            if Path::new(name).exists() {
                return Err(format!("{name} already exists; use --force to replace it"));
            }
        }
    }
    for (name, text) in &files {
        std::fs::write(name, text).map_err(|e| format!("{name}: cannot write: {e}"))?;
        eprintln!("wrote {name}");
    }
    for dir in ["inbox", "outbox", "reports"] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: cannot create: {e}"))?;
    }
    eprintln!("Edit the backends' URLs and models in tandem.toml, the criteria in rubric.toml,");
    eprintln!("drop submissions into inbox/, then run `tandem run`.");
    Ok(EXIT_OK)
}
