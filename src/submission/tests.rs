//! Tests of [`super::load`] against files and folders written to a temporary folder.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

use super::*;

fn limits() -> LoadLimits {
    LoadLimits {
        max_file_bytes: 64 * 1024,
        max_chars: 10_000,
    }
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&path, bytes).unwrap();
    path
}

fn load_err(path: &Path) -> LoadError {
    match load(path, &limits()) {
        Ok(sub) => panic!("{} loaded but should have failed: {sub:?}", path.display()),
        Err(err) => err,
    }
}

/// Asserts that an error has the kind, names the file, fits on one line and says `words`.
fn assert_error(err: &LoadError, kind: &str, path: &Path, words: &str) {
    let message = err.to_string();
    assert_eq!(err.kind(), kind, "{message}");
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(words),
        "`{message}` does not say `{words}`"
    );
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(err.path(), path);
}

const NOTEBOOK: &str = r##"{
 "nbformat": 4, "nbformat_minor": 5,
 "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
 "cells": [
  {"cell_type": "markdown", "id": "a1", "metadata": {}, "source": ["# Regional sales\n"]},
  {"cell_type": "code", "id": "a2", "metadata": {}, "execution_count": 1,
   "source": ["print(df['revenue'].sum())"],
   "outputs": [{"output_type": "stream", "name": "stdout", "text": ["48210.5\n"]}]}
 ]
}"##;

#[test]
fn loads_a_python_file_with_its_hash_size_and_name() {
    let dir = TempDir::new().unwrap();
    let source = b"import pandas as pd\ndf = pd.read_csv('sales.csv')\n";
    let path = write(dir.path(), "analysis.py", source);

    let sub = load(&path, &limits()).unwrap();

    assert_eq!(sub.format, Format::Python);
    assert_eq!(sub.files, vec!["analysis.py"]);
    assert_eq!(sub.id, "analysis.py");
    assert_eq!(sub.bytes, source.len() as u64);
    assert_eq!(sub.sha256, hex::encode(Sha256::digest(source)));
    assert_eq!(sub.text, String::from_utf8_lossy(source));
    assert_eq!(sub.student, Student::default());
    assert_eq!(sub.entry, path);
}

#[test]
fn recognises_every_supported_extension_in_any_case() {
    let dir = TempDir::new().unwrap();
    let cases = [
        ("a.IPYNB", Format::Notebook),
        ("b.py", Format::Python),
        ("c.R", Format::R),
        ("d.r", Format::R),
        ("e.Rmd", Format::RMarkdown),
        ("f.sql", Format::Sql),
        ("g.md", Format::Markdown),
        ("h.TXT", Format::Text),
    ];
    for (name, format) in cases {
        let body = if format == Format::Notebook {
            NOTEBOOK
        } else {
            "select 1;\n"
        };
        let sub = load(&write(dir.path(), name, body), &limits()).unwrap();
        assert_eq!(sub.format, format, "{name}");
    }
}

#[test]
fn renders_notebooks_as_cells_and_outputs() {
    let dir = TempDir::new().unwrap();
    let sub = load(&write(dir.path(), "nb.ipynb", NOTEBOOK), &limits()).unwrap();
    assert_eq!(
        sub.text,
        "# Regional sales\n\n```python\nprint(df['revenue'].sum())\n```\n\
         Output:\n```text\n48210.5\n```\n"
    );
}

#[test]
fn keeps_r_markdown_as_text() {
    let dir = TempDir::new().unwrap();
    let rmd = "---\ntitle: Sales\n---\n\n```{r}\nsummary(sales)\n```\n";
    let sub = load(&write(dir.path(), "report.Rmd", rmd), &limits()).unwrap();
    assert_eq!(sub.format, Format::RMarkdown);
    assert_eq!(sub.text, rmd);
}

#[test]
fn fails_empty_file_naming_it() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "analysis.py", "");
    assert_error(&load_err(&path), "empty", &path, "empty (0 bytes)");
}

