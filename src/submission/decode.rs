//! Bytes to text: byte-order marks, UTF-16, binary detection, and the clean-up every
//! submission's text goes through before a model reads it.
//!
//! This module knows nothing about formats or files; it turns bytes into a `String` or says
//! why it cannot ([`DecodeError`]), and it offers the small text passes the loader applies
//! everywhere: stripping terminal escape sequences and invisible characters, and cutting long
//! text with a marker that says how much was cut. Naming the file is the caller's job.

use std::fmt::Write as _;

/// Why a file's bytes are not text tandem can grade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The bytes hold NUL bytes or are mostly control characters.
    Binary,
    /// The bytes are not valid UTF-8 (or UTF-16 after its byte-order mark) at this offset.
    NotUtf8 {
        offset: usize,
        encoding: &'static str,
    },
}

/// How many bytes from the start are looked at to decide whether a file is binary.
const SNIFF_BYTES: usize = 8192;

/// Decodes a file's bytes as UTF-8, or as UTF-16 when a UTF-16 byte-order mark says so.
///
/// A UTF-8 byte-order mark is dropped. Line endings are made `\n`. The text is otherwise as
/// it was on disk; [`clean`] is a separate pass.
pub(crate) fn decode(bytes: &[u8]) -> Result<String, DecodeError> {
    let text = if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        decode_utf16(rest, u16::from_le_bytes, "UTF-16LE")?
    } else if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        decode_utf16(rest, u16::from_be_bytes, "UTF-16BE")?
    } else {
        let body = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        if body.contains(&0) {
            return Err(DecodeError::Binary);
        }
        match std::str::from_utf8(body) {
            Ok(text) => text.to_string(),
            Err(err) => {
                // Latin-1 or Windows-1252 text has a few high bytes among plain ASCII; a binary
                // file that merely lacks NUL bytes has control bytes and high bytes throughout.
                if looks_binary(body) {
                    return Err(DecodeError::Binary);
                }
                let bom = bytes.len() - body.len();
                return Err(DecodeError::NotUtf8 {
                    offset: bom + err.valid_up_to(),
                    encoding: "UTF-8",
                });
            }
        }
    };

    if mostly_control(&text) {
        return Err(DecodeError::Binary);
    }
    Ok(normalise_newlines(&text))
}

fn decode_utf16(
    body: &[u8],
    unit: fn([u8; 2]) -> u16,
    encoding: &'static str,
) -> Result<String, DecodeError> {
    let units = body.chunks(2).map(|pair| match pair {
        [a, b] => unit([*a, *b]),
        // An odd trailing byte cannot be a code unit; U+DC00 is an unpaired surrogate, so it
        // fails below like any other broken sequence.
        _ => 0xDC00,
    });
    let mut text = String::with_capacity(body.len() / 2);
    let mut offset = 2;
    for ch in char::decode_utf16(units) {
        match ch {
            Ok(ch) => {
                text.push(ch);
                offset += ch.len_utf16() * 2;
            }
            Err(_) => return Err(DecodeError::NotUtf8 { offset, encoding }),
        }
    }
    if text.contains('\0') {
        return Err(DecodeError::Binary);
    }
    Ok(text)
}

/// Whether undecodable bytes look like a binary file rather than text in a legacy encoding.
fn looks_binary(bytes: &[u8]) -> bool {
    let sample = &bytes[..bytes.len().min(SNIFF_BYTES)];
    let odd = sample
        .iter()
        .filter(|&&b| b >= 0x80 || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B)))
        .count();
    odd * 10 > sample.len() * 3
}

/// Whether decoded text is mostly control characters, as a binary file that happens to be
/// valid UTF-8 would be.
fn mostly_control(text: &str) -> bool {
    let mut total = 0usize;
    let mut control = 0usize;
    for ch in text.chars().take(SNIFF_BYTES) {
        total += 1;
        if ch.is_control() && !matches!(ch, '\t' | '\n' | '\r' | '\u{0C}' | '\u{1B}') {
            control += 1;
        }
    }
    control * 10 > total
}

fn normalise_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Removes terminal escape sequences, invisible characters and stray control characters.
///
/// Escape sequences (CSI such as colour codes `ESC[31m`, OSC such as hyperlinks, and
/// two-character escapes) are what tracebacks and progress bars leave behind. Zero-width and
/// bidirectional control characters are removed because they hide text from a human reader
/// while a model still reads it. Tabs and newlines stay.
pub(crate) fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\u{1B}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                Some(']') => {
                    chars.next();
                    skip_osc(&mut chars);
                }
                Some(c) if ('\u{40}'..='\u{5F}').contains(c) => {
                    chars.next();
                }
                _ => {}
            },
            '\u{9B}' => skip_csi(&mut chars),
            '\t' | '\n' => out.push(ch),
            _ if ch.is_control() || is_invisible(ch) => {}
            _ => out.push(ch),
        }
    }
    out
}

