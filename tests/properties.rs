//! Property tests: every dialect's translation and the engine, fed arbitrary strings, numbers,
//! JSON and lists, never panic; what they accept keeps every profile rule, what they refuse
//! carries a code and a field; and an accepted update applied twice changes nothing the second
//! time.

use async_graphql::{ID, Json, MaybeUndefined};
use chrono::Utc;
use profile_gateway::dialects::{
    CompetitionLabsMemberPut, CreateProfileInput, FieldValueInput, FragmentTagOperations, FragmentUserPatch,
    MetadataEntryInput, ProfileUpdate, ProfileValuesUpdate, ScripParticipantPatch, SpruceProfileInput,
    SpruceUserUpdate, TagInput, TagKeyInput,
};
use profile_gateway::domain::{
    ChangeSet, CustomFieldDefinition, CustomFieldType, Field, Profile, STANDARD_NAMES, Scalar, rules,
};
use profile_gateway::error::{Code, Fault};
use profile_gateway::graphql::MemberType;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

/// Text as clients send it: plain words, unicode, control characters, the separators some
/// dialects refuse, and lengths around every limit.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_ -]{0,12}",
        any::<String>(),
        "[#/:\\x00\\n\\t é漢]{0,6}",
        (
            0usize..5,
            prop::sample::select(vec![49usize, 50, 51, 100, 101, 200, 201, 255, 256, 1001, 4001])
        )
            .prop_map(|(c, n)| ["a", "é", "#", "x", "\u{0}"][c].repeat(n)),
    ]
}

/// A small set of names, so that repeats across one input happen often.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(vec!["a", "b", "vip", "Size", "Email", "First_Name", "Notes", ""]).prop_map(str::to_owned), 1 => text()]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 40, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            vec((name(), inner), 0..8).prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    value: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = MaybeUndefined<T>> {
    prop_oneof![
        Just(MaybeUndefined::Undefined),
        Just(MaybeUndefined::Null),
        value.prop_map(MaybeUndefined::Value)
    ]
}

fn tag() -> impl Strategy<Value = TagInput> {
    (name(), text()).prop_map(|(key, value)| TagInput { key, value })
}

fn scrip() -> impl Strategy<Value = ProfileUpdate> {
    (maybe(text()), maybe(json().prop_map(Json)), maybe(vec(name(), 0..120))).prop_map(
        |(external_id, attributes, tags)| {
            ProfileUpdate::Scrip(ScripParticipantPatch {
                external_id,
                attributes,
                tags,
            })
        },
    )
}

fn spruce() -> impl Strategy<Value = ProfileUpdate> {
    let coordinate = prop_oneof![
        text(),
        any::<f64>().prop_map(|f| f.to_string()),
        (-200i32..200).prop_map(|n| n.to_string())
    ];
    let profile = (
        maybe(text()),
        maybe(text()),
        maybe(text()),
        maybe(coordinate.clone()),
        maybe(coordinate),
        maybe(any::<bool>()),
    )
        .prop_map(
            |(first_name, city, title, latitude, longitude, accepts_marketing)| SpruceProfileInput {
                first_name,
                city,
                title,
                latitude,
                longitude,
                accepts_marketing,
                ..Default::default()
            },
        );
    (maybe(any::<bool>()), maybe(text()), maybe(profile)).prop_map(|(marketing_consent, role, profile)| {
        ProfileUpdate::Spruce(Box::new(SpruceUserUpdate {
            marketing_consent,
            role,
            profile,
        }))
    })
}

fn fragment() -> impl Strategy<Value = ProfileUpdate> {
    let list = || option::of(vec(tag(), 0..6));
    (
        list(),
        list(),
        list(),
        option::of(vec(name().prop_map(|key| TagKeyInput { key }), 0..6)),
    )
        .prop_map(|(create, update, set, delete)| {
            ProfileUpdate::Fragment(FragmentUserPatch {
                tags: FragmentTagOperations {
                    create,
                    update,
                    set,
                    delete,
                },
            })
        })
}

fn profile_values() -> impl Strategy<Value = ProfileUpdate> {
    let standard = prop::sample::select(
        STANDARD_NAMES
            .iter()
            .map(|(name, _)| name.to_string())
            .collect::<Vec<_>>(),
    );
    let field =
        (prop_oneof![standard, name()], option::of(text())).prop_map(|(name, value)| FieldValueInput { name, value });
    vec(field, 0..8).prop_map(|values| ProfileUpdate::ProfileValues(ProfileValuesUpdate { values }))
}

fn competition_labs(own_id: Uuid) -> impl Strategy<Value = ProfileUpdate> {
    let id = prop_oneof![3 => Just(own_id.to_string()), 1 => text()];
    let metadata = vec(
        (name(), text()).prop_map(|(key, value)| MetadataEntryInput { key, value }),
        0..6,
    );
    (
        id,
        any::<bool>(),
        text(),
        option::of(text()),
        option::of(vec(name(), 0..6)),
        option::of(metadata),
    )
        .prop_map(|(id, team, member_ref_id, name, groups, metadata)| {
            ProfileUpdate::CompetitionLabs(CompetitionLabsMemberPut {
                id: ID(id),
                member_type: if team { MemberType::Team } else { MemberType::Individual },
                member_ref_id,
                name,
                groups,
                metadata,
            })
        })
}

