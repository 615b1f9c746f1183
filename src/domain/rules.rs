//! The value rules of DIALECTS.md that hold in every dialect.
//!
//! Each check returns the reason as the end of a sentence ("must be at most 255 characters");
//! the dialect that calls it decides the error code and the field path.

use super::Field;

pub const MAX_TAGS: usize = 100;
pub const MAX_GROUPS: usize = 100;
/// Keys one update may name in an attributes object (or metadata list).
pub const MAX_ATTRIBUTES: usize = 100;
/// Keys a profile's attributes may hold.
pub const MAX_PROFILE_ATTRIBUTES: usize = 256;
pub const MAX_ATTRIBUTES_JSON_BYTES: usize = 16 * 1024;
/// Levels of lists and objects an attribute value may nest (`{"a": [[1]]}`: the value of `a`
/// nests two). Deeper values could be stored but not read back by every JSON reader.
pub const MAX_ATTRIBUTE_DEPTH: usize = 32;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 100;
pub const MAX_TAG_KEY_CHARS: usize = 50;
pub const MAX_TAG_VALUE_CHARS: usize = 200;
pub const MAX_TEXT_CHARS: usize = 255;

/// Free text: at most `max_chars` characters and no control characters.
pub fn text(value: &str, max_chars: usize) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    Ok(())
}

/// Text of 1 to `max_chars` characters.
pub fn non_empty_text(value: &str, max_chars: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("must have 1 to {max_chars} characters"));
    }
    text(value, max_chars)
}

/// The text of a canonical text field, with the field's own rules (Email must look like an
/// address, Biography may be longer).
pub fn field_text(field: Field, value: &str) -> Result<(), String> {
    text(value, field.max_chars())?;
    if field == Field::Email && !email_address::EmailAddress::is_valid(value) {
        return Err("must be an e-mail address such as ana@example.com".to_owned());
    }
    Ok(())
}

/// `key` in Unicode normal form C, so that a key typed with a precomposed "é" and one with
/// "e" and a combining accent are one key, as they look.
pub fn nfc(key: String) -> String {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    if is_nfc_quick(key.chars()) == IsNormalized::Yes {
        key
    } else {
        key.nfc().collect()
    }
}

/// A tag key in any dialect.
pub fn tag_key(key: &str) -> Result<(), String> {
    non_empty_text(key, MAX_TAG_KEY_CHARS)
}

/// A tag key or value as the billing vendor (fragment) and `createProfile` accept them.
pub fn fragment_tag(key: &str, value: Option<&str>) -> Result<(), (&'static str, String)> {
    tag_key(key)
        .and_then(|()| no_separators(key))
        .map_err(|reason| ("key", reason))?;
    if let Some(value) = value {
        text(value, MAX_TAG_VALUE_CHARS)
            .and_then(|()| no_separators(value))
            .map_err(|reason| ("value", reason))?;
    }
    Ok(())
}

fn no_separators(s: &str) -> Result<(), String> {
    if s.contains(['#', '/', ':']) {
        return Err("must not contain '#', '/' or ':'".to_owned());
    }
    Ok(())
}

/// Whether any string in `value`, key or value, at any depth, holds U+0000, which
/// PostgreSQL's text and jsonb types cannot store.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

/// How many levels of lists and objects `value` nests: 0 for a scalar, 1 for `[1]`.
pub fn json_depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

pub fn attribute_key(key: &str) -> Result<(), String> {
    non_empty_text(key, MAX_ATTRIBUTE_KEY_CHARS)
}

pub fn group(name: &str) -> Result<(), String> {
    non_empty_text(name, MAX_TEXT_CHARS)
}

/// A latitude or longitude sent as a string: a plain decimal number within range.
pub fn coordinate(field: Field, raw: &str) -> Result<f64, String> {
    let limit = if field == Field::Latitude { 90.0 } else { 180.0 };
    let value = decimal(raw).ok_or_else(|| {
        format!(
            "must be a decimal number such as \"51.5072\", not \"{}\"",
            truncate(raw)
        )
    })?;
    if !(-limit..=limit).contains(&value) {
        return Err(format!("must be between -{limit} and {limit}"));
    }
    Ok(value)
}

