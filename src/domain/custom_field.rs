use chrono::NaiveDate;
use uuid::Uuid;

use super::{profile::STANDARD_NAMES, rules};
use crate::error::{Code, Fault};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomFieldType {
    Text,
    Date,
    Dropdown,
    Number,
    Boolean,
}

impl CustomFieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomFieldType::Text => "TEXT",
            CustomFieldType::Date => "DATE",
            CustomFieldType::Dropdown => "DROPDOWN",
            CustomFieldType::Number => "NUMBER",
            CustomFieldType::Boolean => "BOOLEAN",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use CustomFieldType::*;
        [Text, Date, Dropdown, Number, Boolean]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Longest TEXT value when the definition sets no maxLength.
pub const DEFAULT_TEXT_MAX_LENGTH: i32 = 1_000;
const MAX_NAME_CHARS: usize = 64;
const MAX_OPTIONS: usize = 100;

/// A tenant's custom field, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomFieldDefinition {
    pub id: Uuid,
    pub name: String,
    pub field_type: CustomFieldType,
    pub options: Vec<String>,
    pub max_length: Option<i32>,
}

impl CustomFieldDefinition {
    /// Whether `value` fits this field's type; the reason if not.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self.field_type {
            CustomFieldType::Text => {
                let max = self.max_length.unwrap_or(DEFAULT_TEXT_MAX_LENGTH);
                rules::text(value, usize::try_from(max).unwrap_or(0))
            }
            CustomFieldType::Date => {
                let iso = value.len() == 10 && NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok();
                iso.then_some(())
                    .ok_or_else(|| "must be a date written YYYY-MM-DD".to_owned())
            }
            CustomFieldType::Dropdown => {
                if self.options.iter().any(|option| option == value) {
                    Ok(())
                } else {
                    Err(format!("must be one of {}", quoted_list(&self.options)))
                }
            }
            CustomFieldType::Number => rules::decimal(value)
                .map(drop)
                .ok_or_else(|| "must be a decimal number such as 42 or -1.5".to_owned()),
            CustomFieldType::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err("must be true or false".to_owned()),
            },
        }
    }
}

/// A checked request to define (or redefine) a custom field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomField {
    pub name: String,
    pub field_type: CustomFieldType,
    pub options: Vec<String>,
    pub max_length: Option<i32>,
}