fn update(own_id: Uuid) -> impl Strategy<Value = ProfileUpdate> {
    prop_oneof![
        scrip(),
        spruce(),
        fragment(),
        profile_values(),
        competition_labs(own_id)
    ]
}

fn create() -> impl Strategy<Value = CreateProfileInput> {
    (
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(json().prop_map(Json)),
        option::of(vec(tag(), 0..6)),
        option::of(vec(name(), 0..6)),
    )
        .prop_map(
            |(external_id, name, email, attributes, tags, groups)| CreateProfileInput {
                external_id,
                name,
                email,
                attributes,
                tags,
                groups,
                ..Default::default()
            },
        )
}

const OWN_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

fn stored() -> Profile {
    let mut profile = Profile::new(OWN_ID, 1, Utc::now());
    profile.fields.insert(Field::ExternalId, Scalar::Text("ext-1".into()));
    profile.fields.insert(Field::FirstName, Scalar::Text("Ana".into()));
    profile.attributes.insert("plan".into(), Value::from("basic"));
    profile.tags.insert("vip".into(), None);
    profile.tags.insert("a".into(), Some("1".into()));
    profile.groups.insert("b".into());
    profile.custom.insert("Notes".into(), "hello".into());
    profile
}

fn definitions() -> Vec<CustomFieldDefinition> {
    vec![
        CustomFieldDefinition {
            id: Uuid::from_u128(1),
            name: "Size".into(),
            field_type: CustomFieldType::Dropdown,
            options: vec!["S".into(), "M".into()],
            max_length: None,
        },
        CustomFieldDefinition {
            id: Uuid::from_u128(2),
            name: "Notes".into(),
            field_type: CustomFieldType::Text,
            options: vec![],
            max_length: Some(50),
        },
    ]
}

/// A refusal names its code from the rule book, a sentence, and (for input faults) the field.
fn assert_sound(fault: &Fault) {
    use Code::*;
    assert!(
        matches!(
            fault.code,
            ValidationFailed | InvalidFieldValue | UnknownField | TagAlreadyExists | TagNotFound | ImmutableField
        ),
        "{fault:?}"
    );
    assert!(fault.field.is_some(), "no field: {fault:?}");
    assert!(fault.message.ends_with('.'), "{fault:?}");
}

/// Every rule a stored profile keeps.
fn assert_valid(profile: &Profile) {
    assert!(profile.tags.len() <= rules::MAX_TAGS);
    assert!(
        profile.tags.keys().all(|key| rules::tag_key(key).is_ok()),
        "{:?}",
        profile.tags
    );
    assert!(profile.groups.len() <= rules::MAX_GROUPS);
    assert!(profile.groups.iter().all(|group| rules::group(group).is_ok()));
    assert!(serde_json::to_vec(&profile.attributes).unwrap().len() <= rules::MAX_ATTRIBUTES_JSON_BYTES);
    assert!(
        profile
            .attributes
            .iter()
            .all(|(key, value)| rules::attribute_key(key).is_ok() && !rules::json_has_nul(value))
    );
    for (field, value) in &profile.fields {
        match value {
            Scalar::Text(text) => assert!(rules::field_text(*field, text).is_ok(), "{field:?} = {text:?}"),
            Scalar::Number(n) => assert!(n.is_finite() && n.abs() <= 180.0),
            _ => {}
        }
    }
    let definitions = definitions();
    for (name, value) in &profile.custom {
        let definition = definitions
            .iter()
            .find(|d| &d.name == name)
            .expect("custom values are defined");
        assert!(definition.check(value).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_update_is_translated_and_applied_without_panicking_and_keeps_the_rules(update in update(OWN_ID)) {
        let before = stored();
        match ChangeSet::try_from(update) {
            Err(fault) => assert_sound(&fault),
            Ok(change) => match change.apply(&before, &definitions()) {
                Err(fault) => assert_sound(&fault),
                Ok((after, changes)) => {
                    assert_valid(&after);
                    prop_assert_eq!(changes.is_empty(), after == before);
                    // Applying the same update again finds nothing left to change, unless
                    // the update's own preconditions (create a tag that now exists) refuse it.
                    if let Ok((again, more)) = change.apply(&after, &definitions()) {
                        prop_assert!(more.is_empty(), "{:?}", more);
                        prop_assert_eq!(again, after);
                    }
                }
            },
        }
    }

    #[test]
    fn any_create_input_is_translated_without_panicking_and_keeps_the_rules(input in create()) {
        match ChangeSet::try_from(input) {
            Err(fault) => assert_sound(&fault),
            Ok(change) => {
                let blank = Profile::new(Uuid::new_v4(), 1, Utc::now());
                match change.apply(&blank, &definitions()) {
                    Err(fault) => assert_sound(&fault),
                    Ok((profile, _)) => assert_valid(&profile),
                }
            }
        }
    }
}
