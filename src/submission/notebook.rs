//! Jupyter notebooks (nbformat 4, and nbformat 3 upgraded on the way) turned into plain text.
//!
//! A model grades a notebook as a reader would see it: markdown cells as they are, code cells
//! fenced with their language, and each code cell's outputs below it. Outputs are what make a
//! notebook large, so they are cut down here: images and HTML become one-line placeholders,
//! long text is cut with a marker, and tracebacks keep only their first and last lines.
//!
//! This module parses and renders; reading the file and naming it in errors is
//! [`super::load`]'s job.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::decode;

/// The most characters kept from one output before it is cut.
const MAX_OUTPUT_CHARS: usize = 2000;

/// Traceback lines kept from the start and from the end of an error output.
const TRACEBACK_HEAD: usize = 2;
const TRACEBACK_TAIL: usize = 4;

/// Why text is not a notebook tandem can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotebookError {
    /// The text is not JSON.
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// Git merge-conflict markers were left in the file, starting at this line.
    MergeConflict { line: usize },
    /// The text is JSON but lacks what every notebook has.
    NotANotebook { missing: String },
}

/// Renders notebook JSON as the text a model grades.
pub(crate) fn render(json: &str) -> Result<String, NotebookError> {
    let value: Value = match serde_json::from_str(json) {
        Ok(value) => value,
        Err(err) => {
            if let Some(line) = conflict_marker_line(json) {
                return Err(NotebookError::MergeConflict { line });
            }
            return Err(NotebookError::Json {
                line: err.line(),
                column: err.column(),
                message: json_message(&err),
            });
        }
    };
    let Value::Object(top) = value else {
        return Err(NotebookError::NotANotebook {
            missing: format!(
                "the top level is {}, not an object with `cells`",
                kind_of(&value)
            ),
        });
    };
    let language = language(&top);
    let cells = cells(&top)?;

    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let Value::Object(cell) = cell else {
            return Err(NotebookError::NotANotebook {
                missing: format!("cell {} is {}, not an object", i + 1, kind_of(cell)),
            });
        };
        let block = render_cell(cell, &language);
        if block.trim().is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(block.trim_end());
    }
    out.push('\n');
    Ok(out)
}

/// The line of the first git merge-conflict marker, if the text has them at line starts.
///
/// Valid JSON never has a line that starts with `<` or `>`, so this is asked only of text that
/// failed to parse. A lone `=======` could be something else and does not count by itself.
fn conflict_marker_line(text: &str) -> Option<usize> {
    let is_edge = |line: &str| line.starts_with("<<<<<<<") || line.starts_with(">>>>>>>");
    if !text.lines().any(is_edge) {
        return None;
    }
    text.lines()
        .position(|line| is_edge(line) || line.starts_with("======="))
        .map(|i| i + 1)
}

