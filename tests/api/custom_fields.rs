//! defineCustomField, customFields, and custom values through profileValues.

use serde_json::{Value, json};

use crate::on_both_databases;

const DEFINE: &str =
    "mutation($input: CustomFieldInput!) { defineCustomField(input: $input) { name type options maxLength } }";

fn code(response: &Value) -> (&str, Option<&str>) {
    let error = &response["errors"][0];
    (
        error["extensions"]["code"].as_str().unwrap_or_default(),
        error["extensions"]["field"].as_str(),
    )
}

on_both_databases! {
    async fn custom_fields_are_defined_listed_and_redefined_by_name(app) {
        let size = app.ok(DEFINE, json!({"input": {"name": "T_Shirt_Size", "type": "DROPDOWN", "options": ["S", "M"]}})).await;
        assert_eq!(size["defineCustomField"], json!({"name": "T_Shirt_Size", "type": "DROPDOWN", "options": ["S", "M"], "maxLength": null}));
        app.ok(DEFINE, json!({"input": {"name": "Notes", "type": "TEXT", "maxLength": 20}})).await;
        app.ok(DEFINE, json!({"input": {"name": "T_Shirt_Size", "type": "DROPDOWN", "options": ["S", "M", "L"]}})).await;
        let list = app.ok("{ customFields { name type options maxLength } }", json!({})).await;
        assert_eq!(
            list["customFields"],
            json!([
                {"name": "Notes", "type": "TEXT", "options": [], "maxLength": 20},
                {"name": "T_Shirt_Size", "type": "DROPDOWN", "options": ["S", "M", "L"], "maxLength": null},
            ])
        );
    }

    async fn bad_definitions_are_validation_failed_at_their_field(app) {
        for (input, field) in [
            (json!({"name": "1st", "type": "TEXT"}), "name"),
            (json!({"name": "Email", "type": "TEXT"}), "name"),
            (json!({"name": "Size", "type": "DROPDOWN"}), "options"),
            (json!({"name": "Size", "type": "DROPDOWN", "options": ["S", "S"]}), "options[1]"),
            (json!({"name": "Notes", "type": "TEXT", "maxLength": 0}), "maxLength"),
            (json!({"name": "Notes", "type": "TEXT", "maxLength": 10001}), "maxLength"),
        ] {
            let response = app.graphql(DEFINE, json!({"input": input})).await;
            assert_eq!(code(&response), ("VALIDATION_FAILED", Some(field)), "{input}");
        }
        assert_eq!(app.ok("{ customFields { name } }", json!({})).await["customFields"], json!([]));
    }

    async fn custom_values_are_written_by_name_and_shown_beside_standard_ones(app) {
        for input in [
            json!({"name": "T_Shirt_Size", "type": "DROPDOWN", "options": ["S", "M"]}),
            json!({"name": "Arrival", "type": "DATE"}),
            json!({"name": "Guests", "type": "NUMBER"}),
            json!({"name": "Vegan", "type": "BOOLEAN"}),
            json!({"name": "Notes", "type": "TEXT", "maxLength": 5}),
        ] {
            app.ok(DEFINE, json!({"input": input})).await;
        }
        let id = app.create(json!({"firstName": "Ana"})).await["id"].as_str().unwrap().to_owned();
        let response = app
            .update(&id, json!({"profileValues": {"values": [
                {"name": "T_Shirt_Size", "value": "M"}, {"name": "Arrival", "value": "2025-06-01"},
                {"name": "Guests", "value": "2"}, {"name": "Vegan", "value": "true"}, {"name": "Notes", "value": "hi"}
            ]}}))
            .await;
        assert!(response.get("errors").is_none(), "{response}");
        let profile = app.profile(&id).await;
        assert_eq!(
            profile["values"],
            json!({"First_Name": "Ana", "T_Shirt_Size": "M", "Arrival": "2025-06-01", "Guests": "2", "Vegan": "true", "Notes": "hi"})
        );
        assert_eq!(profile["customFields"][0], json!({"name": "Arrival", "type": "DATE", "value": "2025-06-01"}));
        let changes = &response["data"]["updateProfile"]["changes"];
        assert!(changes.as_array().unwrap().contains(&json!({"field": "customFields.Guests", "before": null, "after": "2"})));
        let cleared = app.update(&id, json!({"profileValues": {"values": [{"name": "Notes", "value": null}]}})).await;
        assert_eq!(cleared["data"]["updateProfile"]["changes"], json!([{"field": "customFields.Notes", "before": "hi", "after": null}]));
    }

    async fn reads_show_groups_and_custom_values_asked_for_in_fragments_and_skip_them_otherwise(app) {
        app.ok(DEFINE, json!({"input": {"name": "Notes", "type": "TEXT"}})).await;
        let id = app.create(json!({"firstName": "Ana", "groups": ["b", "a"], "tags": [{"key": "vip", "value": "gold"}]})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let set = app.update(&id, json!({"profileValues": {"values": [{"name": "Notes", "value": "hi"}]}})).await;
        assert!(set.get("errors").is_none(), "{set}");
        let owned = json!({
            "groups": ["a", "b"],
            "customFields": [{"name": "Notes", "value": "hi"}],
            "values": {"First_Name": "Ana", "Notes": "hi"},
        });
        let named = app
            .ok(
                "query($id: ID!) { profile(ref: {id: $id}) { ...Owned } }
                 fragment Owned on Profile { groups ... on Profile { customFields { name value } values } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(named["profile"], owned);
        let listed = app
            .ok(
                "{ profiles(first: 5) { nodes { ... on Profile { groups } } edges { node { ...Custom } } } }
                 fragment Custom on Profile { customFields { name value } values }",
                json!({}),
            )
            .await;
        assert_eq!(listed["profiles"]["nodes"], json!([{"groups": ["a", "b"]}]));
        assert_eq!(listed["profiles"]["edges"][0]["node"], json!({"customFields": [{"name": "Notes", "value": "hi"}], "values": {"First_Name": "Ana", "Notes": "hi"}}));
        let bare = app.ok("query($id: ID!) { profile(ref: {id: $id}) { firstName tags { key } } }", json!({"id": id})).await;
        assert_eq!(bare["profile"], json!({"firstName": "Ana", "tags": [{"key": "vip"}]}));
    }

    async fn updates_that_show_only_the_version_keep_or_replace_groups_and_custom_values_as_asked(app) {
        app.ok(DEFINE, json!({"input": {"name": "Notes", "type": "TEXT"}})).await;
        let id = app.create(json!({"groups": ["old"]})).await["id"].as_str().unwrap().to_owned();
        const SLIM: &str = "mutation($ref: ProfileRef!, $update: ProfileUpdate!) {
            updateProfile(ref: $ref, update: $update) { profile { version } changes { field before after } } }";
        let slim = |update: Value| app.ok(SLIM, json!({"ref": {"id": id}, "update": update}));
        let noted = slim(json!({"profileValues": {"values": [{"name": "Notes", "value": "hi"}]}})).await;
        assert_eq!(noted["updateProfile"]["changes"], json!([{"field": "customFields.Notes", "before": null, "after": "hi"}]));
        let tagged = slim(json!({"scrip": {"attributes": {"a": 1}, "tags": ["vip"]}})).await;
        assert_eq!(tagged["updateProfile"]["profile"]["version"], 3);
        let profile = app.profile(&id).await;
        assert_eq!(profile["groups"], json!(["old"]));
        assert_eq!(profile["values"], json!({"Notes": "hi"}));
        let regrouped = slim(json!({"competitionLabs": {"id": id, "memberType": "TEAM", "memberRefId": "m-1", "groups": ["new"]}})).await;
        let changes = regrouped["updateProfile"]["changes"].as_array().unwrap();
        assert!(changes.contains(&json!({"field": "groups", "before": ["old"], "after": ["new"]})), "{changes:?}");
        let profile = app.profile(&id).await;
        assert_eq!((profile["groups"].clone(), profile["values"].clone()), (json!(["new"]), json!({"Notes": "hi"})));
    }

    async fn unknown_names_and_ill_typed_values_refuse_the_whole_call(app) {
        app.ok(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["S"]}})).await;
        app.ok(DEFINE, json!({"input": {"name": "Arrival", "type": "DATE"}})).await;
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let before = app.profile(&id).await;
        let unknown = app
            .update(&id, json!({"profileValues": {"values": [{"name": "City", "value": "x"}, {"name": "Shoe", "value": "42"}, {"name": "Hat", "value": "L"}]}}))
            .await;
        assert_eq!(code(&unknown), ("UNKNOWN_FIELD", Some("values[1]")));
        assert_eq!(unknown["errors"][0]["extensions"]["unknownFields"], json!(["Shoe", "Hat"]));
        let message = unknown["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("Shoe") && message.contains("Hat"), "{message}");
        for (name, value) in [("Size", "XL"), ("Arrival", "01/06/2025")] {
            let bad = app.update(&id, json!({"profileValues": {"values": [{"name": "City", "value": "x"}, {"name": name, "value": value}]}})).await;
            assert_eq!(code(&bad), ("INVALID_FIELD_VALUE", Some("values[1]")));
        }
        assert_eq!(app.profile(&id).await, before);
    }

    async fn a_redefinition_may_not_strand_stored_values(app) {
        app.ok(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["S", "M"]}})).await;
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        app.update(&id, json!({"profileValues": {"values": [{"name": "Size", "value": "M"}]}})).await;
        let drop_used = app.graphql(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["S"]}})).await;
        assert_eq!(code(&drop_used), ("VALIDATION_FAILED", Some("options")));
        let retype = app.graphql(DEFINE, json!({"input": {"name": "Size", "type": "TEXT"}})).await;
        assert_eq!(code(&retype), ("VALIDATION_FAILED", Some("type")));
        let drop_unused = app.ok(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["M", "L"]}})).await;
        assert_eq!(drop_unused["defineCustomField"]["options"], json!(["M", "L"]));
        app.ok(DEFINE, json!({"input": {"name": "Unused", "type": "NUMBER"}})).await;
        let retyped = app.ok(DEFINE, json!({"input": {"name": "Unused", "type": "BOOLEAN"}})).await;
        assert_eq!(retyped["defineCustomField"]["type"], "BOOLEAN");
    }

    async fn a_deleted_profile_takes_its_custom_values_with_it(app) {
        app.ok(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["S", "M"]}})).await;
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        app.update(&id, json!({"profileValues": {"values": [{"name": "Size", "value": "M"}]}})).await;
        app.ok("mutation($id: ID!) { deleteProfile(ref: {id: $id}) { id } }", json!({"id": id})).await;
        // With the value gone, the option it used may be removed.
        app.ok(DEFINE, json!({"input": {"name": "Size", "type": "DROPDOWN", "options": ["S"]}})).await;
    }
}
