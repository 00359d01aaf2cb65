//! `GET /openapi.json`: the HTTP surface as OpenAPI 3.1. The document is `openapi.json` beside
//! this file; a test checks that it names every route of the router, and the router every path
//! it names, so the two cannot drift apart.

use axum::http::header;
use axum::response::IntoResponse;

pub const SPEC: &str = include_str!("openapi.json");

pub async fn spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}
