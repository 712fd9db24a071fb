//! The OpenAPI 3.1 description served at `/openapi.json`, written by hand
//! next to the routes (`openapi.json`); a test checks that it names every
//! route the router serves.

pub const SPEC: &str = include_str!("openapi.json");
