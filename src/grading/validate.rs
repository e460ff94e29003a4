//! Turning a model's reply into a grade or feedback, or into a reason it cannot be one.
//!
//! Nothing a model writes becomes a grade without passing here: the reply must be JSON (found
//! tolerantly, inside markdown fences or prose, for servers that ignore the schema), every
//! criterion must be present with a whole score within its points, and the total is computed
//! here, never taken from the model.

use serde_json::Value;

use crate::record::{CodeAnalysis, CriterionScore, Feedback, Grade};
use crate::rubric::Rubric;

/// Why a reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply was cut off at the {max_tokens}-token limit (finish_reason: length){note}")]
    Truncated {
        max_tokens: u32,
        /// Says so when the model spent the whole budget on reasoning.
        note: &'static str,
    },
    #[error("the reply is empty")]
    Empty,
    #[error("the reply holds no JSON object: {excerpt}")]
    NotJson { excerpt: String },
    #[error("criterion `{id}` is missing from the reply")]
    MissingCriterion { id: String },
    #[error("criterion `{id}` scored {score}, outside 0..{max}")]
    ScoreOutOfRange { id: String, score: String, max: u32 },
    #[error("`{field}` {problem}")]
    WrongShape { field: String, problem: String },
}

impl ReplyError {
    /// A stable name for the kind, used in records and failure counts.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplyError::Truncated { .. } => "truncated",
            ReplyError::Empty | ReplyError::NotJson { .. } => "invalid_json",
            ReplyError::MissingCriterion { .. }
            | ReplyError::ScoreOutOfRange { .. }
            | ReplyError::WrongShape { .. } => "invalid_grade",
        }
    }
}

/// How the JSON was found in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extraction {
    /// The whole reply was the JSON object.
    Whole,
    /// The object was inside a markdown code fence.
    Fenced,
    /// The object was cut out of prose around it.
    FromProse,
}

/// Removes reasoning that leaked into the answer and returns `(answer, reasoning)`.
///
/// Handled: gpt-oss's Harmony channels (only the `final` channel is the answer; a reply with
/// channels but no final one has no answer), the same with its special tokens dropped by the
/// server (`analysis…assistantfinal{…}`), `<think>`, `<thinking>` and `<reasoning>` blocks, a
/// block whose opening tag the chat template wrote (only `</think>` in the reply), and a block
/// left open by a cut-off reply.
pub fn strip_reasoning(content: &str) -> (String, String) {
    let mut answer = content.to_string();
    let mut reasoning = String::new();

    // gpt-oss through servers that do not parse Harmony: `<|channel|>analysis<|message|>...
    // <|end|><|start|>assistant<|channel|>final <|constrain|>json<|message|>ANSWER`.
    // See: https://github.com/ml-explore/mlx-lm/issues/875
    if let Some(pos) = answer.rfind("<|channel|>final") {
        let header = &answer[pos..];
        if let Some(message) = header.find("<|message|>") {
            reasoning.push_str(&answer[..pos]);
            answer = header[message + "<|message|>".len()..].to_string();
        }
    } else if answer.contains("<|channel|>") {
        // Analysis or commentary channels only: the model never reached its answer.
        return (String::new(), answer);
    } else if answer.starts_with("analysis")
        && let Some(pos) = answer.rfind("assistantfinal")
    {
        reasoning.push_str(&answer[..pos]);
        answer = answer[pos + "assistantfinal".len()..].to_string();
    }
    answer = remove_special_tokens(&answer);

    for (open, close) in [
        ("<think>", "</think>"),
        ("<thinking>", "</thinking>"),
        ("<reasoning>", "</reasoning>"),
    ] {
        while let Some(start) = answer.find(open) {
            match answer[start..].find(close) {
                Some(len) => {
                    let end = start + len + close.len();
                    reasoning.push_str(&answer[start + open.len()..start + len]);
                    answer.replace_range(start..end, "");
                }
                None => {
                    reasoning.push_str(&answer[start + open.len()..]);
                    answer.truncate(start);
                }
            }
        }
        // A reply may open with only the closing tag when the template opened the block.
        if let Some(end) = answer.find(close) {
            reasoning.push_str(&answer[..end]);
            answer = answer[end + close.len()..].to_string();
        }
    }
    (answer.trim().to_string(), reasoning)
}

