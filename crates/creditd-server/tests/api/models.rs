//! The price book.

use serde_json::{Value, json};

use crate::support::{Api, SONNET};

#[tokio::test]
async fn put_creates_and_versions_a_model() {
    let api = Api::new().await;
    let first = api.sonnet().await;
    let v1 = first["price_version"].as_i64().unwrap();
    assert_eq!(first["multiplier"], "1");
    assert_eq!(first["free"], false);
    assert_eq!(first["credits"], json!({"request": "0", "image": null, "tool_call": null}));
    assert_eq!(first["cost_usd"], json!({"request": "0", "image": null, "tool_call": null}));

    let second = api
        .put(
            &format!("/v1/models/{SONNET}"),
            json!({"cost_usd_per_mtok": {"input": "3", "output": "15"}, "multiplier": "1.5",
                   "credits_per_mtok": {"input": "100", "output": "100", "cache_read": "0", "cache_write": "0"},
                   "tiers": [{"above_input_tokens": 200000, "cost_usd_per_mtok": {"input": "6", "output": "22.5"}}]}),
        )
        .await;
    let second = second.expect(200);
    assert!(second["price_version"].as_i64().unwrap() > v1, "{second}");
    assert_eq!(second["multiplier"], "1.5");
    assert_eq!(second["max_output_tokens"], 4096, "the default");
    assert_eq!(second["credits_per_mtok"]["input"], "100");
    assert_eq!(second["tiers"][0]["above_input_tokens"], 200000);
    assert_eq!(second["tiers"][0]["cost_usd_per_mtok"]["output"], "22.5");
    assert_eq!(second["tiers"][0]["credits_per_mtok"], Value::Null);

    let got = api.get(&format!("/v1/models/{SONNET}")).await;
    assert_eq!(got.expect(200)["price_version"], second["price_version"]);
    assert_eq!(got.body["multiplier"], "1.5");

    // What GET shows can be PUT back.
    let again = api.put(&format!("/v1/models/{SONNET}"), got.body.clone()).await;
    assert_eq!(again.expect(200)["multiplier"], "1.5");
    assert_eq!(again.body["tiers"], got.body["tiers"]);
}

#[tokio::test]
async fn model_ids_may_contain_slashes_and_colons() {
    let api = Api::new().await;
    let put = api.put("/v1/models/openai/gpt-4o:2024-08@eu", json!({"cost_usd_per_mtok": {"input": "2.5"}})).await;
    assert_eq!(put.expect(200)["id"], "openai/gpt-4o:2024-08@eu");
    let got = api.get("/v1/models/openai/gpt-4o:2024-08@eu").await;
    assert_eq!(got.expect(200)["cost_usd_per_mtok"]["input"], "2.5");
}

#[tokio::test]
async fn list_models() {
    let api = Api::new().await;
    assert_eq!(api.get("/v1/models").await.expect(200)["data"], json!([]));
    api.sonnet().await;
    api.put("/v1/models/cheap", json!({"credits": {"request": "1"}, "multiplier": "0.5"})).await.expect(200);
    let list = api.get("/v1/models").await;
    let list = list.expect(200);
    let mut ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["cheap", SONNET]);
    assert_eq!(list["next_cursor"], Value::Null);
}

#[tokio::test]
async fn model_errors() {
    let api = Api::new().await;
    api.get("/v1/models/nope").await.expect_error(404, "not_found");
    let too_long = format!("/v1/models/{}", "m".repeat(129));
    api.put(&too_long, json!({})).await.expect_error(400, "invalid_request");
    api.get("/v1/models/bad%20id").await.expect_error(400, "invalid_request");
    for body in [
        json!({"cost_usd_per_mtok": {"input": "3.0"}}),
        json!({"cost_usd_per_mtok": {"input": 3}}),
        json!({"cost_usd_per_mtok": {"input": "-1"}}),
        json!({"cost_usd_per_mtok": {"input": "1000001"}}),
        json!({"cost_usd_per_mtok": {"input": "0.0000001"}}),
        json!({"cost_usd_per_mtok": {"inptu": "3"}}),
        json!({"multiplier": "1001"}),
        json!({"multiplier": "1e2"}),
        json!({"free": "yes"}),
        json!({"max_output_tokens": 1000000001u64}),
        json!({"max_output_tokens": -1}),
        json!({"tiers": [{"cost_usd_per_mtok": {"input": "1"}}]}),
        json!({"tiers": [{"above_input_tokens": 10}, {"above_input_tokens": 10}]}),
        json!({"credits": {"request": "abc"}}),
        json!({"cost_usd": []}),
    ] {
        let r = api.put(&format!("/v1/models/{SONNET}"), body.clone()).await;
        r.expect_error(400, "invalid_request");
    }
    api.get("/v1/models").await.expect(200);
    assert_eq!(api.get("/v1/models").await.body["data"], json!([]), "no refused PUT created a model");
}