/// Skips a CSI sequence's parameter and intermediate bytes and its final byte.
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7E}').contains(&c) {
            break;
        }
        if !('\u{20}'..='\u{3F}').contains(&c) {
            // Not part of a well-formed sequence: stop rather than eat the text after it.
            break;
        }
    }
}

/// Skips an OSC sequence up to its terminator, BEL or `ESC \`.
fn skip_osc(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{07}' | '\n' => break,
            '\u{1B}' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                break;
            }
            _ => {}
        }
    }
}

/// Zero-width and bidirectional formatting characters.
pub(crate) fn is_invisible(ch: char) -> bool {
    matches!(
        ch,
        '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{061C}'
            | '\u{FEFF}'
    )
}

/// Keeps the first `max_chars` characters of `text` and says how many were cut.
///
/// The cut falls on a line break when one is near, so a line is not split in the middle.
pub(crate) fn cut(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let end = text
        .char_indices()
        .nth(max_chars)
        .map_or(text.len(), |(i, _)| i);
    let head = &text[..end];
    let head = match head.rfind('\n') {
        Some(nl) if head[..nl].chars().count() * 5 >= max_chars * 4 => &head[..nl],
        _ => head,
    };
    let cut = total - head.chars().count();
    let mut out = head.trim_end().to_string();
    let _ = write!(out, "\n[… {cut} more characters cut …]");
    out
}

/// Keeps the first `head` and last `tail` lines of `text`, with a marker for the lines cut.
pub(crate) fn cut_lines(text: &str, head: usize, tail: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= head + tail + 1 {
        return text.to_string();
    }
    let cut = lines.len() - head - tail;
    let mut out = lines[..head].join("\n");
    let _ = write!(out, "\n[… {cut} more lines cut …]\n");
    out.push_str(&lines[lines.len() - tail..].join("\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_a_utf8_byte_order_mark() {
        assert_eq!(decode(b"\xEF\xBB\xBFprint(1)\n").unwrap(), "print(1)\n");
    }

    #[test]
    fn decodes_utf16_with_either_byte_order_mark() {
        let mut le = vec![0xFF, 0xFE];
        let mut be = vec![0xFE, 0xFF];
        for unit in "x <- 1\r\nprint(x)".encode_utf16() {
            le.extend(unit.to_le_bytes());
            be.extend(unit.to_be_bytes());
        }
        assert_eq!(decode(&le).unwrap(), "x <- 1\nprint(x)");
        assert_eq!(decode(&be).unwrap(), "x <- 1\nprint(x)");
    }

    #[test]
    fn reports_the_offset_of_invalid_utf8() {
        let err = decode(b"revenue = 12\n# caf\xE9\n").unwrap_err();
        assert_eq!(
            err,
            DecodeError::NotUtf8 {
                offset: 18,
                encoding: "UTF-8"
            }
        );
    }

    #[test]
    fn calls_nul_bytes_and_noise_binary() {
        assert_eq!(decode(b"PK\x03\x04\x00\x00abc"), Err(DecodeError::Binary));
        let noise: Vec<u8> = (0..400u32)
            .map(|i| (i * 37 % 256) as u8)
            .filter(|b| *b != 0)
            .collect();
        assert_eq!(decode(&noise), Err(DecodeError::Binary));
        assert_eq!(
            decode(b"\x01\x02\x03\x04\x05\x06ab"),
            Err(DecodeError::Binary)
        );
    }

    #[test]
    fn strips_ansi_sequences_and_invisible_characters() {
        let text = "\u{1B}[0;31mZeroDivisionError\u{1B}[0m: \
                    \u{1B}]8;;http://x\u{07}link\u{1B}]8;;\u{07} \
                    ok\u{200B}\u{202E}\u{2066}done\u{FEFF}\u{7}";
        assert_eq!(clean(text), "ZeroDivisionError: link okdone");
    }

    #[test]
    fn cuts_long_text_with_a_marker_that_counts_what_was_cut() {
        let text = "a".repeat(50);
        assert_eq!(cut(&text, 60), text);
        let cut_text = cut(&text, 20);
        assert!(cut_text.starts_with(&"a".repeat(20)));
        assert!(
            cut_text.ends_with("[… 30 more characters cut …]"),
            "{cut_text}"
        );
    }

    #[test]
    fn cuts_on_a_line_break_when_one_is_near() {
        let text = format!("{}\n{}", "a".repeat(18), "b".repeat(30));
        let cut_text = cut(&text, 20);
        assert_eq!(
            cut_text,
            format!("{}\n[… 31 more characters cut …]", "a".repeat(18))
        );
    }

    #[test]
    fn keeps_head_and_tail_lines() {
        let text = (1..=10)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            cut_lines(&text, 2, 2),
            "line 1\nline 2\n[… 6 more lines cut …]\nline 9\nline 10"
        );
        assert_eq!(cut_lines("a\nb\nc", 1, 1), "a\nb\nc");
    }
}
