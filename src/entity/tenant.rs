use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub last_serial: i64,
    pub created_at: DateTimeUtc,
    /// The origins browsers may call from: a JSON list of `scheme://host[:port]`.
    pub allowed_origins: String,
    #[sea_orm(unique)]
    pub jwt_issuer: Option<String>,
    pub jwt_jwks_url: Option<String>,
    pub jwt_audience: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
