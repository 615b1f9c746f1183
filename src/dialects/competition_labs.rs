use std::collections::HashSet;

use async_graphql::{ID, InputObject};
use serde_json::{Map, Value};

use super::MemberType;
use super::{group_set, text_op};
use crate::domain::{ChangeSet, Field, Op, Scalar, rules};
use crate::error::{Code, Fault};

/// The gamification vendor's error code for an empty memberRefId.
const VENDOR_CODE_EMPTY_MEMBER_REF_ID: i32 = 1003;

/// PUT a member, as the gamification API does: a full replacement of the member resource
/// (memberType, name, memberRefId, groups, metadata). A name not sent is cleared, groups not
/// sent become empty, metadata not sent empties the attributes. Personal fields, tags and
/// custom fields stay untouched.
#[derive(InputObject, Debug, Clone)]
pub struct CompetitionLabsMemberPut {
    /// The profile's id; must equal the id of the profile being updated.
    pub id: ID,
    /// Whether the member is a person or a team.
    pub member_type: MemberType,
    /// The member's id in your system, stored as the externalId. Must not be blank; once the
    /// profile has an externalId it cannot change (IMMUTABLE_FIELD).
    pub member_ref_id: String,
    /// Display name; not sent clears it.
    pub name: Option<String>,
    /// Every group of the member, each once; not sent means none.
    pub groups: Option<Vec<String>>,
    /// Every metadata entry, stored as the profile's attributes (string values); not sent
    /// means none.
    pub metadata: Option<Vec<MetadataEntryInput>>,
}

/// One metadata entry of a member.
#[derive(InputObject, Debug, Clone)]
pub struct MetadataEntryInput {
    /// The attribute key, 1 to 100 characters, once per call.
    pub key: String,
    /// The attribute value.
    pub value: String,
}

impl TryFrom<CompetitionLabsMemberPut> for ChangeSet {
    type Error = Fault;

    fn try_from(put: CompetitionLabsMemberPut) -> Result<Self, Fault> {
        let mut change = ChangeSet::default();
        change.push(Op::RequireId {
            id: put.id.0,
            path: "id".to_owned(),
        });

        if put.member_ref_id.trim().is_empty() {
            return Err(Fault::validation("memberRefId", "memberRefId cannot be empty.")
                .with("vendorCode", VENDOR_CODE_EMPTY_MEMBER_REF_ID));
        }
        rules::text(&put.member_ref_id, rules::MAX_TEXT_CHARS)
            .map_err(|reason| Fault::validation("memberRefId", format!("memberRefId {reason}.")))?;
        change.push(Op::ClaimExternalId {
            value: put.member_ref_id,
            path: "memberRefId".to_owned(),
        });

        change.push(Op::Set {
            field: Field::MemberType,
            value: Some(Scalar::MemberType(put.member_type.into())),
        });
        change.push(text_op(Field::Name, put.name, Code::ValidationFailed, "name", "name")?);
        change.push(Op::ReplaceGroups(group_set(put.groups.unwrap_or_default(), "groups")?));

        let metadata = put.metadata.unwrap_or_default();
        if metadata.len() > rules::MAX_ATTRIBUTES {
            return Err(Fault::validation(
                "metadata",
                format!("A member holds at most {} metadata entries.", rules::MAX_ATTRIBUTES),
            ));
        }
        let mut seen = HashSet::new();
        let mut attributes = Map::new();
        for (i, MetadataEntryInput { key, value }) in metadata.into_iter().enumerate() {
            let path = format!("metadata[{i}].key");
            rules::attribute_key(&key)
                .map_err(|reason| Fault::validation(&path, format!("A metadata key {reason}.")))?;
            if !seen.insert(key.clone()) {
                return Err(Fault::validation(
                    path,
                    format!("The metadata key \"{key}\" is listed twice."),
                ));
            }
            if value.contains('\0') {
                return Err(Fault::validation(
                    format!("metadata[{i}].value"),
                    "A metadata value must not contain the NUL character (U+0000).",
                ));
            }
            attributes.insert(key, Value::String(value));
        }
        change.push(Op::ReplaceAttributes(attributes));
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

    fn stored(external_id: Option<&str>) -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        if let Some(id) = external_id {
            p.fields.insert(Field::ExternalId, Scalar::Text(id.into()));
        }
        p.fields.insert(Field::Name, Scalar::Text("Old name".into()));
        p.fields.insert(Field::FirstName, Scalar::Text("Ana".into()));
        p.attributes.insert("old".into(), json!(1));
        p.groups.insert("old-group".into());
        p.tags.insert("keep".into(), Some("me".into()));
        p.custom.insert("Size".into(), "M".into());
        p
    }

