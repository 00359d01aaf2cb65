//! The HTTP surface: WHEP, ingest, the stream API, player pages. One handler per verb.

mod api;
pub mod client;
mod ingest;
mod pages;
mod whep;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::server::App;

pub type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    let max_body = app.cfg.max_body;
    Router::new()
        .route("/", get(pages::index))
        .route("/play/{stream}", get(pages::play))
        .route("/whep/{stream}", post(whep::post).options(whep::options))
        .route(
            "/whep/{stream}/{session}",
            axum::routing::patch(whep::patch)
                .delete(whep::delete)
                .options(whep::options_session),
        )
        .route("/ingest/{stream}", put(ingest::put).post(ingest::put))
        .route("/streams", get(api::list))
        .route("/streams/{stream}", get(api::get))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(cors))
        .with_state(app)
}

/// Every response may be read cross-origin (players on other origins, WHEP clients in pages).
async fn cors(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Accept-Post, Accept-Patch"),
    );
    res
}

/// Errors a handler answers with: one status per variant, a plain-text reason for the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("unsupported Content-Type {got:?}: send {want}")]
    UnsupportedMediaType { got: String, want: &'static str },
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut res = (status, format!("{self}\n")).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        res
    }
}

/// Require `want` as the request's media type (parameters such as charset are ignored).
fn require_content_type(headers: &HeaderMap, want: &'static str) -> Result<(), ApiError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = got.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            got: got.to_string(),
            want,
        })
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if crate::config::valid_stream_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "invalid stream name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"
        )))
    }
}
