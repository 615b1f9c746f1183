//! Cheap scans of a request's text before anything parses it.
//!
//! Parsers and every walk over a parsed document recurse once per level of nesting, so a small
//! document of deeply nested brackets could exhaust a thread's stack, which aborts the whole
//! process. [`document`] counts the nesting of a GraphQL document's brackets in one flat pass,
//! and is run before the document is parsed, on HTTP and WebSocket alike. It also finds number
//! literals that would not be kept as written ([`exact_number`]); [`json_numbers`] does the
//! same for a JSON body's variables.

/// What a scan refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flaw {
    /// Brackets (`{`, `[`, `(`), or fragments spreading one another, nest deeper than allowed.
    TooDeep,
    /// A number that would be stored as another number (its digits quoted, shortened).
    InexactNumber(String),
}

impl Flaw {
    /// The error code and message a client gets.
    pub fn refusal(&self) -> (&'static str, String) {
        match self {
            Flaw::TooDeep => (
                "NESTING_TOO_DEEP",
                "The document nests too deeply (selections, fragments, lists or objects).".to_owned(),
            ),
            Flaw::InexactNumber(number) => (
                "VALIDATION_FAILED",
                format!(
                    "The number {number} cannot be kept exactly: send at most 17 significant digits \
                     within the range of a 64-bit float, an integer within 64 bits, or a string."
                ),
            ),
        }
    }
}

