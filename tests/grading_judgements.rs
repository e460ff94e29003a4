//! Two judgements: the feedback model proposes an overall score, and a disagreement with the
//! computed total above the configured share of the maximum flags the record for review.

#[path = "red_team/harness.rs"]
mod harness;

use harness::{Extra, Workspace, code_reply, fast, feedback_reply};
use tandem::config::Config;
use tandem::fake_server::Reply;
use tandem::record::ResultRecord;

/// Grades 6 of 10 and proposes 8 of 10: they differ by a fifth of the maximum.
async fn grade_with_share(grading: &'static str) -> ResultRecord {
    let code = fast(Reply::func(|body| {
        code_reply(body, |id, _| match id {
            "data_loading" => 1,
            "analysis" => 2,
            "visualisation" => 0,
            _ => 3,
        })
    }))
    .start()
    .await;
    let feedback = fast(Reply::func(|_| feedback_reply(8))).start().await;
    let extra = Extra {
        grading,
        ..Extra::default()
    };
    let workspace = Workspace::new(&code.url(), &feedback.url(), &extra);
    workspace.write("work.py", "import pandas as pd\n");
    let mut records = workspace.run().await;
    assert_eq!(records.len(), 1);
    records.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_share_decides_when_two_scores_disagree() {
    let strict = grade_with_share("disagreement_share = 0.1").await;
    assert_eq!(strict.grade.as_ref().unwrap().score, 6.0);
    assert!(
        strict.flags.contains(&"scores_disagree".into()),
        "{:?}",
        strict.flags
    );

    let default = grade_with_share("").await;
    assert!(
        !default.flags.contains(&"scores_disagree".into()),
        "{:?}",
        default.flags
    );

    let exact = grade_with_share("disagreement_share = 0.2").await;
    assert!(
        !exact.flags.contains(&"scores_disagree".into()),
        "a difference of exactly the share"
    );
}

#[test]
fn a_share_outside_zero_to_one_is_refused_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        harness::root().join("examples/rubric.toml"),
        dir.path().join("rubric.toml"),
    )
    .unwrap();
    let text = r#"
[assignment]
rubric = "rubric.toml"
[[backend]]
name = "one"
roles = ["code_analysis", "feedback"]
url = "http://127.0.0.1:1"
model = "m"
[grading]
disagreement_share = 1.5
"#;
    let error = Config::from_toml(&dir.path().join("tandem.toml"), text).unwrap_err();
    assert!(
        error.to_string().contains("`grading.disagreement_share`"),
        "{error}"
    );
}
