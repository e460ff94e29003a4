//! LMS bulk-download zips: one submission per student, the newest resubmission graded and the
//! older ones superseded, entries that try to escape never written outside, and zip bombs
//! stopped by limits that their failure records name.

mod queue_support;

use std::fs;
use std::io::Write;
use std::sync::Arc;

use queue_support::{Class, Servers, notebook, script, statuses, walk};
use tandem::batch::{self, RunOptions};
use tandem::progress::LiveDisplay;
use tandem::record::{RecordRef, ResultRecord, Status};
use tokio_util::sync::CancellationToken;
use zip::write::SimpleFileOptions;

/// The bytes of a zip holding `files` (name, bytes) in that order.
fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in files {
        writer
            .start_file(*name, SimpleFileOptions::default())
            .unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

async fn run(class: &Class) -> Vec<ResultRecord> {
    let display = Arc::new(LiveDisplay::new(Box::new(std::io::sink())));
    batch::run(
        class.config(),
        RunOptions::default(),
        display,
        CancellationToken::new(),
    )
    .await
    .expect("the run finishes");
    class.records()
}

fn by_id<'a>(records: &'a [ResultRecord], id: &str) -> &'a ResultRecord {
    records
        .iter()
        .find(|r| r.submission.id == id)
        .unwrap_or_else(|| panic!("no record {id} among {:?}", ids(records)))
}

fn ids(records: &[ResultRecord]) -> Vec<&str> {
    records.iter().map(|r| r.submission.id.as_str()).collect()
}

#[tokio::test]
async fn a_canvas_zip_becomes_one_submission_per_student() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let zip = zip_of(&[
        (
            "smithjane_101_201_analysis.ipynb",
            notebook("print('jane')").into_bytes(),
        ),
        (
            "smithjane_101_202_report.md",
            b"# Report\nNorth leads.".to_vec(),
        ),
        (
            "doejohn_late_102_203_analysis.ipynb",
            notebook("print('john')").into_bytes(),
        ),
        ("leeomar_103_204_sales.py", script(1).into_bytes()),
        ("leeomar_103_205_sales-1.py", script(2).into_bytes()),
        (
            "__MACOSX/._leeomar_103_205_sales-1.py",
            b"\0\x05\x16\x07".to_vec(),
        ),
    ]);
    class.drop_file("Regional Sales Submissions.zip", &zip);

    let records = run(&class).await;

    assert_eq!(records.len(), 4, "{:?}", ids(&records));
    let unit = "regional-sales-submissions.zip";
    let jane = by_id(&records, &format!("{unit}--smithjane_101"));
    assert_eq!(jane.status, Status::Graded);
    assert_eq!(jane.submission.files, vec!["analysis.ipynb", "report.md"]);
    assert_eq!(jane.submission.student.lms_id.as_deref(), Some("101"));
    assert_eq!(jane.submission.student.name.as_deref(), Some("smithjane"));

    let john = by_id(&records, &format!("{unit}--doejohn_102"));
    assert_eq!(john.status, Status::Graded);
    assert!(john.submission.student.late);

    let omar = by_id(&records, &format!("{unit}--leeomar_103"));
    assert_eq!(omar.status, Status::Graded);
    assert_eq!(omar.submission.files, vec!["sales.py"]);
    let graded_text = servers
        .code
        .bodies()
        .iter()
        .map(|b| b.to_string())
        .collect::<String>();
    assert!(
        graded_text.contains("submission 2"),
        "the resubmission was graded"
    );
    assert!(
        !graded_text.contains("submission 1\\n"),
        "the older file was not"
    );

    let older = by_id(&records, &format!("{unit}--leeomar_103_204_sales.py"));
    assert_eq!(older.status, Status::Superseded);
    let batch = &omar.batch;
    assert_eq!(
        older.links.superseded_by,
        Some(RecordRef::new(batch, &omar.submission.id))
    );

    for record in &records {
        assert_eq!(
            fs::read(class.original(record)).unwrap(),
            zip,
            "the zip is kept as dropped"
        );
    }
    assert!(
        walk(&class.state().join("unpacked")).is_empty(),
        "nothing left unpacked"
    );
    assert!(class.claimed().is_empty());
}

