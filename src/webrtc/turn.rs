//! TURN REST credentials (`--turn-secret`): time-limited, per session, as coturn's
//! `use-auth-secret` (and most TURN servers) check them: the username is `expiry:stream`
//! (Unix seconds), the credential base64(HMAC-SHA1(secret, username)). No static password is
//! ever handed out, and a leaked credential dies at its expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// `(username, credential)` for a session of `stream`, valid for `ttl` from `now`.
pub fn rest_credentials(
    secret: &str,
    stream: &str,
    ttl: Duration,
    now: SystemTime,
) -> (String, String) {
    let expiry = now.duration_since(UNIX_EPOCH).unwrap_or_default() + ttl;
    let username = format!("{}:{stream}", expiry.as_secs());
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        secret.as_bytes(),
    );
    let tag = aws_lc_rs::hmac::sign(&key, username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_coturns_rest_scheme() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (user, cred) = rest_credentials("north-secret", "cam", Duration::from_secs(3600), now);
        assert_eq!(user, "1700003600:cam");
        // Python: base64(hmac.new(b"north-secret", b"1700003600:cam", sha1).digest())
        assert_eq!(cred, "IXOca48ucS8nKh7yuAe58AblG3w=");
    }
}
