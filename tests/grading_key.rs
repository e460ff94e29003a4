//! The grading key decides whether a submission graded before must be graded again: it changes
//! with the rubric, the prompts, any role's models and every setting that shapes a request or a
//! verdict, and with nothing else. The same submission under the same key always gets the same
//! request.

use std::path::Path;
use std::sync::Arc;

use tandem::backend::Role;
use tandem::config::Config;
use tandem::grading::{GradingPlan, grading_key};
use tandem::submission::{LoadLimits, load};

const BASE: &str = r#"
[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code"
role = "code_analysis"
url = "http://127.0.0.1:8181"
model = "coder"
max_concurrency = 2

[[backend]]
name = "feedback"
role = "feedback"
url = "http://127.0.0.1:8182"
model = "writer"
"#;

fn rubric() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rubric.toml"))
        .unwrap()
}

fn key(config: &str, rubric: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rubric.toml"), rubric).unwrap();
    let config = Config::from_toml(&dir.path().join("tandem.toml"), config).unwrap();
    grading_key(&config)
}

#[test]
fn the_key_changes_with_everything_that_shapes_a_grade() {
    let base = key(BASE, &rubric());
    let changed = [
        (
            "rubric points",
            BASE.to_string(),
            rubric().replacen("points = 3", "points = 4", 1),
        ),
        (
            "rubric wording",
            BASE.to_string(),
            rubric().replace("One clear chart", "One chart"),
        ),
        (
            "code model",
            BASE.replace("\"coder\"", "\"coder-2\""),
            rubric(),
        ),
        (
            "feedback model",
            BASE.replace("\"writer\"", "\"writer-2\""),
            rubric(),
        ),
        (
            "temperature",
            format!("{BASE}[grading]\ntemperature = 0.2\n"),
            rubric(),
        ),
        ("seed", format!("{BASE}[grading]\nseed = 7\n"), rubric()),
        (
            "a backend's seed",
            BASE.replace("max_concurrency = 2", "max_concurrency = 2\nseed = false"),
            rubric(),
        ),
        (
            "a backend's schema",
            BASE.replace(
                "max_concurrency = 2",
                "max_concurrency = 2\nstructured_output = false",
            ),
            rubric(),
        ),
        (
            "max tokens",
            format!("{BASE}[grading]\nfeedback_max_tokens = 500\n"),
            rubric(),
        ),
        (
            "text limit",
            format!("{BASE}[grading]\nmax_submission_chars = 5000\n"),
            rubric(),
        ),
        (
            "share",
            format!("{BASE}[grading]\ndisagreement_share = 0.5\n"),
            rubric(),
        ),
        (
            "chain mode",
            format!("{BASE}[feedback]\nsees_code_analysis = true\n"),
            rubric(),
        ),
    ];
    let mut seen = vec![base.clone()];
    for (what, config, rubric) in changed {
        let k = key(&config, &rubric);
        assert!(
            !seen.contains(&k),
            "changing the {what} did not change the key"
        );
        seen.push(k);
    }
}

#[test]
fn the_key_ignores_what_does_not_shape_a_grade() {
    let base = key(BASE, &rubric());
    for config in [
        BASE.replace("8181", "9191"),
        BASE.replace("name = \"code\"", "name = \"mac-studio-2\""),
        BASE.replace("max_concurrency = 2", "max_concurrency = 4"),
        format!("{BASE}[thresholds]\ncombined = {{ excellent = 90, good = 50 }}\n"),
        format!("{BASE}[grading]\nretries = 3\nread_timeout_seconds = 30\n"),
        format!("{BASE}[inbox]\nsettle_seconds = 5\n"),
    ] {
        assert_eq!(key(&config, &rubric()), base, "{config}");
    }
}

#[test]
fn the_same_submission_gets_the_same_request_every_time() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rubric.toml"), rubric()).unwrap();
    std::fs::create_dir_all(dir.path().join(".tandem")).unwrap();
    let path = dir.path().join("smithjane_123456_7654321_hw.py");
    std::fs::write(&path, "# Name: Jane Smith\nimport pandas as pd\n").unwrap();
    let config = Arc::new(Config::from_toml(&dir.path().join("tandem.toml"), BASE).unwrap());
    let submission = load(&path, &LoadLimits::default()).unwrap();

    // Two plans, as two runs would make them, share the pseudonym key in the state folder.
    let first = GradingPlan::new(config.clone());
    let second = GradingPlan::new(config);
    for role in Role::ALL {
        let request = first.request(role, &submission);
        assert_eq!(request, second.request(role, &submission));
        assert_eq!(request.temperature, 0.0);
        assert_eq!(request.seed, Some(42));
        assert!(!request.messages[1].content.contains("Jane Smith"));
    }
}
