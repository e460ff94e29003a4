//! `tandem report` reads batches from the outbox by name and writes only under the reports
//! folder, whatever it is given as a batch.

use std::fs;
use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"[assignment]
rubric = "rubric.toml"

[[backend]]
name = "code"
role = "code_analysis"
url = "http://127.0.0.1:9"
model = "m"

[[backend]]
name = "feedback"
role = "feedback"
url = "http://127.0.0.1:9"
model = "m"
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    fs::copy(examples.join("rubric.toml"), dir.path().join("rubric.toml")).unwrap();
    fs::write(dir.path().join("tandem.toml"), CONFIG).unwrap();
    fs::create_dir_all(dir.path().join("outbox")).unwrap();
    dir
}

fn report(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .current_dir(dir)
        .arg("report")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_batch_given_as_a_path_is_refused_and_nothing_is_written_outside() {
    let dir = project();
    let outside = dir.path().join("elsewhere");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("summary.csv"), "precious").unwrap();

    for batch in ["../elsewhere", "/tmp", "a/b", "..", "."] {
        let (code, stderr) = report(dir.path(), &[batch, "--rebuild"]);
        assert_eq!(code, Some(2), "{batch}: {stderr}");
        assert!(stderr.contains("not a batch id"), "{batch}: {stderr}");
    }
    assert_eq!(
        fs::read_to_string(outside.join("summary.csv")).unwrap(),
        "precious"
    );
    assert!(!dir.path().join("reports").join("batches.csv").exists());
}

#[test]
fn an_empty_batch_folder_is_not_reported_as_a_batch() {
    let dir = project();
    fs::create_dir_all(dir.path().join("outbox").join("2026-01-01T00-00-00")).unwrap();
    let (code, stderr) = report(dir.path(), &["2026-01-01T00-00-00", "--rebuild"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds no records"), "{stderr}");
}
