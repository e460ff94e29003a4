//! `tandem report` in the terminal and as JSON, on the night built by hand, pinned by snapshots
//! with wall-clock times redacted.

mod report_common;

use report_common::{BATCH, night, settings};
use tandem::diagnostics::batch::summarise;
use tandem::report::{recommend, render_terminal_report, report_json};

fn redact_times() -> insta::Settings {
    let mut redacted = insta::Settings::clone_current();
    redacted.add_filter(
        r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?([+-]\d{2}:\d{2})?",
        "[time]",
    );
    redacted
}

#[test]
fn terminal_report_shows_servers_latency_slowest_failures_flags_and_advice() {
    let records = night();
    let summary = summarise(&records, &settings().thresholds);
    let advice = recommend(&summary, &records, &settings());

    let text = render_terminal_report(BATCH, &records, &summary, &settings(), &advice);

    assert!(text.contains("Slowest submissions"));
    assert!(text.contains("Failures by kind\n  invalid_grade (1)"));
    assert!(text.contains("Flagged for review\n  o'brienseán_104304_analysis.ipynb"));
    assert!(text.lines().all(|l| l.chars().count() <= 140), "{text}");
    redact_times().bind(|| insta::assert_snapshot!("terminal_report", text));
}

#[test]
fn json_report_carries_the_same_findings() {
    let records = night();
    let summary = summarise(&records, &settings().thresholds);
    let advice = recommend(&summary, &records, &settings());

    let json = report_json(BATCH, &records, &summary, &advice);

    assert_eq!(json["summary"]["graded"], 28);
    assert_eq!(json["failures"].as_array().unwrap().len(), 2);
    assert_eq!(json["slowest_submissions"].as_array().unwrap().len(), 5);
    let kinds: Vec<&str> = json["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "bound_by_server",
            "raise_concurrency",
            "cut_at_max_tokens",
            "decode_sag"
        ]
    );
    redact_times().bind(|| {
        insta::assert_json_snapshot!(
            "report_json_keys",
            json.as_object().unwrap().keys().collect::<Vec<_>>()
        )
    });
}
