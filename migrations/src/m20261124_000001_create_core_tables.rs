//! Tenants, profiles and everything a profile owns.
//!
//! The invariants clients rely on are enforced here, not only in code: one externalId per
//! tenant, one serial number per tenant, one tag per key, one value per custom field, and
//! child rows that disappear with their profile.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(pk_uuid(Tenants::Id))
                    .col(string_len_uniq(Tenants::Name, 63))
                    // The last serial number handed out in this tenant; only ever grows, so a
                    // serial number is never reused, even after a delete.
                    .col(big_integer(Tenants::LastSerial).default(0))
                    .col(timestamp_with_time_zone(Tenants::CreatedAt))
                    .to_owned(),
            )
            .await?;

        let mut profiles = Table::create();
        profiles
            .table(Profiles::Table)
            .col(pk_uuid(Profiles::Id))
            .col(uuid(Profiles::TenantId))
            .col(big_integer(Profiles::SerialNumber))
            .col(string_len_null(Profiles::ExternalId, 255))
            .col(string_len(Profiles::Status, 16))
            .col(string_len_null(Profiles::MemberType, 16))
            .col(boolean_null(Profiles::MarketingConsent))
            .col(boolean_null(Profiles::AcceptsMarketing))
            .col(double_null(Profiles::Latitude))
            .col(double_null(Profiles::Longitude));
        for column in Profiles::TEXT {
            profiles.col(text_null(column));
        }
        profiles
            .col(json_binary(Profiles::Attributes))
            .col(integer(Profiles::Version))
            .col(timestamp_with_time_zone(Profiles::CreatedAt))
            .col(timestamp_with_time_zone(Profiles::UpdatedAt))
            .foreign_key(
                ForeignKey::create()
                    .from(Profiles::Table, Profiles::TenantId)
                    .to(Tenants::Table, Tenants::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            );
        manager.create_table(profiles.to_owned()).await?;
        // Several NULL externalIds may coexist: SQL unique indexes treat NULLs as distinct.
        unique_index(
            manager,
            Profiles::Table,
            &[Profiles::TenantId, Profiles::ExternalId],
            "ux_profiles_tenant_external_id",
        )
        .await?;
        unique_index(
            manager,
            Profiles::Table,
            &[Profiles::TenantId, Profiles::SerialNumber],
            "ux_profiles_tenant_serial_number",
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProfileTags::Table)
                    .col(uuid(ProfileTags::ProfileId))
                    .col(string_len(ProfileTags::Key, 50))
                    .col(string_len_null(ProfileTags::Value, 200))
                    .primary_key(Index::create().col(ProfileTags::ProfileId).col(ProfileTags::Key))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ProfileTags::Table, ProfileTags::ProfileId)
                            .to(Profiles::Table, Profiles::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Serves the `profiles(filter: {tag})` lookup.
        plain_index(
            manager,
            ProfileTags::Table,
            &[ProfileTags::Key, ProfileTags::ProfileId],
            "ix_profile_tags_key",
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ProfileGroups::Table)
                    .col(uuid(ProfileGroups::ProfileId))
                    .col(string_len(ProfileGroups::Name, 255))
                    .primary_key(Index::create().col(ProfileGroups::ProfileId).col(ProfileGroups::Name))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ProfileGroups::Table, ProfileGroups::ProfileId)
                            .to(Profiles::Table, Profiles::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Serves the `profiles(filter: {group})` lookup.
        plain_index(
            manager,
            ProfileGroups::Table,
            &[ProfileGroups::Name, ProfileGroups::ProfileId],
            "ix_profile_groups_name",
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(CustomFieldDefinitions::Table)
                    .col(pk_uuid(CustomFieldDefinitions::Id))
                    .col(uuid(CustomFieldDefinitions::TenantId))
                    .col(string_len(CustomFieldDefinitions::Name, 64))
                    .col(string_len(CustomFieldDefinitions::FieldType, 16))
                    .col(json_binary(CustomFieldDefinitions::Options))
                    .col(integer_null(CustomFieldDefinitions::MaxLength))
                    .col(timestamp_with_time_zone(CustomFieldDefinitions::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(CustomFieldDefinitions::Table, CustomFieldDefinitions::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        unique_index(
            manager,
            CustomFieldDefinitions::Table,
            &[CustomFieldDefinitions::TenantId, CustomFieldDefinitions::Name],
            "ux_custom_field_definitions_tenant_name",
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(CustomFieldValues::Table)
                    .col(uuid(CustomFieldValues::ProfileId))
                    .col(uuid(CustomFieldValues::FieldId))
                    .col(text(CustomFieldValues::Value))
                    .primary_key(
                        Index::create()
                            .col(CustomFieldValues::ProfileId)
                            .col(CustomFieldValues::FieldId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CustomFieldValues::Table, CustomFieldValues::ProfileId)
                            .to(Profiles::Table, Profiles::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CustomFieldValues::Table, CustomFieldValues::FieldId)
                            .to(CustomFieldDefinitions::Table, CustomFieldDefinitions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Serves "which values does this field hold?" when a field is redefined. Not on the
        // value itself: a TEXT value may be longer than an index entry can be.
        plain_index(
            manager,
            CustomFieldValues::Table,
            &[CustomFieldValues::FieldId],
            "ix_custom_field_values_field",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            CustomFieldValues::Table.into_iden(),
            CustomFieldDefinitions::Table.into_iden(),
            ProfileGroups::Table.into_iden(),
            ProfileTags::Table.into_iden(),
            Profiles::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

async fn unique_index<T: Iden + Copy + 'static, C: Iden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: &[C],
    name: &str,
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table).unique();
    for column in columns {
        index.col(*column);
    }
    manager.create_index(index.to_owned()).await
}

async fn plain_index<T: Iden + Copy + 'static, C: Iden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
    columns: &[C],
    name: &str,
) -> Result<(), DbErr> {
    let mut index = Index::create();
    index.name(name).table(table);
    for column in columns {
        index.col(*column);
    }
    manager.create_index(index.to_owned()).await
}

#[derive(DeriveIden, Clone, Copy)]
enum Tenants {
    Table,
    Id,
    Name,
    LastSerial,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Profiles {
    Table,
    Id,
    TenantId,
    SerialNumber,
    ExternalId,
    Status,
    MemberType,
    Name,
    Email,
    Role,
    MarketingConsent,
    AcceptsMarketing,
    FirstName,
    LastName,
    Title,
    Organization,
    PhoneNumber,
    Address,
    Address2,
    City,
    StateRegion,
    ZipCode,
    Country,
    Latitude,
    Longitude,
    Timezone,
    Locale,
    KlaviyoId,
    Biography,
    Category,
    Attributes,
    Version,
    CreatedAt,
    UpdatedAt,
}

impl Profiles {
    /// The free-text columns; their lengths are checked by the service, which knows the rules.
    const TEXT: [Profiles; 19] = [
        Profiles::Name,
        Profiles::Email,
        Profiles::Role,
        Profiles::FirstName,
        Profiles::LastName,
        Profiles::Title,
        Profiles::Organization,
        Profiles::PhoneNumber,
        Profiles::Address,
        Profiles::Address2,
        Profiles::City,
        Profiles::StateRegion,
        Profiles::ZipCode,
        Profiles::Country,
        Profiles::Timezone,
        Profiles::Locale,
        Profiles::KlaviyoId,
        Profiles::Biography,
        Profiles::Category,
    ];
}

#[derive(DeriveIden, Clone, Copy)]
enum ProfileTags {
    Table,
    ProfileId,
    Key,
    Value,
}

#[derive(DeriveIden, Clone, Copy)]
enum ProfileGroups {
    Table,
    ProfileId,
    Name,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomFieldDefinitions {
    Table,
    Id,
    TenantId,
    Name,
    FieldType,
    Options,
    MaxLength,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomFieldValues {
    Table,
    ProfileId,
    FieldId,
    Value,
}
