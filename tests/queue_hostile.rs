//! Hostile and broken input: each ends in one record that names the file and what is wrong
//! with it, the batch goes on, and the original is kept byte for byte.

mod queue_support;

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::Arc;
use std::time::Duration;

use queue_support::{Class, Servers, notebook, record_for, script, statuses};
use tandem::batch::{self, RunOptions};
use tandem::inbox;
use tandem::progress::LiveDisplay;
use tandem::record::{ResultRecord, Status};
use tokio_util::sync::CancellationToken;

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

/// Asserts a failed record of `kind` whose message names `name` and not the state folder, and
/// that the original was kept as dropped.
fn assert_failed(class: &Class, records: &[ResultRecord], name: &str, kind: &str, bytes: &[u8]) {
    let record = record_for(records, name);
    assert_eq!(record.status, Status::Failed, "{name}: {record:#?}");
    let error = record.error.as_ref().unwrap();
    assert_eq!(error.kind, kind, "{name}: {}", error.message);
    assert!(error.message.contains(name), "{name}: {}", error.message);
    assert!(
        !error.message.contains(".tandem"),
        "{name}: {}",
        error.message
    );
    assert_eq!(
        fs::read(class.original(record)).unwrap(),
        bytes,
        "{name} kept"
    );
}

#[tokio::test]
async fn broken_files_each_end_in_a_failure_record_naming_the_file_and_the_problem() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "max_file_bytes = 4096");
    let good = notebook("import pandas as pd\nsales = pd.read_csv('sales.csv')");
    let truncated = &good[..good.len() / 2];
    let conflicted = format!(
        "<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> theirs\n",
        notebook("x = 1"),
        notebook("x = 2")
    );
    let mut png = vec![
        0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D,
    ];
    png.extend((0..600u32).map(|i| (i * 7 % 256) as u8));
    let mut latin1 = b"# r\xe9sum\xe9 of the analysis\nprint('d\xe9j\xe0 vu')\n".to_vec();
    latin1.extend(b"x = 1\n");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("empty.py", "empty", Vec::new()),
        ("photo.py", "binary", png),
        ("latin1.py", "not_utf8", latin1),
        (
            "truncated.ipynb",
            "malformed_notebook",
            truncated.as_bytes().to_vec(),
        ),
        ("conflict.ipynb", "merge_conflict", conflicted.into_bytes()),
        ("huge.py", "too_large", script(0).repeat(200).into_bytes()),
        (
            "slides.pptx",
            "unsupported_type",
            b"PK\x03\x04 not really".to_vec(),
        ),
    ];
    for (name, _, bytes) in &cases {
        class.drop_file(name, bytes);
    }
    class.drop_file("fine.py", script(1));

    let records = run(&class).await;

    assert_eq!(records.len(), cases.len() + 1, "{:?}", statuses(&records));
    for (name, kind, bytes) in &cases {
        assert_failed(&class, &records, name, kind, bytes);
    }
    assert_eq!(
        record_for(&records, "fine.py").status,
        Status::Graded,
        "the batch went on"
    );
    assert!(class.claimed().is_empty());
}

#[tokio::test]
async fn utf16_with_a_byte_order_mark_is_decoded_and_graded() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let text = "# Résumé\nNorth sells the most: 412,350.\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    class.drop_file("windows notes.md", &utf16);

    let records = run(&class).await;

    let record = record_for(&records, "windows notes.md");
    assert_eq!(record.status, Status::Graded, "{record:#?}");
    assert_eq!(fs::read(class.original(record)).unwrap(), utf16);
    let prompt = servers.code.bodies()[0].to_string();
    assert!(prompt.contains("Résumé"), "the model read the decoded text");
}