/// A plain decimal number: digits with an optional sign and point. `f64::from_str` alone would
/// also take "inf", "NaN" and exponents, which no vendor means as a number.
pub fn decimal(raw: &str) -> Option<f64> {
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-'));
    raw.parse::<f64>().ok().filter(|n| plain && n.is_finite())
}

/// The first characters of an input, for quoting it in a message.
pub fn truncate(s: &str) -> String {
    const QUOTE_CHARS: usize = 40;
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_control_characters_and_overlong_values() {
        assert!(text("Ana García", 255).is_ok());
        assert!(text("a\u{0}b", 255).is_err());
        assert!(text("line\nbreak", 255).is_err());
        assert!(text(&"é".repeat(255), 255).is_ok());
        assert!(text(&"é".repeat(256), 255).is_err());
    }

    #[test]
    fn email_must_look_like_an_address() {
        assert!(field_text(Field::Email, "ana@example.com").is_ok());
        assert!(field_text(Field::Email, "not an address").is_err());
        assert!(field_text(Field::Email, "@example.com").is_err());
    }

    #[test]
    fn biography_may_hold_four_thousand_characters() {
        assert!(field_text(Field::Biography, &"b".repeat(4_000)).is_ok());
        assert!(field_text(Field::Biography, &"b".repeat(4_001)).is_err());
        assert!(field_text(Field::City, &"c".repeat(256)).is_err());
    }

    #[test]
    fn coordinates_are_plain_decimals_within_range() {
        assert_eq!(coordinate(Field::Latitude, "51.5072"), Ok(51.5072));
        assert_eq!(coordinate(Field::Longitude, "-0.1276"), Ok(-0.1276));
        assert_eq!(coordinate(Field::Longitude, "180"), Ok(180.0));
        assert!(coordinate(Field::Latitude, "90.5").is_err());
        assert!(coordinate(Field::Longitude, "-180.01").is_err());
        for bad in ["", "abc", "NaN", "inf", "1e3", "0x10", "1,5", "--1"] {
            assert!(coordinate(Field::Latitude, bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn fragment_tags_refuse_separators_and_long_values() {
        assert!(fragment_tag("department", Some("engineering")).is_ok());
        assert_eq!(fragment_tag("a#b", None).map_err(|(part, _)| part), Err("key"));
        assert_eq!(
            fragment_tag("dept", Some("a/b")).map_err(|(part, _)| part),
            Err("value")
        );
        assert_eq!(fragment_tag("", None).map_err(|(part, _)| part), Err("key"));
        assert!(fragment_tag(&"k".repeat(51), None).is_err());
        assert!(fragment_tag("k", Some(&"v".repeat(201))).is_err());
        assert!(fragment_tag("k", Some("")).is_ok());
    }

    #[test]
    fn nul_characters_are_found_at_any_depth() {
        use serde_json::json;
        assert!(!json_has_nul(&json!({"a": ["b", {"c": 1}]})));
        assert!(json_has_nul(&json!("a\u{0}")));
        assert!(json_has_nul(&json!({"a": [{"b": "\u{0}"}]})));
        assert!(json_has_nul(&json!({"a": {"k\u{0}": 1}})));
    }

    #[test]
    fn depth_counts_levels_of_lists_and_objects() {
        use serde_json::json;
        assert_eq!(json_depth(&json!("x")), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, [2]], "b": 3})), 3);
    }

    #[test]
    fn keys_are_brought_to_normal_form_c() {
        assert_eq!(nfc("Cafe\u{301}".to_owned()), "Caf\u{e9}");
        assert_eq!(nfc("Caf\u{e9}".to_owned()), "Caf\u{e9}");
        assert_eq!(nfc("vip".to_owned()), "vip");
    }

    #[test]
    fn truncate_quotes_long_inputs_briefly() {
        assert_eq!(truncate("short"), "short");
        assert_eq!(truncate(&"x".repeat(100)).chars().count(), 41);
    }
}
