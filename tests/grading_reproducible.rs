//! Reproducible by default: temperature 0 and a fixed seed on every request, except to a
//! backend configured `seed = false` (mlx_lm.server batches only requests without one), and the
//! record says what was sent. A backend configured `structured_output = false` gets no schema,
//! and its JSON is still found in what it writes.

#[path = "red_team/harness.rs"]
mod harness;

use harness::{Extra, Workspace, fast, feedback_reply};
use tandem::backend::Role;
use tandem::fake_server::{Dialect, Reply};
use tandem::record::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_are_sent_where_configured_and_recorded() {
    let code = fast(Reply::Schema).dialect(Dialect::Mlx).start().await;
    let feedback = fast(Reply::func(|_| {
        format!(
            "Sure! Here is the feedback:\n{}\nGood luck.",
            feedback_reply(9)
        )
    }))
    .start()
    .await;
    let extra = Extra {
        code_backend: "seed = false",
        feedback_backend: "structured_output = false",
        ..Extra::default()
    };
    let workspace = Workspace::new(&code.url(), &feedback.url(), &extra);
    workspace.write("work.py", "import pandas as pd\n");
    let records = workspace.run().await;

    for body in code.stats().bodies() {
        assert_eq!(body["temperature"], 0.0);
        assert!(
            body.get("seed").is_none(),
            "a seed went to a `seed = false` backend"
        );
        assert!(body["response_format"]["json_schema"]["schema"].is_object());
    }
    for body in feedback.stats().bodies() {
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["seed"], 42);
        assert!(body.get("response_format").is_none());
        assert!(harness::prompt(&body).contains("Reply with one JSON object and nothing else"));
    }

    let record = &records[0];
    assert_eq!(record.status, Status::Graded, "{:?}", record.error);
    assert!(record.flags.contains(&"reply_wrapped_in_prose".into()));
    let used = record.grading.as_ref().unwrap();
    assert_eq!(used.temperature, 0.0);
    assert_eq!(used.seeds[&Role::CodeAnalysis], None);
    assert_eq!(used.seeds[&Role::Feedback], Some(42));
    let json = serde_json::to_value(record).unwrap();
    assert_eq!(
        json["grading"]["seeds"]["code_analysis"],
        serde_json::Value::Null
    );
    assert_eq!(json["grading"]["seeds"]["feedback"], 42);
}
