//! Every CSV report opens cleanly in LibreOffice Calc: one header row, numbers as numbers,
//! UTF-8 names intact.
//!
//! LibreOffice converts each file, as a spreadsheet user would open it (comma-separated, `"`
//! quoted, UTF-8), into a flat OpenDocument spreadsheet whose cells carry their types; the test
//! compares every cell with the CSV text. Without LibreOffice the test is skipped with a
//! message, unless `TANDEM_REQUIRE_LIBREOFFICE=1` makes it required (CI). Debian's
//! `libreoffice-calc-nogui` package is enough.

mod report_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use report_common::{BATCH, STUDENTS, night, settings};
use tandem::diagnostics::batch::summarise;
use tandem::report::write_batch_reports;

/// A cell as LibreOffice typed it.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Empty,
    Float(f64),
    Boolean(bool),
    Text(String),
}

fn soffice() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANDEM_LIBREOFFICE") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["soffice", "libreoffice"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Converts CSV files to flat OpenDocument spreadsheets in `out`, as Calc imports them.
fn convert(binary: &Path, files: &[PathBuf], out: &Path, profile: &Path) {
    let mut child = Command::new(binary)
        .args(["--headless", "--norestore", "--nolockcheck"])
        .arg(format!(
            "-env:UserInstallation=file://{}",
            profile.display()
        ))
        // Comma-separated, `"` quoted, UTF-8 (76), data from line 1.
        .arg("--infilter=CSV:44,34,76,1")
        .args(["--convert-to", "fods", "--outdir"])
        .arg(out)
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("libreoffice starts");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("libreoffice did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "libreoffice failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = start + tag[start..].find('"')?;
    Some(&tag[start..end])
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The text of a cell's paragraphs, one line each, with `<text:s/>` spaces restored.
fn cell_text(body: &str) -> String {
    let mut lines = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<text:p") {
        let open_end = start + rest[start..].find('>').unwrap() + 1;
        if rest[..open_end].ends_with("/>") {
            lines.push(String::new());
            rest = &rest[open_end..];
            continue;
        }
        let close = open_end + rest[open_end..].find("</text:p>").unwrap();
        let mut line = String::new();
        let mut inner = &rest[open_end..close];
        while let Some(tag) = inner.find('<') {
            line.push_str(&unescape(&inner[..tag]));
            let tag_end = tag + inner[tag..].find('>').unwrap() + 1;
            let element = &inner[tag..tag_end];
            if element.starts_with("<text:s") {
                let n: usize = attribute(element, "text:c").map_or(1, |c| c.parse().unwrap());
                line.push_str(&" ".repeat(n));
            } else if element.starts_with("<text:line-break") {
                line.push('\n');
            }
            inner = &inner[tag_end..];
        }
        line.push_str(&unescape(inner));
        lines.push(line);
        rest = &rest[close + "</text:p>".len()..];
    }
    lines.join("\n")
}

/// The first sheet's rows, with trailing empty rows and cells left out.
fn sheet(fods: &str) -> Vec<Vec<Cell>> {
    let start = fods.find("<table:table ").expect("a sheet");
    let end = start + fods[start..].find("</table:table>").unwrap();
    let mut rows = Vec::new();
    let mut rest = &fods[start..end];
    while let Some(row_start) = rest.find("<table:table-row") {
        let row_end = row_start + rest[row_start..].find("</table:table-row>").unwrap();
        let mut row = Vec::new();
        let mut cells = &rest[row_start..row_end];
        while let Some(cell_start) = cells.find("<table:table-cell") {
            let tag_end = cell_start + cells[cell_start..].find('>').unwrap() + 1;
            let tag = &cells[cell_start..tag_end];
            let (body, next) = if tag.ends_with("/>") {
                ("", tag_end)
            } else {
                let close = tag_end + cells[tag_end..].find("</table:table-cell>").unwrap();
                (&cells[tag_end..close], close + "</table:table-cell>".len())
            };
            let cell = match attribute(tag, "office:value-type") {
                None => Cell::Empty,
                Some("float") => {
                    Cell::Float(attribute(tag, "office:value").unwrap().parse().unwrap())
                }
                Some("boolean") => {
                    Cell::Boolean(attribute(tag, "office:boolean-value") == Some("true"))
                }
                Some(_) => Cell::Text(cell_text(body)),
            };
            let repeat: usize =
                attribute(tag, "table:number-columns-repeated").map_or(1, |n| n.parse().unwrap());
            for _ in 0..repeat.min(1000) {
                row.push(cell.clone());
            }
            cells = &cells[next..];
        }
        while row.last() == Some(&Cell::Empty) {
            row.pop();
        }
        rows.push(row);
        rest = &rest[row_end + 1..];
    }
    while rows.last().is_some_and(Vec::is_empty) {
        rows.pop();
    }
    rows
}

/// Checks a converted sheet against the CSV it came from, cell by cell.
fn check(csv_path: &Path, rows: &[Vec<Cell>]) {
    let name = csv_path.file_name().unwrap().to_string_lossy();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(csv_path)
        .unwrap();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), records.len(), "{name}: rows");

    // One header row: the first row is every column's name as text, and no later row repeats it.
    let header = &records[0];
    for (i, field) in header.iter().enumerate() {
        assert_eq!(
            rows[0][i],
            Cell::Text(field.to_string()),
            "{name}: header column {i}"
        );
    }
    assert!(
        records[1..].iter().all(|r| r != header),
        "{name}: a second header row"
    );

    let mut numbers = 0;
    for (r, record) in records.iter().enumerate().skip(1) {
        for (c, field) in record.iter().enumerate() {
            let cell = rows[r].get(c).cloned().unwrap_or(Cell::Empty);
            let at = format!("{name}: row {} column {} (`{field}`)", r + 1, &header[c]);
            if field.is_empty() {
                assert_eq!(cell, Cell::Empty, "{at}");
            } else if let Ok(number) = field.parse::<f64>() {
                numbers += 1;
                match cell {
                    Cell::Float(value) => assert!((value - number).abs() < 1e-9, "{at}: {value}"),
                    other => panic!("{at}: a number read as {other:?}"),
                }
            } else if field == "true" || field == "false" {
                assert_eq!(cell, Cell::Boolean(field == "true"), "{at}");
            } else {
                assert_eq!(cell, Cell::Text(field.to_string()), "{at}");
            }
        }
    }
    assert!(numbers > 0, "{name}: no numbers at all");
}

