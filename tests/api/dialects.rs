//! updateProfile in every dialect, end to end: what is stored, what `changes` says, and what
//! each refusal carries.

use serde_json::{Value, json};

use crate::helpers::UPDATE;
use crate::on_both_databases;

fn payload(response: &Value) -> &Value {
    assert!(response.get("errors").is_none(), "unexpected errors: {response:#}");
    &response["data"]["updateProfile"]
}

fn fault(response: &Value) -> (&str, Option<&str>) {
    let error = &response["errors"][0];
    assert!(error.is_object(), "expected an error: {response:#}");
    (
        error["extensions"]["code"].as_str().unwrap_or_default(),
        error["extensions"]["field"].as_str(),
    )
}

on_both_databases! {
    async fn scrip_merges_attributes_replaces_tags_and_reports_each_change(app) {
        let id = app.create(json!({"attributes": {"plan": "basic", "region": "eu"}, "tags": [{"key": "old", "value": "x"}]})).await["id"]
            .as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"scrip": {"externalId": "user_123", "attributes": {"plan": "premium", "region": null}, "tags": ["vip", "vip"]}}))
            .await;
        let updated = payload(&response);
        assert_eq!(updated["profile"]["version"], 2);
        assert_eq!(updated["profile"]["externalId"], "user_123");
        assert_eq!(updated["profile"]["attributes"], json!({"plan": "premium"}));
        assert_eq!(updated["profile"]["tags"], json!([{"key": "vip", "value": null}]));
        assert_eq!(
            updated["changes"],
            json!([
                {"field": "externalId", "before": null, "after": "user_123"},
                {"field": "attributes.plan", "before": "basic", "after": "premium"},
                {"field": "attributes.region", "before": "eu", "after": null},
                {"field": "tags.old", "before": {"value": "x"}, "after": null},
                {"field": "tags.vip", "before": null, "after": {"value": null}},
            ])
        );
        assert_eq!(app.profile(&id).await["attributes"], json!({"plan": "premium"}));
        let cleared = app.update(&id, json!({"scrip": {"externalId": null, "tags": null}})).await;
        assert_eq!(payload(&cleared)["profile"]["externalId"], Value::Null);
        assert_eq!(payload(&cleared)["profile"]["tags"], json!([]));
    }

    async fn scrip_refuses_non_object_attributes_and_duplicate_external_ids(app) {
        app.create(json!({"externalId": "taken"})).await;
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        assert_eq!(fault(&app.update(&id, json!({"scrip": {"attributes": [1, 2]}})).await), ("VALIDATION_FAILED", Some("attributes")));
        let refused = app.update(&id, json!({"scrip": {"externalId": "taken", "tags": ["vip"], "attributes": {"plan": "gold"}}})).await;
        assert_eq!(fault(&refused), ("DUPLICATE_EXTERNAL_ID", Some("externalId")));
        let profile = app.profile(&id).await;
        assert_eq!((&profile["version"], &profile["tags"], &profile["attributes"]), (&json!(1), &json!([]), &json!({})));
    }

    async fn spruce_stores_sent_values_clears_nulls_and_keeps_absent_fields(app) {
        let id = app.create(json!({"firstName": "Ana", "lastName": "García"})).await["id"].as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"spruce": {"marketingConsent": true, "role": "customer",
                "profile": {"city": "London", "latitude": "51.5072", "longitude": "-0.1276", "lastName": null, "acceptsMarketing": false}}}))
            .await;
        payload(&response);
        let profile = app.profile(&id).await;
        assert_eq!(profile["firstName"], "Ana");
        assert_eq!(profile["lastName"], Value::Null);
        assert_eq!(profile["city"], "London");
        assert_eq!(profile["latitude"], 51.5072);
        assert_eq!(profile["longitude"], -0.1276);
        assert_eq!(profile["marketingConsent"], true);
        assert_eq!(profile["acceptsMarketing"], false);
        assert_eq!(profile["role"], "customer");
        assert_eq!(profile["version"], 2);
    }

    async fn spruce_refuses_coordinates_that_are_not_in_range(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let response = app.update(&id, json!({"spruce": {"role": "x", "profile": {"latitude": "91"}}})).await;
        assert_eq!(fault(&response), ("VALIDATION_FAILED", Some("profile.latitude")));
        let response = app.update(&id, json!({"spruce": {"profile": {"longitude": "east"}}})).await;
        assert_eq!(fault(&response), ("VALIDATION_FAILED", Some("profile.longitude")));
        assert_eq!(app.profile(&id).await["role"], Value::Null);
    }

    async fn fragment_runs_tag_operations_with_their_preconditions(app) {
        let id = app.create(json!({"tags": [{"key": "department", "value": "sales"}, {"key": "gone", "value": "x"}]})).await["id"]
            .as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"fragment": {"tags": {
                "create": [{"key": "tier", "value": "gold"}],
                "update": [{"key": "department", "value": "engineering"}],
                "set": [{"key": "region", "value": "eu"}],
                "delete": [{"key": "gone"}, {"key": "never-existed"}]
            }}}))
            .await;
        assert_eq!(
            payload(&response)["profile"]["tags"],
            json!([{"key": "department", "value": "engineering"}, {"key": "region", "value": "eu"}, {"key": "tier", "value": "gold"}])
        );
        let exists = app.update(&id, json!({"fragment": {"tags": {"create": [{"key": "tier", "value": "x"}]}}})).await;
        assert_eq!(fault(&exists), ("TAG_ALREADY_EXISTS", Some("tags.create[0].key")));
        let missing = app.update(&id, json!({"fragment": {"tags": {"update": [{"key": "nope", "value": "x"}]}}})).await;
        assert_eq!(fault(&missing), ("TAG_NOT_FOUND", Some("tags.update[0].key")));
        let twice = app
            .update(&id, json!({"fragment": {"tags": {"set": [{"key": "a", "value": "1"}], "delete": [{"key": "a"}]}}}))
            .await;
        assert_eq!(fault(&twice), ("VALIDATION_FAILED", Some("tags.delete[0].key")));
        let separator = app.update(&id, json!({"fragment": {"tags": {"set": [{"key": "a", "value": "x/y"}]}}})).await;
        assert_eq!(fault(&separator), ("VALIDATION_FAILED", Some("tags.set[0].value")));
    }

    async fn a_refused_update_stores_nothing_at_all(app) {
        let id = app.create(json!({"tags": [{"key": "keep", "value": "1"}]})).await["id"].as_str().unwrap().to_owned();
        let before = app.profile(&id).await;
        let response = app
            .update(&id, json!({"fragment": {"tags": {"set": [{"key": "new", "value": "1"}], "update": [{"key": "missing", "value": "2"}]}}}))
            .await;
        assert_eq!(fault(&response).0, "TAG_NOT_FOUND");
        assert_eq!(app.profile(&id).await, before);
    }

    async fn scrip_tags_and_fragment_values_share_one_tag_set(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        payload(&app.update(&id, json!({"scrip": {"tags": ["vip"]}})).await);
        let response = app.update(&id, json!({"fragment": {"tags": {"update": [{"key": "vip", "value": "gold"}]}}})).await;
        assert_eq!(payload(&response)["profile"]["tags"], json!([{"key": "vip", "value": "gold"}]));
        assert_eq!(payload(&response)["changes"], json!([{"field": "tags.vip", "before": {"value": null}, "after": {"value": "gold"}}]));
    }

    async fn profile_values_write_standard_fields_by_their_vendor_names(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"profileValues": {"values": [
                {"name": "First_Name", "value": "Ana"}, {"name": "Family_Name", "value": "García"},
                {"name": "Email", "value": "ana@example.com"}, {"name": "Company", "value": "Tech Solutions"},
                {"name": "Category_Name", "value": "VIP"}
            ]}}))
            .await;
        let profile = &payload(&response)["profile"];
        assert_eq!(profile["firstName"], "Ana");
        assert_eq!(
            profile["values"],
            json!({"First_Name": "Ana", "Family_Name": "García", "Email": "ana@example.com", "Company": "Tech Solutions", "Category_Name": "VIP"})
        );
        let cleared = app.update(&id, json!({"profileValues": {"values": [{"name": "Company", "value": null}]}})).await;
        assert_eq!(payload(&cleared)["changes"], json!([{"field": "organization", "before": "Tech Solutions", "after": null}]));
        let bad = app.update(&id, json!({"profileValues": {"values": [{"name": "City", "value": "x"}, {"name": "Email", "value": "nope"}]}})).await;
        assert_eq!(fault(&bad), ("INVALID_FIELD_VALUE", Some("values[1]")));
        let twice = app.update(&id, json!({"profileValues": {"values": [{"name": "City", "value": "a"}, {"name": "City", "value": "b"}]}})).await;
        assert_eq!(fault(&twice), ("VALIDATION_FAILED", Some("values[1]")));
        assert_eq!(app.profile(&id).await["city"], Value::Null);
    }

    async fn competition_labs_replaces_the_member_resource_and_keeps_the_rest(app) {
        let created = app
            .create(json!({"name": "Old", "firstName": "Ana", "attributes": {"old": 1}, "groups": ["old"], "tags": [{"key": "t", "value": "v"}]}))
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"competitionLabs": {"id": id, "memberType": "TEAM", "memberRefId": "m-1", "name": "Team Blue",
                "groups": ["CL", "EU"], "metadata": [{"key": "level", "value": "3"}]}}))
            .await;
        let profile = &payload(&response)["profile"];
        assert_eq!(profile["externalId"], "m-1");
        assert_eq!(profile["memberType"], "TEAM");
        assert_eq!(profile["name"], "Team Blue");
        assert_eq!(profile["groups"], json!(["CL", "EU"]));
        assert_eq!(profile["attributes"], json!({"level": "3"}));
        assert_eq!(profile["firstName"], "Ana");
        assert_eq!(profile["tags"], json!([{"key": "t", "value": "v"}]));
        let bare = app.update(&id, json!({"competitionLabs": {"id": id, "memberType": "TEAM", "memberRefId": "m-1"}})).await;
        let profile = &payload(&bare)["profile"];
        assert_eq!((profile["name"].clone(), profile["groups"].clone(), profile["attributes"].clone()), (Value::Null, json!([]), json!({})));
    }

    async fn competition_labs_refusals_carry_their_codes(app) {
        let id = app.create(json!({"externalId": "m-1"})).await["id"].as_str().unwrap().to_owned();
        app.create(json!({"externalId": "m-2"})).await;
        let put = |member_ref_id: &str, body_id: &str| json!({"competitionLabs": {"id": body_id, "memberType": "INDIVIDUAL", "memberRefId": member_ref_id}});
        let empty = app.update(&id, put(" ", &id)).await;
        assert_eq!(fault(&empty), ("VALIDATION_FAILED", Some("memberRefId")));
        assert_eq!(empty["errors"][0]["extensions"]["vendorCode"], 1003);
        assert_eq!(fault(&app.update(&id, put("m-9", &id)).await), ("IMMUTABLE_FIELD", Some("memberRefId")));
        let other = "00000000-0000-0000-0000-000000000000";
        assert_eq!(fault(&app.update(&id, put("m-1", other)).await), ("VALIDATION_FAILED", Some("id")));
        let fresh = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        assert_eq!(fault(&app.update(&fresh, put("m-2", &fresh)).await), ("DUPLICATE_EXTERNAL_ID", Some("memberRefId")));
        let repeated = app
            .update(&fresh, json!({"competitionLabs": {"id": fresh, "memberType": "TEAM", "memberRefId": "m-3", "groups": ["a", "a"]}}))
            .await;
        assert_eq!(fault(&repeated), ("VALIDATION_FAILED", Some("groups[1]")));
    }

    async fn an_update_that_changes_nothing_keeps_the_version(app) {
        let id = app.create(json!({"attributes": {"plan": "basic"}})).await["id"].as_str().unwrap().to_owned();
        let response = app.update(&id, json!({"scrip": {"attributes": {"plan": "basic"}}})).await;
        assert_eq!(payload(&response)["changes"], json!([]));
        assert_eq!(payload(&response)["profile"]["version"], 1);
        assert_eq!(app.profile(&id).await["version"], 1);
    }

    async fn every_changing_update_raises_the_version_by_exactly_one(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let response = app.update(&id, json!({"scrip": {"externalId": "x", "attributes": {"a": 1, "b": 2}, "tags": ["t1", "t2"]}})).await;
        assert_eq!(payload(&response)["changes"].as_array().unwrap().len(), 5);
        assert_eq!(app.profile(&id).await["version"], 2);
    }

    async fn expected_version_must_match_the_stored_version(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let stale = app
            .graphql(UPDATE, json!({"ref": {"id": id}, "update": {"scrip": {"tags": ["a"]}}, "expectedVersion": 7}))
            .await;
        assert_eq!(fault(&stale).0, "VERSION_CONFLICT");
        assert_eq!(stale["errors"][0]["extensions"]["currentVersion"], 1);
        let current = app
            .graphql(UPDATE, json!({"ref": {"id": id}, "update": {"scrip": {"tags": ["a"]}}, "expectedVersion": 1}))
            .await;
        assert_eq!(payload(&current)["profile"]["version"], 2);
    }

    async fn a_dry_run_reports_the_result_and_stores_nothing(app) {
        let id = app.create(json!({"attributes": {"plan": "basic"}})).await["id"].as_str().unwrap().to_owned();
        let before = app.profile(&id).await;
        let response = app
            .graphql(UPDATE, json!({"ref": {"id": id}, "update": {"scrip": {"attributes": {"plan": "premium"}}}, "dryRun": true}))
            .await;
        let preview = payload(&response);
        assert_eq!(preview["dryRun"], true);
        assert_eq!(preview["profile"]["attributes"], json!({"plan": "premium"}));
        assert_eq!(preview["changes"], json!([{"field": "attributes.plan", "before": "basic", "after": "premium"}]));
        assert_eq!(app.profile(&id).await, before);
        let refused = app
            .graphql(UPDATE, json!({"ref": {"id": id}, "update": {"fragment": {"tags": {"update": [{"key": "x", "value": "y"}]}}}, "dryRun": true}))
            .await;
        assert_eq!(fault(&refused).0, "TAG_NOT_FOUND");
    }

    async fn an_update_names_exactly_one_dialect(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let response = app.update(&id, json!({"scrip": {"tags": []}, "spruce": {"role": "x"}})).await;
        assert!(response["errors"].as_array().is_some_and(|e| !e.is_empty()), "{response}");
        let none = app.update(&id, json!({})).await;
        assert!(none["errors"].as_array().is_some_and(|e| !e.is_empty()), "{none}");
    }
}