#[tokio::test]
async fn odd_names_are_graded_under_safe_ids_and_kept_as_dropped() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let names = [
        "my final analysis.py",
        "Ana María Ñúñez.py",
        "it's \"done\".py",
        "two\nlines.py",
        "-rf --no-preserve-root.py",
    ];
    for (n, name) in names.iter().enumerate() {
        class.drop_file(name, script(n));
    }

    let records = run(&class).await;

    assert_eq!(records.len(), names.len());
    for (n, name) in names.iter().enumerate() {
        let record = record_for(&records, name);
        assert_eq!(record.status, Status::Graded, "{name}");
        assert_eq!(record.submission.files, vec![name.to_string()]);
        let id = &record.submission.id;
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !id.starts_with(['.', '-']),
            "{name:?} has id {id:?}"
        );
        assert_eq!(
            fs::read_to_string(class.original(record)).unwrap(),
            script(n)
        );
    }
}

/// Names that are not UTF-8 (from old Windows zips or Latin-1 systems) can differ only in the
/// bytes a safe id drops; each must still get its own record, under an id of its own.
#[tokio::test]
async fn names_that_differ_only_in_bytes_that_are_not_utf8_get_a_record_each() {
    use std::os::unix::ffi::OsStrExt;

    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let names: [&[u8]; 2] = [b"caf\xe9.py", b"caf\xe8.py"];
    for (n, name) in names.iter().enumerate() {
        let path = class.inbox().join(std::ffi::OsStr::from_bytes(name));
        fs::write(path, script(n)).unwrap();
    }

    let records = run(&class).await;

    assert_eq!(records.len(), 2, "{records:#?}");
    let ids: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.submission.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "each gets its own id: {ids:?}");
    for record in &records {
        assert_eq!(record.status, Status::Graded, "{record:#?}");
        assert_eq!(record.performance_diagnostics.calls.len(), 2);
    }
    assert!(class.claimed().is_empty(), "nothing is left claimed");
}

#[tokio::test]
async fn a_link_pointing_outside_the_inbox_is_never_followed() {
    let servers = Servers::fast().await;
    let class = Class::new(&servers, "");
    let secret = class.root().join("secret.py");
    fs::write(&secret, "API_KEY = 'do not send'\n").unwrap();
    symlink(&secret, class.inbox().join("innocent.py")).unwrap();

    let records = run(&class).await;

    let record = record_for(&records, "innocent.py");
    assert_eq!(record.status, Status::Failed);
    let error = record.error.as_ref().unwrap();
    assert_eq!(error.kind, "link");
    assert!(error.message.contains("innocent.py") && error.message.contains("link"));
    assert_eq!(servers.requests(), 0, "nothing was sent to a model");
    let kept = class.original(record);
    assert!(
        fs::symlink_metadata(&kept)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&kept).unwrap(),
        secret,
        "the link itself is kept"
    );
    assert_eq!(
        fs::read_to_string(&secret).unwrap(),
        "API_KEY = 'do not send'\n"
    );
}

#[tokio::test]
async fn a_notebook_still_being_written_is_taken_only_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("homework.ipynb");
    let whole = notebook("import pandas as pd\nprint('done')");
    let (head, tail) = whole.split_at(whole.len() / 2);
    fs::write(&path, head).unwrap();

    // The writer pauses for longer than the settle time with half a notebook on disk.
    let settle = Duration::from_millis(100);
    let writer = {
        let path = path.clone();
        let whole = whole.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fs::write(&path, whole).unwrap();
        })
    };
    let first = inbox::stable_entries(dir.path(), settle, 1 << 20)
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(first.is_empty(), "half a notebook was taken: {first:?}");

    let second = inbox::stable_entries(dir.path(), settle, 1 << 20)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(
        fs::read_to_string(&second[0].path).unwrap().len(),
        head.len() + tail.len()
    );
}

#[tokio::test]
async fn a_notebook_that_never_parses_is_taken_after_its_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("broken.ipynb"), "{\"cells\": [").unwrap();
    let settle = Duration::from_millis(50);
    let started = std::time::Instant::now();
    let taken = inbox::stable_entries(dir.path(), settle, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        taken.len(),
        1,
        "a broken notebook is taken to fail with a record"
    );
    assert!(started.elapsed() >= settle * inbox::UNPARSED_GRACE_FACTOR);
}
