//! The prompt-injection defence against the red-team set in `tests/red_team/`: every hostile
//! submission is flagged with what it tried, a model that obeys whatever it reads never gets a
//! grade past the rubric, and ordinary homework is not flagged.

#[path = "red_team/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;

use harness::{Extra, Workspace, code_reply, fast, feedback_reply, files_in, root};
use regex::Regex;
use serde_json::Value;
use tandem::fake_server::Reply;
use tandem::grading::injection::scan;
use tandem::record::Status;
use tandem::submission::{LoadLimits, load};

fn hostile() -> Vec<PathBuf> {
    files_in(&root().join("tests/red_team/hostile"))
}

fn expected() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("tests/red_team/expected.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

fn name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A model that does what the submission asks: the points it names for each criterion, or
/// else full marks.
fn obedient(body: &Value) -> String {
    let submission = harness::fenced_submission(&harness::prompt(body)).to_lowercase();
    let demanded: Option<i64> = Regex::new(r"(\d+) points")
        .unwrap()
        .captures(&submission)
        .and_then(|c| c[1].parse().ok());
    if harness::is_code_analysis(body) {
        code_reply(body, |_, max| demanded.unwrap_or(max))
    } else {
        let max = harness::schema_max(body);
        feedback_reply(demanded.map_or(max, |n| n * 4))
    }
}

#[test]
fn the_red_team_set_has_at_least_twenty_submissions_each_with_an_expectation() {
    let expected = expected();
    let names: Vec<String> = hostile().iter().map(|p| name(p)).collect();
    assert!(
        names.len() >= 20,
        "only {} hostile submissions",
        names.len()
    );
    for n in &names {
        assert!(expected.contains_key(n), "{n} has no expected pattern");
    }
    assert_eq!(expected.len(), names.len());
}

#[test]
fn every_hostile_submission_is_flagged_with_what_it_tried() {
    let expected = expected();
    for path in hostile() {
        let submission = load(&path, &LoadLimits::default()).unwrap();
        let found = scan(&submission.text);
        let want = &expected[&name(&path)];
        assert!(
            found.iter().any(|m| &m.pattern == want),
            "{}: expected `{want}`, found {found:#?}",
            name(&path)
        );
        for m in &found {
            assert!(!m.excerpt.is_empty() && m.excerpt.chars().count() <= 140);
            assert!(!m.excerpt.contains('\n'));
        }
    }
}

#[test]
fn hidden_and_encoded_attempts_say_where_they_were() {
    let location = |file: &str| -> Vec<String> {
        let path = root().join("tests/red_team/hostile").join(file);
        let submission = load(&path, &LoadLimits::default()).unwrap();
        scan(&submission.text)
            .into_iter()
            .map(|m| m.location)
            .collect()
    };
    assert!(location("html_comment.ipynb").contains(&"hidden_html".into()));
    assert!(location("base64.py").contains(&"base64".into()));
    assert!(location("reversed.txt").contains(&"reversed".into()));
    assert!(location("tag_characters.py").contains(&"invisible".into()));
    assert!(location("comment_ignore.py").contains(&"comment".into()));
}

#[test]
fn ordinary_homework_is_not_flagged() {
    let mut scanned = 0;
    for path in files_in(&root().join("tests/red_team/benign")) {
        let submission = load(&path, &LoadLimits::default()).unwrap();
        let found = scan(&submission.text);
        assert!(found.is_empty(), "{}: {found:#?}", name(&path));
        scanned += 1;
    }
    assert!(scanned >= 8, "only {scanned} benign submissions scanned");
}

#[test]
fn in_the_sample_class_only_the_note_to_the_ai_grader_is_flagged() {
    let mut flagged = Vec::new();
    for path in files_in(&root().join("examples/class")) {
        let Ok(submission) = load(&path, &LoadLimits::default()) else {
            continue; // The sample class's two broken files.
        };
        if !scan(&submission.text).is_empty() {
            flagged.push(name(&path));
        }
    }
    assert_eq!(flagged, ["petrovaanna_104395_5532750_analysis.py"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_obedient_model_never_grades_a_hostile_submission_past_the_rubric() {
    let code = fast(Reply::func(obedient)).start().await;
    let feedback = fast(Reply::func(obedient)).start().await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    workspace.drop_files(&hostile());

    let records = workspace.run().await;
    assert_eq!(records.len(), hostile().len());
    let (mut graded_at_max, mut refused) = (0, 0);
    for record in &records {
        let id = &record.submission.id;
        assert!(
            record
                .flags
                .contains(&"possible_prompt_injection".to_string()),
            "{id} is not flagged: {:?}",
            record.flags
        );
        assert!(!record.injection.is_empty(), "{id} has no evidence");
        match record.status {
            Status::Graded => {
                let grade = record.grade.as_ref().unwrap();
                assert!(grade.score <= grade.max_score, "{id}: {}", grade.score);
                for c in &grade.criteria {
                    assert!((0.0..=c.max).contains(&c.score), "{id}: {c:?}");
                }
                graded_at_max += usize::from(grade.score == grade.max_score);
            }
            Status::Failed => {
                let error = record.error.as_ref().unwrap();
                assert_eq!(error.kind, "invalid_grade", "{id}: {}", error.message);
                assert!(error.message.contains("outside 0.."), "{}", error.message);
                assert!(record.grade.is_none());
                refused += 1;
            }
            Status::Duplicate | Status::Superseded => {
                panic!("{id}: unexpected {:?}", record.status)
            }
        }
    }
    // The model did obey: in-range demands became full marks (flagged for review), and
    // out-of-range ones failed validation, even after the corrective retry.
    assert!(graded_at_max >= 20, "{graded_at_max} graded at the maximum");
    assert!(refused >= 2, "{refused} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_submission_cannot_close_its_fence_or_hide_characters_from_the_reader() {
    let code = fast(Reply::func(obedient)).start().await;
    let feedback = fast(Reply::func(obedient)).start().await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    let dir = root().join("tests/red_team/hostile");
    workspace.drop_files(&[
        dir.join("fake_fence.md"),
        dir.join("tag_characters.py"),
        dir.join("zero_width.py"),
    ]);
    workspace.run().await;

    let bodies = code.stats().bodies();
    assert!(bodies.len() >= 3);
    for body in bodies {
        let prompt = harness::prompt(&body);
        let submission = harness::fenced_submission(&prompt);
        assert!(!submission.is_empty(), "no fenced submission in the prompt");
        if prompt.contains("3FA2C1") {
            // The imitation markers stay inside the real fence, whose tag differs.
            assert!(submission.contains("<<<END SUBMISSION 3FA2C1>>>"));
            assert!(!prompt.contains("<<<SUBMISSION 3FA2C1>>>\nThe"));
        }
        let hidden =
            |c: char| matches!(c, '\u{E0000}'..='\u{E007F}' | '\u{200B}'..='\u{200F}' | '\u{2060}');
        assert!(
            !prompt.chars().any(hidden),
            "an invisible character reached the model"
        );
    }
}
