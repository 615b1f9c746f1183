//! The canonical change set and the pure function that applies it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{CustomFieldDefinition, Field, Profile, Scalar, custom_field::unknown_fields, rules};
use crate::error::{Code, Fault};

/// How a tag write treats an existing tag of the same key (fragment's four lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagWrite {
    /// The key must not exist yet (TAG_ALREADY_EXISTS).
    Create,
    /// The key must exist (TAG_NOT_FOUND).
    Update,
    /// Creates or overwrites.
    Set,
}

/// One canonical change. Values are already checked against the rules that need no stored
/// state; the rules that do are checked by [`ChangeSet::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Set a scalar field, or clear it with `None`.
    Set {
        field: Field,
        value: Option<Scalar>,
    },
    /// Take this externalId if the profile has none; refuse a different one (IMMUTABLE_FIELD).
    ClaimExternalId {
        value: String,
        path: String,
    },
    /// Replace one attribute's value whole, or remove it with `None`.
    MergeAttribute {
        key: String,
        value: Option<Value>,
    },
    ReplaceAttributes(Map<String, Value>),
    /// Replace every tag with these keys, without values.
    ReplaceTags(BTreeSet<String>),
    WriteTag {
        key: String,
        value: String,
        mode: TagWrite,
        path: String,
    },
    /// Remove a tag; a missing key is no error.
    DeleteTag {
        key: String,
    },
    ReplaceGroups(BTreeSet<String>),
    /// Set or clear a custom field by name; the name must be defined and the value fit its type.
    SetCustom {
        name: String,
        value: Option<String>,
        path: String,
    },
    /// The update is only valid for the profile with this id (VALIDATION_FAILED otherwise).
    RequireId {
        id: String,
        path: String,
    },
}

/// One canonical field whose value an update changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub before: Value,
    pub after: Value,
}

/// Everything one update asks for, in one vendor-neutral form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangeSet {
    ops: Vec<Op>,
}

