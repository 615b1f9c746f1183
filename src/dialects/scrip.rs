use async_graphql::{InputObject, Json, MaybeUndefined};
use serde_json::Value;

use super::attribute_object;
use crate::domain::{ChangeSet, Field, Op, Scalar, rules};
use crate::error::Fault;

/// PATCH a participant, as the loyalty API does. Only the fields sent change; there is no
/// status here on purpose, so a routine update can never change a lifecycle state.
#[derive(InputObject, Debug, Clone, Default)]
pub struct ScripParticipantPatch {
    /// Your own id for this person, unique within the tenant; null clears it.
    pub external_id: MaybeUndefined<String>,
    /// A JSON object merged key by key at the top level: a sent key replaces that key's value
    /// whole, a key sent with null is removed, keys not sent stay.
    pub attributes: MaybeUndefined<Json<Value>>,
    /// Replaces all tags with these keys, without values (a key listed twice counts once);
    /// `[]` or null removes every tag.
    pub tags: MaybeUndefined<Vec<String>>,
}

impl TryFrom<ScripParticipantPatch> for ChangeSet {
    type Error = Fault;

    fn try_from(patch: ScripParticipantPatch) -> Result<Self, Fault> {
        let mut change = ChangeSet::default();
        match patch.external_id {
            MaybeUndefined::Undefined => {}
            MaybeUndefined::Null => change.push(Op::Set {
                field: Field::ExternalId,
                value: None,
            }),
            MaybeUndefined::Value(id) => {
                rules::non_empty_text(&id, rules::MAX_TEXT_CHARS).map_err(|reason| {
                    Fault::validation("externalId", format!("externalId {reason}; send null to clear it."))
                })?;
                change.push(Op::Set {
                    field: Field::ExternalId,
                    value: Some(Scalar::Text(id)),
                });
            }
        }
        match patch.attributes {
            MaybeUndefined::Undefined => {}
            MaybeUndefined::Null => {
                return Err(Fault::validation(
                    "attributes",
                    "attributes must be a JSON object; send {\"key\": null} to remove a key, or leave attributes out.",
                ));
            }
            MaybeUndefined::Value(Json(value)) => {
                for (key, value) in attribute_object(value, "attributes", true)? {
                    change.push(Op::MergeAttribute {
                        key,
                        value: (!value.is_null()).then_some(value),
                    });
                }
            }
        }
        match patch.tags {
            MaybeUndefined::Undefined => {}
            MaybeUndefined::Null => change.push(Op::ReplaceTags(Default::default())),
            MaybeUndefined::Value(tags) => {
                let tags: Vec<String> = tags.into_iter().map(rules::nfc).collect();
                for (i, key) in tags.iter().enumerate() {
                    rules::tag_key(key)
                        .map_err(|reason| Fault::validation(format!("tags[{i}]"), format!("A tag key {reason}.")))?;
                }
                change.push(Op::ReplaceTags(tags.into_iter().collect()));
            }
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
    use crate::domain::Profile;
    use crate::error::Code;

    fn stored() -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        p.fields.insert(Field::ExternalId, Scalar::Text("user_123".into()));
        p.attributes.insert("plan".into(), json!("basic"));
        p.attributes.insert("region".into(), json!("eu"));
        p.tags.insert("old".into(), Some("kept value".into()));
        p
    }

    fn apply(patch: ScripParticipantPatch) -> Result<Profile, Fault> {
        let change = ChangeSet::try_from(patch)?;
        Ok(change.apply(&stored(), &[])?.0)
    }

    #[test]
    fn only_the_fields_sent_change() {
        let before = stored();
        let (next, changes) = ChangeSet::try_from(ScripParticipantPatch::default())
            .unwrap()
            .apply(&before, &[])
            .unwrap();
        assert_eq!(next, before);
        assert!(changes.is_empty());
    }

    #[test]
    fn external_id_is_set_by_a_value_and_cleared_by_null() {
        let set = apply(ScripParticipantPatch {
            external_id: MaybeUndefined::Value("u-9".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(set.external_id(), Some("u-9"));
        let cleared = apply(ScripParticipantPatch {
            external_id: MaybeUndefined::Null,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cleared.external_id(), None);
        let empty = ChangeSet::try_from(ScripParticipantPatch {
            external_id: MaybeUndefined::Value(String::new()),
            ..Default::default()
        });
        assert_eq!(empty.unwrap_err().field.as_deref(), Some("externalId"));
    }

    #[test]
    fn attributes_merge_key_by_key_and_null_removes_a_key() {
        let patch = ScripParticipantPatch {
            attributes: MaybeUndefined::Value(Json(json!({"plan": {"tier": "premium"}, "region": null, "new": 1}))),
            ..Default::default()
        };
        let next = apply(patch).unwrap();
        assert_eq!(json!(next.attributes), json!({"plan": {"tier": "premium"}, "new": 1}));
    }

    #[test]
    fn attributes_must_be_a_json_object() {
        for bad in [json!("premium"), json!([1, 2]), json!(3)] {
            let patch = ScripParticipantPatch {
                attributes: MaybeUndefined::Value(Json(bad)),
                ..Default::default()
            };
            let fault = ChangeSet::try_from(patch).unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::ValidationFailed, Some("attributes"))
            );
        }
        let null = ScripParticipantPatch {
            attributes: MaybeUndefined::Null,
            ..Default::default()
        };
        assert_eq!(ChangeSet::try_from(null).unwrap_err().code, Code::ValidationFailed);
    }

    #[test]
    fn one_merge_sends_at_most_100_attribute_keys() {
        let keys: serde_json::Map<String, Value> = (0..=100).map(|i| (format!("k{i}"), json!(i))).collect();
        let patch = ScripParticipantPatch {
            attributes: MaybeUndefined::Value(Json(Value::Object(keys))),
            ..Default::default()
        };
        let fault = ChangeSet::try_from(patch).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ValidationFailed, Some("attributes"))
        );
    }

    #[test]
    fn tags_replace_all_tags_with_valueless_keys_once_each() {
        let patch = ScripParticipantPatch {
            tags: MaybeUndefined::Value(vec!["vip".into(), "beta".into(), "vip".into()]),
            ..Default::default()
        };
        let next = apply(patch).unwrap();
        assert_eq!(next.tags, [("beta".to_owned(), None), ("vip".to_owned(), None)].into());
    }

    #[test]
    fn empty_or_null_tags_remove_every_tag() {
        for tags in [MaybeUndefined::Value(vec![]), MaybeUndefined::Null] {
            let next = apply(ScripParticipantPatch {
                tags,
                ..Default::default()
            })
            .unwrap();
            assert!(next.tags.is_empty());
        }
    }

    #[test]
    fn tag_keys_have_one_to_fifty_characters() {
        let patch = ScripParticipantPatch {
            tags: MaybeUndefined::Value(vec!["ok".into(), "x".repeat(51)]),
            ..Default::default()
        };
        assert_eq!(
            ChangeSet::try_from(patch).unwrap_err().field.as_deref(),
            Some("tags[1]")
        );
        let patch = ScripParticipantPatch {
            tags: MaybeUndefined::Value(vec![String::new()]),
            ..Default::default()
        };
        assert_eq!(
            ChangeSet::try_from(patch).unwrap_err().field.as_deref(),
            Some("tags[0]")
        );
    }
}
