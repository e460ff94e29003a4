//! `tandem report`: a finished batch's figures, read back from its records.

use std::path::Path;

use tandem::diagnostics::batch::summarise;
use tandem::queue::read_records;
use tandem::record::Status;

use super::{EXIT_OK, load_config};

/// Prints a batch's summary (the latest one when none is named), and rebuilds its CSVs if asked.
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
    let dir = outbox.join(&batch);
    if !dir.is_dir() {
        return Err(format!("{}: no such batch in the outbox", dir.display()));
    }
    let records = read_records(&dir).map_err(|e| e.to_string())?;
    let summary = summarise(&records, &config.thresholds);

    if rebuild {
        let files = tandem::report::write_batch_reports(
            &config.paths.reports.join(&batch),
            &config.paths.reports,
            &batch,
            &records,
            &summary,
        )
        .map_err(|e| e.to_string())?;
        eprintln!(
            "Rebuilt the reports of batch {batch} in {}",
            files.dir.display()
        );
    }

    if json {
        let text = serde_json::json!({
            "batch": batch,
            "summary": summary,
            "failures": records.iter().filter(|r| r.status == Status::Failed).map(|r| {
                serde_json::json!({"id": r.submission.id, "error": r.error})
            }).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&text).expect("summaries serialise")
        );
        return Ok(EXIT_OK);
    }

    println!("Batch {batch}");
    println!("{}", tandem::report::render_terminal_summary(&summary));
    let failed: Vec<_> = records
        .iter()
        .filter(|r| r.status == Status::Failed)
        .collect();
    if !failed.is_empty() {
        println!("\nFailed submissions:");
        for r in failed {
            if let Some(e) = &r.error {
                println!("  {}: {}: {}", r.submission.id, e.kind, e.message);
            }
        }
    }
    let flagged: Vec<_> = records.iter().filter(|r| !r.flags.is_empty()).collect();
    if !flagged.is_empty() {
        println!("\nFlagged for review:");
        for r in flagged {
            println!("  {}: {}", r.submission.id, r.flags.join(", "));
        }
    }
    Ok(EXIT_OK)
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
