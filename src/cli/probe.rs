//! `tandem probe`: measures the configured servers and writes the figures beside the batches'.

use std::path::Path;

use clap::Args;

use tandem::probe::{self, ProbeOptions};

use super::{EXIT_CANNOT_RUN, EXIT_OK, EXIT_SOME_FAILED, load_config};

/// The flags of `tandem probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Requests per prompt and concurrency level (at least the level itself).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub requests: usize,
    /// The highest concurrency level (default: a backend's `auto` ceiling, else its
    /// max_concurrency but at least 4).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,
    /// The max_tokens of every request.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_tokens: u32,
    /// Unmeasured requests per prompt before measuring.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub warmup: usize,
    /// Probe only this backend (by its configured name); may be given more than once.
    #[arg(long, value_name = "NAME")]
    pub backend: Vec<String>,
    /// Print the figures as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Runs the probe, prints it, and writes `reports/probe-<time>/probe.json` and `probe.csv`.
///
/// Exit status 0 when every request was answered, 3 when some failed, 2 when no backend could
/// be probed at all.
pub async fn probe(config_path: &Path, args: &ProbeArgs) -> Result<u8, String> {
    let config = load_config(config_path)?;
    for name in &args.backend {
        if !config.backends.iter().any(|b| &b.name == name) {
            return Err(format!(
                "{}: no backend named `{name}`",
                config.source.display()
            ));
        }
    }
    if args.requests == 0 {
        return Err("--requests must be at least 1".to_string());
    }
    let options = ProbeOptions {
        requests: args.requests,
        max_concurrency: args.max_concurrency,
        max_tokens: args.max_tokens,
        warmup: args.warmup,
        backends: args.backend.clone(),
    };

    let say = |line: &str| eprintln!("{line}");
    let report = probe::run(&config, &options, &say).await;
    let files = probe::write(&config.paths.reports, &report).map_err(|e| e.to_string())?;

    if args.json {
        let mut text = serde_json::to_string_pretty(&report).expect("probe reports serialise");
        text.push('\n');
        super::report::emit(&text)?;
    } else {
        super::report::emit(&probe::render_table(&report))?;
    }
    eprintln!(
        "Probe written to {} and {}",
        files.json.display(),
        files.csv.display()
    );

    let probed = report.backends.iter().filter(|b| b.error.is_none()).count();
    let failures: u64 = report
        .backends
        .iter()
        .flat_map(|b| &b.levels)
        .map(|l| l.failures())
        .sum();
    Ok(if probed == 0 {
        EXIT_CANNOT_RUN
    } else if failures > 0 || probed < report.backends.len() {
        EXIT_SOME_FAILED
    } else {
        EXIT_OK
    })
}
