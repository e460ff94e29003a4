//! Batches through the queue: every input ends in exactly one record with its original kept,
//! the same submission dropped again is a duplicate pointing at the earlier record, identical
//! work from different students is flagged on both sides, older Canvas resubmissions are
//! superseded, and claimed work left by a crash is resumed without grading anything twice.

mod queue_support;

use std::fs;
use std::sync::Arc;

use queue_support::{Class, Servers, record_for, script, statuses};
use tandem::batch::{self, BatchOutcome, RunOptions};
use tandem::progress::LiveDisplay;
use tandem::queue::Queue;
use tandem::record::{RecordRef, Status};
use tokio_util::sync::CancellationToken;

async fn run(class: &Class, regrade: bool) -> Vec<BatchOutcome> {
    let options = RunOptions {
        regrade,
        ..RunOptions::default()
    };
    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    batch::run(class.config(), options, display, CancellationToken::new())
        .await
        .expect("the run finishes")
}

#[tokio::test]
async fn every_input_ends_in_one_record_and_its_original_is_kept() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let mut dropped = Vec::new();
    for n in 0..6 {
        let name = format!("student{n}.py");
        let bytes = script(n);
        class.drop_file(&name, &bytes);
        dropped.push((name, bytes));
    }
    fs::create_dir(class.inbox().join("group project")).unwrap();
    fs::write(class.inbox().join("group project/a.py"), script(100)).unwrap();
    fs::write(
        class.inbox().join("group project/notes.md"),
        "# Notes\nWe split it.",
    )
    .unwrap();

    let outcomes = run(&class, false).await;

    assert_eq!(outcomes.len(), 1);
    let records = class.records();
    assert_eq!(records.len(), 7, "{:?}", statuses(&records));
    assert!(
        records.iter().all(|r| r.status == Status::Graded),
        "{:?}",
        statuses(&records)
    );
    for (name, bytes) in &dropped {
        let record = record_for(&records, name);
        assert_eq!(fs::read_to_string(class.original(record)).unwrap(), *bytes);
    }
    let folder = record_for(&records, "group project");
    assert_eq!(folder.submission.files, vec!["a.py", "notes.md"]);
    assert!(class.original(folder).join("notes.md").is_file());
    assert!(
        fs::read_dir(class.inbox()).unwrap().next().is_none(),
        "the inbox is empty"
    );
    assert!(class.claimed().is_empty());
    assert!(class.stray_outbox_files().is_empty());
    assert!(
        !class
            .state()
            .join("claimed")
            .join(&outcomes[0].batch)
            .exists()
    );
}

#[tokio::test]
async fn the_same_submission_dropped_again_is_a_duplicate_of_the_earlier_record() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    class.drop_file("smithjane_1001_2001_analysis.py", script(1));
    let first = run(&class, false).await;
    let calls_after_first = servers.requests();

    // The same student's same bytes, downloaded again under a new Canvas file id.
    class.drop_file("smithjane_1001_2002_analysis.py", script(1));
    let second = run(&class, false).await;

    assert_eq!(
        servers.requests(),
        calls_after_first,
        "nothing was graded again"
    );
    let record = &second[0].records[0];
    assert_eq!(record.status, Status::Duplicate);
    let earlier = RecordRef::new(&first[0].batch, &first[0].records[0].submission.id);
    assert_eq!(record.links.duplicate_of.as_ref(), Some(&earlier));
    assert!(class.outbox().join(&earlier.path).is_file());
    assert_eq!(second[0].failed(), 0, "a duplicate is not a failure");

    let csv = fs::read_to_string(&second[0].reports.submissions).unwrap();
    assert!(csv.contains(",duplicate,"), "{csv}");
    assert!(
        csv.contains(&format!("duplicate_of {}", earlier.path)),
        "{csv}"
    );
}

#[tokio::test]
async fn regrade_grades_a_duplicate_again() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    class.drop_file("essay.md", "# Findings\nNorth sells most.");
    run(&class, false).await;
    let calls_after_first = servers.requests();

    class.drop_file("essay.md", "# Findings\nNorth sells most.");
    let again = run(&class, true).await;

    assert_eq!(again[0].records[0].status, Status::Graded);
    assert_eq!(servers.requests(), calls_after_first + 2);

    // The regrade is now the result later duplicates point at.
    class.drop_file("essay.md", "# Findings\nNorth sells most.");
    let third = run(&class, false).await;
    let regraded = RecordRef::new(&again[0].batch, "essay.md");
    assert_eq!(
        third[0].records[0].links.duplicate_of.as_ref(),
        Some(&regraded)
    );
}

#[tokio::test]
async fn a_changed_file_or_another_grading_configuration_is_graded_again() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    class.drop_file("a.py", script(1));
    run(&class, false).await;

    class.drop_file("a.py", script(2));
    let changed = run(&class, false).await;
    assert_eq!(changed[0].records[0].status, Status::Graded);

    let text = fs::read_to_string(&class.config_path).unwrap();
    fs::write(
        &class.config_path,
        text.replace("fake-coder", "another-coder"),
    )
    .unwrap();
    class.drop_file("a.py", script(2));
    let new_models = run(&class, false).await;
    assert_eq!(new_models[0].records[0].status, Status::Graded);
}