impl NewCustomField {
    /// Checks a definition on its own; [`NewCustomField::check_redefinition`] checks it
    /// against the field it replaces.
    pub fn new(
        name: String,
        field_type: CustomFieldType,
        options: Option<Vec<String>>,
        max_length: Option<i32>,
    ) -> Result<Self, Fault> {
        let valid_name = name.len() <= MAX_NAME_CHARS
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(Fault::validation(
                "name",
                "A custom field name starts with a letter and has up to 64 letters, digits and underscores.",
            ));
        }
        if STANDARD_NAMES.iter().any(|(standard, _)| *standard == name) {
            return Err(Fault::validation(
                "name",
                format!("\"{name}\" is a standard field name; choose another."),
            ));
        }
        if let Some(max) = max_length
            && !(1..=10_000).contains(&max)
        {
            return Err(Fault::validation("maxLength", "maxLength must be between 1 and 10000."));
        }
        let options = options.unwrap_or_default();
        if field_type == CustomFieldType::Dropdown {
            if options.is_empty() {
                return Err(Fault::validation(
                    "options",
                    "A DROPDOWN field needs at least one option.",
                ));
            }
            if options.len() > MAX_OPTIONS {
                return Err(Fault::validation(
                    "options",
                    format!("A field has at most {MAX_OPTIONS} options."),
                ));
            }
            for (i, option) in options.iter().enumerate() {
                if let Err(reason) = rules::non_empty_text(option, rules::MAX_TEXT_CHARS) {
                    return Err(Fault::validation(
                        format!("options[{i}]"),
                        format!("An option {reason}."),
                    ));
                }
                if options[..i].contains(option) {
                    return Err(Fault::validation(
                        format!("options[{i}]"),
                        format!("The option \"{option}\" is listed twice."),
                    ));
                }
            }
        } else if !options.is_empty() {
            return Err(Fault::validation("options", "Only a DROPDOWN field has options."));
        }
        Ok(NewCustomField {
            name,
            field_type,
            options,
            max_length,
        })
    }

    /// Refuses a redefinition that would strand stored values: a change of type while any
    /// value is stored, or the removal of an option that a stored value uses.
    /// `used` lists the distinct stored values of the existing field.
    pub fn check_redefinition(&self, existing: &CustomFieldDefinition, used: &[String]) -> Result<(), Fault> {
        if existing.field_type != self.field_type && !used.is_empty() {
            return Err(Fault::validation(
                "type",
                format!(
                    "\"{}\" is a {} field with stored values; its type cannot change to {}.",
                    self.name,
                    existing.field_type.as_str(),
                    self.field_type.as_str()
                ),
            ));
        }
        if self.field_type == CustomFieldType::Dropdown {
            let removed: Vec<String> = used
                .iter()
                .filter(|value| !self.options.contains(value))
                .cloned()
                .collect();
            if !removed.is_empty() {
                return Err(Fault::validation(
                    "options",
                    format!(
                        "Stored values still use the option(s) {}; keep them.",
                        quoted_list(&removed)
                    ),
                ));
            }
        }
        // Values longer than a lowered maxLength stay as they are; the new limit applies to
        // the next write, as it does for a vendor's own form builder.
        Ok(())
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// UNKNOWN_FIELD naming every name that is neither standard nor custom.
pub fn unknown_fields(names: &[(String, String)]) -> Fault {
    let list: Vec<String> = names.iter().map(|(name, _)| name.clone()).collect();
    let mut fault = Fault::new(
        Code::UnknownField,
        format!("No standard or custom field is named {}.", quoted_list(&list)),
    )
    .with("unknownFields", list);
    if let Some((_, path)) = names.first() {
        fault = fault.at(path.clone());
    }
    fault
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(field_type: CustomFieldType, options: &[&str], max_length: Option<i32>) -> CustomFieldDefinition {
        CustomFieldDefinition {
            id: Uuid::nil(),
            name: "F".into(),
            field_type,
            options: options.iter().map(|s| s.to_string()).collect(),
            max_length,
        }
    }

    #[test]
    fn text_values_respect_max_length_with_a_default_of_1000() {
        assert!(
            field(CustomFieldType::Text, &[], None)
                .check(&"t".repeat(1_000))
                .is_ok()
        );
        assert!(
            field(CustomFieldType::Text, &[], None)
                .check(&"t".repeat(1_001))
                .is_err()
        );
        assert!(field(CustomFieldType::Text, &[], Some(3)).check("four").is_err());
    }

    #[test]
    fn dates_are_iso_calendar_dates() {
        let date = field(CustomFieldType::Date, &[], None);
        assert!(date.check("2024-02-29").is_ok());
        for bad in ["2023-02-29", "2024-2-5", "24-02-05", "2024-02-05T00:00:00", "tomorrow"] {
            assert!(date.check(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn dropdowns_accept_exactly_their_options() {
        let size = field(CustomFieldType::Dropdown, &["S", "M"], None);
        assert!(size.check("M").is_ok());
        assert!(size.check("m").is_err());
        assert!(size.check("M ").is_err());
    }

    #[test]
    fn numbers_and_booleans_have_one_spelling() {
        let number = field(CustomFieldType::Number, &[], None);
        assert!(number.check("-12.5").is_ok());
        assert!(number.check("1e3").is_err());
        let boolean = field(CustomFieldType::Boolean, &[], None);
        assert!(boolean.check("true").is_ok());
        assert!(boolean.check("True").is_err());
        assert!(boolean.check("yes").is_err());
    }

    #[test]
    fn definitions_need_a_valid_name_that_is_not_standard() {
        let define = |name: &str| NewCustomField::new(name.into(), CustomFieldType::Text, None, None);
        assert!(define("T_Shirt_Size").is_ok());
        assert_eq!(define("1st").unwrap_err().field.as_deref(), Some("name"));
        assert_eq!(define("has space").unwrap_err().code, Code::ValidationFailed);
        assert!(define(&"a".repeat(65)).is_err());
        assert!(define("Email").is_err());
    }

    #[test]
    fn dropdowns_need_distinct_options_and_max_length_is_bounded() {
        let dropdown = |options: &[&str]| {
            NewCustomField::new(
                "Size".into(),
                CustomFieldType::Dropdown,
                Some(options.iter().map(|s| s.to_string()).collect()),
                None,
            )
        };
        assert!(dropdown(&["S"]).is_ok());
        assert_eq!(dropdown(&[]).unwrap_err().field.as_deref(), Some("options"));
        assert_eq!(dropdown(&["S", "S"]).unwrap_err().field.as_deref(), Some("options[1]"));
        assert!(NewCustomField::new("T".into(), CustomFieldType::Text, None, Some(0)).is_err());
        assert!(NewCustomField::new("T".into(), CustomFieldType::Text, None, Some(10_001)).is_err());
        assert!(NewCustomField::new("T".into(), CustomFieldType::Text, None, Some(10_000)).is_ok());
    }

    #[test]
    fn redefinition_keeps_what_stored_values_use() {
        let existing = field(CustomFieldType::Dropdown, &["S", "M"], None);
        let narrower =
            NewCustomField::new("F".into(), CustomFieldType::Dropdown, Some(vec!["S".into()]), None).unwrap();
        assert!(narrower.check_redefinition(&existing, &["S".into()]).is_ok());
        assert_eq!(
            narrower
                .check_redefinition(&existing, &["M".into()])
                .unwrap_err()
                .field
                .as_deref(),
            Some("options")
        );
        let retyped = NewCustomField::new("F".into(), CustomFieldType::Text, None, None).unwrap();
        assert!(retyped.check_redefinition(&existing, &[]).is_ok());
        assert_eq!(
            retyped
                .check_redefinition(&existing, &["S".into()])
                .unwrap_err()
                .field
                .as_deref(),
            Some("type")
        );
    }
}
