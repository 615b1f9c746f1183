//! The five vendor dialects of `updateProfile`, and `createProfile`'s input.
//!
//! Each file holds one dialect's GraphQL input types and its `TryFrom` translation into the
//! canonical [`ChangeSet`], a pure function with the unit tests of its DIALECTS.md rules beside
//! it. Everything that can be checked without the stored profile is checked here; the rest
//! (tags that must or must not exist, immutable ids, custom field types) when the change set
//! is applied.

mod competition_labs;
mod create;
mod fragment;
mod profile_values;
mod scrip;
mod spruce;

use std::collections::BTreeSet;

use async_graphql::{Enum, OneofObject};
use serde_json::{Map, Value};

pub use competition_labs::{CompetitionLabsMemberPut, MetadataEntryInput};
pub use create::CreateProfileInput;
pub use fragment::{FragmentTagOperations, FragmentUserPatch, TagInput, TagKeyInput};
pub use profile_values::{FieldValueInput, ProfileValuesUpdate};
pub use scrip::ScripParticipantPatch;
pub use spruce::{SpruceProfileInput, SpruceUserUpdate};

use crate::domain::{ChangeSet, Field, Op, Scalar, rules};
use crate::error::{Code, Fault};

/// Whether a profile stands for one person or a team.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "crate::domain::MemberType")]
pub enum MemberType {
    /// One person.
    Individual,
    /// A team of people.
    Team,
}

/// One vendor's update semantics. Exactly one variant per update.
#[derive(OneofObject, Debug, Clone)]
pub enum ProfileUpdate {
    /// The loyalty API's PATCH: set or clear externalId, merge attributes key by key, replace
    /// all tags. Only the fields sent change; status never changes here.
    Scrip(ScripParticipantPatch),
    /// The shop API's PUT of a user with a nested profile: a sent value is stored, an explicit
    /// null clears the field, an absent field stays as it is.
    Spruce(Box<SpruceUserUpdate>),
    /// The billing API's tag operations: create (must not exist), update (must exist), set
    /// (create or overwrite) and delete tags, all or nothing.
    Fragment(FragmentUserPatch),
    /// The event platform's flat values: standard names (First_Name, Email, ...) and the
    /// tenant's custom fields side by side; a null value clears.
    ProfileValues(ProfileValuesUpdate),
    /// The gamification API's PUT of a member: a full replacement of memberType, name,
    /// memberRefId (the externalId, fixed once set), groups and metadata (the attributes).
    CompetitionLabs(CompetitionLabsMemberPut),
}

impl ProfileUpdate {
    /// The operation name of this variant, as logs and history show it.
    pub fn operation(&self) -> &'static str {
        match self {
            ProfileUpdate::Scrip(_) => "updateProfile.scrip",
            ProfileUpdate::Spruce(_) => "updateProfile.spruce",
            ProfileUpdate::Fragment(_) => "updateProfile.fragment",
            ProfileUpdate::ProfileValues(_) => "updateProfile.profileValues",
            ProfileUpdate::CompetitionLabs(_) => "updateProfile.competitionLabs",
        }
    }
}

impl TryFrom<ProfileUpdate> for ChangeSet {
    type Error = Fault;

    fn try_from(update: ProfileUpdate) -> Result<Self, Fault> {
        match update {
            ProfileUpdate::Scrip(patch) => patch.try_into(),
            ProfileUpdate::Spruce(put) => (*put).try_into(),
            ProfileUpdate::Fragment(patch) => patch.try_into(),
            ProfileUpdate::ProfileValues(post) => post.try_into(),
            ProfileUpdate::CompetitionLabs(put) => put.try_into(),
        }
    }
}

/// Sets or clears a canonical text field after checking its rules; a refusal carries `code`
/// at `path`, with `label` naming the field as the caller knows it.
fn text_op(field: Field, value: Option<String>, code: Code, path: &str, label: &str) -> Result<Op, Fault> {
    if let Some(text) = &value {
        rules::field_text(field, text).map_err(|reason| Fault::new(code, format!("{label} {reason}.")).at(path))?;
    }
    Ok(Op::Set {
        field,
        value: value.map(Scalar::Text),
    })
}

/// A JSON object of attributes with valid keys; `keep_nulls` keeps null values (which a merge
/// reads as "remove this key").
fn attribute_object(value: Value, path: &str, keep_nulls: bool) -> Result<Map<String, Value>, Fault> {
    let Value::Object(map) = value else {
        return Err(Fault::validation(
            path,
            format!("{path} must be a JSON object such as {{\"plan\": \"premium\"}}."),
        ));
    };
    if map.len() > rules::MAX_ATTRIBUTES {
        return Err(Fault::validation(
            path,
            format!("{path} holds at most {} keys.", rules::MAX_ATTRIBUTES),
        ));
    }
    for (key, value) in &map {
        let at = || format!("{path}.{}", rules::truncate(key));
        rules::attribute_key(key).map_err(|reason| Fault::validation(at(), format!("An attribute key {reason}.")))?;
        if rules::json_has_nul(value) {
            return Err(Fault::validation(
                at(),
                "An attribute value must not contain the NUL character (U+0000).",
            ));
        }
        if rules::json_depth(value) > rules::MAX_ATTRIBUTE_DEPTH {
            return Err(Fault::validation(
                at(),
                format!(
                    "An attribute value nests lists and objects at most {} levels deep.",
                    rules::MAX_ATTRIBUTE_DEPTH
                ),
            ));
        }
    }
    Ok(map
        .into_iter()
        .filter(|(_, value)| keep_nulls || !value.is_null())
        .collect())
}

/// A list of groups: each 1 to 255 characters, none twice.
fn group_set(groups: Vec<String>, path: &str) -> Result<BTreeSet<String>, Fault> {
    if groups.len() > rules::MAX_GROUPS {
        return Err(Fault::validation(
            path,
            format!("A profile belongs to at most {} groups.", rules::MAX_GROUPS),
        ));
    }
    let mut set = BTreeSet::new();
    for (i, group) in groups.into_iter().enumerate() {
        let at = format!("{path}[{i}]");
        rules::group(&group).map_err(|reason| Fault::validation(&at, format!("A group name {reason}.")))?;
        if set.contains(&group) {
            return Err(Fault::validation(at, format!("The group \"{group}\" is listed twice.")));
        }
        set.insert(group);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attribute_objects_must_be_objects_with_valid_keys() {
        assert!(attribute_object(json!({"plan": "premium"}), "attributes", true).is_ok());
        assert_eq!(
            attribute_object(json!([1]), "attributes", true)
                .unwrap_err()
                .field
                .as_deref(),
            Some("attributes")
        );
        assert_eq!(
            attribute_object(json!({"": 1}), "attributes", true)
                .unwrap_err()
                .field
                .as_deref(),
            Some("attributes.")
        );
        let long_key = "k".repeat(101);
        assert!(attribute_object(json!({ long_key: 1 }), "attributes", true).is_err());
        let kept = attribute_object(json!({"a": null, "b": 1}), "attributes", false).unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn group_lists_refuse_repeats_and_empty_names() {
        assert_eq!(group_set(vec!["a".into(), "b".into()], "groups").unwrap().len(), 2);
        assert_eq!(
            group_set(vec!["a".into(), "a".into()], "groups")
                .unwrap_err()
                .field
                .as_deref(),
            Some("groups[1]")
        );
        assert_eq!(
            group_set(vec!["".into()], "groups").unwrap_err().field.as_deref(),
            Some("groups[0]")
        );
    }
}
