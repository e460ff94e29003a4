//! Chain mode (`[feedback] sees_code_analysis = true`): the feedback call is shown the code
//! analysis's scores and findings, so the feedback agrees with the grade, and the scheduler
//! runs a submission's feedback while later submissions' code analyses run.

#[path = "red_team/harness.rs"]
mod harness;

use std::time::Instant;

use harness::{Extra, Workspace, code_reply, feedback_reply};
use regex::Regex;
use serde_json::Value;
use tandem::backend::Role;
use tandem::fake_server::{FakeServer, Reply, RequestLog};
use tandem::record::Status;

const SUBMISSIONS: usize = 6;

/// Scores 1, 2, 0, 3 on the sample rubric: 6 of 10. A submission marked `bad` gets a score
/// past its criterion's points.
fn code_analysis(body: &Value) -> String {
    let bad = harness::fenced_submission(&harness::prompt(body)).contains("# bad");
    code_reply(body, |id, max| {
        if bad {
            return max + 1;
        }
        match id {
            "data_loading" => 1,
            "analysis" => 2,
            "visualisation" => 0,
            _ => 3,
        }
    })
}

/// Agrees with the grade it is told, or proposes 0 when it is told none.
fn feedback(body: &Value) -> String {
    let told = Regex::new(r"your overall_score must be (\d+)")
        .unwrap()
        .captures(&harness::prompt(body))
        .and_then(|c| c[1].parse().ok());
    feedback_reply(told.unwrap_or(0))
}

/// Servers whose calls each take about a tenth of a second, one at a time.
async fn servers() -> (FakeServer, FakeServer) {
    let slow = |reply| {
        FakeServer::builder()
            .prefill_tok_per_s(1_000_000.0)
            .decode_tok_per_s(600.0)
            .tokens_per_chunk(4)
            .slots(1)
            .reply(reply)
    };
    (
        slow(Reply::func(code_analysis)).start().await,
        slow(Reply::func(feedback)).start().await,
    )
}

fn fill(workspace: &Workspace) {
    for i in 0..SUBMISSIONS {
        workspace.write(
            &format!("sub_{i}.py"),
            &format!("# submission {i}\nimport pandas as pd\nsales = pd.read_csv('s.csv')\n"),
        );
    }
    workspace.write("sub_bad.py", "# bad\nimport pandas as pd\n");
}

/// Which submission a logged request was for.
fn which(log: &RequestLog) -> String {
    let submission = harness::fenced_submission(&harness::prompt(&log.body));
    submission.lines().next().unwrap_or_default().to_string()
}

fn span(log: &RequestLog) -> (Instant, Instant) {
    (log.received, log.finished.expect("every request finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chain_mode_the_feedback_sees_the_grade_and_agrees_with_it() {
    let (code, feedback) = servers().await;
    let extra = Extra {
        tables: "[feedback]\nsees_code_analysis = true",
        ..Extra::default()
    };
    let workspace = Workspace::new(&code.url(), &feedback.url(), &extra);
    fill(&workspace);
    let records = workspace.run().await;
    assert_eq!(records.len(), SUBMISSIONS + 1);

    let feedback_logs = feedback.stats().requests_log;
    assert_eq!(
        feedback_logs.len(),
        SUBMISSIONS,
        "no feedback call for a failed analysis"
    );
    for log in &feedback_logs {
        let prompt = harness::prompt(&log.body);
        assert!(prompt.contains("These scores are final"), "{prompt}");
        assert!(prompt.contains(
            "- data_loading \"Loads and cleans the data\": 1 of 2. Evidence: data_loading seen"
        ));
        assert!(prompt.contains("Total: 6 of 10."));
        // The findings come after the submission, outside its fence.
        let fence_end = prompt.rfind("\n<<<END SUBMISSION").unwrap();
        assert!(prompt.find("Total: 6 of 10.").unwrap() > fence_end);
    }

    for record in &records {
        if record.submission.id == "sub_bad.py" {
            assert_eq!(record.status, Status::Failed);
            let error = record.error.as_ref().unwrap();
            assert_eq!(error.kind, "invalid_grade");
            assert!(!error.message.contains("not asked"), "{}", error.message);
            assert!(
                !record
                    .performance_diagnostics
                    .calls
                    .contains_key(&Role::Feedback)
            );
            continue;
        }
        assert_eq!(record.status, Status::Graded, "{:?}", record.error);
        assert_eq!(record.grade.as_ref().unwrap().score, 6.0);
        assert!(!record.flags.contains(&"scores_disagree".into()));
        assert!(record.grading.as_ref().unwrap().feedback_sees_code_analysis);
    }

    // A submission's feedback starts only after its code analysis ended...
    let code_logs = code.stats().requests_log;
    for fb in &feedback_logs {
        let analysis = code_logs.iter().find(|c| which(c) == which(fb)).unwrap();
        assert!(fb.received >= span(analysis).1, "{}", which(fb));
    }
    // ...and runs while another submission's code analysis does: both servers are busy.
    let overlapping = feedback_logs.iter().any(|fb| {
        let (a, b) = span(fb);
        code_logs
            .iter()
            .filter(|c| which(c) != which(fb))
            .any(|c| span(c).0 < b && a < span(c).1)
    });
    assert!(
        overlapping,
        "the feedback calls never ran alongside a code analysis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_chain_mode_the_feedback_sees_no_scores_and_may_disagree() {
    let (code, feedback) = servers().await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    fill(&workspace);
    let records = workspace.run().await;

    let feedback_logs = feedback.stats().requests_log;
    assert_eq!(feedback_logs.len(), SUBMISSIONS + 1);
    for log in &feedback_logs {
        assert!(!harness::prompt(&log.body).contains("These scores are final"));
    }
    for record in records.iter().filter(|r| r.status == Status::Graded) {
        // 0 proposed against 6 computed, of 10: more than the default share of 0.3.
        assert!(
            record.flags.contains(&"scores_disagree".into()),
            "{:?}",
            record.flags
        );
        assert!(!record.grading.as_ref().unwrap().feedback_sees_code_analysis);
    }
}