/// Checks a GraphQL document: its brackets nest at most `max_nesting` deep, and every number
/// literal is exact. Strings, block strings and comments are skipped, so brackets and digits
/// inside them do not count.
pub fn document(text: &str, max_nesting: usize) -> Result<(), Flaw> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(Flaw::TooDeep);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'#' => {
                while bytes.get(i).is_some_and(|&b| b != b'\n' && b != b'\r') {
                    i += 1;
                }
                continue;
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // `\"""` is an escaped triple quote inside a block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") { 4 } else { 1 };
                }
                i += 3;
                continue;
            }
            b'"' => {
                i = string_end(bytes, i);
                continue;
            }
            b'-' | b'0'..=b'9' if !i.checked_sub(1).is_some_and(|p| is_name_byte(bytes[p])) => {
                let end = number_end(bytes, i);
                check_number(&text[i..end])?;
                i = end.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Checks every number in a JSON text (a request body) with [`exact_number`]. The text need
/// not be valid JSON: what is not a number or a string is passed over.
pub fn json_numbers(text: &[u8]) -> Result<(), Flaw> {
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        match byte {
            b'"' => i = json_string_end(text, i),
            b'-' | b'0'..=b'9' => {
                let end = number_end(text, i);
                let number = &text[i..end];
                if !surely_exact(number) {
                    // A JSON number is ASCII, so this is whole characters.
                    check_number(&String::from_utf8_lossy(number))?;
                }
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// The index after the JSON string that opens at `start`: a body is mostly strings (the
/// document, ids), so they are skipped a word at a time rather than byte by byte. (A raw line
/// break cannot be in a JSON string; the parser refuses it.)
fn json_string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[i..]) {
        i += found;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2;
        if i >= bytes.len() {
            break;
        }
    }
    bytes.len()
}

/// Whether a number token surely reads back as written, without parsing it: at most 15
/// digits and no exponent (a 64-bit float holds 15 significant digits, and an integer that
/// short fits in 64 bits).
fn surely_exact(number: &[u8]) -> bool {
    number.len() <= 16
        && number.iter().filter(|byte| byte.is_ascii_digit()).count() <= 15
        && number.iter().all(|byte| matches!(byte, b'0'..=b'9' | b'.' | b'-'))
}

fn check_number(number: &str) -> Result<(), Flaw> {
    if exact_number(number) {
        Ok(())
    } else {
        Err(Flaw::InexactNumber(crate::domain::rules::truncate(number)))
    }
}

/// The index after the string that opens at `start` (a `"`), escapes included.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'\\' => i += 2,
            b'"' => return i + 1,
            // A GraphQL string ends at a line break (a syntax error the parser reports).
            b'\n' | b'\r' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after the number token that starts at `start`: `-`, digits, `.`, exponent.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    while let Some(&byte) = bytes.get(i) {
        let sign_of_exponent = matches!(byte, b'+' | b'-') && i > start && matches!(bytes[i - 1], b'e' | b'E');
        if byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E') || sign_of_exponent {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Whether the number written as `text` reads back as the same number once parsed the way
/// requests are (serde_json: an integer within 64 bits, or else the nearest 64-bit float).
/// `1.50` and `1.5e0` read back as `1.5`, the same number; `123456789012345678901234567890`
/// and `1e-400` do not. Text that is not a number at all is left to the parser: `true`.
pub fn exact_number(text: &str) -> bool {
    let Some(sent) = Decimal::parse(text) else {
        return true;
    };
    let Ok(parsed) = text.parse::<serde_json::Number>() else {
        // Out of range for a float (`1e400`): the parser refuses it with its own message.
        return false;
    };
    Decimal::parse(&parsed.to_string()).is_some_and(|kept| kept == sent)
}

/// A decimal number as its significant digits and a power of ten: `-1.50e2` is
/// `{negative, "15", 1}`. Zero has no digits and no sign.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = format!("{whole}{fraction}");
        let trailing = digits.len() - digits.trim_end_matches('0').len();
        let digits = digits.trim_matches('0').to_owned();
        let exponent = exponent
            .checked_sub(i64::try_from(fraction.len()).ok()?)?
            .checked_add(i64::try_from(trailing).ok()?)?;
        Some(if digits.is_empty() {
            Decimal {
                negative: false,
                digits,
                exponent: 0,
            }
        } else {
            Decimal {
                negative,
                digits,
                exponent,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_string_ends_at_its_unescaped_quote() {
        let body = br#"{"q": "a \" [1e400] \\", "n": 1e400}"#;
        let start = body.iter().position(|&b| b == b'a').unwrap() - 1;
        let end = json_string_end(body, start);
        assert_eq!(&body[end..end + 1], b",");
        assert!(json_numbers(body).is_err());
        assert!(json_numbers(br#"{"q": "[1e400]", "n": 12.5, "m": -3}"#).is_ok());
        assert!(json_numbers(br#"{"q": "unterminated \"#).is_ok());
    }

    #[test]
    fn short_numbers_are_surely_exact_and_others_are_checked() {
        for exact in [&b"0"[..], b"-12", b"12.50", b"123456789012345"] {
            assert!(surely_exact(exact), "{exact:?}");
        }
        for checked in [&b"1e5"[..], b"1234567890123456", b"0.1000000000000000000001"] {
            assert!(!surely_exact(checked), "{checked:?}");
        }
    }

    #[test]
    fn brackets_nest_up_to_the_limit_and_no_further() {
        let nested = |levels: usize| {
            format!(
                "{{ customFields(x: {}1{}) {{ name }} }}",
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // `{` and `(` around the list make two levels.
        assert_eq!(document(&nested(62), 64), Ok(()));
        assert_eq!(document(&nested(63), 64), Err(Flaw::TooDeep));
        assert_eq!(document(&nested(2_000), 64), Err(Flaw::TooDeep));
        let objects = format!("{{ a(x: {}1{}) }}", "{a: ".repeat(100), "}".repeat(100));
        assert_eq!(document(&objects, 64), Err(Flaw::TooDeep));
        let selections = format!("{}{}", "{ a ".repeat(100), "}".repeat(100));
        assert_eq!(document(&selections, 64), Err(Flaw::TooDeep));
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "[".repeat(100);
        assert_eq!(document(&format!("{{ a(x: \"{deep}\") }}"), 8), Ok(()));
        assert_eq!(document(&format!("{{ a(x: \"\\\"{deep}\") }}"), 8), Ok(()));
        assert_eq!(
            document(&format!("{{ a(x: \"\"\"{deep}\\\"\"\"{deep}\"\"\") }}"), 8),
            Ok(())
        );
        assert_eq!(document(&format!("{{ a # {deep}\n }}"), 8), Ok(()));
        // An unterminated string does not hide what follows its line.
        assert_eq!(document(&format!("{{ a(x: \"open\n{deep}"), 8), Err(Flaw::TooDeep));
    }

    #[test]
    fn number_literals_must_read_back_as_written() {
        for exact in [
            "0",
            "-0",
            "1",
            "-17",
            "9223372036854775807",
            "18446744073709551615",
            "1.5",
            "1.50",
            "0.1",
            "1e3",
            "1E+3",
            "2.5e-3",
            "1.7976931348623157e308",
            "0.30000000000000004",
            "100000000000000000000",
        ] {
            assert!(exact_number(exact), "{exact} was refused");
        }
        for inexact in [
            "123456789012345678901234567890",
            "-1e-400",
            "1e400",
            "0.1000000000000000000001",
            "18446744073709551617",
        ] {
            assert!(!exact_number(inexact), "{inexact} was accepted");
        }
    }

    #[test]
    fn numbers_are_checked_in_documents_and_json_bodies_but_not_in_names_or_strings() {
        assert_eq!(document("{ a(x: 12.5, y: -3) { b2 c_1e9 } }", 64), Ok(()));
        assert_eq!(document("{ a(x: \"123456789012345678901234567890\") }", 64), Ok(()));
        assert!(matches!(
            document("{ a(x: {deep: [123456789012345678901234567890]}) }", 64),
            Err(Flaw::InexactNumber(_))
        ));
        assert_eq!(
            json_numbers(br#"{"query": "{ a(x: 1e999) }", "variables": {"x": [1, 2.5, -0.0]}}"#),
            Ok(())
        );
        assert!(matches!(
            json_numbers(br#"{"variables": {"x": -1e-400}}"#),
            Err(Flaw::InexactNumber(_))
        ));
        assert!(matches!(
            json_numbers(br#"{"variables": {"x": "\"", "y": 123456789012345678901234567890}}"#),
            Err(Flaw::InexactNumber(_))
        ));
    }
}
