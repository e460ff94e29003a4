//! tandem grades a whole class's homework with local language models and measures, call by
//! call, how well the model servers did the work.
//!
//! The modules follow a submission's path through a batch:
//!
//! ```text
//! inbox ─scan─▶ queue (claim) ─▶ submission (load & normalise) ─▶ scheduler ─▶ backend (stream)
//!                                                                     │
//! report ◀── diagnostics ◀── record (outbox JSON) ◀── grading ◀───────┘
//! ```
//!
//! [`batch::run`] drives one batch end to end and [`watch::watch`] keeps watching the inbox,
//! batch after batch; [`grade_one`] grades a single submission with a given configuration and
//! returns its record, for programs that embed tandem:
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Arc::new(tandem::config::Config::load(Path::new("tandem.toml"))?);
//! let record = tandem::grade_one(config, Path::new("inbox/smithjane_1234_5678_hw.ipynb")).await?;
//! if let Some(grade) = &record.grade {
//!     println!("{} / {}", grade.score, grade.max_score);
//! }
//! for (role, call) in &record.performance_diagnostics.calls {
//!     println!("{role}: {} tokens at {:.1} tok/s", call.output_tokens, call.tokens_per_second);
//! }
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod batch;
pub mod config;
pub mod diagnostics;
#[cfg(feature = "fake-server")]
pub mod fake_server;
pub mod grading;
pub mod inbox;
pub mod probe;
pub mod progress;
pub mod queue;
pub mod record;
pub mod report;
pub mod rubric;
pub mod scheduler;
pub mod submission;
pub mod watch;

pub use batch::grade_one;
