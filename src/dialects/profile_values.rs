use std::collections::HashSet;

use async_graphql::InputObject;

use super::text_op;
use crate::domain::{ChangeSet, Op, STANDARD_NAMES};
use crate::error::{Code, Fault};

/// POST flat profile values, as the event platform does: standard fields and the tenant's
/// custom fields side by side, found by name.
#[derive(InputObject, Debug, Clone)]
pub struct ProfileValuesUpdate {
    /// Name/value pairs. Each name is looked up first among the standard names (First_Name,
    /// Family_Name, Email, Company, Title, Phone, Address, Address_2, City, State, Zip, Country,
    /// Biography, Category_Name), then among the tenant's custom fields.
    pub values: Vec<FieldValueInput>,
}

/// One named value.
#[derive(InputObject, Debug, Clone)]
pub struct FieldValueInput {
    /// A standard name or a custom field name, exactly as defined.
    pub name: String,
    /// The new value; null clears the field.
    pub value: Option<String>,
}

impl TryFrom<ProfileValuesUpdate> for ChangeSet {
    type Error = Fault;

    fn try_from(post: ProfileValuesUpdate) -> Result<Self, Fault> {
        let mut change = ChangeSet::default();
        let mut seen = HashSet::new();
        for (i, FieldValueInput { name, value }) in post.values.into_iter().enumerate() {
            let path = format!("values[{i}]");
            if !seen.insert(name.clone()) {
                return Err(Fault::validation(
                    path,
                    format!("\"{name}\" is sent twice; send each name once."),
                ));
            }
            match STANDARD_NAMES.iter().find(|(standard, _)| *standard == name) {
                Some((_, field)) => change.push(text_op(*field, value, Code::InvalidFieldValue, &path, &name)?),
                None => change.push(Op::SetCustom { name, value, path }),
            }
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{CustomFieldDefinition, CustomFieldType, Field, Profile, Scalar};

    fn values(pairs: &[(&str, Option<&str>)]) -> ProfileValuesUpdate {
        ProfileValuesUpdate {
            values: pairs
                .iter()
                .map(|(n, v)| FieldValueInput {
                    name: n.to_string(),
                    value: v.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn definitions() -> Vec<CustomFieldDefinition> {
        let define = |name: &str, field_type, options: &[&str]| CustomFieldDefinition {
            id: Uuid::new_v4(),
            name: name.into(),
            field_type,
            options: options.iter().map(|s| s.to_string()).collect(),
            max_length: None,
        };
        vec![
            define("T_Shirt_Size", CustomFieldType::Dropdown, &["S", "M", "L"]),
            define("Arrival", CustomFieldType::Date, &[]),
            define("Guests", CustomFieldType::Number, &[]),
            define("Vegan", CustomFieldType::Boolean, &[]),
            define("Notes", CustomFieldType::Text, &[]),
        ]
    }

    fn stored() -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        p.fields
            .insert(Field::Organization, Scalar::Text("Tech Solutions".into()));
        p.custom.insert("Notes".into(), "old".into());
        p
    }

    fn apply(pairs: &[(&str, Option<&str>)]) -> Result<Profile, Fault> {
        Ok(ChangeSet::try_from(values(pairs))?.apply(&stored(), &definitions())?.0)
    }

    #[test]
    fn standard_names_map_to_canonical_fields() {
        let next = apply(&[
            ("First_Name", Some("Ana")),
            ("Family_Name", Some("García")),
            ("Company", Some("Acme")),
            ("Phone", Some("+44 20 7946 0000")),
            ("State", Some("Greater London")),
            ("Category_Name", Some("VIP")),
        ])
        .unwrap();
        assert_eq!(next.text(Field::FirstName), Some("Ana"));
        assert_eq!(next.text(Field::LastName), Some("García"));
        assert_eq!(next.text(Field::Organization), Some("Acme"));
        assert_eq!(next.text(Field::PhoneNumber), Some("+44 20 7946 0000"));
        assert_eq!(next.text(Field::StateRegion), Some("Greater London"));
        assert_eq!(next.text(Field::Category), Some("VIP"));
    }

    #[test]
    fn every_standard_name_reaches_its_field() {
        for (name, field) in STANDARD_NAMES {
            let value = if field == Field::Email { "ana@example.com" } else { "x" };
            let next = apply(&[(name, Some(value))]).unwrap();
            assert_eq!(next.text(field), Some(value), "{name}");
        }
    }

    #[test]
    fn a_null_value_clears_the_field() {
        let next = apply(&[("Company", None), ("Notes", None)]).unwrap();
        assert_eq!(next.text(Field::Organization), None);
        assert!(!next.custom.contains_key("Notes"));
    }

    #[test]
    fn custom_fields_are_found_by_name_after_the_standard_ones() {
        let next = apply(&[
            ("T_Shirt_Size", Some("M")),
            ("Arrival", Some("2025-06-01")),
            ("Guests", Some("2")),
            ("Vegan", Some("true")),
        ])
        .unwrap();
        assert_eq!(next.custom["T_Shirt_Size"], "M");
        assert_eq!(next.custom["Arrival"], "2025-06-01");
        assert_eq!(next.custom["Guests"], "2");
        assert_eq!(next.custom["Vegan"], "true");
    }

    #[test]
    fn unknown_names_fail_the_whole_call_naming_every_one() {
        let fault = apply(&[("First_Name", Some("Ana")), ("Shoe", Some("42")), ("Hat", Some("L"))]).unwrap_err();
        assert_eq!(fault.code, Code::UnknownField);
        assert!(
            fault.message.contains("\"Shoe\"") && fault.message.contains("\"Hat\""),
            "{}",
            fault.message
        );
        assert_eq!(fault.field.as_deref(), Some("values[1]"));
    }

    #[test]
    fn standard_values_follow_the_canonical_rules() {
        let fault = apply(&[("City", Some("x")), ("Email", Some("not-an-address"))]).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::InvalidFieldValue, Some("values[1]"))
        );
        assert!(fault.message.starts_with("Email"), "{}", fault.message);
        let too_long = "b".repeat(4_001);
        let fault = apply(&[("Biography", Some(&too_long))]).unwrap_err();
        assert_eq!(fault.code, Code::InvalidFieldValue);
        assert!(apply(&[("Biography", Some(&"b".repeat(4_000)))]).is_ok());
        assert_eq!(
            apply(&[("City", Some(&"c".repeat(256)))]).unwrap_err().code,
            Code::InvalidFieldValue
        );
    }

    #[test]
    fn custom_values_must_fit_their_type() {
        for (name, value) in [
            ("T_Shirt_Size", "XL"),
            ("Arrival", "01/06/2025"),
            ("Guests", "two"),
            ("Vegan", "yes"),
        ] {
            let fault = apply(&[(name, Some(value))]).unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::InvalidFieldValue, Some("values[0]")),
                "{name}"
            );
        }
        let fault = apply(&[("Notes", Some(&"n".repeat(1_001)))]).unwrap_err();
        assert_eq!(fault.code, Code::InvalidFieldValue);
    }

    #[test]
    fn the_same_name_twice_is_validation_failed() {
        let fault = ChangeSet::try_from(values(&[("City", Some("a")), ("City", Some("b"))])).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ValidationFailed, Some("values[1]"))
        );
    }
}