#[test]
fn fails_whitespace_only_file_as_empty() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "notes.md", "\u{FEFF} \n\t\r\n  \u{200B}\n");
    assert_error(&load_err(&path), "empty", &path, "only whitespace");
}

#[test]
fn fails_binary_file_even_with_a_supported_extension() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "analysis.py",
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00",
    );
    assert_error(&load_err(&path), "binary", &path, "binary");
}

#[test]
fn fails_latin1_text_as_not_utf8_naming_the_offset() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "query.sql", b"-- caf\xE9 sales\nselect 1;\n");
    assert_error(&load_err(&path), "not_utf8", &path, "byte offset 6");
}

#[test]
fn decodes_utf16_and_strips_byte_order_marks() {
    let dir = TempDir::new().unwrap();
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "total <- sum(x)\r\n".encode_utf16() {
        utf16.extend(unit.to_le_bytes());
    }
    let sub = load(&write(dir.path(), "a.R", &utf16), &limits()).unwrap();
    assert_eq!(sub.text, "total <- sum(x)\n");
    assert_eq!(sub.bytes, utf16.len() as u64);

    let sub = load(
        &write(dir.path(), "b.py", b"\xEF\xBB\xBFx = 1\n"),
        &limits(),
    )
    .unwrap();
    assert_eq!(sub.text, "x = 1\n");
}

#[test]
fn fails_oversized_file_with_both_sizes() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "big.py", "x = 1\n".repeat(100));
    let small = LoadLimits {
        max_file_bytes: 100,
        max_chars: 10_000,
    };
    let err = load(&path, &small).unwrap_err();
    assert_error(
        &err,
        "too_large",
        &path,
        "600 bytes, over the limit of 100 bytes",
    );
}

#[test]
fn fails_unsupported_type_naming_the_extension() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "sales.xlsx", b"PK\x03\x04");
    assert_error(&load_err(&path), "unsupported_type", &path, "`.xlsx`");

    let path = write(dir.path(), "README", "hello");
    assert_error(
        &load_err(&path),
        "unsupported_type",
        &path,
        "(no extension)",
    );
}

#[test]
fn fails_truncated_notebook_naming_line_and_column() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "nb.ipynb", &NOTEBOOK[..NOTEBOOK.len() / 2]);
    let err = load_err(&path);
    assert_error(&err, "malformed_notebook", &path, "not valid JSON at line ");
    let LoadError::NotebookJson { line, column, .. } = err else {
        panic!("expected NotebookJson, got {err:?}");
    };
    assert!(line > 1 && column > 0, "line {line} column {column}");
}

#[test]
fn fails_merge_conflicted_notebook() {
    let dir = TempDir::new().unwrap();
    let conflicted = NOTEBOOK.replacen(
        "  {\"cell_type\": \"code\"",
        "<<<<<<< HEAD\n  {\"cell_type\": \"code\"",
        1,
    ) + "\n=======\n{}\n>>>>>>> theirs\n";
    let path = write(dir.path(), "nb.ipynb", conflicted);
    assert_error(
        &load_err(&path),
        "merge_conflict",
        &path,
        "starting at line 6",
    );
}

