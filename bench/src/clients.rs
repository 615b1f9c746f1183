//! Each contender's side of the wire: how it is asked for a workload's request and how its
//! answer is checked. An answer counts only if it is complete: HTTP 200, no `errors`, and the
//! data the request asked for.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use sea_orm::sqlx::PgPool;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::load::{Client, Op};
use crate::reference::{self, scrip_patch};

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_default()
}

/// How a request authenticates: a header's name and value.
type Credential<'a> = (&'static str, &'a str);

/// POSTs a GraphQL request; its `data` when the response is a 200 without `errors`.
async fn graphql(http: &reqwest::Client, url: &str, credential: Option<Credential<'_>>, body: Value) -> Option<Value> {
    let mut request = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/graphql-response+json, application/json");
    if let Some((name, value)) = credential {
        request = request.header(name, value);
    }
    let response = request.body(body.to_string()).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let mut body: Value = response.json().await.ok()?;
    if body.get("errors").is_some() {
        return None;
    }
    Some(body.get_mut("data")?.take())
}

fn has_id(value: &Value, id: &str) -> bool {
    value.as_str() == Some(id)
}

fn nodes(value: &Value, expected: usize) -> bool {
    value.as_array().is_some_and(|nodes| nodes.len() == expected)
}

/// profile-gateway over HTTP, with an API key or with the token of each profile's person.
pub struct Gateway {
    http: reqwest::Client,
    url: String,
    /// `X-API-Key`'s value, when requests send one.
    api_key: Option<String>,
    /// `Authorization`'s value (`Bearer <token>`) for each profile, by its id, otherwise.
    tokens: HashMap<Arc<str>, String>,
    /// How many profiles `profiles(first: 50)` must return.
    list_len: usize,
}

impl Gateway {
    pub fn client(address: &str, api_key: &str, list_len: usize) -> Arc<dyn Client> {
        Arc::new(Gateway {
            http: http_client(),
            url: format!("{address}/graphql"),
            api_key: Some(api_key.to_owned()),
            tokens: HashMap::new(),
            list_len,
        })
    }

    /// A client whose every request acts as the person of the profile it names.
    pub fn with_tokens(address: &str, tokens: Arc<HashMap<Arc<str>, String>>, list_len: usize) -> Arc<dyn Client> {
        let tokens = tokens
            .iter()
            .map(|(id, token)| (id.clone(), format!("Bearer {token}")))
            .collect();
        Arc::new(Gateway {
            http: http_client(),
            url: format!("{address}/graphql"),
            api_key: None,
            tokens,
            list_len,
        })
    }

    /// The credential of a request about the profile `id`; for a list, a random person's.
    fn credential(&self, id: Option<&str>) -> Option<Credential<'_>> {
        if let Some(key) = &self.api_key {
            return Some(("X-API-Key", key));
        }
        let token = match id {
            Some(id) => self.tokens.get(id),
            None => {
                use rand::Rng as _;
                let n = rand::rng().random_range(0..self.tokens.len().max(1));
                self.tokens.values().nth(n)
            }
        };
        token.map(|token| ("Authorization", token.as_str()))
    }
}

impl Client for Gateway {
    fn call<'a>(&'a self, op: &'a Op) -> BoxFuture<'a, bool> {
        async move {
            let id = match op {
                Op::Read { id } | Op::Update { id, .. } => Some(id.as_ref()),
                Op::List => None,
            };
            let post = |body| graphql(&self.http, &self.url, self.credential(id), body);
            match op {
                Op::Read { id } => {
                    let body = json!({
                        "query": "query($id: ID!) { profile(ref: {id: $id}) { id tags { key value } attributes } }",
                        "variables": {"id": id.as_ref()},
                    });
                    post(body).await.is_some_and(|data| has_id(&data["profile"]["id"], id))
                }
                Op::Update { id, n } => {
                    let (attributes, tags) = scrip_patch(*n);
                    let body = json!({
                        "query": "mutation($id: ID!, $u: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $u) { profile { id version } } }",
                        "variables": {"id": id.as_ref(), "u": {"scrip": {"attributes": attributes, "tags": tags}}},
                    });
                    post(body)
                        .await
                        .is_some_and(|data| has_id(&data["updateProfile"]["profile"]["id"], id))
                }
                Op::List => {
                    let body = json!({"query": "{ profiles(first: 50) { nodes { id tags { key value } } } }"});
                    post(body)
                        .await
                        .is_some_and(|data| nodes(&data["profiles"]["nodes"], self.list_len))
                }
            }
        }
        .boxed()
    }
}

/// PostGraphile over HTTP, with the schema it derives from profile-gateway's tables and the
/// functions of `sql/reference.sql`.
pub struct PostGraphile {
    http: reqwest::Client,
    url: String,
    tenant: Uuid,
    list_len: usize,
    /// The update's document: the `scripUpdate` mutation, which sends a change notice, or
    /// `scripWrite`, which does not, its field aliased `scrip`.
    update: String,
}