#[test]
fn every_csv_report_opens_cleanly_in_libreoffice_calc() {
    let Some(binary) = soffice() else {
        if std::env::var("TANDEM_REQUIRE_LIBREOFFICE").as_deref() == Ok("1") {
            panic!(
                "TANDEM_REQUIRE_LIBREOFFICE=1 but no soffice on PATH \
                 (apt-get install libreoffice-calc-nogui)"
            );
        }
        // Written past the test harness's capture, so that the skip is seen.
        let _ = writeln!(
            std::io::stderr(),
            "skipped every_csv_report_opens_cleanly_in_libreoffice_calc: no soffice on PATH; install Debian's `libreoffice-calc-nogui` package to run it"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let records = night();
    let summary = summarise(&records, &settings().thresholds);
    let reports = root.path().join("reports");
    let files = write_batch_reports(
        &reports.join(BATCH),
        &reports,
        BATCH,
        &records,
        &summary,
        &settings(),
    )
    .unwrap();
    let csvs = vec![
        files.summary.clone(),
        files.submissions.clone(),
        files.grades.clone(),
        files
            .gradebook
            .clone()
            .expect("Canvas names give a gradebook"),
        files.batches.clone(),
    ];

    let out = root.path().join("converted");
    convert(&binary, &csvs, &out, &root.path().join("lo-profile"));

    let mut names_seen = Vec::new();
    for csv in &csvs {
        let stem = csv.file_stem().unwrap().to_string_lossy();
        let fods = std::fs::read_to_string(out.join(format!("{stem}.fods")))
            .unwrap_or_else(|e| panic!("{stem}.fods: {e}"));
        let rows = sheet(&fods);
        check(csv, &rows);
        for student in STUDENTS {
            if rows
                .iter()
                .flatten()
                .any(|c| *c == Cell::Text(student.to_string()))
            {
                names_seen.push(student);
            }
        }
    }
    for student in [
        "müllerzoë",
        "ελένη παππά",
        "李雷",
        "o'brienseán",
        "søren kierkegaard",
    ] {
        assert!(
            names_seen.contains(&student),
            "{student} is not intact in any sheet"
        );
    }
}