impl ChangeSet {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether applying reads or writes the profile's groups: a profile read without them
    /// must not be given this change set.
    pub fn touches_groups(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::ReplaceGroups(_)))
    }

    /// Whether applying reads or writes custom values (and needs the tenant's custom field
    /// definitions): a profile read without them must not be given this change set.
    pub fn touches_custom(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::SetCustom { .. }))
    }

    /// The externalId this change set writes and the input path it came from, if any; used to
    /// report a duplicate at the right field.
    pub fn external_id_write(&self) -> Option<(Option<&str>, &str)> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::Set {
                field: Field::ExternalId,
                value,
            } => Some((
                match value {
                    Some(Scalar::Text(id)) => Some(id.as_str()),
                    _ => None,
                },
                "externalId",
            )),
            Op::ClaimExternalId { value, path } => Some((Some(value.as_str()), path.as_str())),
            _ => None,
        })
    }

    /// Applies every op to a copy of `profile`, checks the profile-wide limits, and returns
    /// the new profile with the list of canonical fields that changed. `profile` itself is
    /// never touched, so a refusal changes nothing.
    pub fn apply(
        &self,
        profile: &Profile,
        custom_fields: &[CustomFieldDefinition],
    ) -> Result<(Profile, Vec<FieldChange>), Fault> {
        let mut next = profile.clone();
        let mut unknown = Vec::new();
        for op in &self.ops {
            match op {
                Op::Set {
                    field,
                    value: Some(value),
                } => {
                    next.fields.insert(*field, value.clone());
                }
                Op::Set { field, value: None } => {
                    next.fields.remove(field);
                }
                Op::ClaimExternalId { value, path } => match next.external_id() {
                    Some(current) if current != value => {
                        return Err(Fault::new(
                            Code::ImmutableField,
                            format!("This profile's memberRefId is \"{current}\" and cannot change."),
                        )
                        .at(path.clone()));
                    }
                    _ => {
                        next.fields.insert(Field::ExternalId, Scalar::Text(value.clone()));
                    }
                },
                Op::MergeAttribute {
                    key,
                    value: Some(value),
                } => {
                    next.attributes.insert(key.clone(), value.clone());
                }
                Op::MergeAttribute { key, value: None } => {
                    next.attributes.remove(key);
                }
                Op::ReplaceAttributes(attributes) => next.attributes = attributes.clone(),
                Op::ReplaceTags(keys) => next.tags = keys.iter().map(|key| (key.clone(), None)).collect(),
                Op::WriteTag { key, value, mode, path } => {
                    let exists = next.tags.contains_key(key);
                    match mode {
                        TagWrite::Create if exists => {
                            return Err(Fault::new(
                                Code::TagAlreadyExists,
                                format!("The tag \"{key}\" already exists; use update or set to change it."),
                            )
                            .at(path.clone()));
                        }
                        TagWrite::Update if !exists => {
                            return Err(Fault::new(
                                Code::TagNotFound,
                                format!("There is no tag \"{key}\" to update; use create or set to add it."),
                            )
                            .at(path.clone()));
                        }
                        _ => {}
                    }
                    next.tags.insert(key.clone(), Some(value.clone()));
                }
                Op::DeleteTag { key } => {
                    next.tags.remove(key);
                }
                Op::ReplaceGroups(groups) => next.groups = groups.clone(),
                Op::SetCustom { name, value, path } => {
                    let Some(definition) = custom_fields.iter().find(|field| &field.name == name) else {
                        unknown.push((name.clone(), path.clone()));
                        continue;
                    };
                    match value {
                        Some(value) => {
                            definition.check(value).map_err(|reason| {
                                Fault::new(Code::InvalidFieldValue, format!("{name} {reason}.")).at(path.clone())
                            })?;
                            next.custom.insert(name.clone(), value.clone());
                        }
                        None => {
                            next.custom.remove(name);
                        }
                    }
                }
                Op::RequireId { id, path } => {
                    if uuid::Uuid::parse_str(id).ok() != Some(profile.id) {
                        return Err(Fault::validation(
                            path.clone(),
                            format!(
                                "id \"{}\" is not the id of the profile being updated.",
                                rules::truncate(id)
                            ),
                        ));
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(unknown_fields(&unknown));
        }
        check_limits(&next)?;
        let changes = diff(profile, &next);
        Ok((next, changes))
    }
}

fn check_limits(profile: &Profile) -> Result<(), Fault> {
    if profile.tags.len() > rules::MAX_TAGS {
        return Err(Fault::validation(
            "tags",
            format!(
                "A profile holds at most {} tags; this would leave {}.",
                rules::MAX_TAGS,
                profile.tags.len()
            ),
        ));
    }
    if profile.groups.len() > rules::MAX_GROUPS {
        return Err(Fault::validation(
            "groups",
            format!(
                "A profile belongs to at most {} groups; this would leave {}.",
                rules::MAX_GROUPS,
                profile.groups.len()
            ),
        ));
    }
    // One update names at most `rules::MAX_ATTRIBUTES` keys (checked where it is read); the
    // profile holds more, up to its own cap.
    if profile.attributes.len() > rules::MAX_PROFILE_ATTRIBUTES {
        return Err(Fault::validation(
            "attributes",
            format!(
                "A profile holds at most {} attribute keys; this would leave {}.",
                rules::MAX_PROFILE_ATTRIBUTES,
                profile.attributes.len()
            ),
        ));
    }
    let size = serde_json::to_vec(&profile.attributes).map_or(usize::MAX, |json| json.len());
    if size > rules::MAX_ATTRIBUTES_JSON_BYTES {
        return Err(Fault::validation(
            "attributes",
            format!("A profile's attributes hold at most 16 KiB of JSON; this would leave {size} bytes."),
        ));
    }
    Ok(())
}

/// Every canonical field whose value differs between `before` and `after`, in canonical order.
pub fn diff(before: &Profile, after: &Profile) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    for field in Field::ALL {
        let (old, new) = (before.fields.get(&field), after.fields.get(&field));
        push_change(&mut changes, || field.name().to_owned(), old, new, Scalar::to_json);
    }
    for key in union(before.attributes.keys(), after.attributes.keys()) {
        let (old, new) = (before.attributes.get(key), after.attributes.get(key));
        push_change(&mut changes, || format!("attributes.{key}"), old, new, Value::clone);
    }
    for key in union(before.tags.keys(), after.tags.keys()) {
        let (old, new) = (before.tags.get(key), after.tags.get(key));
        push_change(
            &mut changes,
            || format!("tags.{key}"),
            old,
            new,
            |value| json!({ "value": value }),
        );
    }
    push_change(
        &mut changes,
        || "groups".to_owned(),
        Some(&before.groups),
        Some(&after.groups),
        |groups| json!(groups),
    );
    for name in union(before.custom.keys(), after.custom.keys()) {
        let (old, new) = (before.custom.get(name), after.custom.get(name));
        push_change(
            &mut changes,
            || format!("customFields.{name}"),
            old,
            new,
            |value| json!(value),
        );
    }
    changes
}

/// Pushes the change of one field from `old` to `new` (absent is JSON null), if its JSON
/// differs. The name and the JSON values are made only when the values differ: an update
/// changes a few of a profile's many fields, and equal values always give equal JSON. Values
/// that differ may still give the same JSON (an attribute set to null and one absent): no change.
fn push_change<V: PartialEq>(
    changes: &mut Vec<FieldChange>,
    field: impl FnOnce() -> String,
    old: Option<&V>,
    new: Option<&V>,
    json: impl Fn(&V) -> Value,
) {
    if old == new {
        return;
    }
    let (before, after) = (old.map_or(Value::Null, &json), new.map_or(Value::Null, &json));
    if before != after {
        changes.push(FieldChange {
            field: field(),
            before,
            after,
        });
    }
}

fn union<'a>(a: impl Iterator<Item = &'a String>, b: impl Iterator<Item = &'a String>) -> BTreeSet<&'a String> {
    a.chain(b).collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::CustomFieldType;

    fn profile() -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        p.fields.insert(Field::FirstName, Scalar::Text("Ana".into()));
        p.attributes.insert("plan".into(), json!("basic"));
        p.tags.insert("vip".into(), None);
        p
    }

    fn set(ops: Vec<Op>) -> ChangeSet {
        ChangeSet { ops }
    }

    #[test]
    fn a_change_set_says_whether_it_touches_groups_or_custom_values() {
        let tags = set(vec![Op::ReplaceTags(["vip".to_owned()].into())]);
        assert!(!tags.touches_groups() && !tags.touches_custom());
        let groups = set(vec![
            Op::DeleteTag { key: "t".into() },
            Op::ReplaceGroups(BTreeSet::new()),
        ]);
        assert!(groups.touches_groups() && !groups.touches_custom());
        let custom = set(vec![Op::SetCustom {
            name: "Size".into(),
            value: None,
            path: "values[0]".into(),
        }]);
        assert!(!custom.touches_groups() && custom.touches_custom());
    }

    #[test]
    fn a_change_set_that_touches_neither_leaves_groups_and_custom_values_as_read() {
        // What lets the engine read a profile without them: neither its result nor its
        // changes depend on them.
        let change = set(vec![
            Op::MergeAttribute {
                key: "a".into(),
                value: Some(json!(1)),
            },
            Op::ReplaceTags(["t".to_owned()].into()),
        ]);
        let mut read = profile();
        read.groups.insert("g".into());
        read.custom.insert("Size".into(), "M".into());
        let (with, with_changes) = change.apply(&read, &[]).unwrap();
        let (without, without_changes) = change.apply(&profile(), &[]).unwrap();
        assert_eq!((with.groups.len(), with.custom.len()), (1, 1));
        assert!(without.groups.is_empty() && without.custom.is_empty());
        assert_eq!(with_changes, without_changes);
    }

    #[test]
    fn changes_name_every_changed_canonical_field_with_before_and_after() {
        let change = set(vec![
            Op::Set {
                field: Field::FirstName,
                value: Some(Scalar::Text("Eva".into())),
            },
            Op::MergeAttribute {
                key: "plan".into(),
                value: None,
            },
            Op::WriteTag {
                key: "vip".into(),
                value: "gold".into(),
                mode: TagWrite::Update,
                path: "p".into(),
            },
            Op::ReplaceGroups(["b".to_owned(), "a".to_owned()].into()),
        ]);
        let (next, changes) = change.apply(&profile(), &[]).unwrap();
        assert_eq!(next.text(Field::FirstName), Some("Eva"));
        let by_name: Vec<(&str, Value, Value)> = changes
            .iter()
            .map(|c| (c.field.as_str(), c.before.clone(), c.after.clone()))
            .collect();
        assert_eq!(
            by_name,
            vec![
                ("firstName", json!("Ana"), json!("Eva")),
                ("attributes.plan", json!("basic"), Value::Null),
                ("tags.vip", json!({ "value": null }), json!({ "value": "gold" })),
                ("groups", json!([]), json!(["a", "b"])),
            ]
        );
    }

    #[test]
    fn changes_are_the_fields_whose_json_differs_however_the_values_differ() {
        // The reference: every field's JSON on both sides, compared.
        fn every_field(before: &Profile, after: &Profile) -> Vec<FieldChange> {
            let mut names: Vec<String> = Field::ALL.iter().map(|field| field.name().to_owned()).collect();
            let keys = |prefix: &str, a: Vec<&String>, b: Vec<&String>| {
                let keys: BTreeSet<_> = a.into_iter().chain(b).collect();
                keys.into_iter()
                    .map(|key| format!("{prefix}.{key}"))
                    .collect::<Vec<_>>()
            };
            names.extend(keys(
                "attributes",
                before.attributes.keys().collect(),
                after.attributes.keys().collect(),
            ));
            names.extend(keys("tags", before.tags.keys().collect(), after.tags.keys().collect()));
            names.push("groups".to_owned());
            names.extend(keys(
                "customFields",
                before.custom.keys().collect(),
                after.custom.keys().collect(),
            ));
            let json = |p: &Profile, name: &str| match name.split_once('.') {
                Some(("attributes", key)) => p.attributes.get(key).cloned().unwrap_or(Value::Null),
                Some(("tags", key)) => p.tags.get(key).map_or(Value::Null, |value| json!({ "value": value })),
                Some(("customFields", key)) => p.custom.get(key).map_or(Value::Null, |value| json!(value)),
                _ if name == "groups" => json!(p.groups),
                _ => Field::named(name)
                    .and_then(|field| p.fields.get(&field))
                    .map_or(Value::Null, Scalar::to_json),
            };
            names
                .into_iter()
                .filter_map(|name| {
                    let (old, new) = (json(before, &name), json(after, &name));
                    (old != new).then_some(FieldChange {
                        field: name,
                        before: old,
                        after: new,
                    })
                })
                .collect()
        }
        let before = profile();
        let mut after = before.clone();
        assert_eq!(diff(&before, &after), every_field(&before, &after));
        after.fields.insert(Field::FirstName, Scalar::Text("Eva".into()));
        after.fields.insert(Field::MarketingConsent, Scalar::Flag(false));
        after.fields.insert(Field::Latitude, Scalar::Number(f64::NAN));
        after.attributes.insert("plan".into(), Value::Null);
        after.attributes.insert("null".into(), Value::Null);
        after.attributes.insert("level".into(), json!({"a": [1, 2]}));
        after.tags.insert("vip".into(), Some("gold".into()));
        after.tags.insert("new".into(), None);
        after.groups.insert("g".into());
        after.custom.insert("Size".into(), "M".into());
        let mut cleared = after.clone();
        cleared.fields.clear();
        cleared.attributes.clear();
        cleared.tags.clear();
        cleared.custom.clear();
        for (a, b) in [
            (&before, &after),
            (&after, &before),
            (&after, &cleared),
            (&cleared, &before),
        ] {
            assert_eq!(diff(a, b), every_field(a, b));
        }
        // An attribute set to null reads as one that is absent: no change either way.
        assert!(
            !diff(&before, &after)
                .iter()
                .any(|change| change.field == "attributes.null")
        );
    }

    #[test]
    fn an_update_that_changes_nothing_reports_no_changes() {
        let change = set(vec![
            Op::Set {
                field: Field::FirstName,
                value: Some(Scalar::Text("Ana".into())),
            },
            Op::ReplaceTags(["vip".to_owned()].into()),
        ]);
        let before = profile();
        let (next, changes) = change.apply(&before, &[]).unwrap();
        assert!(changes.is_empty());
        assert_eq!(next, before);
    }

    #[test]
    fn one_refused_op_refuses_the_whole_change_set() {
        let change = set(vec![
            Op::Set {
                field: Field::FirstName,
                value: Some(Scalar::Text("Eva".into())),
            },
            Op::WriteTag {
                key: "vip".into(),
                value: "x".into(),
                mode: TagWrite::Create,
                path: "tags.create[0].key".into(),
            },
        ]);
        let fault = change.apply(&profile(), &[]).unwrap_err();
        assert_eq!(fault.code, Code::TagAlreadyExists);
        assert_eq!(fault.field.as_deref(), Some("tags.create[0].key"));
    }

    #[test]
    fn updating_a_missing_tag_is_tag_not_found_and_deleting_one_is_no_error() {
        let change = set(vec![Op::WriteTag {
            key: "nope".into(),
            value: "x".into(),
            mode: TagWrite::Update,
            path: "tags.update[0].key".into(),
        }]);
        assert_eq!(change.apply(&profile(), &[]).unwrap_err().code, Code::TagNotFound);
        let change = set(vec![Op::DeleteTag { key: "nope".into() }]);
        assert!(change.apply(&profile(), &[]).unwrap().1.is_empty());
    }

    #[test]
    fn a_claimed_external_id_is_taken_once_and_then_immutable() {
        let claim = |value: &str| {
            set(vec![Op::ClaimExternalId {
                value: value.into(),
                path: "memberRefId".into(),
            }])
        };
        let (claimed, changes) = claim("m-1").apply(&profile(), &[]).unwrap();
        assert_eq!(changes[0].field, "externalId");
        assert!(claim("m-1").apply(&claimed, &[]).unwrap().1.is_empty());
        let fault = claim("m-2").apply(&claimed, &[]).unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::ImmutableField, Some("memberRefId"))
        );
    }

    #[test]
    fn required_id_must_be_the_profiles_own() {
        let p = profile();
        let ok = set(vec![Op::RequireId {
            id: p.id.to_string().to_uppercase(),
            path: "id".into(),
        }]);
        assert!(ok.apply(&p, &[]).is_ok());
        let other = set(vec![Op::RequireId {
            id: Uuid::new_v4().to_string(),
            path: "id".into(),
        }]);
        assert_eq!(other.apply(&p, &[]).unwrap_err().field.as_deref(), Some("id"));
    }

    #[test]
    fn custom_values_must_be_defined_and_fit_their_type() {
        let size = CustomFieldDefinition {
            id: Uuid::new_v4(),
            name: "Size".into(),
            field_type: CustomFieldType::Dropdown,
            options: vec!["S".into(), "M".into()],
            max_length: None,
        };
        let write = |name: &str, value: &str, path: &str| Op::SetCustom {
            name: name.into(),
            value: Some(value.into()),
            path: path.into(),
        };
        let (next, changes) = set(vec![write("Size", "M", "values[0]")])
            .apply(&profile(), std::slice::from_ref(&size))
            .unwrap();
        assert_eq!(next.custom["Size"], "M");
        assert_eq!(changes[0].field, "customFields.Size");
        let fault = set(vec![write("Size", "XL", "values[0]")])
            .apply(&profile(), std::slice::from_ref(&size))
            .unwrap_err();
        assert_eq!(
            (fault.code, fault.field.as_deref()),
            (Code::InvalidFieldValue, Some("values[0]"))
        );
        let fault = set(vec![
            write("A", "1", "values[0]"),
            write("Size", "S", "values[1]"),
            write("B", "2", "values[2]"),
        ])
        .apply(&profile(), std::slice::from_ref(&size))
        .unwrap_err();
        assert_eq!(fault.code, Code::UnknownField);
        assert!(
            fault.message.contains("\"A\"") && fault.message.contains("\"B\""),
            "{}",
            fault.message
        );
    }

    #[test]
    fn profile_wide_limits_hold_after_every_update() {
        let many_tags = (0..=rules::MAX_TAGS).map(|i| format!("t{i}")).collect();
        let fault = set(vec![Op::ReplaceTags(many_tags)])
            .apply(&profile(), &[])
            .unwrap_err();
        assert_eq!(fault.field.as_deref(), Some("tags"));
        let many_groups = (0..=rules::MAX_GROUPS).map(|i| format!("g{i}")).collect();
        assert!(
            set(vec![Op::ReplaceGroups(many_groups)])
                .apply(&profile(), &[])
                .is_err()
        );
        let big = Op::MergeAttribute {
            key: "blob".into(),
            value: Some(json!("x".repeat(rules::MAX_ATTRIBUTES_JSON_BYTES))),
        };
        assert_eq!(
            set(vec![big]).apply(&profile(), &[]).unwrap_err().field.as_deref(),
            Some("attributes")
        );
    }
}