impl PostGraphile {
    /// A client whose updates send a change notice in their transaction when `notice`.
    pub fn client(address: &str, tenant: Uuid, list_len: usize, notice: bool) -> Arc<dyn Client> {
        Arc::new(PostGraphile {
            http: http_client(),
            url: format!("{address}/graphql"),
            tenant,
            list_len,
            update: format!(
                "mutation($id: UUID!, $a: JSON!, $t: [String]!) {{ scrip: {}(input: {{profileId: $id, attributes: $a, tags: $t}}) {{ result {{ rowId version }} }} }}",
                if notice { "scripUpdate" } else { "scripWrite" }
            ),
        })
    }
}

impl Client for PostGraphile {
    fn call<'a>(&'a self, op: &'a Op) -> BoxFuture<'a, bool> {
        async move {
            let post = |body| graphql(&self.http, &self.url, None, body);
            match op {
                Op::Read { id } => {
                    let body = json!({
                        "query": "query($id: UUID!) { profileByRowId(rowId: $id) { rowId attributes profileTagsByProfileId { nodes { key value } } } }",
                        "variables": {"id": id.as_ref()},
                    });
                    post(body)
                        .await
                        .is_some_and(|data| has_id(&data["profileByRowId"]["rowId"], id))
                }
                Op::Update { id, n } => {
                    let (attributes, tags) = scrip_patch(*n);
                    let body = json!({
                        "query": &self.update,
                        "variables": {"id": id.as_ref(), "a": attributes, "t": tags},
                    });
                    post(body)
                        .await
                        .is_some_and(|data| has_id(&data["scrip"]["result"]["rowId"], id))
                }
                Op::List => {
                    let body = json!({
                        "query": "query($tenant: UUID!) { allProfiles(first: 50, condition: {tenantId: $tenant}, orderBy: SERIAL_NUMBER_ASC) { nodes { rowId profileTagsByProfileId { nodes { key value } } } } }",
                        "variables": {"tenant": self.tenant},
                    });
                    post(body)
                        .await
                        .is_some_and(|data| nodes(&data["allProfiles"]["nodes"], self.list_len))
                }
            }
        }
        .boxed()
    }
}

/// The HTTP floor: plain JSON routes (`profile-gateway-floor`) running the reference SQL.
pub struct Floor {
    http: reqwest::Client,
    address: String,
    tenant: Uuid,
    list_len: usize,
}

impl Floor {
    pub fn client(address: &str, tenant: Uuid, list_len: usize) -> Arc<dyn Client> {
        Arc::new(Floor {
            http: http_client(),
            address: address.to_owned(),
            tenant,
            list_len,
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Option<Value> {
        let response = request.send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }
}

impl Client for Floor {
    fn call<'a>(&'a self, op: &'a Op) -> BoxFuture<'a, bool> {
        async move {
            match op {
                Op::Read { id } => {
                    let request = self.http.get(format!("{}/profiles/{id}", self.address));
                    self.json(request).await.is_some_and(|body| has_id(&body["id"], id))
                }
                Op::Update { id, n } => {
                    let (attributes, tags) = scrip_patch(*n);
                    let request = self
                        .http
                        .post(format!("{}/profiles/{id}/scrip", self.address))
                        .json(&json!({"attributes": attributes, "tags": tags}));
                    self.json(request).await.is_some_and(|body| has_id(&body["id"], id))
                }
                Op::List => {
                    let request = self
                        .http
                        .get(format!("{}/tenants/{}/profiles", self.address, self.tenant));
                    self.json(request).await.is_some_and(|body| nodes(&body, self.list_len))
                }
            }
        }
        .boxed()
    }
}

/// The raw baseline: the reference SQL on a connection pool, with no HTTP and no GraphQL.
pub struct Raw {
    pool: PgPool,
    tenant: Uuid,
    list_len: usize,
}

impl Raw {
    pub fn client(pool: PgPool, tenant: Uuid, list_len: usize) -> Arc<dyn Client> {
        Arc::new(Raw { pool, tenant, list_len })
    }
}

impl Client for Raw {
    fn call<'a>(&'a self, op: &'a Op) -> BoxFuture<'a, bool> {
        async move {
            match op {
                Op::Read { id } => {
                    let Ok(uuid) = id.parse() else { return false };
                    matches!(reference::read(&self.pool, uuid).await, Ok(Some(profile)) if has_id(&profile["id"], id))
                }
                Op::Update { id, n } => {
                    let Ok(uuid) = id.parse() else { return false };
                    let (attributes, tags) = scrip_patch(*n);
                    reference::update(&self.pool, uuid, &attributes, &tags)
                        .await
                        .is_ok_and(|profile| has_id(&profile["id"], id))
                }
                Op::List => reference::list(&self.pool, self.tenant)
                    .await
                    .is_ok_and(|profiles| nodes(&profiles, self.list_len)),
            }
        }
        .boxed()
    }
}