/// Removes chat-template tokens such as `<|end|>` or `<|return|>` left in an answer.
fn remove_special_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        let token = rest[start + 2..].find("|>").filter(|&len| {
            len <= 32
                && rest[start + 2..start + 2 + len]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match token {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + 2 + len + 2..];
            }
            None => {
                out.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds the JSON object in a reply.
pub fn extract_json(reply: &str) -> Result<(Value, Extraction), ReplyError> {
    let text = reply.trim();
    if text.is_empty() {
        return Err(ReplyError::Empty);
    }
    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
        return Ok((value, Extraction::Whole));
    }
    for inner in fenced_blocks(text) {
        if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(inner.trim()) {
            return Ok((value, Extraction::Fenced));
        }
    }
    // The first `{` whose balanced object parses.
    for (start, _) in text.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(value @ Value::Object(_))) = stream.next() {
            return Ok((value, Extraction::FromProse));
        }
    }
    let excerpt: String = text.chars().take(120).collect();
    Err(ReplyError::NotJson {
        excerpt: excerpt.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

/// The bodies of the markdown code fences in a text, with the language tag after the opening
/// fence (```` ```json ````) left out.
fn fenced_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let tag = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let body = &after[tag..];
        let Some(end) = body.find("```") else {
            break;
        };
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    blocks
}

/// A whole-number score from a JSON value: integers, or numbers with no fractional part.
fn whole_score(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e9)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn string_field(object: &Value, field: &str, at: &str) -> Result<String, ReplyError> {
    match object.get(field) {
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => Err(ReplyError::WrongShape {
            field: format!("{at}{field}"),
            problem: "is not a string".into(),
        }),
        None => Err(ReplyError::WrongShape {
            field: format!("{at}{field}"),
            problem: "is missing".into(),
        }),
    }
}

/// Validates a code-analysis reply into a grade and its findings.
pub fn code_analysis(value: &Value, rubric: &Rubric) -> Result<(Grade, CodeAnalysis), ReplyError> {
    let criteria = value
        .get("criteria")
        .ok_or_else(|| ReplyError::WrongShape {
            field: "criteria".into(),
            problem: "is missing".into(),
        })?;
    let mut scores = Vec::new();
    for c in &rubric.criteria {
        let entry = match criteria {
            Value::Object(map) => map.get(&c.id),
            // Some models answer with a list of {"id": .., "score": ..} despite the schema.
            Value::Array(items) => items
                .iter()
                .find(|item| item.get("id").and_then(Value::as_str) == Some(c.id.as_str())),
            _ => {
                return Err(ReplyError::WrongShape {
                    field: "criteria".into(),
                    problem: "is neither an object nor a list".into(),
                });
            }
        };
        let entry = entry.ok_or_else(|| ReplyError::MissingCriterion { id: c.id.clone() })?;
        let raw = entry.get("score").ok_or_else(|| ReplyError::WrongShape {
            field: format!("criteria.{}.score", c.id),
            problem: "is missing".into(),
        })?;
        let score = whole_score(raw).ok_or_else(|| ReplyError::WrongShape {
            field: format!("criteria.{}.score", c.id),
            problem: format!("`{raw}` is not a whole number"),
        })?;
        if score < 0 || score > i64::from(c.points) {
            return Err(ReplyError::ScoreOutOfRange {
                id: c.id.clone(),
                score: raw.to_string(),
                max: c.points,
            });
        }
        let evidence = match entry.get("evidence") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        scores.push(CriterionScore {
            id: c.id.clone(),
            name: c.name.clone(),
            score: score as f64,
            max: f64::from(c.points),
            evidence,
        });
    }
    let total: f64 = scores.iter().map(|s| s.score).sum();
    let summary = match value.get("summary") {
        Some(Value::String(s)) => s.trim().to_string(),
        _ => String::new(),
    };
    Ok((
        Grade {
            score: total,
            max_score: f64::from(rubric.max_score()),
            criteria: scores,
        },
        CodeAnalysis { summary },
    ))
}

/// Validates a feedback reply; also returns the feedback model's own overall score, if any.
pub fn feedback(value: &Value, rubric: &Rubric) -> Result<(Feedback, Option<f64>), ReplyError> {
    let summary = string_field(value, "summary", "")?;
    if summary.is_empty() {
        return Err(ReplyError::WrongShape {
            field: "summary".into(),
            problem: "is empty".into(),
        });
    }
    let list = |field: &str| -> Result<Vec<String>, ReplyError> {
        match value.get(field) {
            Some(Value::Array(items)) => Ok(items
                .iter()
                .filter_map(|item| item.as_str().map(|s| s.trim().to_string()))
                .filter(|s| !s.is_empty())
                .collect()),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(vec![s.trim().to_string()]),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(ReplyError::WrongShape {
                field: field.into(),
                problem: "is not a list of strings".into(),
            }),
        }
    };
    let overall = match value.get("overall_score") {
        None | Some(Value::Null) => None,
        Some(raw) => {
            let score = whole_score(raw).ok_or_else(|| ReplyError::WrongShape {
                field: "overall_score".into(),
                problem: format!("`{raw}` is not a whole number"),
            })?;
            if score < 0 || score > i64::from(rubric.max_score()) {
                return Err(ReplyError::ScoreOutOfRange {
                    id: "overall_score".into(),
                    score: raw.to_string(),
                    max: rubric.max_score(),
                });
            }
            Some(score as f64)
        }
    };
    Ok((
        Feedback {
            summary,
            strengths: list("strengths")?,
            improvements: list("improvements")?,
        },
        overall,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn rubric() -> Rubric {
        Rubric::from_toml(
            Path::new("rubric.toml"),
            r#"
title = "Sales"
task = "Analyse sales."
[[criterion]]
id = "loading"
name = "Loads the data"
points = 2
description = "Reads the CSV."
[[criterion]]
id = "analysis"
name = "Analysis"
points = 3
description = "Groups by region."
"#,
        )
        .unwrap()
    }

    #[test]
    fn computes_the_total_from_criterion_scores() {
        let reply = json!({"criteria": {"loading": {"score": 2, "evidence": "read_csv"},
                                        "analysis": {"score": 1, "evidence": "groupby"}},
                           "summary": "ok", "total": 99});
        let (grade, _) = code_analysis(&reply, &rubric()).unwrap();
        assert_eq!(grade.score, 3.0);
        assert_eq!(grade.max_score, 5.0);
        assert_eq!(grade.criteria[1].evidence, "groupby");
    }

    #[test]
    fn a_missing_criterion_is_never_a_grade() {
        let reply = json!({"criteria": {"loading": {"score": 2, "evidence": ""}}, "summary": ""});
        assert_eq!(
            code_analysis(&reply, &rubric()).unwrap_err(),
            ReplyError::MissingCriterion {
                id: "analysis".into()
            }
        );
    }

    #[test]
    fn scores_outside_the_points_are_rejected() {
        for bad in [json!(4), json!(-1), json!(1.5), json!("lots")] {
            let reply = json!({"criteria": {"loading": {"score": 1, "evidence": ""},
                                            "analysis": {"score": bad, "evidence": ""}}});
            let err = code_analysis(&reply, &rubric()).unwrap_err();
            assert_eq!(err.kind(), "invalid_grade", "{err}");
        }
    }

    #[test]
    fn finds_json_in_fences_and_prose() {
        let (_, how) = extract_json("```json\n{\"a\": 1}\n```").unwrap();
        assert_eq!(how, Extraction::Fenced);
        let (value, how) =
            extract_json("Sure! Here it is: {\"a\": {\"b\": 2}} Hope that helps.").unwrap();
        assert_eq!(how, Extraction::FromProse);
        assert_eq!(value["a"]["b"], 2);
        assert!(matches!(
            extract_json("no json here"),
            Err(ReplyError::NotJson { .. })
        ));
        assert!(matches!(
            extract_json("{\"a\": 1, \"b\": "),
            Err(ReplyError::NotJson { .. })
        ));
    }

    #[test]
    fn separates_think_blocks_and_harmony_channels_from_the_answer() {
        let (answer, reasoning) = strip_reasoning("<think>score high</think>\n{\"a\":1}");
        assert_eq!(answer, "{\"a\":1}");
        assert_eq!(reasoning, "score high");
        let (answer, reasoning) = strip_reasoning(
            "<|channel|>analysis<|message|>thinking<|end|><|start|>assistant\
             <|channel|>final<|message|>{\"a\":2}",
        );
        assert_eq!(answer, "{\"a\":2}");
        assert!(reasoning.contains("thinking"));
        let (answer, _) = strip_reasoning(
            "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final \
             <|constrain|>json<|message|>{\"a\":3}<|return|>",
        );
        assert_eq!(answer, "{\"a\":3}");
        let (answer, reasoning) =
            strip_reasoning("analysisThe user wants JSON.assistantfinal{\"a\":4}");
        assert_eq!(answer, "{\"a\":4}");
        assert_eq!(reasoning, "analysisThe user wants JSON.");
        let (answer, _) = strip_reasoning("scores first</think>{\"a\":5}");
        assert_eq!(answer, "{\"a\":5}");
    }

    #[test]
    fn a_reply_with_only_reasoning_has_no_answer() {
        let (answer, reasoning) =
            strip_reasoning("<|channel|>analysis<|message|>Give it {\"score\": 10} maybe");
        assert_eq!(answer, "");
        assert!(reasoning.contains("score"));
        let (answer, _) = strip_reasoning("<think>{\"criteria\": {}} is what I will say");
        assert_eq!(answer, "");
        assert_eq!(extract_json(&answer).unwrap_err(), ReplyError::Empty);
    }

    #[test]
    fn finds_json_in_any_fence_that_holds_it() {
        let reply = "Example:\n```python\nprint(1)\n```\nAnswer:\n```json{\"a\": 1}```";
        let (value, how) = extract_json(reply).unwrap();
        assert_eq!((value["a"].as_i64(), how), (Some(1), Extraction::Fenced));
    }

    #[test]
    fn feedback_needs_a_summary_and_a_score_within_the_maximum() {
        let ok = json!({"summary": "Good work", "strengths": ["clear"], "improvements": [],
                        "overall_score": 4});
        let (fb, overall) = feedback(&ok, &rubric()).unwrap();
        assert_eq!(fb.strengths, vec!["clear"]);
        assert_eq!(overall, Some(4.0));
        let too_high = json!({"summary": "x", "overall_score": 6});
        assert_eq!(
            feedback(&too_high, &rubric()).unwrap_err().kind(),
            "invalid_grade"
        );
        let no_summary = json!({"strengths": []});
        assert!(feedback(&no_summary, &rubric()).is_err());
    }
}