#[test]
fn fails_json_that_is_not_a_notebook_saying_what_is_missing() {
    let dir = TempDir::new().unwrap();
    let path = write(dir.path(), "nb.ipynb", r#"{"nbformat": 4, "metadata": {}}"#);
    assert_error(
        &load_err(&path),
        "malformed_notebook",
        &path,
        "no `cells` list",
    );
}

#[test]
fn strips_colour_codes_and_invisible_characters_from_text_but_hashes_raw_bytes() {
    let dir = TempDir::new().unwrap();
    let raw = "x = 1  # \u{1B}[31mred\u{1B}[0m\u{200B}\u{202E}\ny = 2\n";
    let sub = load(&write(dir.path(), "a.py", raw), &limits()).unwrap();
    assert_eq!(sub.text, "x = 1  # red\ny = 2\n");
    assert_eq!(sub.sha256, hex::encode(Sha256::digest(raw.as_bytes())));
}

#[test]
fn cuts_text_beyond_the_limit_saying_how_much() {
    let dir = TempDir::new().unwrap();
    let body = "a".repeat(500);
    let tight = LoadLimits {
        max_file_bytes: 64 * 1024,
        max_chars: 200,
    };
    let sub = load(&write(dir.path(), "long.txt", &body), &tight).unwrap();
    assert!(sub.text.starts_with(&"a".repeat(200)));
    assert!(
        sub.text.ends_with("[… 300 more characters cut …]"),
        "{}",
        sub.text
    );
}

#[test]
fn loads_a_folder_in_path_order_with_headers() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("Jane Doe_4821_assignsubmission_file_");
    write(&folder, "b_report.md", "# Findings\nNorth leads.\n");
    write(&folder, "a_analysis.py", "print('hi')\n");
    write(&folder, "sub/c.sql", "select 1;\n");
    write(&folder, ".hidden.py", "secret = 1\n");
    write(&folder, ".ipynb_checkpoints/a-checkpoint.ipynb", NOTEBOOK);
    write(&folder, "a_analysis.py~", "old\n");
    write(&folder, "draft.swp", "x");
    write(&folder, "data.csv.part", "x");
    write(&folder, "page.crdownload", "x");
    write(&folder, "scratch.tmp", "x");
    write(&folder, "data.xlsx", b"PK\x03\x04");

    let sub = load(&folder, &limits()).unwrap();

    assert_eq!(
        sub.files,
        vec!["a_analysis.py", "b_report.md", "data.xlsx", "sub/c.sql"]
    );
    assert_eq!(sub.format, Format::Mixed);
    assert_eq!(
        sub.text,
        "=== a_analysis.py ===\nprint('hi')\n\n=== b_report.md ===\n# Findings\nNorth leads.\n\n\
         [not graded: data.xlsx (unsupported type)]\n\n=== sub/c.sql ===\nselect 1;\n"
    );
    assert_eq!(sub.bytes, 12 + 24 + 4 + 10);
    assert_eq!(sub.id, "jane-doe_4821_assignsubmission_file_");
    assert_eq!(sub.student.name.as_deref(), Some("Jane Doe"));
    assert_eq!(sub.student.lms_id.as_deref(), Some("4821"));
}

#[test]
fn gives_a_folder_its_files_format_when_they_agree() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("work");
    write(&folder, "a.py", "a = 1\n");
    write(&folder, "b.PY", "b = 2\n");
    assert_eq!(load(&folder, &limits()).unwrap().format, Format::Python);
}

#[test]
fn hashes_a_folder_by_paths_and_bytes() {
    let dir = TempDir::new().unwrap();
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let three = dir.path().join("three");
    write(&one, "a.py", "x = 1\n");
    write(&two, "a.py", "x = 1\n");
    write(&three, "b.py", "x = 1\n");
    let hash = |p: &Path| load(p, &limits()).unwrap().sha256;

    assert_eq!(hash(&one), hash(&two));
    assert_ne!(hash(&one), hash(&three));

    let mut expected = Sha256::new();
    expected.update(b"a.py\0");
    expected.update(6u64.to_le_bytes());
    expected.update(b"x = 1\n");
    assert_eq!(hash(&one), hex::encode(expected.finalize()));
}

#[test]
fn notes_an_empty_file_among_others_and_grades_the_rest() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("work");
    write(&folder, "a.py", "a = 1\n");
    write(&folder, "notes.txt", "");
    let sub = load(&folder, &limits()).unwrap();
    assert_eq!(sub.format, Format::Python);
    assert!(
        sub.text.contains("[not graded: notes.txt (empty)]"),
        "{}",
        sub.text
    );
}

