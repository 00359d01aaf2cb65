//! The SRT `streamid` a caller sends: which stream, publish or read, and its token.
//!
//! Two forms, as SRT peers write them:
//! - SRT's access-control syntax (`#!::r=cam1,m=publish,s=TOKEN`): `r` the stream, `m`
//!   `publish` (default) or `request`, the token from `s` (session), else `token`, else `u`
//!   (user: some encoders have no other field), `latency` in milliseconds (the connection's
//!   latency in place of `--srt-latency-ms`; SRT still takes the caller's own if larger).
//!   Unknown keys are ignored (the syntax reserves many), a repeated key is refused.
//! - A bare name, optionally with a query: `cam1`, `cam1?token=…&m=request&latency=300`.

use std::time::Duration;

use crate::config::{valid_stream_name, STREAM_NAME_RULE};

/// Longest stream id SRT carries (512 bytes in libsrt).
const MAX_LEN: usize = 512;

/// What a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send TS into the stream (a source).
    Publish,
    /// Read the stream as TS.
    Request,
}

/// A parsed stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    pub name: String,
    pub mode: Mode,
    pub token: Option<String>,
    /// `latency=`: this connection's latency.
    pub latency: Option<Duration>,
}

/// Parses `s`; the error says what is wrong and how it should look.
pub fn parse(s: &str) -> Result<StreamId, String> {
    const FORMS: &str = "expected #!::r=NAME,m=publish|request,s=TOKEN or NAME[?token=TOKEN]";
    if s.len() > MAX_LEN {
        return Err(format!("stream id longer than {MAX_LEN} bytes"));
    }
    let (pairs, sep, mut name): (&str, char, Option<&str>) = match s.strip_prefix("#!::") {
        Some(rest) => (rest, ',', None),
        None => {
            let (name, query) = s.split_once('?').unwrap_or((s, ""));
            (query, '&', Some(name))
        }
    };
    let (mut mode, mut session, mut token, mut user, mut latency) = (None, None, None, None, None);
    for pair in pairs.split(sep).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} in the stream id is not KEY=VALUE; {FORMS}"))?;
        let slot = match k {
            "r" if name.is_none() || sep == ',' => &mut name,
            "m" => &mut mode,
            "s" => &mut session,
            "token" => &mut token,
            "u" => &mut user,
            "latency" => &mut latency,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(format!("{k:?} is given twice in the stream id"));
        }
    }
    let name = match name {
        Some(n) if !n.is_empty() => n,
        _ => return Err(format!("no stream name in the stream id; {FORMS}")),
    };
    if !valid_stream_name(name) {
        return Err(format!("invalid stream name {name:?}: {STREAM_NAME_RULE}"));
    }
    let mode = match mode {
        None | Some("publish") => Mode::Publish,
        Some("request") => Mode::Request,
        Some(m) => {
            return Err(format!(
                "mode m={m:?} is not supported: m=publish (send TS) or m=request (read TS)"
            ))
        }
    };
    let latency = match latency {
        None => None,
        Some(l) => Some(
            l.parse::<u64>()
                .ok()
                .filter(|&ms| ms <= 60_000)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("latency={l:?}: milliseconds, 0 to 60000"))?,
        ),
    };
    let token = session.or(token).or(user).map(str::to_owned);
    Ok(StreamId {
        name: name.to_owned(),
        mode,
        token,
        latency,
    })
}

/// `s` for a log line: the values of `s`, `token` and `u` (tokens) replaced by `…`.
pub fn redacted(s: &str) -> String {
    let (head, pairs, sep) = match s.strip_prefix("#!::") {
        Some(rest) => ("#!::", rest, ','),
        None => match s.split_once('?') {
            Some((name, q)) => (name, q, '&'),
            None => return s.to_owned(),
        },
    };
    let pairs: Vec<String> = pairs
        .split(sep)
        .map(|p| match p.split_once('=') {
            Some((k @ ("s" | "token" | "u"), _)) => format!("{k}=…"),
            _ => p.to_owned(),
        })
        .collect();
    let joiner = if sep == '&' { "?" } else { "" };
    format!("{head}{joiner}{}", pairs.join(&sep.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_control_syntax() {
        let id = parse("#!::r=cam1,m=publish,s=secret,t=stream,latency=200").unwrap();
        assert_eq!(
            id,
            StreamId {
                name: "cam1".into(),
                mode: Mode::Publish,
                token: Some("secret".into()),
                latency: Some(Duration::from_millis(200)),
            }
        );
        let id = parse("#!::u=tok,r=cam1,m=request").unwrap();
        assert_eq!((id.mode, id.token.as_deref()), (Mode::Request, Some("tok")));
    }

    #[test]
    fn tokens_stay_out_of_log_lines() {
        assert_eq!(
            redacted("#!::r=a,s=secret,m=publish"),
            "#!::r=a,s=…,m=publish"
        );
        assert_eq!(redacted("a?token=secret&m=request"), "a?token=…&m=request");
        assert_eq!(redacted("a"), "a");
    }

    #[test]
    fn bare_name_with_or_without_query() {
        let id = parse("cam1").unwrap();
        assert_eq!(
            (id.name.as_str(), id.mode, id.token),
            ("cam1", Mode::Publish, None)
        );
        let id = parse("cam1?token=abc&m=request").unwrap();
        assert_eq!(id.token.as_deref(), Some("abc"));
        assert_eq!(id.mode, Mode::Request);
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        for (bad, says) in [
            ("", "no stream name"),
            ("#!::m=publish", "no stream name"),
            ("#!::r=a,r=b", "twice"),
            ("#!::r=../x", "invalid stream name"),
            ("#!::r=a,m=bidirectional", "not supported"),
            ("#!::r=a,oops", "KEY=VALUE"),
            ("#!::r=a,latency=soon", "latency"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(parse(&"a".repeat(600)).is_err());
    }
}
