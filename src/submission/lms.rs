//! Who handed a submission in, read from the names an LMS gives files in its bulk download.
//!
//! Two layouts are recognised:
//!
//! - Canvas: `lastfirst_[late_]userid_fileid_original-name.ext`, for example
//!   `smithjane_late_123456_7890123_analysis.ipynb`. The name part is lower case without
//!   spaces; `late` (in any case) marks work handed in after the deadline; a resubmission adds
//!   `-1`, `-2`, ... to the original name before its extension.
//! - Moodle: `Full Name_participantid_assignsubmission_file_original.ext`, or the folder form
//!   `Full Name_participantid_assignsubmission_file_` (with or without the last `_`). The id is
//!   Moodle's per-assignment participant id, not its user id.
//!
//! Only the leading fields are split off; the rest is the original file name, which may itself
//! contain `_`. Names that match neither layout are not guessed at.

use crate::record::Student;

/// Which LMS a file name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lms {
    Canvas,
    Moodle,
}

/// What an LMS file name says about its submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmsName {
    pub lms: Lms,
    /// Canvas's `lastfirst` login-style name, or Moodle's full name; `None` under Moodle's
    /// blind marking, where every student is called `Participant`.
    pub name: Option<String>,
    /// Canvas user id or Moodle participant id.
    pub lms_id: String,
    /// Canvas's `late` field.
    pub late: bool,
    /// Canvas's id of the uploaded file.
    pub file_id: Option<String>,
    /// The file name the student uploaded, without a resubmission suffix; `None` for a Moodle
    /// folder, which names no file.
    pub original_name: Option<String>,
    /// `1` for a name ending in `-1` before its extension, and so on.
    pub resubmission: Option<u32>,
}

impl LmsName {
    /// The student as the result record names them.
    pub fn student(&self) -> Student {
        Student {
            name: self.name.clone(),
            lms_id: Some(self.lms_id.clone()),
            late: self.late,
        }
    }
}

/// Reads a Canvas or Moodle bulk-download name; `None` when it is neither.
pub fn parse_lms_name(name: &str) -> Option<LmsName> {
    parse_moodle(name).or_else(|| parse_canvas(name))
}

fn is_id(field: &str) -> bool {
    !field.is_empty() && field.len() <= 20 && field.bytes().all(|b| b.is_ascii_digit())
}

fn parse_canvas(name: &str) -> Option<LmsName> {
    let mut fields = name.splitn(2, '_');
    let who = fields.next()?;
    let mut rest = fields.next()?;

    let valid_who = who.chars().any(char::is_alphabetic)
        && who
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '\'' | '.'))
        && !who.chars().any(char::is_uppercase);
    if !valid_who {
        return None;
    }

    let mut late = false;
    if let Some((field, after)) = rest.split_once('_')
        && field.eq_ignore_ascii_case("late")
    {
        late = true;
        rest = after;
    }

    let (user_id, rest) = rest.split_once('_')?;
    let (file_id, original) = rest.split_once('_')?;
    if !is_id(user_id) || !is_id(file_id) || original.is_empty() {
        return None;
    }
    let (original, resubmission) = split_resubmission(original);

    Some(LmsName {
        lms: Lms::Canvas,
        name: Some(who.to_string()),
        lms_id: user_id.to_string(),
        late,
        file_id: Some(file_id.to_string()),
        original_name: Some(original),
        resubmission,
    })
}

fn parse_moodle(name: &str) -> Option<LmsName> {
    const MARK: &str = "_assignsubmission_";
    let at = name.find(MARK)?;
    let (who, id) = name[..at].rsplit_once('_')?;
    if !is_id(id) || who.trim().is_empty() {
        return None;
    }

    // After the marker comes the plugin (`file`, `onlinetext`, ...), then `_` and the file.
    let after = &name[at + MARK.len()..];
    let (plugin, original) = match after.split_once('_') {
        Some((plugin, original)) => (plugin, Some(original).filter(|o| !o.is_empty())),
        None => (after, None),
    };
    if plugin.is_empty() || !plugin.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }

    let who = who.trim();
    Some(LmsName {
        lms: Lms::Moodle,
        name: (who != "Participant").then(|| who.to_string()),
        lms_id: id.to_string(),
        late: false,
        file_id: None,
        original_name: original.map(str::to_string),
        resubmission: None,
    })
}

