//! What a tenant allows browsers: the origins its frontends are served from, and the issuer of
//! its end users' tokens with where its signing keys are published and the audience they name.
//!
//! An issuer names one tenant (a token's `iss` selects its tenant), so issuers are unique.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        for column in [
            text(Tenants::AllowedOrigins).default("[]").to_owned(),
            text_null(Tenants::JwtIssuer).to_owned(),
            text_null(Tenants::JwtJwksUrl).to_owned(),
            text_null(Tenants::JwtAudience).to_owned(),
        ] {
            manager
                .alter_table(Table::alter().table(Tenants::Table).add_column(column).to_owned())
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ux_tenants_jwt_issuer")
                    .table(Tenants::Table)
                    .col(Tenants::JwtIssuer)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ux_tenants_jwt_issuer")
                    .table(Tenants::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Tenants::AllowedOrigins,
            Tenants::JwtIssuer,
            Tenants::JwtJwksUrl,
            Tenants::JwtAudience,
        ] {
            manager
                .alter_table(Table::alter().table(Tenants::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Tenants {
    Table,
    AllowedOrigins,
    JwtIssuer,
    JwtJwksUrl,
    JwtAudience,
}
