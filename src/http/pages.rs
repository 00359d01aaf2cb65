//! `GET /` (streams with links) and `GET /play/{s}` (a WHEP player): plain HTML + JS.

use axum::extract::Path;
use axum::response::Html;

use super::{check_name, ApiError};

pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

pub async fn play(Path(name): Path<String>) -> Result<Html<String>, ApiError> {
    check_name(&name)?;
    // The name is [A-Za-z0-9._-] only: safe to put into the page as is.
    Ok(Html(include_str!("play.html").replace("{{STREAM}}", &name)))
}

pub async fn publish(Path(name): Path<String>) -> Result<Html<String>, ApiError> {
    check_name(&name)?;
    Ok(Html(
        include_str!("publish.html").replace("{{STREAM}}", &name),
    ))
}
