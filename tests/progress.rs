//! What the live display shows while a batch runs: the per-call and per-submission lines, and
//! the progress bar's message and template, pinned by snapshots.

#[path = "report_common/mod.rs"]
mod report_common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::backend::Role;
use tandem::progress::{
    LiveDisplay, Progress, ServerRates, bar_template, call_line, eta_text, progress_message,
    short_duration, submission_line,
};
use tandem::record::Status;
use tandem::scheduler::Observer;

fn progress(graded: usize, failed: usize, elapsed: u64) -> Progress {
    Progress {
        total: 30,
        graded,
        failed,
        duplicates: 0,
        elapsed: Duration::from_secs(elapsed),
        rates: vec![
            ("local-code".to_string(), 31.24),
            ("local-feedback".to_string(), 28.36),
        ],
    }
}

#[test]
fn call_and_submission_lines() {
    let records = report_common::night();
    let graded = &records[0];
    let failed = records.iter().find(|r| r.status == Status::Failed).unwrap();
    let mut duplicate = graded.clone();
    duplicate.status = Status::Duplicate;
    let flagged = &records[4];

    let lines = [
        call_line(
            &graded.submission.id,
            &graded.performance_diagnostics.calls[&Role::CodeAnalysis],
        ),
        call_line(
            &graded.submission.id,
            &graded.performance_diagnostics.calls[&Role::Feedback],
        ),
        submission_line(graded, 1, 30),
        submission_line(flagged, 5, 30),
        submission_line(failed, 8, 30),
        submission_line(&duplicate, 9, 30),
    ];
    insta::assert_snapshot!("progress_lines", lines.join("\n"));
}

#[test]
fn bar_message_counts_and_estimates_what_is_left() {
    let start = Progress {
        rates: Vec::new(),
        ..progress(0, 0, 3)
    };
    let middle = progress(11, 1, 300);
    let with_duplicates = Progress {
        duplicates: 2,
        ..progress(11, 1, 300)
    };
    let end = progress(28, 2, 3_725);

    let messages = [
        progress_message(&start),
        progress_message(&middle),
        progress_message(&with_duplicates),
        progress_message(&end),
    ];
    insta::assert_snapshot!("progress_messages", messages.join("\n"));
    // 12 of 30 done in 300 s: the other 18 take 450 s at that pace.
    assert_eq!(middle.eta(), Some(Duration::from_secs(450)));
    assert_eq!(start.eta(), None);
}

#[test]
fn bar_templates_with_and_without_colour() {
    insta::assert_snapshot!(
        "bar_templates",
        format!("{}\n{}", bar_template(true), bar_template(false))
    );
    assert!(
        !bar_template(false).contains('.'),
        "NO_COLOR keeps colours out"
    );
}

#[test]
fn durations_read_at_a_glance() {
    let shown: Vec<String> = [0, 45, 250, 3_599, 3_600, 7_500]
        .into_iter()
        .map(|s| short_duration(Duration::from_secs(s)))
        .collect();
    assert_eq!(
        shown,
        ["0s", "45s", "4m 10s", "59m 59s", "1h 00m", "2h 05m"]
    );
}

#[test]
fn server_rates_follow_the_latest_calls() {
    let records = report_common::night();
    let mut rates = ServerRates::default();
    for record in &records {
        for call in record.performance_diagnostics.calls.values() {
            rates.record(call);
        }
    }
    let code: Vec<_> = records
        .iter()
        .filter_map(|r| r.performance_diagnostics.calls.get(&Role::CodeAnalysis))
        .collect();
    let last = &code[code.len() - 4..];
    let expected = last.iter().map(|c| c.output_tokens).sum::<u64>() as f64
        / last.iter().map(|c| c.generation_time_seconds).sum::<f64>();

    let now = rates.rates();
    assert_eq!(now[0].0, "local-code");
    assert!(
        (now[0].1 - expected).abs() < 1e-9,
        "{} vs {expected}",
        now[0].1
    );
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn plain_display_writes_one_line_per_event_and_counts_each_batch_afresh() {
    let records = report_common::night();
    let out = Shared::default();
    let display = LiveDisplay::new(Box::new(out.clone()));

    display.set_total(2);
    display.call_finished(
        &records[0].submission.id,
        &records[0].performance_diagnostics.calls[&Role::CodeAnalysis],
    );
    display.submission_finished(&records[0]);
    display.submission_finished(&records[1]);
    display.set_total(1);
    display.call_retried("s9", Role::Feedback, "local-feedback", "timeout");
    display.submission_finished(&records[2]);

    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    insta::assert_snapshot!("plain_display", text);
    assert!(
        !text.contains('\u{1b}'),
        "plain lines hold no terminal codes"
    );
}

#[test]
fn eta_counts_down_with_the_time_spent_so_far() {
    let at = |seconds| eta_text(Duration::from_secs(seconds), 12, 30);
    assert_eq!(at(300), "ETA 7m 30s");
    assert_eq!(at(600), "ETA 15m 00s");
    assert_eq!(eta_text(Duration::from_secs(9), 0, 30), "ETA -");
    assert_eq!(eta_text(Duration::from_secs(9), 30, 30), "done");
}
