use std::collections::HashSet;

use async_graphql::{InputObject, Json};
use serde_json::Value;

use super::MemberType;
use super::{TagInput, attribute_object, fragment, group_set, text_op};
use crate::domain::{ChangeSet, Field, Op, Scalar, TagWrite, rules};
use crate::error::{Code, Fault};

/// A new profile's canonical fields. Everything is optional; the profile starts ACTIVE at
/// version 1 with the next serial number of the tenant.
#[derive(InputObject, Debug, Clone, Default)]
pub struct CreateProfileInput {
    /// Your own id for this person, unique within the tenant.
    pub external_id: Option<String>,
    /// Whether the profile is a person or a team.
    pub member_type: Option<MemberType>,
    /// Display name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Given name.
    pub first_name: Option<String>,
    /// Family name.
    pub last_name: Option<String>,
    /// A JSON object of key/value metadata (at most 100 keys, 16 KiB); null values are left out.
    pub attributes: Option<Json<Value>>,
    /// Tags, under the same rules as the fragment dialect; each key once.
    pub tags: Option<Vec<TagInput>>,
    /// Groups, each once.
    pub groups: Option<Vec<String>>,
}

impl TryFrom<CreateProfileInput> for ChangeSet {
    type Error = Fault;

    fn try_from(input: CreateProfileInput) -> Result<Self, Fault> {
        let mut change = ChangeSet::default();
        if let Some(id) = input.external_id {
            rules::non_empty_text(&id, rules::MAX_TEXT_CHARS)
                .map_err(|reason| Fault::validation("externalId", format!("externalId {reason}.")))?;
            change.push(Op::Set {
                field: Field::ExternalId,
                value: Some(Scalar::Text(id)),
            });
        }
        if let Some(kind) = input.member_type {
            change.push(Op::Set {
                field: Field::MemberType,
                value: Some(Scalar::MemberType(kind.into())),
            });
        }
        for (field, value, path) in [
            (Field::Name, input.name, "name"),
            (Field::Email, input.email, "email"),
            (Field::FirstName, input.first_name, "firstName"),
            (Field::LastName, input.last_name, "lastName"),
        ] {
            if value.is_some() {
                change.push(text_op(field, value, Code::ValidationFailed, path, path)?);
            }
        }
        if let Some(Json(attributes)) = input.attributes {
            change.push(Op::ReplaceAttributes(attribute_object(
                attributes,
                "attributes",
                false,
            )?));
        }
        let tags = input.tags.unwrap_or_default();
        if tags.len() > rules::MAX_TAGS {
            return Err(Fault::validation(
                "tags",
                format!("A profile holds at most {} tags.", rules::MAX_TAGS),
            ));
        }
        let mut seen = HashSet::new();
        for (i, TagInput { key, value }) in tags.into_iter().enumerate() {
            let key = rules::nfc(key);
            let path = format!("tags[{i}]");
            fragment::check(&key, Some(&value), &path)?;
            if !seen.insert(key.clone()) {
                return Err(Fault::validation(
                    format!("{path}.key"),
                    format!("The tag \"{key}\" is listed twice."),
                ));
            }
            change.push(Op::WriteTag {
                key,
                value,
                mode: TagWrite::Set,
                path: format!("{path}.key"),
            });
        }
        if let Some(groups) = input.groups {
            change.push(Op::ReplaceGroups(group_set(groups, "groups")?));
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{MemberType as Kind, Profile};

    fn create(input: CreateProfileInput) -> Result<Profile, Fault> {
        let blank = Profile::new(Uuid::new_v4(), 1, Utc::now());
        Ok(ChangeSet::try_from(input)?.apply(&blank, &[])?.0)
    }

    #[test]
    fn every_canonical_input_is_stored() {
        let profile = create(CreateProfileInput {
            external_id: Some("user_123".into()),
            member_type: Some(MemberType::Individual),
            name: Some("Ana".into()),
            email: Some("ana@example.com".into()),
            first_name: Some("Ana".into()),
            last_name: Some("García".into()),
            attributes: Some(Json(json!({"plan": "premium", "dropped": null}))),
            tags: Some(vec![TagInput {
                key: "vip".into(),
                value: "gold".into(),
            }]),
            groups: Some(vec!["CL".into()]),
        })
        .unwrap();
        assert_eq!(profile.external_id(), Some("user_123"));
        assert_eq!(profile.member_type(), Some(Kind::Individual));
        assert_eq!(profile.text(Field::Email), Some("ana@example.com"));
        assert_eq!(json!(profile.attributes), json!({"plan": "premium"}));
        assert_eq!(profile.tags["vip"].as_deref(), Some("gold"));
        assert!(profile.groups.contains("CL"));
    }

    #[test]
    fn inputs_follow_the_canonical_rules() {
        let cases = [
            (
                CreateProfileInput {
                    email: Some("nope".into()),
                    ..Default::default()
                },
                "email",
            ),
            (
                CreateProfileInput {
                    external_id: Some(String::new()),
                    ..Default::default()
                },
                "externalId",
            ),
            (
                CreateProfileInput {
                    attributes: Some(Json(json!("x"))),
                    ..Default::default()
                },
                "attributes",
            ),
            (
                CreateProfileInput {
                    tags: Some(vec![TagInput {
                        key: "a/b".into(),
                        value: "v".into(),
                    }]),
                    ..Default::default()
                },
                "tags[0].key",
            ),
            (
                CreateProfileInput {
                    tags: Some(vec![
                        TagInput {
                            key: "a".into(),
                            value: "1".into(),
                        },
                        TagInput {
                            key: "a".into(),
                            value: "2".into(),
                        },
                    ]),
                    ..Default::default()
                },
                "tags[1].key",
            ),
            (
                CreateProfileInput {
                    groups: Some(vec!["g".into(), "g".into()]),
                    ..Default::default()
                },
                "groups[1]",
            ),
        ];
        for (input, field) in cases {
            let fault = ChangeSet::try_from(input).unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::ValidationFailed, Some(field))
            );
        }
    }
}