    fn put(profile: &Profile, member_ref_id: &str) -> CompetitionLabsMemberPut {
        CompetitionLabsMemberPut {
            id: ID(profile.id.to_string()),
            member_type: MemberType::Team,
            member_ref_id: member_ref_id.into(),
            name: None,
            groups: None,
            metadata: None,
        }
    }

    #[test]
    fn a_put_replaces_the_member_resource_and_keeps_everything_else() {
        let before = stored(Some("m-1"));
        let mut input = put(&before, "m-1");
        input.name = Some("Team Blue".into());
        input.groups = Some(vec!["CL".into()]);
        input.metadata = Some(vec![MetadataEntryInput {
            key: "level".into(),
            value: "3".into(),
        }]);
        let (next, _) = ChangeSet::try_from(input).unwrap().apply(&before, &[]).unwrap();
        assert_eq!(next.member_type(), Some(Kind::Team));
        assert_eq!(next.text(Field::Name), Some("Team Blue"));
        assert_eq!(next.groups, ["CL".to_owned()].into());
        assert_eq!(json!(next.attributes), json!({"level": "3"}));
        assert_eq!(next.text(Field::FirstName), Some("Ana"));
        assert_eq!(next.tags, before.tags);
        assert_eq!(next.custom, before.custom);
    }

    #[test]
    fn fields_not_sent_are_cleared() {
        let before = stored(Some("m-1"));
        let (next, _) = ChangeSet::try_from(put(&before, "m-1"))
            .unwrap()
            .apply(&before, &[])
            .unwrap();
        assert_eq!(next.text(Field::Name), None);
        assert!(next.groups.is_empty());
        assert!(next.attributes.is_empty());
    }

    #[test]
    fn the_id_must_be_the_profiles_own() {
        let before = stored(None);
        let mut input = put(&before, "m-1");
        input.id = ID(Uuid::new_v4().to_string());
        let fault = ChangeSet::try_from(input).unwrap().apply(&before, &[]).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ValidationFailed, Some("id"))
        );
    }

    #[test]
    fn an_empty_or_blank_member_ref_id_carries_vendor_code_1003() {
        let before = stored(None);
        for blank in ["", "   "] {
            let fault = ChangeSet::try_from(put(&before, blank)).unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::ValidationFailed, Some("memberRefId"))
            );
            assert_eq!(fault.details, vec![("vendorCode", json!(1003))]);
        }
    }

    #[test]
    fn a_profile_without_external_id_takes_the_member_ref_id() {
        let before = stored(None);
        let (next, changes) = ChangeSet::try_from(put(&before, "m-9"))
            .unwrap()
            .apply(&before, &[])
            .unwrap();
        assert_eq!(next.external_id(), Some("m-9"));
        assert!(changes.iter().any(|c| c.field == "externalId"));
    }

    #[test]
    fn a_different_member_ref_id_is_immutable_field() {
        let before = stored(Some("m-1"));
        let fault = ChangeSet::try_from(put(&before, "m-2"))
            .unwrap()
            .apply(&before, &[])
            .unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ImmutableField, Some("memberRefId"))
        );
    }

    #[test]
    fn repeated_groups_or_metadata_keys_are_refused() {
        let before = stored(None);
        let mut input = put(&before, "m-1");
        input.groups = Some(vec!["a".into(), "a".into()]);
        assert_eq!(
            ChangeSet::try_from(input).unwrap_err().field.as_deref(),
            Some("groups[1]")
        );
        let mut input = put(&before, "m-1");
        let entry = MetadataEntryInput {
            key: "k".into(),
            value: "v".into(),
        };
        input.metadata = Some(vec![entry.clone(), entry]);
        assert_eq!(
            ChangeSet::try_from(input).unwrap_err().field.as_deref(),
            Some("metadata[1].key")
        );
    }
}