#[tokio::test]
async fn identical_work_from_two_students_is_graded_and_flagged_on_both() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    class.drop_file("leeomar_1001_2001_sales.py", script(7));
    class.drop_file("parkmina_1002_2002_sales.py", script(7));
    class.drop_file("ngtom_1003_2003_sales.py", script(8));

    let outcome = run(&class, false).await.remove(0);

    let records = &outcome.records;
    assert!(records.iter().all(|r| r.status == Status::Graded));
    let lee = record_for(records, "leeomar_1001_2001_sales.py");
    let park = record_for(records, "parkmina_1002_2002_sales.py");
    let ng = record_for(records, "ngtom_1003_2003_sales.py");
    assert!(lee.flags.contains(&"identical_submission".to_string()));
    assert!(park.flags.contains(&"identical_submission".to_string()));
    assert_eq!(
        lee.links.identical_to,
        vec![RecordRef::new(&outcome.batch, &park.submission.id)]
    );
    assert_eq!(
        park.links.identical_to,
        vec![RecordRef::new(&outcome.batch, &lee.submission.id)]
    );
    assert!(ng.flags.is_empty() && ng.links.identical_to.is_empty());

    // A third student handing in the same bytes later names both earlier records.
    class.drop_file("kimjo_1004_2004_sales.py", script(7));
    let later = run(&class, false).await.remove(0);
    let kim = &later.records[0];
    assert_eq!(kim.status, Status::Graded);
    assert_eq!(kim.links.identical_to.len(), 2, "{:?}", kim.links);
    let csv = fs::read_to_string(&later.reports.submissions).unwrap();
    assert!(csv.contains("identical_to "), "{csv}");
}

#[tokio::test]
async fn older_canvas_resubmissions_are_superseded_by_the_newest() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    class.drop_file("moralesdiego_1001_2001_sales.py", script(1));
    class.drop_file("moralesdiego_1001_2002_sales-1.py", script(2));
    class.drop_file("moralesdiego_1001_2003_sales-2.py", script(3));
    class.drop_file("moralesdiego_1001_2004_notes.md", "# Notes\nDone.");

    let outcome = run(&class, false).await.remove(0);

    let records = &outcome.records;
    assert_eq!(records.len(), 4, "every input ends in a record");
    let newest = record_for(records, "moralesdiego_1001_2003_sales-2.py");
    assert_eq!(newest.status, Status::Graded);
    let newest_ref = RecordRef::new(&outcome.batch, &newest.submission.id);
    for older in [
        "moralesdiego_1001_2001_sales.py",
        "moralesdiego_1001_2002_sales-1.py",
    ] {
        let record = record_for(records, older);
        assert_eq!(record.status, Status::Superseded, "{older}");
        assert_eq!(record.links.superseded_by.as_ref(), Some(&newest_ref));
        assert_eq!(record.submission.student.lms_id.as_deref(), Some("1001"));
        assert!(class.original(record).is_file(), "the original is kept");
    }
    assert_eq!(
        record_for(records, "moralesdiego_1001_2004_notes.md").status,
        Status::Graded
    );
    assert_eq!(outcome.failed(), 0);
    assert_eq!(
        servers.code.stats().requests,
        2,
        "only the newest file and the notes"
    );
    let csv = fs::read_to_string(&outcome.reports.submissions).unwrap();
    assert!(csv.contains(",superseded,"), "{csv}");
}

#[tokio::test]
async fn resumes_claimed_work_after_crash_without_grading_anything_twice() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    for n in 0..4 {
        class.drop_file(&format!("s{n}.py"), script(n));
    }
    // A run that claimed everything, graded s0 and wrote its record, then died before
    // archiving it; it also left a half-written record of s1 behind.
    run(&class, false).await;
    let done = class
        .records()
        .into_iter()
        .find(|r| r.submission.id == "s0.py")
        .unwrap();
    let batch = done.batch.clone();
    let queue = Queue::open(
        &tandem::config::Config::load(&class.config_path)
            .unwrap()
            .paths,
    )
    .unwrap();
    let crashed = "2030-01-01T00-00-00";
    queue.open_batch(crashed).unwrap();
    let mut units = Vec::new();
    for n in 0..4 {
        class.drop_file(&format!("r{n}.py"), script(10 + n));
        units.push(
            queue
                .claim(crashed, &class.inbox().join(format!("r{n}.py")))
                .unwrap(),
        );
    }
    let mut record = done.clone();
    record.batch = crashed.to_string();
    record.submission.id = units[0].id.clone();
    record.submission.original = Some(units[0].original());
    queue.write_record(&record).unwrap();
    fs::write(
        queue.batch_outbox(crashed).join(".r1.py.json.999.tmp"),
        "{\"sta",
    )
    .unwrap();
    drop(queue);
    let calls_before = servers.requests();

    let outcomes = run(&class, false).await;

    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].resumed);
    assert_eq!(outcomes[0].batch, crashed);
    assert_eq!(
        servers.requests(),
        calls_before + 6,
        "r1, r2 and r3 graded; r0 was done"
    );
    let records = class.records();
    for n in 0..4 {
        record_for(&records, &format!("r{n}.py"));
        record_for(&records, &format!("s{n}.py"));
    }
    assert!(class.claimed().is_empty());
    assert!(
        class.stray_outbox_files().is_empty(),
        "{:?}",
        class.stray_outbox_files()
    );
    assert_ne!(batch, crashed);
}

#[tokio::test]
async fn a_second_tandem_on_the_same_state_folder_is_refused() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let _first = Queue::open(&class.config().paths).unwrap();
    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    let error = batch::run(
        class.config(),
        RunOptions::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("locked by another tandem"),
        "{error}"
    );
}
