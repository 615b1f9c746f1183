//! createProfile, the profile and profiles queries, setProfileStatus, deleteProfile, and the
//! routes around /graphql.

use serde_json::{Value, json};

use crate::helpers::UPDATE;
use crate::on_both_databases;

const LIST: &str = "query($first: Int!, $after: String, $filter: ProfileFilter) {
    profiles(first: $first, after: $after, filter: $filter) {
        totalCount
        pageInfo { hasNextPage endCursor }
        edges { cursor node { serialNumber } }
        nodes { serialNumber }
    }
}";

const SET_STATUS: &str = "mutation($ref: ProfileRef!, $status: ProfileStatus!) {
    setProfileStatus(ref: $ref, status: $status) { status version }
}";

fn serials(page: &Value) -> Vec<String> {
    page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["serialNumber"].as_str().unwrap().to_owned())
        .collect()
}

on_both_databases! {
    async fn a_created_profile_starts_active_at_version_one_with_the_next_serial_number(app) {
        let first = app.create(json!({})).await;
        let second = app
            .create(json!({
                "externalId": "ana-1", "memberType": "INDIVIDUAL", "name": "Ana", "email": "ana@example.com",
                "firstName": "Ana", "lastName": "García", "attributes": {"plan": "basic"},
                "tags": [{"key": "vip", "value": "gold"}], "groups": ["b", "a"]
            }))
            .await;
        assert_eq!((first["serialNumber"].as_str(), first["version"].as_i64()), (Some("1"), Some(1)));
        assert_eq!(second["serialNumber"], "2");
        let profile = app.profile(second["id"].as_str().unwrap()).await;
        assert_eq!(profile["status"], "ACTIVE");
        assert_eq!(profile["memberType"], "INDIVIDUAL");
        assert_eq!(profile["lastName"], "García");
        assert_eq!(profile["attributes"], json!({"plan": "basic"}));
        assert_eq!(profile["tags"], json!([{"key": "vip", "value": "gold"}]));
        assert_eq!(profile["groups"], json!(["a", "b"]));
        assert_eq!(profile["values"], json!({"First_Name": "Ana", "Family_Name": "García", "Email": "ana@example.com"}));
        assert_eq!(profile["createdAt"], profile["updatedAt"]);
    }

    async fn a_profile_is_found_by_id_external_id_or_serial_number(app) {
        let created = app.create(json!({"externalId": "ana-1"})).await;
        let id = created["id"].as_str().unwrap();
        for reference in [json!({"id": id}), json!({"externalId": "ana-1"}), json!({"serialNumber": "1"})] {
            let data = app.ok("query($ref: ProfileRef!) { profile(ref: $ref) { id } }", json!({"ref": reference})).await;
            assert_eq!(data["profile"]["id"], id, "by {reference}");
        }
    }

    async fn reads_show_standard_fields_and_attributes_asked_for_anywhere_and_slim_updates_keep_them(app) {
        let created = app
            .create(json!({
                "name": "Ana", "memberType": "TEAM", "email": "ana@example.com",
                "attributes": {"plan": "gold"}, "tags": [{"key": "vip", "value": "1"}]
            }))
            .await;
        let id = created["id"].as_str().unwrap();
        let full = json!({
            "name": "Ana", "memberType": "TEAM", "email": "ana@example.com", "attributes": {"plan": "gold"}
        });
        let named = app
            .ok(
                "query($id: ID!) { profile(ref: {id: $id}) { ...Standard ... on Profile { attributes } } }
                 fragment Standard on Profile { name memberType email }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(named["profile"], full);
        let slim = app.ok("query($id: ID!) { profile(ref: {id: $id}) { id tags { key } } }", json!({"id": id})).await;
        assert_eq!(slim["profile"], json!({"id": id, "tags": [{"key": "vip"}]}));
        // A write that shows only the version still reads and writes the whole row.
        let updated = app
            .ok(
                "mutation($id: ID!) { updateProfile(ref: {id: $id}, update: {scrip: {tags: [\"new\"]}}) { profile { version } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(updated["updateProfile"]["profile"]["version"], 2);
        let listed = app
            .ok(
                "{ profiles(first: 5) { nodes { id } edges { node { ... on Profile { name memberType email attributes } } } } }",
                json!({}),
            )
            .await;
        assert_eq!(listed["profiles"]["nodes"], json!([{"id": id}]));
        assert_eq!(listed["profiles"]["edges"][0]["node"], full);
    }

    async fn a_missing_profile_is_null_not_an_error(app) {
        app.create(json!({"externalId": "ana-1"})).await;
        for reference in [
            json!({"id": "00000000-0000-0000-0000-000000000000"}),
            json!({"id": "not-a-uuid"}),
            json!({"externalId": "nobody"}),
            json!({"serialNumber": "99"}),
            json!({"serialNumber": "one"}),
        ] {
            let data = app.ok("query($ref: ProfileRef!) { profile(ref: $ref) { id } }", json!({"ref": reference})).await;
            assert_eq!(data["profile"], Value::Null, "by {reference}");
        }
    }

    async fn a_profile_ref_must_name_exactly_one_identifier(app) {
        let response = app.graphql("{ profile(ref: {externalId: \"a\", serialNumber: \"1\"}) { id } }", json!({})).await;
        assert!(response["errors"].as_array().is_some_and(|e| !e.is_empty()), "{response}");
    }

    async fn a_duplicate_external_id_is_refused_on_create(app) {
        app.create(json!({"externalId": "ana-1"})).await;
        let error = app
            .error("mutation { createProfile(input: {externalId: \"ana-1\"}) { id } }", json!({}))
            .await;
        assert_eq!(error["extensions"]["code"], "DUPLICATE_EXTERNAL_ID");
        assert_eq!(error["extensions"]["field"], "externalId");
        let list = app.ok(LIST, json!({"first": 10})).await;
        assert_eq!(list["profiles"]["totalCount"], 1);
    }

    async fn create_input_is_checked_before_anything_is_stored(app) {
        let error = app.error("mutation { createProfile(input: {email: \"nope\"}) { id } }", json!({})).await;
        assert_eq!((error["extensions"]["code"].as_str(), error["extensions"]["field"].as_str()), (Some("VALIDATION_FAILED"), Some("email")));
        let error = app
            .error("mutation { createProfile(input: {tags: [{key: \"a:b\", value: \"v\"}]}) { id } }", json!({}))
            .await;
        assert_eq!(error["extensions"]["field"], "tags[0].key");
        // The refused creates consumed no serial number.
        assert_eq!(app.create(json!({})).await["serialNumber"], "1");
    }

    async fn profiles_are_paged_by_cursor_oldest_first_with_a_total_count(app) {
        for _ in 0..5 {
            app.create(json!({})).await;
        }
        let page = app.ok(LIST, json!({"first": 2})).await["profiles"].clone();
        assert_eq!(serials(&page), ["1", "2"]);
        assert_eq!(page["totalCount"], 5);
        assert_eq!(page["pageInfo"]["hasNextPage"], true);
        assert_eq!(page["pageInfo"]["endCursor"], page["edges"][1]["cursor"]);
        let next = app.ok(LIST, json!({"first": 2, "after": page["pageInfo"]["endCursor"]})).await["profiles"].clone();
        assert_eq!(serials(&next), ["3", "4"]);
        let last = app.ok(LIST, json!({"first": 2, "after": next["pageInfo"]["endCursor"]})).await["profiles"].clone();
        assert_eq!(serials(&last), ["5"]);
        assert_eq!(last["pageInfo"]["hasNextPage"], false);
        let empty = app.ok(LIST, json!({"first": 0})).await["profiles"].clone();
        assert_eq!((serials(&empty).len(), empty["pageInfo"]["endCursor"].clone()), (0, Value::Null));
        let default = app.ok("{ profiles { nodes { id } } }", json!({})).await;
        assert_eq!(default["profiles"]["nodes"].as_array().unwrap().len(), 5);
    }

    async fn profiles_filter_by_status_tag_and_group(app) {
        let vip = app.create(json!({"tags": [{"key": "vip", "value": "1"}], "groups": ["CL"]})).await;
        app.create(json!({"groups": ["CL"]})).await;
        app.create(json!({"tags": [{"key": "other", "value": "1"}]})).await;
        app.ok(SET_STATUS, json!({"ref": {"id": vip["id"]}, "status": "SUSPENDED"})).await;
        let count = |filter: Value| {
            let app = &app;
            async move { app.ok(LIST, json!({"first": 10, "filter": filter})).await["profiles"].clone() }
        };
        assert_eq!(serials(&count(json!({"tag": "vip"})).await), ["1"]);
        assert_eq!(serials(&count(json!({"group": "CL"})).await), ["1", "2"]);
        assert_eq!(serials(&count(json!({"status": "ACTIVE"})).await), ["2", "3"]);
        let both = count(json!({"group": "CL", "status": "SUSPENDED"})).await;
        assert_eq!((serials(&both), both["totalCount"].clone()), (vec!["1".to_owned()], json!(1)));
        assert_eq!(count(json!({"tag": "nobody"})).await["totalCount"], 0);
    }

    async fn pages_without_their_total_count_hold_what_pages_with_one_hold(app) {
        // Without totalCount a page is one statement on the store's own connections; with it,
        // a transaction that counts too.
        let uncounted = LIST.replace("totalCount", "");
        let vip = json!([{"key": "vip", "value": "1"}]);
        for n in 0..7 {
            let tags = if n % 2 == 0 { vip.clone() } else { json!([]) };
            app.create(json!({"tags": tags, "groups": if n % 3 == 0 { json!(["CL"]) } else { json!([]) }})).await;
        }
        app.ok(SET_STATUS, json!({"ref": {"serialNumber": "3"}, "status": "SUSPENDED"})).await;
        for filter in [json!(null), json!({"tag": "vip"}), json!({"group": "CL"}), json!({"status": "ACTIVE", "tag": "vip"})] {
            let mut after = Value::Null;
            loop {
                let variables = json!({"first": 2, "after": after, "filter": filter});
                let counted = app.ok(LIST, variables.clone()).await["profiles"].clone();
                let page = app.ok(&uncounted, variables).await["profiles"].clone();
                assert!(page.get("totalCount").is_none());
                for part in ["pageInfo", "edges", "nodes"] {
                    assert_eq!(page[part], counted[part], "{part} of a page after {after} with {filter}");
                }
                if page["pageInfo"]["hasNextPage"] != true {
                    break;
                }
                after = page["pageInfo"]["endCursor"].clone();
            }
        }
        let tagged = app.ok("{ profiles(first: 2, filter: {tag: \"vip\"}) { nodes { serialNumber tags { key value } } } }", json!({})).await;
        assert_eq!(
            tagged["profiles"]["nodes"],
            json!([{"serialNumber": "1", "tags": vip}, {"serialNumber": "3", "tags": vip}])
        );
    }

    async fn a_bad_page_size_or_cursor_is_validation_failed(app) {
        for (variables, field) in [
            (json!({"first": -1}), "first"),
            (json!({"first": 101}), "first"),
            (json!({"first": 1, "after": "not-a-cursor"}), "after"),
        ] {
            let error = app.error(LIST, variables).await;
            assert_eq!((error["extensions"]["code"].as_str(), error["extensions"]["field"].as_str()), (Some("VALIDATION_FAILED"), Some(field)));
        }
    }

    async fn status_moves_between_active_and_suspended_and_closed_is_final(app) {
        let id = app.create(json!({})).await["id"].clone();
        let set = |status: &str| {
            let (app, id, status) = (&app, id.clone(), status.to_owned());
            async move { app.graphql(SET_STATUS, json!({"ref": {"id": id}, "status": status})).await }
        };
        assert_eq!(set("SUSPENDED").await["data"]["setProfileStatus"], json!({"status": "SUSPENDED", "version": 2}));
        assert_eq!(set("SUSPENDED").await["data"]["setProfileStatus"], json!({"status": "SUSPENDED", "version": 2}));
        assert_eq!(set("ACTIVE").await["data"]["setProfileStatus"], json!({"status": "ACTIVE", "version": 3}));
        assert_eq!(set("CLOSED").await["data"]["setProfileStatus"], json!({"status": "CLOSED", "version": 4}));
        assert_eq!(set("CLOSED").await["data"]["setProfileStatus"]["version"], 4);
        let refused = set("ACTIVE").await;
        assert_eq!(refused["errors"][0]["extensions"]["code"], "INVALID_STATUS_TRANSITION");
        let missing = app.graphql(SET_STATUS, json!({"ref": {"externalId": "nobody"}, "status": "ACTIVE"})).await;
        assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");
    }

    async fn a_closed_profile_refuses_every_update(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        app.ok(SET_STATUS, json!({"ref": {"id": id}, "status": "CLOSED"})).await;
        let response = app.update(&id, json!({"scrip": {"tags": ["a"]}})).await;
        assert_eq!(response["errors"][0]["extensions"]["code"], "PROFILE_CLOSED");
        assert_eq!(app.profile(&id).await["tags"], json!([]));
    }

    async fn a_deleted_profile_is_gone_everywhere_and_its_serial_number_is_not_reused(app) {
        let created = app.create(json!({"externalId": "ana-1", "tags": [{"key": "t", "value": "v"}], "groups": ["g"]})).await;
        app.ok(SET_STATUS, json!({"ref": {"externalId": "ana-1"}, "status": "CLOSED"})).await;
        let deleted = app.ok("mutation { deleteProfile(ref: {externalId: \"ana-1\"}) { id } }", json!({})).await;
        assert_eq!(deleted["deleteProfile"]["id"], created["id"]);
        for reference in [json!({"id": created["id"]}), json!({"externalId": "ana-1"}), json!({"serialNumber": "1"})] {
            let data = app.ok("query($ref: ProfileRef!) { profile(ref: $ref) { id } }", json!({"ref": reference})).await;
            assert_eq!(data["profile"], Value::Null);
        }
        let tagged = app.ok(LIST, json!({"first": 10, "filter": {"tag": "t"}})).await;
        assert_eq!(tagged["profiles"]["totalCount"], 0);
        let again = app.error("mutation { deleteProfile(ref: {externalId: \"ana-1\"}) { id } }", json!({})).await;
        assert_eq!(again["extensions"]["code"], "NOT_FOUND");
        let next = app.create(json!({"externalId": "ana-1"})).await;
        assert_eq!(next["serialNumber"], "2");
    }

    async fn updating_a_missing_profile_is_not_found(app) {
        for reference in [json!({"externalId": "nobody"}), json!({"id": "not-a-uuid"})] {
            let response = app.graphql(UPDATE, json!({"ref": reference, "update": {"scrip": {"tags": []}}})).await;
            assert_eq!(response["errors"][0]["extensions"]["code"], "NOT_FOUND", "{response}");
        }
    }

    async fn healthz_answers_and_the_root_leads_to_graphiql(app) {
        assert_eq!(app.get("/healthz").await.status(), 200);
        let root = app.get("/").await;
        assert!(root.status().is_redirection());
        assert_eq!(root.headers()["location"], "/graphiql");
        let graphiql = app.get("/graphiql").await;
        assert_eq!(graphiql.status(), 200);
        assert!(graphiql.text().await.unwrap().contains("/graphql"));
    }

    async fn introspection_shows_the_descriptions_graphiql_renders(app) {
        let data = app
            .ok("{ __type(name: \"ProfileUpdate\") { description inputFields { name description } } }", json!({}))
            .await;
        let fields = data["__type"]["inputFields"].as_array().unwrap();
        assert_eq!(fields.len(), 5);
        assert!(fields.iter().all(|field| field["description"].as_str().is_some_and(|d| d.len() > 20)), "{fields:?}");
    }
}
