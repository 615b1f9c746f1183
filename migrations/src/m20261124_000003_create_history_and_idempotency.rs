//! The change history of profiles, and the idempotency keys that make writes retryable.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProfileChanges::Table)
                    .col(pk_uuid(ProfileChanges::Id))
                    .col(uuid(ProfileChanges::TenantId))
                    // No foreign key: a deleted profile's tombstone outlives it.
                    .col(uuid(ProfileChanges::ProfileId))
                    .col(integer(ProfileChanges::Version))
                    .col(string_len(ProfileChanges::Operation, 64))
                    .col(json_binary(ProfileChanges::Changes))
                    .col(uuid_null(ProfileChanges::ApiKeyId))
                    .col(string_len_null(ProfileChanges::RequestId, 64))
                    .col(timestamp_with_time_zone(ProfileChanges::At))
                    .foreign_key(
                        ForeignKey::create()
                            .from(ProfileChanges::Table, ProfileChanges::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One record per version of a profile; pages newest first.
        manager
            .create_index(
                Index::create()
                    .name("ux_profile_changes_profile_version")
                    .table(ProfileChanges::Table)
                    .col(ProfileChanges::ProfileId)
                    .col(ProfileChanges::Version)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(uuid(IdempotencyKeys::TenantId))
                    .col(string_len(IdempotencyKeys::Key, 255))
                    // SHA-256 of the request body: the same key with another body is refused.
                    .col(binary_len(IdempotencyKeys::RequestHash, 32))
                    // NULL while the first request runs; then its response, replayed as is.
                    .col(small_integer_null(IdempotencyKeys::ResponseStatus))
                    .col(string_len_null(IdempotencyKeys::ResponseContentType, 100))
                    .col(text_null(IdempotencyKeys::ResponseBody))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .col(timestamp_with_time_zone(IdempotencyKeys::ExpiresAt))
                    .primary_key(Index::create().col(IdempotencyKeys::TenantId).col(IdempotencyKeys::Key))
                    .foreign_key(
                        ForeignKey::create()
                            .from(IdempotencyKeys::Table, IdempotencyKeys::TenantId)
                            .to(Tenants::Table, Tenants::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_idempotency_keys_expires_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ProfileChanges::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ProfileChanges {
    Table,
    Id,
    TenantId,
    ProfileId,
    Version,
    Operation,
    Changes,
    ApiKeyId,
    RequestId,
    At,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    TenantId,
    Key,
    RequestHash,
    ResponseStatus,
    ResponseContentType,
    ResponseBody,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}