#[tokio::test]
async fn a_moodle_zip_has_a_folder_per_student() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let zip = zip_of(&[
        (
            "Jane Smith_4821_assignsubmission_file/analysis.ipynb",
            notebook("print('jane')").into_bytes(),
        ),
        (
            "Jane Smith_4821_assignsubmission_file/data/notes.md",
            b"# Notes\nok".to_vec(),
        ),
        (
            "Ana María López_77_assignsubmission_file/report.Rmd",
            b"# Report\n```{r}\n1\n```\n".to_vec(),
        ),
        (
            "Jane Smith_4821_assignsubmission_file/.DS_Store",
            vec![0, 0, 0, 1],
        ),
    ]);
    class.drop_file("BA101-Assignment 2-3131.zip", &zip);

    let records = run(&class).await;

    assert_eq!(statuses(&records).get("graded"), Some(&2), "{records:#?}");
    let jane = records
        .iter()
        .find(|r| r.submission.student.lms_id.as_deref() == Some("4821"))
        .unwrap();
    assert_eq!(jane.submission.student.name.as_deref(), Some("Jane Smith"));
    assert_eq!(
        jane.submission.files,
        vec!["analysis.ipynb", "data/notes.md"]
    );
    let ana = records
        .iter()
        .find(|r| r.submission.student.lms_id.as_deref() == Some("77"))
        .unwrap();
    assert_eq!(
        ana.submission.student.name.as_deref(),
        Some("Ana María López")
    );
    assert_eq!(ana.submission.format, "rmarkdown");
}

#[tokio::test]
async fn zip_entries_never_escape_and_links_are_never_made() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    for name in [
        "../evil.py",
        "/tmp/evil-absolute.py",
        "a/../../evil-nested.py",
        "..\\evil-windows.py",
    ] {
        writer.start_file(name, options).unwrap();
        writer
            .write_all(b"import os; os.system('rm -rf ~')\n")
            .unwrap();
    }
    writer
        .add_symlink("smithjane_1_2_passwd.py", "/etc/passwd", options)
        .unwrap();
    writer
        .start_file("smithjane_1_3_analysis.py", options)
        .unwrap();
    writer.write_all(script(1).as_bytes()).unwrap();
    let zip = writer.finish().unwrap().into_inner();
    class.drop_file("class.zip", &zip);

    let records = run(&class).await;

    assert_eq!(records.len(), 1, "{records:#?}");
    let jane = &records[0];
    assert_eq!(jane.status, Status::Graded);
    assert_eq!(jane.submission.files, vec!["analysis.py"]);
    assert!(
        jane.flags.contains(&"zip_entries_skipped".to_string()),
        "{:?}",
        jane.flags
    );
    for escaped in [
        class.root().join("evil.py"),
        class.root().join("evil-nested.py"),
        class.root().join("evil-windows.py"),
        class.state().join("evil.py"),
        std::path::PathBuf::from("/tmp/evil-absolute.py"),
    ] {
        assert!(!escaped.exists(), "{} was written", escaped.display());
    }
    let links: Vec<_> = walk(class.root())
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_symlink())
        .collect();
    assert!(links.is_empty(), "links made: {links:?}");
    let sent = servers
        .code
        .bodies()
        .iter()
        .map(|b| b.to_string())
        .collect::<String>();
    assert!(!sent.contains("root:x:0:0"), "a link was followed");
}

