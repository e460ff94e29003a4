//! The sample class in `examples/class/` and its rubric load as the README says they do: every
//! submission but two becomes text a model can grade, and the two broken ones fail with the
//! kinds their failure records will carry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tandem::rubric::Rubric;
use tandem::submission::{Format, LoadLimits, load, parse_lms_name};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn class_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples().join("class"))
        .expect("examples/class exists")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn loads_every_sample_submission_except_the_two_broken_ones() {
    let limits = LoadLimits::default();
    let expected_failures = BTreeMap::from([
        (
            "chenwei_104372_5532688_analysis.ipynb",
            "malformed_notebook",
        ),
        ("duboisclaire_104389_5532703_analysis.py", "empty"),
    ]);

    let mut loaded = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for path in class_files() {
        match load(&path, &limits) {
            Ok(sub) => {
                loaded.insert(name(&path), sub);
            }
            Err(err) => {
                assert!(err.to_string().contains(&name(&path)), "{err}");
                failed.insert(name(&path), err.kind());
            }
        }
    }

    let failed: BTreeMap<&str, &str> = failed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(failed, expected_failures);
    assert!(
        loaded.len() >= 12,
        "only {} submissions loaded",
        loaded.len()
    );

    for (file, sub) in &loaded {
        assert!(!sub.text.trim().is_empty(), "{file} has no text");
        assert!(
            !sub.text.contains('\u{1B}'),
            "{file} kept a terminal escape"
        );
        assert!(
            !sub.text.contains("iVBORw0KGgo"),
            "{file} kept base64 image data"
        );
        assert!(
            sub.text.chars().count() <= limits.max_chars,
            "{file} is {} characters, too long for a small model",
            sub.text.chars().count()
        );
        assert_eq!(sub.sha256.len(), 64);
    }
}

#[test]
fn sample_class_covers_every_format_and_lms_naming() {
    let limits = LoadLimits::default();
    let mut formats = Vec::new();
    let (mut canvas, mut moodle, mut late, mut resubmitted) = (0, 0, 0, 0);
    for path in class_files() {
        let lms = parse_lms_name(&name(&path))
            .unwrap_or_else(|| panic!("{} has no LMS-style name", path.display()));
        match lms.lms {
            tandem::submission::Lms::Canvas => canvas += 1,
            tandem::submission::Lms::Moodle => moodle += 1,
        }
        late += usize::from(lms.late);
        resubmitted += usize::from(lms.resubmission.is_some());
        if let Ok(sub) = load(&path, &limits) {
            assert_eq!(sub.student, lms.student(), "{}", path.display());
            formats.push(sub.format);
        }
    }

    for format in [
        Format::Notebook,
        Format::Python,
        Format::R,
        Format::RMarkdown,
        Format::Sql,
        Format::Markdown,
    ] {
        assert!(
            formats.contains(&format),
            "no sample submission is {}",
            format.as_str()
        );
    }
    assert!(canvas >= 10, "{canvas} Canvas names");
    assert_eq!(moodle, 1);
    assert!(late >= 2, "{late} late submissions");
    assert_eq!(resubmitted, 1);
}

#[test]
fn sample_notebooks_render_their_outputs() {
    let limits = LoadLimits::default();
    let class = examples().join("class");

    let best = load(
        &class.join("okaforamara_104211_5532101_sales_analysis.ipynb"),
        &limits,
    )
    .unwrap();
    assert!(
        best.text.contains("[image output: image/png]"),
        "{}",
        best.text
    );
    assert!(
        best.text.contains("North  412350.00      29.89"),
        "{}",
        best.text
    );
    assert!(
        best.text.contains("removed 18 duplicate orders"),
        "{}",
        best.text
    );
    assert!(!best.text.contains("<table"), "{}", best.text);

    let late = load(
        &class.join("tanakayui_late_104250_5532240_analysis.ipynb"),
        &limits,
    )
    .unwrap();
    assert!(late.student.late);
    assert!(
        late.text.contains("Error:\n```text\nKeyError: 'month'"),
        "{}",
        late.text
    );
    assert!(late.text.contains("more lines cut"), "{}", late.text);
}

#[test]
fn sample_rubric_is_valid_and_worth_ten_points() {
    let rubric = Rubric::load(&examples().join("rubric.toml")).unwrap();
    let ids: Vec<&str> = rubric.criteria.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "data_loading",
            "analysis",
            "visualisation",
            "interpretation"
        ]
    );
    assert_eq!(rubric.max_score(), 10);
    assert!(rubric.criteria.iter().all(|c| !c.levels.is_empty()));
}
