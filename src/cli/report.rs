//! `tandem report`: a finished batch's figures, read back from its records.

use std::path::Path;

use tandem::diagnostics::batch::summarise;
use tandem::queue::read_records;
use tandem::report::{ReportSettings, recommend, render_terminal_report};

use super::{EXIT_OK, load_config};

/// Prints a batch's report (the latest batch when none is named), and rebuilds its files if
/// asked.
pub fn show(
    config_path: &Path,
    batch: Option<&str>,
    json: bool,
    rebuild: bool,
) -> Result<u8, String> {
    let config = load_config(config_path)?;
    let outbox = &config.paths.outbox;
    let batch = match batch {
        Some(b) => b.to_string(),
        None => latest_batch(outbox)?,
    };
    // A batch is a folder name in the outbox, never a path: `--rebuild` writes under
    // `reports/<batch>/`, which must not reach outside the reports folder.
    let is_name = !batch.is_empty()
        && !batch.starts_with('.')
        && !batch.contains(['/', '\\'])
        && std::path::Path::new(&batch).components().count() == 1;
    if !is_name {
        return Err(format!(
            "`{batch}` is not a batch id; give the name of a folder in {}",
            outbox.display()
        ));
    }
    let dir = outbox.join(&batch);
    if !dir.is_dir() {
        return Err(format!("{}: no such batch in the outbox", dir.display()));
    }
    let records = read_records(&dir).map_err(|e| e.to_string())?;
    if records.is_empty() {
        return Err(format!("{}: the batch holds no records", dir.display()));
    }
    let summary = summarise(&records, &config.thresholds);
    let settings = ReportSettings::from_config(&config);

    if rebuild {
        let files = tandem::report::write_batch_reports(
            &config.paths.reports.join(&batch),
            &config.paths.reports,
            &batch,
            &records,
            &summary,
            &settings,
        )
        .map_err(|e| e.to_string())?;
        eprintln!(
            "Rebuilt the reports of batch {batch} in {}",
            files.dir.display()
        );
    }

    let recommendations = recommend(&summary, &records, &settings);
    if json {
        let text = tandem::report::report_json(&batch, &records, &summary, &recommendations);
        let mut text = serde_json::to_string_pretty(&text).expect("reports serialise");
        text.push('\n');
        emit(&text)?;
        return Ok(EXIT_OK);
    }

    let mut text = render_terminal_report(&batch, &records, &summary, &settings, &recommendations);
    let page = config
        .paths
        .reports
        .join(&batch)
        .join(tandem::report::HTML_FILE);
    if page.is_file() {
        text.push_str(&format!("\nPage: {}\n", page.display()));
    }
    emit(&text)?;
    Ok(EXIT_OK)
}

/// Writes text to stdout. A reader that stops early (`| head`) is not an error: the rest is
/// simply not wanted.
pub(super) fn emit(text: &str) -> Result<(), String> {
    use std::io::Write;

    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// The newest batch folder in the outbox (batch ids sort by time).
fn latest_batch(outbox: &Path) -> Result<String, String> {
    let entries =
        std::fs::read_dir(outbox).map_err(|e| format!("{}: cannot list: {e}", outbox.display()))?;
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .max()
        .ok_or_else(|| format!("{}: no batch has finished yet", outbox.display()))
}