/// serde_json's message without the position, which the error carries separately.
fn json_message(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The cells in order: `cells` in nbformat 4, every worksheet's `cells` in nbformat 3.
fn cells(top: &Map<String, Value>) -> Result<Vec<Value>, NotebookError> {
    if let Some(cells) = top.get("cells") {
        return match cells {
            Value::Array(cells) => Ok(cells.clone()),
            other => Err(NotebookError::NotANotebook {
                missing: format!("`cells` is {}, not a list", kind_of(other)),
            }),
        };
    }
    if let Some(worksheets) = top.get("worksheets") {
        let Value::Array(worksheets) = worksheets else {
            return Err(NotebookError::NotANotebook {
                missing: format!("`worksheets` is {}, not a list", kind_of(worksheets)),
            });
        };
        let mut all = Vec::new();
        for sheet in worksheets {
            if let Some(Value::Array(cells)) = sheet.get("cells") {
                all.extend(cells.iter().cloned());
            }
        }
        return Ok(all);
    }
    let missing = if top.contains_key("nbformat") {
        "it has `nbformat` but no `cells` list (nor nbformat 3 `worksheets`)"
    } else {
        "it has no `cells` list and no `nbformat` version: this JSON is not a notebook"
    };
    Err(NotebookError::NotANotebook {
        missing: missing.to_string(),
    })
}

/// The notebook's programming language, for code fences; Python when it does not say.
fn language(top: &Map<String, Value>) -> String {
    let meta = top.get("metadata");
    let candidates = [
        meta.and_then(|m| m.get("language_info"))
            .and_then(|l| l.get("name")),
        meta.and_then(|m| m.get("kernelspec"))
            .and_then(|k| k.get("language")),
        meta.and_then(|m| m.get("kernelspec"))
            .and_then(|k| k.get("name")),
        meta.and_then(|m| m.get("language")),
    ];
    for name in candidates.into_iter().flatten().filter_map(Value::as_str) {
        let name = name.trim().to_ascii_lowercase();
        if name.starts_with("python") {
            return "python".into();
        }
        if name == "r" || name == "ir" {
            return "r".into();
        }
        if !name.is_empty()
            && name.len() <= 20
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+')
        {
            return name;
        }
    }
    "python".into()
}

/// A multiline string: one string, or a list of strings joined with nothing between them.
fn multiline(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

fn render_cell(cell: &Map<String, Value>, language: &str) -> String {
    let kind = cell
        .get("cell_type")
        .and_then(Value::as_str)
        .unwrap_or("code");
    match kind {
        "markdown" | "raw" => multiline(cell.get("source")),
        "heading" => {
            let level = cell
                .get("level")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 6);
            let title = multiline(cell.get("source"));
            format!("{} {}", "#".repeat(level as usize), title.trim())
        }
        _ => {
            // nbformat 3 keeps code in `input`; nbformat 4 in `source`.
            let code = match cell.get("source") {
                Some(source) => multiline(Some(source)),
                None => multiline(cell.get("input")),
            };
            let lang = cell
                .get("language")
                .and_then(Value::as_str)
                .unwrap_or(language);
            let outputs = match cell.get("outputs") {
                Some(Value::Array(outputs)) => outputs.as_slice(),
                _ => &[],
            };
            if code.trim().is_empty() && outputs.is_empty() {
                return String::new();
            }
            let mut out = fence(lang, code.trim_end());
            for output in outputs {
                if let Value::Object(output) = output {
                    let rendered = render_output(output);
                    if !rendered.is_empty() {
                        out.push('\n');
                        out.push_str(&rendered);
                    }
                }
            }
            out
        }
    }
}

fn render_output(output: &Map<String, Value>) -> String {
    let kind = output
        .get("output_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    match kind {
        "stream" => {
            // nbformat 3 names the stream under `stream`, nbformat 4 under `name`.
            let name = output
                .get("name")
                .or_else(|| output.get("stream"))
                .and_then(Value::as_str)
                .unwrap_or("stdout");
            let text = overwrite_carriage_returns(&multiline(output.get("text")));
            let label = if name == "stderr" {
                "Output (stderr):"
            } else {
                "Output:"
            };
            text_block(label, &text)
        }
        "execute_result" | "display_data" | "pyout" => match output.get("data") {
            Some(Value::Object(data)) => render_bundle(data, &short_mime),
            // nbformat 3 puts the MIME bundle at the top level under short keys.
            _ => render_bundle(output, &long_mime),
        },
        "error" | "pyerr" => {
            let ename = output
                .get("ename")
                .and_then(Value::as_str)
                .unwrap_or("Error");
            let evalue = output.get("evalue").and_then(Value::as_str).unwrap_or("");
            let traceback: Vec<String> = match output.get("traceback") {
                Some(Value::Array(lines)) => lines
                    .iter()
                    .filter_map(Value::as_str)
                    .flat_map(|l| {
                        decode::clean(l)
                            .lines()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    // IPython opens a traceback with a rule of dashes, which tells a reader
                    // nothing.
                    .filter(|l| !(l.len() > 3 && l.chars().all(|c| c == '-')))
                    .collect(),
                _ => Vec::new(),
            };
            let mut body = format!("{ename}: {evalue}");
            if !traceback.is_empty() {
                body.push_str("\nTraceback:\n");
                body.push_str(&decode::cut_lines(
                    &traceback.join("\n"),
                    TRACEBACK_HEAD,
                    TRACEBACK_TAIL,
                ));
            }
            text_block("Error:", &body)
        }
        _ => String::new(),
    }
}

/// The MIME type as nbformat 4 writes it.
fn short_mime(key: &str) -> String {
    key.to_string()
}

/// The MIME type for an nbformat 3 output key such as `png` or `text`.
fn long_mime(key: &str) -> String {
    match key {
        "text" => "text/plain",
        "html" => "text/html",
        "markdown" => "text/markdown",
        "latex" => "text/latex",
        "png" => "image/png",
        "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "javascript" => "application/javascript",
        _ => "",
    }
    .to_string()
}

/// Renders a MIME bundle: an image placeholder, else plain text, else a note of what it was.
fn render_bundle(data: &Map<String, Value>, mime_of: &dyn Fn(&str) -> String) -> String {
    let bundle: Vec<(String, &Value)> = data
        .iter()
        .map(|(key, value)| (mime_of(key), value))
        .filter(|(mime, _)| !mime.is_empty())
        .collect();
    let get = |mime: &str| bundle.iter().find(|(m, _)| m == mime).map(|(_, v)| *v);

    // A figure's text/plain is only `<Figure size 640x480 with 1 Axes>`; the placeholder says
    // more about what the student made.
    let images: Vec<&str> = bundle
        .iter()
        .map(|(m, _)| m.as_str())
        .filter(|m| m.starts_with("image/"))
        .collect();
    if !images.is_empty() {
        return images
            .iter()
            .map(|m| format!("[image output: {m}]"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    if let Some(text) = get("text/plain") {
        return text_block("Output:", &multiline(Some(text)));
    }
    if let Some(text) = get("text/markdown") {
        return text_block("Output (markdown):", &multiline(Some(text)));
    }
    if get("text/html").is_some() {
        return "[html output]".into();
    }
    match bundle.first() {
        Some((mime, _)) => format!("[{mime} output]"),
        None => String::new(),
    }
}

/// A labelled, fenced block of output text, cut to [`MAX_OUTPUT_CHARS`].
fn text_block(label: &str, text: &str) -> String {
    // Tables printed by pandas pad every line with spaces, which cost tokens and say nothing.
    let text: String = decode::clean(text)
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    let text = text.trim_end_matches('\n');
    if text.trim().is_empty() {
        return String::new();
    }
    format!(
        "{label}\n{}",
        fence("text", &decode::cut(text, MAX_OUTPUT_CHARS))
    )
}

/// A progress bar redraws its line with `\r`; only what the line finally showed is kept.
fn overwrite_carriage_returns(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n")
        .split('\n')
        .map(|line| {
            line.trim_end_matches('\r')
                .rsplit('\r')
                .next()
                .unwrap_or("")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fences `body` with enough backticks that no run of backticks inside it closes the fence.
fn fence(language: &str, body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for ch in body.chars() {
        if ch == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let ticks = "`".repeat(longest.max(2) + 1);
    let mut out = String::new();
    let _ = write!(out, "{ticks}{language}\n{body}\n{ticks}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(cells: &str, metadata: &str) -> String {
        format!(
            r##"{{"nbformat": 4, "nbformat_minor": 5, "metadata": {metadata},
                "cells": [{cells}]}}"##
        )
    }

    #[test]
    fn renders_markdown_and_fenced_code_with_outputs() {
        let nb = v4(
            r##"{"cell_type": "markdown", "metadata": {},
                "source": ["# Sales\n", "Revenue by region."]},
               {"cell_type": "code", "metadata": {}, "execution_count": 1,
                "source": "df = load()\ndf.head()",
                "outputs": [
                  {"output_type": "stream", "name": "stdout", "text": ["rows: 120\n"]},
                  {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                   "data": {"text/plain": ["  region  revenue\n", "0  North     1200"],
                            "text/html": "<table></table>"}}
                ]}"##,
            "{}",
        );
        let text = render(&nb).unwrap();
        assert_eq!(
            text,
            "# Sales\nRevenue by region.\n\n```python\ndf = load()\ndf.head()\n```\n\
             Output:\n```text\nrows: 120\n```\n\
             Output:\n```text\n  region  revenue\n0  North     1200\n```\n"
        );
    }

    #[test]
    fn fences_code_in_the_kernel_language() {
        let nb = v4(
            r##"{"cell_type": "code", "metadata": {}, "source": "summary(sales)", "outputs": []}"##,
            r##"{"kernelspec": {"name": "ir", "display_name": "R", "language": "R"}}"##,
        );
        assert!(
            render(&nb)
                .unwrap()
                .starts_with("```r\nsummary(sales)\n```")
        );
    }

    #[test]
    fn replaces_images_and_html_with_placeholders() {
        let nb = v4(
            r##"{"cell_type": "code", "metadata": {}, "source": "plot()", "outputs": [
                 {"output_type": "display_data", "metadata": {},
                  "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"}},
                 {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<b>x</b>"}}
               ]}"##,
            "{}",
        );
        let text = render(&nb).unwrap();
        assert!(text.contains("[image output: image/png]"), "{text}");
        assert!(text.contains("[html output]"), "{text}");
        assert!(!text.contains("iVBOR"), "{text}");
        assert!(!text.contains("<Figure"), "{text}");
    }

    #[test]
    fn shows_errors_with_a_short_traceback_without_colour_codes() {
        let rule = "\"\\u001b[0;31m-----------------\\u001b[0m\"".to_string();
        let frames: Vec<String> = std::iter::once(rule)
            .chain((1..=12).map(|i| format!("\"\\u001b[0;32mframe {i}\\u001b[0m\"")))
            .collect();
        let nb = v4(
            &format!(
                r##"{{"cell_type": "code", "metadata": {{}}, "source": "1/0", "outputs": [
                     {{"output_type": "error", "ename": "ZeroDivisionError",
                       "evalue": "division by zero", "traceback": [{}]}}]}}"##,
                frames.join(",")
            ),
            "{}",
        );
        let text = render(&nb).unwrap();
        assert!(
            text.contains("Error:\n```text\nZeroDivisionError: division by zero\n"),
            "{text}"
        );
        assert!(
            text.contains("frame 1\nframe 2\n[… 6 more lines cut …]\nframe 9\n"),
            "{text}"
        );
        assert!(text.contains("frame 12"), "{text}");
        assert!(!text.contains("-----"), "{text}");
        assert!(
            !text.contains('\u{1B}') && !text.contains("[0;32m"),
            "{text}"
        );
    }

    #[test]
    fn cuts_long_outputs_with_a_marker() {
        let long = "x".repeat(MAX_OUTPUT_CHARS + 1234);
        let nb = v4(
            &format!(
                r##"{{"cell_type": "code", "metadata": {{}}, "source": "print(x)", "outputs": [
                     {{"output_type": "stream", "name": "stdout", "text": "{long}"}}]}}"##
            ),
            "{}",
        );
        let text = render(&nb).unwrap();
        assert!(text.contains("[… 1234 more characters cut …]"), "{text}");
        assert!(text.len() < MAX_OUTPUT_CHARS + 200);
    }

    #[test]
    fn upgrades_nbformat3_notebooks() {
        let nb = r##"{"nbformat": 3, "nbformat_minor": 0, "metadata": {"language": "python"},
          "worksheets": [{"cells": [
            {"cell_type": "heading", "level": 2, "source": ["Regional sales"]},
            {"cell_type": "markdown", "source": "Totals below."},
            {"cell_type": "code", "language": "python", "input": ["total = 3\n", "total"],
             "prompt_number": 1, "outputs": [
               {"output_type": "stream", "stream": "stdout", "text": ["hello\n"]},
               {"output_type": "pyout", "prompt_number": 1, "text": ["3"]},
               {"output_type": "display_data", "png": "iVBORw0KGgo=", "text": ["<Figure>"]},
               {"output_type": "pyerr", "ename": "KeyError", "evalue": "'region'",
                "traceback": ["\u001b[31mKeyError\u001b[0m"]}
             ]}
          ]}]}"##;
        let text = render(nb).unwrap();
        assert_eq!(
            text,
            "## Regional sales\n\nTotals below.\n\n```python\ntotal = 3\ntotal\n```\n\
             Output:\n```text\nhello\n```\nOutput:\n```text\n3\n```\n[image output: image/png]\n\
             Error:\n```text\nKeyError: 'region'\nTraceback:\nKeyError\n```\n"
        );
    }

    #[test]
    fn keeps_the_last_state_of_a_progress_bar() {
        let nb = v4(
            r##"{"cell_type": "code", "metadata": {}, "source": "fit()", "outputs": [
                 {"output_type": "stream", "name": "stderr", "text": "10%\r50%\r100%\ndone\n"}]}"##,
            "{}",
        );
        let text = render(&nb).unwrap();
        assert!(
            text.contains("Output (stderr):\n```text\n100%\ndone\n```"),
            "{text}"
        );
    }

    #[test]
    fn uses_longer_fences_when_the_code_holds_backticks() {
        let nb = v4(
            r##"{"cell_type": "code", "metadata": {}, "source": "s = '```'", "outputs": []}"##,
            "{}",
        );
        assert!(
            render(&nb)
                .unwrap()
                .starts_with("````python\ns = '```'\n````")
        );
    }

    #[test]
    fn reports_line_and_column_of_invalid_json() {
        let err = render("{\n  \"cells\": [\n    {\"cell_type\": ").unwrap_err();
        let NotebookError::Json {
            line,
            column,
            message,
        } = err
        else {
            panic!("expected a JSON error, got {err:?}");
        };
        assert_eq!(line, 3);
        assert!(column > 10, "column {column}");
        assert!(message.contains("EOF"), "{message}");
    }

    #[test]
    fn recognises_merge_conflict_markers() {
        let nb = "{\n \"cells\": [\n<<<<<<< HEAD\n  {\"cell_type\": \"code\"}\n=======\n  {}\n\
                  >>>>>>> feature\n ]\n}";
        assert_eq!(render(nb), Err(NotebookError::MergeConflict { line: 3 }));
    }

    #[test]
    fn says_what_is_missing_from_json_that_is_not_a_notebook() {
        let NotebookError::NotANotebook { missing } = render(r##"{"name": "sales"}"##).unwrap_err()
        else {
            panic!("expected NotANotebook");
        };
        assert!(missing.contains("no `cells`"), "{missing}");

        let NotebookError::NotANotebook { missing } = render("[1, 2]").unwrap_err() else {
            panic!("expected NotANotebook");
        };
        assert!(missing.contains("an array"), "{missing}");
    }
}
