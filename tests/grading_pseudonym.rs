//! Pseudonymisation: no request sent to a model server names a student or carries their id,
//! whether the identity came from an LMS file name, notebook metadata or a header line, and the
//! record keeps who it was for the instructor.

#[path = "red_team/harness.rs"]
mod harness;

use harness::{Extra, Workspace, fast, files_in, root};
use serde_json::json;
use tandem::fake_server::Reply;
use tandem::record::Status;

fn notebook(authors: serde_json::Value, cells: &[(&str, &str)]) -> String {
    let cells: Vec<_> = cells
        .iter()
        .enumerate()
        .map(|(i, (kind, source))| {
            let mut cell = json!({"cell_type": kind, "id": format!("c{i}"), "metadata": {},
                                  "source": source});
            if *kind == "code" {
                cell["outputs"] = json!([]);
                cell["execution_count"] = json!(i);
            }
            cell
        })
        .collect();
    json!({"nbformat": 4, "nbformat_minor": 5, "cells": cells,
           "metadata": {"authors": authors, "kernelspec": {"name": "python3"}}})
    .to_string()
}

const ANALYSIS: &str = "import pandas as pd\nsales = pd.read_csv('sales.csv').drop_duplicates()\n\
                        print(sales.groupby('region')['revenue'].sum())\n";

/// Drops submissions that name their students in every way tandem knows of.
fn named_submissions(workspace: &Workspace) {
    workspace.write(
        "smithjane_123456_7654321_homework.ipynb",
        &notebook(
            json!([{"name": "Jane Smith"}]),
            &[
                (
                    "markdown",
                    "# Homework 3\n\n**Name:** Jane Smith  \n**Student ID:** 123456  \n\
                     Email: jane.smith@example.edu",
                ),
                ("code", "# Jane's cleaning step\nimport pandas as pd\n"),
                ("markdown", "SMITH, JANE: North leads, East trails."),
            ],
        ),
    );
    workspace.write(
        "Omar Haddad_4821_assignsubmission_file_/analysis.py",
        &format!("# Author: Omar Haddad\n# Student number: 20231234\n{ANALYSIS}"),
    );
    workspace.write(
        "Omar Haddad_4821_assignsubmission_file_/notes.md",
        "Prepared by: Omar Haddad (ID 20231234)\n\nOmar's notes: revenue rose every month.\n",
    );
    workspace.write(
        "report_final.Rmd",
        "---\ntitle: \"Sales\"\nauthor: \"Li Wei\"\n---\n\nStudent number: s7654321\n\n\
         ```{r}\nsales <- read.csv('sales.csv')\n```\n\nWritten by Li Wei for BUS 340.\n",
    );
    workspace.write(
        "nguyenthu_555111_888222_nb.ipynb",
        &notebook(
            json!(["Thu Nguyen"]),
            &[
                ("markdown", "Thu Nguyen's analysis of regional sales."),
                ("code", ANALYSIS),
            ],
        ),
    );
}

/// Whether `needle` occurs in `hay` (ignoring case) as a whole word or number.
fn mentions(hay: &str, needle: &str) -> bool {
    let hay = hay.to_lowercase();
    let needle = needle.to_lowercase();
    hay.match_indices(&needle).any(|(at, _)| {
        let before = hay[..at].chars().next_back();
        let after = hay[at + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_sent_to_any_server_names_a_student_or_carries_their_id() {
    let code = fast(Reply::Schema).start().await;
    let feedback = fast(Reply::Schema).start().await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    workspace.drop_files(&files_in(&root().join("examples/class")));
    named_submissions(&workspace);

    let records = workspace.run().await;
    assert_eq!(records.len(), 14 + 4);

    let mut forbidden: Vec<String> = [
        "Jane Smith",
        "Jane",
        "Smith",
        "123456",
        "7654321",
        "jane.smith@example.edu",
        "Omar Haddad",
        "Omar",
        "Haddad",
        "4821",
        "20231234",
        "Li Wei",
        "s7654321",
        "Thu Nguyen",
        "Nguyen",
        "nguyenthu",
        "555111",
        "888222",
    ]
    .map(String::from)
    .to_vec();
    for record in &records {
        let student = &record.submission.student;
        forbidden.extend(student.name.clone());
        forbidden.extend(student.lms_id.clone());
    }

    let bodies: Vec<String> = code
        .stats()
        .bodies()
        .into_iter()
        .chain(feedback.stats().bodies())
        .map(|b| b.to_string())
        .collect();
    assert!(bodies.len() >= 2 * 16, "{} requests", bodies.len());
    for body in &bodies {
        for name in &forbidden {
            assert!(!mentions(body, name), "a request carries `{name}`");
        }
    }

    // The identity stays with the instructor, next to the pseudonym that stood for it.
    let jane = records
        .iter()
        .find(|r| r.submission.student.name.as_deref() == Some("smithjane"))
        .unwrap();
    assert_eq!(jane.status, Status::Graded);
    assert_eq!(jane.submission.student.lms_id.as_deref(), Some("123456"));
    let grading = jane.grading.as_ref().unwrap();
    let pseudonym = grading.student_pseudonym.clone().unwrap();
    assert!(pseudonym.starts_with("student-") && pseudonym.len() == 16);
    assert_eq!(grading.identities_replaced, 5, "{grading:?}");
    assert!(bodies.iter().any(|b| b.contains(&pseudonym)));
    let omar = records
        .iter()
        .find(|r| r.submission.student.name.as_deref() == Some("Omar Haddad"))
        .unwrap();
    assert_ne!(
        omar.grading.as_ref().unwrap().student_pseudonym,
        Some(pseudonym)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_keeps_the_same_pseudonym_from_batch_to_batch() {
    let code = fast(Reply::Schema).start().await;
    let feedback = fast(Reply::Schema).start().await;
    let workspace = Workspace::new(&code.url(), &feedback.url(), &Extra::default());
    let pseudonym_of = |records: &[tandem::record::ResultRecord]| {
        records[0]
            .grading
            .as_ref()
            .and_then(|g| g.student_pseudonym.clone())
            .unwrap()
    };

    workspace.write("smithjane_123456_7654321_hw.py", ANALYSIS);
    let first = pseudonym_of(&workspace.run().await);
    workspace.write(
        "smithjane_123456_7654399_hw-1.py",
        &format!("{ANALYSIS}# again\n"),
    );
    let second = pseudonym_of(&workspace.run().await);
    workspace.write("brennanciara_104289_5532355_hw.py", ANALYSIS);
    let other = pseudonym_of(&workspace.run().await);

    assert_eq!(first, second);
    assert_ne!(first, other);
    let key = workspace.path().join(".tandem").join("pseudonym.key");
    assert!(key.exists(), "the key is kept in the state folder");
}
