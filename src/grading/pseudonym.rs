//! Pseudonymisation: the student's name and ids are replaced by an opaque id before any prompt.
//!
//! A model server never needs to know who wrote a submission, and its logs should not say. This
//! module finds who the submission names and where:
//!
//! - the LMS file name (Canvas `smithjane_123456_…`, Moodle `Jane Smith_3817_…`), whose name and
//!   ids also appear in a folder submission's file headers;
//! - notebook metadata (`metadata.authors`, `metadata.author`), read from the submission's files;
//! - header lines such as `Name: Jane Smith`, `Student ID: 123456` or `author: "Jane Smith"`, in
//!   markdown, comments or R Markdown front matter;
//! - a Canvas login name (`smithjane`) spelled out as words (`Jane Smith`) anywhere in the text.
//!
//! Every occurrence of those names (also `Smith, Jane` and each part of the name on its own) and
//! ids is replaced by the student's pseudonym, `student-` and eight hex digits of a keyed hash
//! of the LMS id (or of the name, or of the content when nothing names the student), and every
//! e-mail address by `[email]`. The key is made once and kept in the state folder, so a student
//! keeps the same pseudonym from one batch to the next and the same submission always gets the
//! same prompt, while nobody without the key can go from a pseudonym back to an id. The result
//! record keeps both (`submission.student` and `grading.student_pseudonym`): that pair is the
//! mapping, and it never leaves the outbox.
//!
//! Parts of a name are matched only as whole words in the capitalisation they are written in,
//! so a student called Price makes "Price" (not "price" or "unit_price") disappear from the text
//! the model reads.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::submission::{Lms, Submission};

/// The file in the state folder that holds the pseudonym key.
pub const KEY_FILE: &str = "pseudonym.key";
/// What an e-mail address becomes.
const EMAIL_MARK: &str = "[email]";
/// Lines from the top of a text (or of a file in a folder) where header lines are looked for.
const HEADER_LINES: usize = 40;
/// Ids shorter than this are replaced only inside LMS-style file names (next to `_`), since a
/// short number in the text is more likely data.
const SHORT_ID: usize = 5;
/// Notebooks larger than this are not read again for their metadata.
const MAX_NOTEBOOK_BYTES: u64 = 16 * 1024 * 1024;

/// Makes pseudonyms with a key.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: Vec<u8>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(..)")
    }
}

/// A submission's text as models see it, and who it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pseudonymised {
    /// The submission's text with every identity replaced.
    pub text: String,
    /// The opaque id that replaced the student's names and ids.
    pub pseudonym: String,
    /// How many places in the text were replaced (e-mail addresses included).
    pub replaced: usize,
}

/// The strings that identify a student, by how they are matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// Full names as written (`Jane Smith`): matched ignoring case and spacing, and as
    /// `Smith, Jane`.
    pub names: BTreeSet<String>,
    /// Login-style names without spaces (`smithjane`): matched ignoring case between
    /// non-letters.
    pub logins: BTreeSet<String>,
    /// Ids (`123456`, `s1234567`): matched between non-alphanumerics.
    pub ids: BTreeSet<String>,
}

impl Pseudonymiser {
    /// A pseudonymiser with a given key.
    pub fn with_key(key: &[u8]) -> Self {
        Pseudonymiser { key: key.to_vec() }
    }

    /// The pseudonymiser of a state folder: its key is read from [`KEY_FILE`], made there
    /// (readable by the owner only) when the folder exists and holds none. Without a state
    /// folder, pseudonyms are still stable but unkeyed.
    pub fn for_state_folder(state: &Path) -> Self {
        let path = state.join(KEY_FILE);
        match read_key(&path) {
            Some(key) => Pseudonymiser { key },
            None if state.is_dir() => match make_key(&path) {
                Ok(key) => Pseudonymiser { key },
                Err(error) => {
                    tracing::warn!(
                        path = %path.display(), %error,
                        "cannot keep a pseudonym key; pseudonyms are unkeyed"
                    );
                    Pseudonymiser::with_key(b"")
                }
            },
            None => Pseudonymiser::with_key(b""),
        }
    }

    /// The pseudonym for a student identity (an LMS id, or a name).
    pub fn pseudonym_for(&self, identity: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"tandem pseudonym\0");
        h.update(&self.key);
        h.update([0]);
        h.update(identity.trim().to_lowercase().as_bytes());
        format!("student-{}", &hex::encode(h.finalize())[..8])
    }

    /// The submission's text with its student's names and ids replaced.
    pub fn apply(&self, submission: &Submission) -> Pseudonymised {
        let found = identities(submission);
        let identity = submission
            .student
            .lms_id
            .clone()
            .or_else(|| submission.student.name.clone())
            .or_else(|| found.ids.iter().next().cloned())
            .or_else(|| found.names.iter().next().cloned())
            .unwrap_or_else(|| format!("content:{}", submission.sha256));
        let pseudonym = self.pseudonym_for(&identity);
        let (text, replaced) = redact(&submission.text, &found, &pseudonym);
        Pseudonymised {
            text,
            pseudonym,
            replaced,
        }
    }
}

