//! Opaque cursors: a kind and a number behind base64url, so that clients cannot rely on
//! their insides and a cursor of one list is refused by another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Fault;

/// The cursor of item `position` in a list of `kind`.
pub fn encode(kind: &str, position: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// The position `cursor` names in a list of `kind`; VALIDATION_FAILED at `field` otherwise.
pub fn decode(kind: &str, cursor: &str, field: &str) -> Result<i64, Fault> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.strip_prefix(kind)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|position| position.parse().ok())
        })
        .ok_or_else(|| {
            Fault::validation(
                field,
                format!("{field} is not a cursor of this list; use pageInfo.endCursor."),
            )
        })
}

/// A page size between 0 and `max`; VALIDATION_FAILED at `first` otherwise.
pub fn page_size(first: i32, max: i32) -> Result<u64, Fault> {
    u64::try_from(first)
        .ok()
        .filter(|n| *n <= max as u64)
        .ok_or_else(|| Fault::validation("first", format!("first must be between 0 and {max}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_strings_are_refused() {
        assert_eq!(decode("profile", &encode("profile", 42), "after").unwrap(), 42);
        assert!(decode("change", &encode("profile", 42), "after").is_err());
        assert!(decode("profile", "42", "after").is_err());
        assert!(decode("profile", &URL_SAFE_NO_PAD.encode("profile:x"), "after").is_err());
        assert!(decode("profile", "!!!", "after").is_err());
    }

    #[test]
    fn page_sizes_stay_within_bounds() {
        assert_eq!(page_size(0, 100).unwrap(), 0);
        assert_eq!(page_size(100, 100).unwrap(), 100);
        assert!(page_size(-1, 100).is_err());
        assert!(page_size(101, 100).is_err());
    }
}
