//! Batch figures.