#[tokio::test]
async fn zip_bombs_are_stopped_by_limits_their_records_name() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    // One entry of 8 MiB of zeros: about a thousand times its compressed size.
    class.drop_file(
        "bomb.zip",
        zip_of(&[("smithjane_1_2_a.py", vec![0u8; 8 << 20])]),
    );
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for n in 0..10_001 {
        writer.start_file(format!("f{n}.py"), stored).unwrap();
    }
    class.drop_file("many.zip", writer.finish().unwrap().into_inner());
    let mut truncated = zip_of(&[("a.py", script(1).into_bytes())]);
    truncated.truncate(truncated.len() - 10);
    class.drop_file("truncated.zip", &truncated);

    let records = run(&class).await;

    let expect = [
        (
            "bomb.zip",
            "zip_expansion_ratio",
            "over the limit of 100 times",
        ),
        (
            "many.zip",
            "zip_too_many_entries",
            "10001 entries, over the limit of 10000",
        ),
        ("truncated.zip", "unreadable_zip", "not a readable zip"),
    ];
    assert_eq!(records.len(), expect.len(), "{:?}", ids(&records));
    for (name, kind, says) in expect {
        let record = by_id(&records, name);
        assert_eq!(record.status, Status::Failed, "{name}");
        let error = record.error.as_ref().unwrap();
        assert_eq!(error.kind, kind, "{name}: {}", error.message);
        assert!(error.message.starts_with(name), "{}", error.message);
        assert!(error.message.contains(says), "{}", error.message);
        assert!(class.original(record).is_file(), "{name} kept");
    }
    assert_eq!(servers.requests(), 0);
}

#[tokio::test]
async fn a_zip_expanding_past_the_size_limit_fails_naming_it() {
    let servers = Servers::fast().await;
    // Files of at most 4 KiB: a zip may hold 1 MiB in all.
    let class = Class::new(&servers, "max_file_bytes = 4096");
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|n| {
            let bytes: Vec<u8> = (0..4000u32)
                .map(|i| (i * 31 + n * 17) as u8 % 251)
                .collect();
            (format!("student{n}_1{n}_2{n}_a.py"), bytes)
        })
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    class.drop_file("big.zip", zip_of(&files));

    let records = run(&class).await;

    assert_eq!(records.len(), 1);
    let error = records[0].error.as_ref().unwrap();
    assert_eq!(error.kind, "zip_too_large");
    assert!(
        error.message.contains("over the limit of 1048576 bytes"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_same_zip_dropped_again_is_all_duplicates() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let zip = zip_of(&[
        ("smithjane_101_201_a.py", script(1).into_bytes()),
        ("doejohn_102_202_a.py", script(2).into_bytes()),
    ]);
    class.drop_file("hw.zip", &zip);
    run(&class).await;
    let calls = servers.requests();

    class.drop_file("hw.zip", &zip);
    let records = run(&class).await;

    assert_eq!(servers.requests(), calls);
    assert_eq!(
        statuses(&records).get("duplicate"),
        Some(&2),
        "{:?}",
        statuses(&records)
    );
}

#[tokio::test]
async fn entries_without_lms_names_are_each_their_own_submission() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let zip = zip_of(&[
        ("class/Ana.py", script(1).into_bytes()),
        ("class/ana.py", script(2).into_bytes()),
        ("class/team b/main.py", script(3).into_bytes()),
        ("class/team b/README.md", b"# Team B".to_vec()),
    ]);
    class.drop_file("projects.zip", &zip);

    let records = run(&class).await;

    assert_eq!(records.len(), 3, "{:?}", ids(&records));
    assert!(records.iter().all(|r| r.status == Status::Graded));
    let mut found = ids(&records);
    found.sort();
    assert_eq!(found[0], "projects.zip--ana.py");
    assert!(found[1].starts_with("projects.zip--ana.py-"), "{found:?}");
    assert_eq!(found[2], "projects.zip--team-b");
    let team = by_id(&records, "projects.zip--team-b");
    assert_eq!(team.submission.files, vec!["README.md", "main.py"]);
}
