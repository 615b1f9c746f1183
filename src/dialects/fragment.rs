use std::collections::BTreeMap;

use async_graphql::InputObject;

use crate::domain::{ChangeSet, Op, TagWrite, rules};
use crate::error::Fault;

/// PATCH a user's tags, as the billing API does. All four operations of one call succeed
/// together or not at all.
#[derive(InputObject, Debug, Clone)]
pub struct FragmentUserPatch {
    /// The tag operations to run.
    pub tags: FragmentTagOperations,
}

/// Tag operations. Keys and values must not contain `#`, `/` or `:`; a key has 1 to 50
/// characters, a value at most 200. One key may appear only once across all four lists.
#[derive(InputObject, Debug, Clone, Default)]
pub struct FragmentTagOperations {
    /// Tags to create; each key must not exist yet (TAG_ALREADY_EXISTS).
    pub create: Option<Vec<TagInput>>,
    /// Tags to change; each key must already exist (TAG_NOT_FOUND).
    pub update: Option<Vec<TagInput>>,
    /// Tags to create or overwrite.
    pub set: Option<Vec<TagInput>>,
    /// Tags to remove; a key that does not exist is no error.
    pub delete: Option<Vec<TagKeyInput>>,
}

/// A tag with a value.
#[derive(InputObject, Debug, Clone, PartialEq, Eq)]
pub struct TagInput {
    /// The tag key, 1 to 50 characters.
    pub key: String,
    /// The tag value, at most 200 characters.
    pub value: String,
}

/// A tag named by its key.
#[derive(InputObject, Debug, Clone)]
pub struct TagKeyInput {
    /// The tag key.
    pub key: String,
}

impl TryFrom<FragmentUserPatch> for ChangeSet {
    type Error = Fault;

    fn try_from(patch: FragmentUserPatch) -> Result<Self, Fault> {
        let ops = patch.tags;
        let mut change = ChangeSet::default();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |key: &str, path: String| match seen.get(key) {
            Some(first) => Err(Fault::validation(
                format!("{path}.key"),
                format!("The tag \"{key}\" appears twice in one call (first at {first}); name each key once."),
            )),
            None => {
                seen.insert(key.to_owned(), path);
                Ok(())
            }
        };
        for (list, mode, tags) in [
            ("create", TagWrite::Create, ops.create),
            ("update", TagWrite::Update, ops.update),
            ("set", TagWrite::Set, ops.set),
        ] {
            for (i, TagInput { key, value }) in tags.unwrap_or_default().into_iter().enumerate() {
                let key = rules::nfc(key);
                let path = format!("tags.{list}[{i}]");
                check(&key, Some(&value), &path)?;
                claim(&key, path.clone())?;
                change.push(Op::WriteTag {
                    key,
                    value,
                    mode,
                    path: format!("{path}.key"),
                });
            }
        }
        for (i, TagKeyInput { key }) in ops.delete.unwrap_or_default().into_iter().enumerate() {
            let key = rules::nfc(key);
            let path = format!("tags.delete[{i}]");
            check(&key, None, &path)?;
            claim(&key, path)?;
            change.push(Op::DeleteTag { key });
        }
        Ok(change)
    }
}

/// The billing vendor's rules for one tag, refused at `path.key` or `path.value`.
pub(super) fn check(key: &str, value: Option<&str>, path: &str) -> Result<(), Fault> {
    rules::fragment_tag(key, value)
        .map_err(|(part, reason)| Fault::validation(format!("{path}.{part}"), format!("A tag {part} {reason}.")))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::Profile;
    use crate::error::Code;

    fn tag(key: &str, value: &str) -> TagInput {
        TagInput {
            key: key.into(),
            value: value.into(),
        }
    }

    fn stored() -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        p.tags.insert("department".into(), Some("sales".into()));
        p.tags.insert("from_scrip".into(), None);
        p
    }

    fn patch(ops: FragmentTagOperations) -> FragmentUserPatch {
        FragmentUserPatch { tags: ops }
    }

    fn apply(ops: FragmentTagOperations) -> Result<Profile, Fault> {
        Ok(ChangeSet::try_from(patch(ops))?.apply(&stored(), &[])?.0)
    }

    #[test]
    fn create_adds_a_tag_that_does_not_exist_yet() {
        let next = apply(FragmentTagOperations {
            create: Some(vec![tag("tier", "gold")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(next.tags["tier"].as_deref(), Some("gold"));
    }

    #[test]
    fn create_of_an_existing_key_is_tag_already_exists() {
        let fault = apply(FragmentTagOperations {
            create: Some(vec![tag("department", "x")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::TagAlreadyExists, Some("tags.create[0].key"))
        );
    }

    #[test]
    fn update_needs_an_existing_key() {
        let next = apply(FragmentTagOperations {
            update: Some(vec![tag("department", "engineering")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(next.tags["department"].as_deref(), Some("engineering"));
        let fault = apply(FragmentTagOperations {
            update: Some(vec![tag("missing", "x")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::TagNotFound, Some("tags.update[0].key"))
        );
    }

    #[test]
    fn set_creates_or_overwrites() {
        let ops = FragmentTagOperations {
            set: Some(vec![tag("department", "ops"), tag("new", "v")]),
            ..Default::default()
        };
        let next = apply(ops).unwrap();
        assert_eq!(next.tags["department"].as_deref(), Some("ops"));
        assert_eq!(next.tags["new"].as_deref(), Some("v"));
    }

    #[test]
    fn delete_removes_and_a_missing_key_is_no_error() {
        let ops = FragmentTagOperations {
            delete: Some(vec![
                TagKeyInput {
                    key: "department".into(),
                },
                TagKeyInput { key: "missing".into() },
            ]),
            ..Default::default()
        };
        let next = apply(ops).unwrap();
        assert!(!next.tags.contains_key("department"));
    }

    #[test]
    fn a_tag_written_by_scrip_can_be_given_a_value() {
        let next = apply(FragmentTagOperations {
            update: Some(vec![tag("from_scrip", "now valued")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(next.tags["from_scrip"].as_deref(), Some("now valued"));
    }

    #[test]
    fn one_key_may_appear_only_once_across_all_lists() {
        let ops = FragmentTagOperations {
            set: Some(vec![tag("a", "1")]),
            delete: Some(vec![TagKeyInput { key: "a".into() }]),
            ..Default::default()
        };
        let fault = ChangeSet::try_from(patch(ops)).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ValidationFailed, Some("tags.delete[0].key"))
        );
    }

    #[test]
    fn keys_and_values_refuse_separators_and_overlong_text() {
        let cases = [
            (tag("a#b", "v"), "tags.set[0].key"),
            (tag("ok", "a:b"), "tags.set[0].value"),
            (tag(&"k".repeat(51), "v"), "tags.set[0].key"),
            (tag("ok", &"v".repeat(201)), "tags.set[0].value"),
            (tag("", "v"), "tags.set[0].key"),
        ];
        for (input, field) in cases {
            let fault = ChangeSet::try_from(patch(FragmentTagOperations {
                set: Some(vec![input]),
                ..Default::default()
            }))
            .unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::ValidationFailed, Some(field))
            );
        }
    }

    #[test]
    fn a_refusal_anywhere_stores_nothing() {
        let ops = FragmentTagOperations {
            set: Some(vec![tag("fine", "1")]),
            update: Some(vec![tag("missing", "2")]),
            ..Default::default()
        };
        let change = ChangeSet::try_from(patch(ops)).unwrap();
        assert!(change.apply(&stored(), &[]).is_err());
    }
}
