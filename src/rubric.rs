//! The rubric: what the assignment asked and the criteria a submission is scored on.
//!
//! A rubric is a TOML file:
//!
//! ```toml
//! title = "Regional sales analysis"
//! task = "Load sales.csv, clean it, and compare revenue across regions."
//! reference_solution = "optional: code or notes the graders may compare against"
//!
//! [[criterion]]
//! id = "loading"
//! name = "Loads and cleans the data"
//! points = 2
//! description = "Reads the CSV, fixes types, handles missing values."
//! levels = { 2 = "all three", 1 = "reads it but leaves gaps", 0 = "does not load it" }
//! ```
//!
//! This module reads and checks that file; how a rubric becomes a prompt is
//! [`crate::grading`]'s business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A rubric that could not be used, naming the file and the criterion or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum RubricError {
    #[error("{path}: cannot read the rubric: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RubricFile {
    title: String,
    task: String,
    reference_solution: Option<String>,
    #[serde(default)]
    criterion: Vec<CriterionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CriterionFile {
    id: String,
    name: String,
    points: u32,
    description: String,
    #[serde(default)]
    levels: BTreeMap<String, String>,
}

/// A validated rubric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rubric {
    /// The file it was read from.
    pub source: PathBuf,
    pub title: String,
    /// What the assignment asked the students to do.
    pub task: String,
    pub reference_solution: Option<String>,
    pub criteria: Vec<Criterion>,
    /// The rubric file's text, which is part of the grading key.
    pub text: String,
}

/// One criterion a submission is scored on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    /// Short and stable: letters, digits and `_`; used as a JSON key in replies.
    pub id: String,
    pub name: String,
    pub points: u32,
    /// What earns the points.
    pub description: String,
    /// What earns each score, highest first, where the rubric spells it out.
    pub levels: Vec<(u32, String)>,
}

impl Rubric {
    /// The most points a submission can get.
    pub fn max_score(&self) -> u32 {
        self.criteria.iter().map(|c| c.points).sum()
    }

    /// Reads and validates a rubric file.
    pub fn load(path: &Path) -> Result<Rubric, RubricError> {
        let text = std::fs::read_to_string(path).map_err(|source| RubricError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Rubric::from_toml(path, &text)
    }

    /// Validates rubric text as if it had been read from `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<Rubric, RubricError> {
        let file: RubricFile = toml::from_str(text).map_err(|err| RubricError::Parse {
            path: path.to_path_buf(),
            line: err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: err.message().trim().replace('\n', " "),
        })?;
        let invalid = |key: String, message: String| RubricError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };

        if file.title.trim().is_empty() {
            return Err(invalid("title".into(), "must not be empty".into()));
        }
        if file.task.trim().is_empty() {
            return Err(invalid(
                "task".into(),
                "must say what the assignment asked".into(),
            ));
        }
        if file.criterion.is_empty() {
            return Err(invalid(
                "criterion".into(),
                "the rubric has no [[criterion]]".into(),
            ));
        }