/// Splits Canvas's `-N` resubmission suffix off a file name: `analysis-2.ipynb` is the second
/// resubmission of `analysis.ipynb`.
fn split_resubmission(original: &str) -> (String, Option<u32>) {
    let (stem, ext) = match original.rfind('.') {
        Some(dot) if dot > 0 => original.split_at(dot),
        _ => (original, ""),
    };
    if let Some((base, n)) = stem.rsplit_once('-')
        && !base.is_empty()
        && (1..=3).contains(&n.len())
        && !n.starts_with('0')
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return (format!("{base}{ext}"), n.parse().ok());
    }
    (original.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_canvas_names() {
        let parsed = parse_lms_name("smithjane_123456_7890123_sales_analysis.ipynb").unwrap();
        assert_eq!(
            parsed,
            LmsName {
                lms: Lms::Canvas,
                name: Some("smithjane".into()),
                lms_id: "123456".into(),
                late: false,
                file_id: Some("7890123".into()),
                original_name: Some("sales_analysis.ipynb".into()),
                resubmission: None,
            }
        );
    }

    #[test]
    fn reads_canvas_late_marks_in_any_case() {
        for name in [
            "smithjane_late_123456_7890123_a.py",
            "smithjane_LATE_123456_7890123_a.py",
        ] {
            let parsed = parse_lms_name(name).unwrap();
            assert!(parsed.late, "{name}");
            assert_eq!(parsed.lms_id, "123456");
            assert_eq!(parsed.original_name.as_deref(), Some("a.py"));
        }
    }

    #[test]
    fn reads_canvas_resubmission_suffixes() {
        let parsed = parse_lms_name("leeomar_2001_3002_analysis-2.ipynb").unwrap();
        assert_eq!(parsed.original_name.as_deref(), Some("analysis.ipynb"));
        assert_eq!(parsed.resubmission, Some(2));

        let plain = parse_lms_name("leeomar_2001_3002_q1-analysis.R").unwrap();
        assert_eq!(plain.original_name.as_deref(), Some("q1-analysis.R"));
        assert_eq!(plain.resubmission, None);
    }

    #[test]
    fn reads_moodle_file_and_folder_names() {
        let file = parse_lms_name("Jane Smith_4821_assignsubmission_file_my_report.Rmd").unwrap();
        assert_eq!(file.lms, Lms::Moodle);
        assert_eq!(file.name.as_deref(), Some("Jane Smith"));
        assert_eq!(file.lms_id, "4821");
        assert_eq!(file.original_name.as_deref(), Some("my_report.Rmd"));

        for folder in [
            "Ana María López_77_assignsubmission_file_",
            "Ana María López_77_assignsubmission_file",
        ] {
            let parsed = parse_lms_name(folder).unwrap();
            assert_eq!(parsed.name.as_deref(), Some("Ana María López"), "{folder}");
            assert_eq!(parsed.lms_id, "77");
            assert_eq!(parsed.original_name, None);
        }
    }

    #[test]
    fn hides_the_name_under_moodle_blind_marking() {
        let parsed = parse_lms_name("Participant_991_assignsubmission_file_a.py").unwrap();
        assert_eq!(parsed.name, None);
        assert_eq!(parsed.student().lms_id.as_deref(), Some("991"));
    }

    #[test]
    fn does_not_guess_at_other_names() {
        for name in [
            "analysis.ipynb",
            "final_project_v2.ipynb",
            "sales_2024_q1_report.py",
            "Smith_123_456_a.py",
            "smithjane_123_456_",
            "Jane_x_assignsubmission_file_a.py",
        ] {
            assert_eq!(parse_lms_name(name), None, "{name}");
        }
    }
}
