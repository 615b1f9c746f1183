use async_graphql::{InputObject, MaybeUndefined};

use super::text_op;
use crate::domain::{ChangeSet, Field, Op, Scalar, rules};
use crate::error::{Code, Fault};

/// PUT a user with a nested profile, as the shop API does. A sent value is stored, an
/// explicit null clears the field, an absent field is left as it is.
#[derive(InputObject, Debug, Clone, Default)]
pub struct SpruceUserUpdate {
    /// Whether the user agreed to marketing; null clears it.
    pub marketing_consent: MaybeUndefined<bool>,
    /// The user's role in the shop; null clears it.
    pub role: MaybeUndefined<String>,
    /// The nested profile; each of its fields follows the same sent/null/absent rule.
    pub profile: MaybeUndefined<SpruceProfileInput>,
}

/// The shop API's nested profile. Every field: a value is stored, null clears, absent stays.
#[derive(InputObject, Debug, Clone, Default)]
pub struct SpruceProfileInput {
    /// Whether the user accepts marketing e-mail.
    pub accepts_marketing: MaybeUndefined<bool>,
    /// First line of the postal address.
    pub address: MaybeUndefined<String>,
    /// Second line of the postal address.
    pub address2: MaybeUndefined<String>,
    /// City of the postal address.
    pub city: MaybeUndefined<String>,
    /// Country of the postal address.
    pub country: MaybeUndefined<String>,
    /// Given name.
    pub first_name: MaybeUndefined<String>,
    /// The user's id at Klaviyo.
    pub klaviyo_id: MaybeUndefined<String>,
    /// Family name.
    pub last_name: MaybeUndefined<String>,
    /// Latitude as the vendor sends it, a decimal string from -90 to 90 ("51.5072"); stored as a number.
    pub latitude: MaybeUndefined<String>,
    /// Preferred locale, such as "en-GB".
    pub locale: MaybeUndefined<String>,
    /// Longitude as the vendor sends it, a decimal string from -180 to 180 ("-0.1276"); stored as a number.
    pub longitude: MaybeUndefined<String>,
    /// Company or organisation.
    pub organization: MaybeUndefined<String>,
    /// Phone number, as the user wrote it.
    pub phone_number: MaybeUndefined<String>,
    /// State or region of the postal address.
    pub state_region: MaybeUndefined<String>,
    /// Time zone, such as "Europe/London".
    pub timezone: MaybeUndefined<String>,
    /// Job title.
    pub title: MaybeUndefined<String>,
    /// Postal code.
    pub zip_code: MaybeUndefined<String>,
}

impl TryFrom<SpruceUserUpdate> for ChangeSet {
    type Error = Fault;

    fn try_from(put: SpruceUserUpdate) -> Result<Self, Fault> {
        let mut change = ChangeSet::default();
        flag(&mut change, Field::MarketingConsent, put.marketing_consent);
        text(&mut change, Field::Role, put.role, "role")?;
        let profile = match put.profile {
            MaybeUndefined::Undefined => return Ok(change),
            MaybeUndefined::Null => {
                return Err(Fault::validation(
                    "profile",
                    "profile must be an object; send null in one of its fields to clear that field, or leave profile out.",
                ));
            }
            MaybeUndefined::Value(profile) => profile,
        };
        flag(&mut change, Field::AcceptsMarketing, profile.accepts_marketing);
        for (field, value, path) in [
            (Field::Address, profile.address, "profile.address"),
            (Field::Address2, profile.address2, "profile.address2"),
            (Field::City, profile.city, "profile.city"),
            (Field::Country, profile.country, "profile.country"),
            (Field::FirstName, profile.first_name, "profile.firstName"),
            (Field::KlaviyoId, profile.klaviyo_id, "profile.klaviyoId"),
            (Field::LastName, profile.last_name, "profile.lastName"),
            (Field::Locale, profile.locale, "profile.locale"),
            (Field::Organization, profile.organization, "profile.organization"),
            (Field::PhoneNumber, profile.phone_number, "profile.phoneNumber"),
            (Field::StateRegion, profile.state_region, "profile.stateRegion"),
            (Field::Timezone, profile.timezone, "profile.timezone"),
            (Field::Title, profile.title, "profile.title"),
            (Field::ZipCode, profile.zip_code, "profile.zipCode"),
        ] {
            text(&mut change, field, value, path)?;
        }
        for (field, value, path) in [
            (Field::Latitude, profile.latitude, "profile.latitude"),
            (Field::Longitude, profile.longitude, "profile.longitude"),
        ] {
            match value {
                MaybeUndefined::Undefined => {}
                MaybeUndefined::Null => change.push(Op::Set { field, value: None }),
                MaybeUndefined::Value(raw) => {
                    let number = rules::coordinate(field, &raw)
                        .map_err(|reason| Fault::validation(path, format!("{} {reason}.", field.name())))?;
                    change.push(Op::Set {
                        field,
                        value: Some(Scalar::Number(number)),
                    });
                }
            }
        }
        Ok(change)
    }
}

