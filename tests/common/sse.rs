//! WHEP server-sent events as a test reads them: subscribe through the 201's `Link`, then
//! read `event:`/`data:` blocks as they come.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{open, request, BodyReader, StreamingResponse};
use super::WhepSession;

/// The extension's link relation.
pub const REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";

/// The subscription URL the 201 of WHEP session `v` links (a path).
pub fn link(v: &WhepSession) -> String {
    let links = v.response.headers_all("link");
    let link = links
        .iter()
        .find(|l| l.contains(REL))
        .unwrap_or_else(|| panic!("no events link: {links:?}"));
    link[1..link.find('>').expect("<url>")].to_owned()
}

/// The event stream of WHEP session `v` on node `base`, subscribed to `asked` (a JSON array)
/// with `headers`, then opened (200).
pub async fn subscribe(
    base: &str,
    v: &WhepSession,
    asked: &[u8],
    headers: &[(&str, &str)],
) -> StreamingResponse {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let r = request("POST", &format!("{base}{}", link(v)), &h, asked)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let at = format!("{base}{}", r.header("location").expect("Location"));
    let stream = open("GET", &at, headers, b"").await.unwrap();
    assert_eq!(stream.status, 200);
    stream
}

/// The events of an SSE stream as they come: (event, data) pairs, until `n` or `within`.
/// `text` keeps what was read between calls.
pub async fn events(
    body: &mut BodyReader,
    text: &mut String,
    n: usize,
    within: Duration,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + within;
    loop {
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((event.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if events.len() >= n || left.is_zero() {
            return events;
        }
        match tokio::time::timeout(left, body.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            _ => return events,
        }
    }
}