#[test]
fn fails_a_folder_when_a_gradable_file_is_broken() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("work");
    write(&folder, "a.py", "a = 1\n");
    let broken = write(&folder, "b.ipynb", "{\"cells\": [");
    assert_error(&load_err(&folder), "malformed_notebook", &broken, "line 1");
}

#[test]
fn fails_a_folder_with_only_unsupported_files() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("work");
    write(&folder, "sales.xlsx", b"PK");
    write(&folder, "chart.png", b"\x89PNG");
    assert_error(
        &load_err(&folder),
        "unsupported_type",
        &folder,
        "only chart.png, sales.xlsx",
    );
}

#[test]
fn fails_a_folder_with_nothing_in_it() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("work");
    write(&folder, ".DS_Store", "x");
    write(&folder, "__MACOSX/._a.py", "x");
    assert_error(&load_err(&folder), "empty_folder", &folder, "no files");
}

#[cfg(unix)]
#[test]
fn ignores_symlinks_inside_a_folder_without_reading_them() {
    let dir = TempDir::new().unwrap();
    let outside = write(dir.path(), "secret.txt", "password = hunter2\n");
    let folder = dir.path().join("work");
    write(&folder, "a.py", "a = 1\n");
    std::os::unix::fs::symlink(&outside, folder.join("linked.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), folder.join("loop")).unwrap();

    let sub = load(&folder, &limits()).unwrap();

    assert_eq!(sub.files, vec!["a.py"]);
    assert!(!sub.text.contains("hunter2"), "{}", sub.text);
}

#[cfg(unix)]
#[test]
fn fails_a_symlinked_entry() {
    let dir = TempDir::new().unwrap();
    let target = write(dir.path(), "a.py", "a = 1\n");
    let link = dir.path().join("link.py");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_error(&load_err(&link), "symlink", &link, "symbolic link");
}

#[test]
fn fails_a_missing_entry_as_io() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("gone.py");
    assert_error(&load_err(&path), "io", &path, "cannot read");
}

#[test]
fn reads_the_student_from_a_canvas_file_name() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "smithjane_late_123456_7890123_analysis-1.ipynb",
        NOTEBOOK,
    );
    let sub = load(&path, &limits()).unwrap();
    assert_eq!(
        sub.student,
        Student {
            name: Some("smithjane".into()),
            lms_id: Some("123456".into()),
            late: true,
        }
    );
    let lms = sub.lms_name().unwrap();
    assert_eq!(lms.original_name.as_deref(), Some("analysis.ipynb"));
    assert_eq!(lms.resubmission, Some(1));
    assert_eq!(sub.info().student, sub.student);
    assert_eq!(sub.info().format, "notebook");
}

#[test]
fn reads_the_student_from_the_files_of_a_plainly_named_folder() {
    let dir = TempDir::new().unwrap();
    let folder = dir.path().join("jane");
    write(&folder, "doejane_77_100_a.py", "a = 1\n");
    write(&folder, "doejane_late_77_101_b.py", "b = 1\n");
    let sub = load(&folder, &limits()).unwrap();
    assert_eq!(sub.student.lms_id.as_deref(), Some("77"));
    assert!(sub.student.late);

    let other = dir.path().join("two");
    write(&other, "doejane_77_100_a.py", "a = 1\n");
    write(&other, "roejim_78_102_b.py", "b = 1\n");
    assert_eq!(load(&other, &limits()).unwrap().student, Student::default());
}

#[test]
fn makes_safe_ids_from_entry_names() {
    assert_eq!(
        slug("smithjane_123_456_Sales Analysis (Final).ipynb"),
        "smithjane_123_456_sales-analysis-final-.ipynb"
    );
    assert_eq!(
        slug("Jürgen Müller_5_assignsubmission_file_"),
        "jurgen-muller_5_assignsubmission_file_"
    );
    assert_eq!(slug("..hidden"), "hidden");
    assert_eq!(slug("日本語"), "submission");
    assert_eq!(slug("a//b\\c"), "a-b-c");
    assert_eq!(slug(&"x".repeat(200)).len(), MAX_ID_LEN);
}