fn read_key(path: &Path) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(path).ok()?;
    let key = text.trim();
    (key.len() >= 32).then(|| key.as_bytes().to_vec())
}

fn make_key(path: &Path) -> std::io::Result<Vec<u8>> {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(key.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            Ok(key.into_bytes())
        }
        // Another process made it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_key(path)
            .ok_or_else(|| std::io::Error::other(format!("{} is too short", path.display()))),
        Err(error) => Err(error),
    }
}

/// Labels of header lines that name a student, and those that give an id.
static HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"(?im)^[ \t]*(?:[#*>/\-]+[ \t]*|<!--[ \t]*|"""[ \t]*|'''[ \t]*)?(?:\*\*|"#,
        r#"__)?(student(?:'s)?[ \t]+name|full[ \t]+name|name|student|authors?|by|"#,
        r#"submitted[ \t]+by|prepared[ \t]+by|written[ \t]+by|student[ \t]+id|"#,
        r#"student[ \t]+number|student[ \t]+no\.?|id[ \t]+number|id|sid|"#,
        r#"matriculation(?:[ \t]+number)?|matric(?:ulation)?[ \t]+no\.?|e-?mail|netid|"#,
        r#"login|username|canvas[ \t]+id)(?:\*\*|__)?[ \t]*[:：](?:\*\*|"#,
        r#"__)?[ \t]*(.+?)[ \t]*$"#,
    ))
    .expect("the header pattern is valid")
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+").expect("valid")
});
static ID_VALUE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[A-Za-z]{0,3}\d[\dA-Za-z\-]{2,19}\b").expect("valid"));
static CAPITALISED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{Lu}[\p{L}'’\-]+").expect("valid"));

/// Name particles written in lower case inside a name.
const PARTICLES: [&str; 14] = [
    "van", "von", "de", "der", "den", "da", "di", "du", "del", "la", "le", "bin", "al", "ter",
];
/// Values of a name label that name nobody.
const NOT_NAMES: [&str; 14] = [
    "N/A",
    "NA",
    "None",
    "TODO",
    "Your Name",
    "Your Name Here",
    "Name",
    "Student",
    "Anonymous",
    "TBD",
    "Unknown",
    "Me",
    "Python",
    "Jupyter",
];

/// Who a submission names: from its LMS name, its notebooks' metadata and its header lines.
pub fn identities(submission: &Submission) -> Identities {
    let mut found = Identities::default();
    let lms = submission.lms_name();
    if let Some(name) = &submission.student.name {
        let canvas = lms.as_ref().is_some_and(|l| l.lms == Lms::Canvas);
        if canvas || !name.trim().contains(char::is_whitespace) {
            found.logins.insert(name.trim().to_lowercase());
        } else {
            found.names.insert(name.trim().to_string());
        }
    }
    if let Some(id) = &submission.student.lms_id {
        found.ids.insert(id.clone());
    }
    if let Some(file_id) = lms.and_then(|l| l.file_id) {
        found.ids.insert(file_id);
    }

    for author in notebook_authors(&submission.entry, &submission.files) {
        add_name_value(&mut found, &author);
    }

    for caps in header_lines(&submission.text).filter_map(|line| HEADER.captures(line)) {
        let label = caps[1].to_lowercase();
        let value = caps[2].trim();
        if value.contains("dtype:") || value.contains("Length:") {
            // pandas prints `Name: revenue, dtype: float64` under a Series.
            continue;
        }
        if label.contains("mail") {
            continue; // E-mail addresses are replaced wherever they are.
        }
        let is_id = label.contains("id")
            || label.contains("number")
            || label.contains("no")
            || label.contains("matric")
            || label == "login"
            || label == "username";
        if is_id {
            if let Some(id) = ID_VALUE.find(value) {
                found.ids.insert(id.as_str().to_string());
            } else if label == "login" || label == "username" {
                let login = value.trim_matches(|c: char| !c.is_alphanumeric());
                if login.len() >= 3 && !login.contains(char::is_whitespace) {
                    found.logins.insert(login.to_lowercase());
                }
            }
        } else {
            add_name_value(&mut found, value);
            for id in ID_VALUE.find_iter(value) {
                if id.as_str().chars().filter(char::is_ascii_digit).count() >= 4 {
                    found.ids.insert(id.as_str().to_string());
                }
            }
        }
    }

    // A Canvas login (`smithjane`) written out as a name (`Jane Smith`) in the text.
    let logins: Vec<String> = found.logins.iter().cloned().collect();
    if !logins.is_empty() {
        let words: Vec<&str> = CAPITALISED
            .find_iter(&submission.text)
            .map(|m| m.as_str())
            .collect();
        for window in 2..=3 {
            for run in words.windows(window) {
                let forward: String = run.iter().map(|w| fold(w)).collect();
                let backward: String = run.iter().rev().map(|w| fold(w)).collect();
                if logins.contains(&forward) || logins.contains(&backward) {
                    found.names.insert(run.join(" "));
                }
            }
        }
    }
    found
}

/// The lines where a header naming the student can be: the first [`HEADER_LINES`] of the text
/// and of each file of a folder submission (whose files start with `=== name ===`). Further
/// down, `Name: North` is more likely data than a student.
fn header_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut since_start = 0usize;
    text.lines().filter(move |line| {
        if line.starts_with("=== ") && line.ends_with(" ===") {
            since_start = 0;
        }
        since_start += 1;
        since_start <= HEADER_LINES
    })
}

/// Lower case ASCII letters of a word, for comparing with login names.
fn fold(word: &str) -> String {
    crate::submission::slug(word)
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect()
}

/// Adds the names in a header value such as `Jane Smith <jane@uni.edu> (ID 123456)` or
/// `Jane Smith and Omar Haddad`.
fn add_name_value(found: &mut Identities, value: &str) {
    let without_email = EMAIL.replace_all(value, " ");
    let cleaned: String = without_email
        .split(['(', '<', '[', '|'])
        .next()
        .unwrap_or_default()
        .replace(['"', '\'', '*', '_', '`'], " ");
    for piece in cleaned
        .split([',', ';', '&', '/'])
        .flat_map(|p| p.split(" and "))
    {
        let words: Vec<&str> = piece.split_whitespace().collect();
        if words.is_empty() || words.len() > 5 {
            continue;
        }
        let looks_like_name = words.iter().all(|w| {
            let letters = w
                .chars()
                .all(|c| c.is_alphabetic() || matches!(c, '-' | '\'' | '’' | '.'));
            let capital = w.chars().next().is_some_and(char::is_uppercase);
            letters && (capital || PARTICLES.contains(w))
        });
        let name = words.join(" ");
        if looks_like_name
            && name.chars().filter(|c| c.is_alphabetic()).count() >= 2
            && !NOT_NAMES.iter().any(|n| n.eq_ignore_ascii_case(&name))
        {
            found.names.insert(name);
        }
    }
}

/// The authors a submission's notebooks name in their metadata.
fn notebook_authors(entry: &Path, files: &[String]) -> Vec<String> {
    let paths: Vec<PathBuf> = if entry.is_dir() {
        files
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(".ipynb"))
            .map(|f| entry.join(f))
            .collect()
    } else if entry
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".ipynb")
    {
        vec![entry.to_path_buf()]
    } else {
        Vec::new()
    };
    let mut authors = Vec::new();
    for path in paths {
        let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= MAX_NOTEBOOK_BYTES);
        let Some(text) = small.then(|| std::fs::read(&path).ok()).flatten() else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let Ok(notebook) =
            serde_json::from_str::<serde_json::Value>(text.trim_start_matches('\u{FEFF}'))
        else {
            continue;
        };
        let metadata = &notebook["metadata"];
        let mut take = |value: &serde_json::Value| match value {
            serde_json::Value::String(s) => authors.push(s.clone()),
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(s)) = o.get("name") {
                    authors.push(s.clone());
                }
            }
            _ => {}
        };
        match &metadata["authors"] {
            serde_json::Value::Array(items) => items.iter().for_each(&mut take),
            other => take(other),
        }
        take(&metadata["author"]);
    }
    authors
}

/// Replaces every occurrence of the identities by the pseudonym, and every e-mail address by
/// `[email]`; returns the text and the number of replacements.
pub fn redact(text: &str, found: &Identities, pseudonym: &str) -> (String, usize) {
    let mut count = 0;
    let mut out = EMAIL
        .replace_all(text, |_: &regex::Captures| {
            count += 1;
            EMAIL_MARK
        })
        .into_owned();

    let letter = |c: char| c.is_alphabetic();
    let alnum = |c: char| c.is_alphanumeric();
    let mut names: Vec<&String> = found.names.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in &names {
        let words: Vec<String> = name.split_whitespace().map(regex::escape).collect();
        let mut forms = vec![words.join(r"[\s_]+")];
        if words.len() >= 2 {
            let (last, first) = words.split_last().expect("two words or more");
            forms.push(format!(r"{last},?[\s_]+{}", first.join(r"[\s_]+")));
        }
        for form in forms {
            out = replace_bounded(&out, &format!("(?i){form}"), letter, pseudonym, &mut count);
        }
    }
    let mut logins: Vec<&String> = found.logins.iter().collect();
    logins.sort_by_key(|l| std::cmp::Reverse(l.len()));
    for login in logins {
        let pattern = format!("(?i){}", regex::escape(login));
        out = replace_bounded(&out, &pattern, letter, pseudonym, &mut count);
    }
    for id in &found.ids {
        let pattern = regex::escape(id);
        out = if id.chars().count() >= SHORT_ID {
            replace_bounded(&out, &pattern, alnum, pseudonym, &mut count)
        } else {
            replace_where(
                &out,
                &pattern,
                |before, after| {
                    !before.is_some_and(alnum)
                        && !after.is_some_and(alnum)
                        && (before == Some('_') || after == Some('_'))
                },
                pseudonym,
                &mut count,
            )
        };
    }
    // Each part of a name on its own, as written: "Jane", "Smith", "SMITH".
    let mut parts: BTreeSet<String> = BTreeSet::new();
    for name in names {
        for word in name.split_whitespace() {
            let word = word.trim_matches(|c: char| !c.is_alphabetic());
            if word.chars().count() >= 2 && !PARTICLES.contains(&word.to_lowercase().as_str()) {
                parts.insert(word.to_string());
                parts.insert(word.to_uppercase());
            }
        }
    }
    for part in parts.iter().rev() {
        out = replace_bounded(&out, &regex::escape(part), letter, pseudonym, &mut count);
    }
    (out, count)
}

/// Replaces matches of a pattern that are not part of a longer word: the characters on either
/// side must not satisfy `inside`.
fn replace_bounded(
    text: &str,
    pattern: &str,
    inside: impl Fn(char) -> bool,
    replacement: &str,
    count: &mut usize,
) -> String {
    replace_where(
        text,
        pattern,
        |before, after| !before.is_some_and(&inside) && !after.is_some_and(&inside),
        replacement,
        count,
    )
}

/// Replaces the matches of a pattern whose neighbouring characters pass `keep`.
fn replace_where(
    text: &str,
    pattern: &str,
    keep: impl Fn(Option<char>, Option<char>) -> bool,
    replacement: &str,
    count: &mut usize,
) -> String {
    let Ok(regex) = Regex::new(pattern) else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in regex.find_iter(text) {
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        if !keep(before, after) {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(replacement);
        last = m.end();
        *count += 1;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(names: &[&str], logins: &[&str], ids: &[&str]) -> Identities {
        Identities {
            names: names.iter().map(|s| s.to_string()).collect(),
            logins: logins.iter().map(|s| s.to_string()).collect(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn replaces_names_in_every_form_and_leaves_other_words() {
        let text = "Name: Jane Smith\nSMITH, JANE wrote this. Jane's unit_price column.\n\
                    smithjane_104325_writeup.md; contact jane.smith@uni.edu; 1043250 orders";
        let (out, n) = redact(
            text,
            &found(&["Jane Smith"], &["smithjane"], &["104325"]),
            "student-1",
        );
        assert_eq!(
            out,
            "Name: student-1\nstudent-1 wrote this. student-1's unit_price column.\n\
             student-1_student-1_writeup.md; contact [email]; 1043250 orders"
        );
        assert_eq!(n, 6);
    }

    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = Pseudonymiser::with_key(b"one");
        let b = Pseudonymiser::with_key(b"two");
        assert_eq!(a.pseudonym_for("104325"), a.pseudonym_for("104325"));
        assert_ne!(a.pseudonym_for("104325"), b.pseudonym_for("104325"));
        assert_ne!(a.pseudonym_for("104325"), a.pseudonym_for("104326"));
        assert!(a.pseudonym_for("x").starts_with("student-"));
    }

    #[test]
    fn header_values_that_are_not_names_are_left_alone() {
        let mut ids = Identities::default();
        for value in [
            "revenue, dtype: float64",
            "Your name here",
            "n/a",
            "jane smith",
        ] {
            add_name_value(&mut ids, value);
        }
        assert!(ids.names.is_empty(), "{ids:?}");
        add_name_value(&mut ids, "Ana de la Cruz <ana@x.org> (ID 99887766)");
        assert_eq!(ids.names.iter().collect::<Vec<_>>(), ["Ana de la Cruz"]);
    }
}
