//! The HTTP surface: WHEP, ingest, the stream API, player pages. One handler per verb.

mod admin;
mod api;
mod app;
pub mod auth;
mod health;
mod ingest;
mod metrics;
mod openapi;
mod pages;
pub mod serve;
mod session;
pub mod srt;
mod sse;
mod whep;
mod whip;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

pub use app::App;

pub type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    let limits = serve::HttpLimits::from(&app.cfg);
    Router::new()
        .route("/", get(pages::index))
        .route("/play/{stream}", get(pages::play))
        .route(
            "/whep/{stream}",
            post(whep::post)
                .head(session::head)
                .options(session::options_whep),
        )
        .route(
            "/whep/{stream}/{session}",
            axum::routing::patch(whep::patch)
                .delete(whep::delete)
                .options(session::options_session),
        )
        .route(
            "/whep/{stream}/{session}/sse",
            post(sse::subscribe).get(sse::events).options(sse::options),
        )
        .route(
            "/whip/{stream}",
            post(whip::post)
                .head(session::head)
                .options(session::options_whip),
        )
        .route(
            "/whip/{stream}/{session}",
            axum::routing::patch(whip::patch)
                .delete(whip::delete)
                .options(session::options_session),
        )
        .route("/publish/{stream}", get(pages::publish))
        .route("/ingest/{stream}", put(ingest::put).post(ingest::put))
        .route("/metrics", get(metrics::metrics))
        .route("/streams", get(api::list))
        .route(
            "/streams/{stream}",
            get(api::get)
                .post(admin::register)
                .delete(admin::unregister),
        )
        .route("/streams/{stream}/sessions", get(admin::sessions))
        .route(
            "/streams/{stream}/sessions/{session}",
            axum::routing::delete(admin::kick),
        )
        .route("/openapi.json", get(openapi::spec))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/cluster", get(api::cluster))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // Every body but TS ingest is read here, within --http-timeout and --max-body.
        .layer(axum::middleware::from_fn_with_state(
            limits,
            serve::read_body_in_time,
        ))
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
        HeaderValue::from_static("Location, ETag, Link, Accept-Post, Accept-Patch, Playback-Url"),
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
    #[error("{0}")]
    NotAcceptable(String),
    #[error("unsupported Content-Type {got:?}: send {want}")]
    UnsupportedMediaType { got: String, want: &'static str },
    #[error("{0}")]
    Unavailable(String),
    /// The stream is known but not live (its source ended): 409 + Retry-After.
    #[error("{0}")]
    NotLive(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    PreconditionRequired(String),
    #[error("missing or wrong bearer token: send Authorization: Bearer <{0} token>")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// 307 to this absolute URL (a full node sends viewers to another node of the cluster).
    #[error("this node is full; go to {0}")]
    Redirect(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotLive(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Redirect(_) => StatusCode::TEMPORARY_REDIRECT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut res = (status, format!("{self}\n")).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tsbridge\""),
            );
        }
        if let ApiError::Redirect(to) = &self {
            if let Ok(v) = HeaderValue::from_str(to) {
                res.headers_mut().insert(header::LOCATION, v);
            }
        }
        if matches!(self, ApiError::Unavailable(_) | ApiError::NotLive(_)) {
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
            "invalid stream name {name:?}: {}",
            crate::config::STREAM_NAME_RULE
        )))
    }
}