        let mut criteria: Vec<Criterion> = Vec::new();
        for (i, c) in file.criterion.into_iter().enumerate() {
            let at = |k: &str| format!("criterion[{i}].{k}");
            let valid_id = !c.id.is_empty()
                && c.id.len() <= 40
                && c.id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !valid_id {
                return Err(invalid(
                    at("id"),
                    format!("`{}` must be 1 to 40 letters, digits or underscores", c.id),
                ));
            }
            if criteria.iter().any(|other| other.id == c.id) {
                return Err(invalid(
                    at("id"),
                    format!("`{}` is used by two criteria", c.id),
                ));
            }
            if c.name.trim().is_empty() {
                return Err(invalid(
                    at("name"),
                    format!("criterion `{}` has an empty name", c.id),
                ));
            }
            if c.points == 0 || c.points > 1000 {
                return Err(invalid(
                    at("points"),
                    format!("criterion `{}` must be worth 1 to 1000 points", c.id),
                ));
            }
            if c.description.trim().is_empty() {
                return Err(invalid(
                    at("description"),
                    format!("criterion `{}` must say what earns its points", c.id),
                ));
            }
            let mut levels = Vec::new();
            for (score, meaning) in c.levels {
                let value: u32 = score.parse().map_err(|_| {
                    invalid(
                        at("levels"),
                        format!(
                            "criterion `{}`: level `{score}` is not a whole number",
                            c.id
                        ),
                    )
                })?;
                if value > c.points {
                    return Err(invalid(
                        at("levels"),
                        format!(
                            "criterion `{}`: level {value} is above its {} points",
                            c.id, c.points
                        ),
                    ));
                }
                if meaning.trim().is_empty() {
                    return Err(invalid(
                        at("levels"),
                        format!("criterion `{}`: level {value} must say what earns it", c.id),
                    ));
                }
                if levels.iter().any(|(other, _)| *other == value) {
                    return Err(invalid(
                        at("levels"),
                        format!("criterion `{}`: level {value} is given twice", c.id),
                    ));
                }
                levels.push((value, meaning));
            }
            levels.sort_by_key(|level| std::cmp::Reverse(level.0));
            criteria.push(Criterion {
                id: c.id,
                name: c.name,
                points: c.points,
                description: c.description,
                levels,
            });
        }

        Ok(Rubric {
            source: path.to_path_buf(),
            title: file.title,
            task: file.task,
            reference_solution: file.reference_solution.filter(|s| !s.trim().is_empty()),
            criteria,
            text: text.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
title = "Sales"
task = "Analyse sales."
[[criterion]]
id = "loading"
name = "Loads the data"
points = 2
description = "Reads the CSV."
levels = { "2" = "reads and cleans it", "0" = "does not read it" }
"#;

    fn error(text: &str) -> String {
        Rubric::from_toml(Path::new("rubric.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_levels_highest_first() {
        let rubric = Rubric::from_toml(Path::new("rubric.toml"), GOOD).unwrap();
        assert_eq!(rubric.max_score(), 2);
        let levels: Vec<u32> = rubric.criteria[0].levels.iter().map(|l| l.0).collect();
        assert_eq!(levels, [2, 0]);
    }

    #[test]
    fn errors_name_the_criterion_and_the_key() {
        let cases = [
            (
                GOOD.replace("points = 2", "points = 0"),
                "`criterion[0].points`",
            ),
            (
                GOOD.replace("id = \"loading\"", "id = \"load ing\""),
                "`criterion[0].id`",
            ),
            (
                GOOD.replace("\"2\" = ", "\"3\" = "),
                "level 3 is above its 2 points",
            ),
            (
                GOOD.replace("\"2\" = ", "\"two\" = "),
                "level `two` is not a whole number",
            ),
            (
                GOOD.replace("\"reads and cleans it\"", "\" \""),
                "level 2 must say",
            ),
            (
                GOOD.replace("\"0\" = ", "\"02\" = "),
                "level 2 is given twice",
            ),
            (
                GOOD.replace("description = \"Reads the CSV.\"", "description = \"\""),
                "`criterion[0].description`",
            ),
            (
                GOOD.replace("task = \"Analyse sales.\"", "task = \" \""),
                "`task`",
            ),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.contains(expected), "{message}");
            assert!(message.starts_with("rubric.toml"), "{message}");
            if expected.contains("level") {
                assert!(message.contains("`criterion[0].levels`") && message.contains("`loading`"));
            }
        }
    }

    #[test]
    fn a_misspelt_key_is_an_error_with_its_line() {
        let message = error(&GOOD.replace("points = 2", "pionts = 2"));
        assert!(message.contains("pionts"), "{message}");
        assert!(message.starts_with("rubric.toml:7: "), "{message}");
    }

    #[test]
    fn two_criteria_may_not_share_an_id() {
        let twice = format!("{GOOD}{}", &GOOD[GOOD.find("[[criterion]]").unwrap()..]);
        assert!(error(&twice).contains("`loading` is used by two criteria"));
    }
}