fn flag(change: &mut ChangeSet, field: Field, value: MaybeUndefined<bool>) {
    if !value.is_undefined() {
        change.push(Op::Set {
            field,
            value: value.take().map(Scalar::Flag),
        });
    }
}

fn text(change: &mut ChangeSet, field: Field, value: MaybeUndefined<String>, path: &str) -> Result<(), Fault> {
    if !value.is_undefined() {
        change.push(text_op(
            field,
            value.take(),
            Code::ValidationFailed,
            path,
            field.name(),
        )?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::domain::Profile;

    fn stored() -> Profile {
        let mut p = Profile::new(Uuid::new_v4(), 1, Utc::now());
        p.fields.insert(Field::City, Scalar::Text("London".into()));
        p.fields.insert(Field::Role, Scalar::Text("admin".into()));
        p.fields.insert(Field::MarketingConsent, Scalar::Flag(true));
        p
    }

    fn apply(put: SpruceUserUpdate) -> Result<Profile, Fault> {
        Ok(ChangeSet::try_from(put)?.apply(&stored(), &[])?.0)
    }

    #[test]
    fn a_sent_value_is_stored_and_absent_fields_stay() {
        let put = SpruceUserUpdate {
            profile: MaybeUndefined::Value(SpruceProfileInput {
                first_name: MaybeUndefined::Value("Ana".into()),
                accepts_marketing: MaybeUndefined::Value(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let next = apply(put).unwrap();
        assert_eq!(next.text(Field::FirstName), Some("Ana"));
        assert_eq!(next.flag(Field::AcceptsMarketing), Some(false));
        assert_eq!(next.text(Field::City), Some("London"));
        assert_eq!(next.text(Field::Role), Some("admin"));
        assert_eq!(next.flag(Field::MarketingConsent), Some(true));
    }

    #[test]
    fn an_explicit_null_clears_the_field() {
        let put = SpruceUserUpdate {
            role: MaybeUndefined::Null,
            marketing_consent: MaybeUndefined::Null,
            profile: MaybeUndefined::Value(SpruceProfileInput {
                city: MaybeUndefined::Null,
                ..Default::default()
            }),
        };
        let next = apply(put).unwrap();
        assert_eq!(next.text(Field::Role), None);
        assert_eq!(next.flag(Field::MarketingConsent), None);
        assert_eq!(next.text(Field::City), None);
    }

    #[test]
    fn coordinates_arrive_as_strings_and_are_stored_as_numbers() {
        let put = SpruceUserUpdate {
            profile: MaybeUndefined::Value(SpruceProfileInput {
                latitude: MaybeUndefined::Value("51.5072".into()),
                longitude: MaybeUndefined::Value("-0.1276".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let next = apply(put).unwrap();
        assert_eq!(next.number(Field::Latitude), Some(51.5072));
        assert_eq!(next.number(Field::Longitude), Some(-0.1276));
    }

    #[test]
    fn coordinates_out_of_range_or_not_decimal_are_refused_at_their_field() {
        for (latitude, longitude, field) in [
            ("91", "0", "profile.latitude"),
            ("0", "180.5", "profile.longitude"),
            ("north", "0", "profile.latitude"),
        ] {
            let put = SpruceUserUpdate {
                profile: MaybeUndefined::Value(SpruceProfileInput {
                    latitude: MaybeUndefined::Value(latitude.into()),
                    longitude: MaybeUndefined::Value(longitude.into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let fault = ChangeSet::try_from(put).unwrap_err();
            assert_eq!(
                (fault.code, fault.field.as_deref()),
                (Code::ValidationFailed, Some(field))
            );
        }
    }

    #[test]
    fn text_fields_hold_at_most_255_characters_without_control_characters() {
        let put = SpruceUserUpdate {
            role: MaybeUndefined::Value("r".repeat(256)),
            ..Default::default()
        };
        assert_eq!(ChangeSet::try_from(put).unwrap_err().field.as_deref(), Some("role"));
        let put = SpruceUserUpdate {
            profile: MaybeUndefined::Value(SpruceProfileInput {
                title: MaybeUndefined::Value("a\u{7}".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            ChangeSet::try_from(put).unwrap_err().field.as_deref(),
            Some("profile.title")
        );
    }

    #[test]
    fn a_null_profile_is_refused_rather_than_read_as_clearing_everything() {
        let put = SpruceUserUpdate {
            profile: MaybeUndefined::Null,
            ..Default::default()
        };
        assert_eq!(ChangeSet::try_from(put).unwrap_err().field.as_deref(), Some("profile"));
    }
}