/// Issue 18.6: `PUT /v1/models/x` with every field `null` made a model that
/// costs nothing. A model needs at least one rate ("0" to mean free).
#[tokio::test]
async fn a_model_with_every_field_null_is_free() {
    let api = Api::new().await;
    for body in [
        json!({}),
        json!({"cost_usd_per_mtok": null, "cost_usd": null, "credits_per_mtok": null, "credits": null,
               "multiplier": null, "free": null, "max_output_tokens": null, "tiers": null}),
        json!({"cost_usd_per_mtok": {"input": null}, "cost_usd": {}, "free": true}),
    ] {
        let r = api.put("/v1/models/x", body.clone()).await;
        r.expect_error(400, "invalid_request");
    }
    api.get("/v1/models/x").await.expect_error(404, "not_found");
    let free = api.put("/v1/models/x", json!({"credits": {"request": "0"}, "free": true})).await;
    assert_eq!(free.expect(200)["credits"]["request"], "0");
}

/// Issue 13.2: changing one field of a model took the whole body again;
/// `PATCH` merges the fields given into the current price.
#[tokio::test]
async fn patch_changes_only_the_fields_given() {
    let api = Api::new().await;
    let first = api.sonnet().await;
    let path = format!("/v1/models/{SONNET}");
    let admin = api.key("admin").await;
    let patch = |body: Value| {
        let (api, path, admin) = (&api, path.clone(), admin.clone());
        async move { api.call("PATCH", &path, Some(&admin), Some(body)).await }
    };

    let r = patch(json!({"cost_usd_per_mtok": {"output": "16"}, "multiplier": "1.2"})).await;
    let patched = r.expect(200);
    assert_eq!(patched["price_version"], first["price_version"].as_i64().unwrap() + 1, "{patched}");
    assert_eq!(patched["cost_usd_per_mtok"]["output"], "16");
    assert_eq!(patched["cost_usd_per_mtok"]["input"], "3", "the other rates of the object stay");
    assert_eq!(patched["cost_usd_per_mtok"]["cache_read"], "0.3");
    assert_eq!(patched["multiplier"], "1.2");
    assert_eq!(patched["max_output_tokens"], 8192, "fields not given stay");
    assert_eq!(api.get(&path).await.expect(200), patched);

    // `null` is "not given", as in a PUT.
    let r = patch(json!({"cost_usd_per_mtok": {"cache_write": null}})).await;
    assert_eq!(r.expect(200)["cost_usd_per_mtok"]["cache_write"], Value::Null);

    // The same values again: no new version.
    let version = api.get(&path).await.expect(200)["price_version"].clone();
    assert_eq!(patch(json!({"multiplier": "1.2"})).await.expect(200)["price_version"], version);

    // Refused: unknown fields by name, a result that is not a valid price,
    // a body that is not an object; none of them writes anything.
    let r = patch(json!({"multiplyer": "2"})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "multiplyer");
    let r = patch(json!({"cost_usd_per_mtok": {"inptu": "2"}})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "cost_usd_per_mtok.inptu");
    patch(json!({"multiplier": "-1"})).await.expect_error(400, "invalid_request");
    let r = patch(json!({"cost_usd_per_mtok": null, "cost_usd": null, "credits": null})).await;
    r.expect_error(400, "invalid_request");
    let r = api.raw("PATCH", &path, Some(&admin), b"[1]".to_vec(), &[]).await;
    r.expect_error(400, "invalid_request");
    assert_eq!(api.get(&path).await.expect(200)["price_version"], version, "nothing refused was written");

    // A model that does not exist is not created by a PATCH.
    let r = api.call("PATCH", "/v1/models/nope", Some(&admin), Some(json!({"multiplier": "1"}))).await;
    r.expect_error(404, "not_found");
    api.get("/v1/models/nope").await.expect_error(404, "not_found");
    let gateway = api.key("gateway").await;
    let r = api.call("PATCH", &path, Some(&gateway), Some(json!({"multiplier": "9"}))).await;
    assert_eq!(r.expect_error(403, "forbidden")["required_role"], "admin");
}
