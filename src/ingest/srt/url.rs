//! `srt://HOST:PORT?streamid=…&passphrase=…&latency=MS` of `--srt-pull`, sans-IO.
//!
//! Values are taken as written, as ffmpeg and srt-live-transmit take them (no percent
//! decoding: a stream id like `#!::r=cam,m=request` goes in as it is).

use std::time::Duration;

/// Where and how `--srt-pull` calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtUrl {
    /// `host:port`, resolved at each connection attempt.
    pub authority: String,
    pub stream_id: Option<String>,
    pub passphrase: Option<String>,
    pub latency: Option<Duration>,
}

impl std::str::FromStr for SrtUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORM: &str = "expected srt://HOST:PORT[?streamid=…&passphrase=…&latency=MS]";
        let rest = s
            .strip_prefix("srt://")
            .ok_or_else(|| format!("{s:?}: {FORM}"))?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let port = authority.rsplit_once(':').map(|(_, p)| p);
        if authority.is_empty() || port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(format!("{s:?}: no HOST:PORT; {FORM}"));
        }
        let mut url = SrtUrl {
            authority: authority.to_owned(),
            stream_id: None,
            passphrase: None,
            latency: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not KEY=VALUE; {FORM}"))?;
            match k {
                "streamid" => url.stream_id = Some(v.to_owned()),
                "passphrase" if (10..=79).contains(&v.len()) => url.passphrase = Some(v.to_owned()),
                "passphrase" => return Err("an SRT passphrase has 10 to 79 characters".into()),
                "latency" => {
                    let ms = v
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms <= 60_000)
                        .ok_or_else(|| format!("latency={v:?}: milliseconds, 0 to 60000"))?;
                    url.latency = Some(Duration::from_millis(ms));
                }
                _ => {
                    return Err(format!(
                        "{k:?} is not a --srt-pull setting (streamid, passphrase, latency)"
                    ))
                }
            }
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_settings_as_written() {
        let u: SrtUrl = "srt://encoder.example:9000?streamid=#!::r=cam,m=request&passphrase=0123456789&latency=300"
            .parse()
            .unwrap();
        assert_eq!(u.authority, "encoder.example:9000");
        assert_eq!(u.stream_id.as_deref(), Some("#!::r=cam,m=request"));
        assert_eq!(u.passphrase.as_deref(), Some("0123456789"));
        assert_eq!(u.latency, Some(Duration::from_millis(300)));
        let bare: SrtUrl = "srt://[::1]:9000".parse().unwrap();
        assert_eq!(
            (bare.authority.as_str(), bare.stream_id),
            ("[::1]:9000", None)
        );
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        for (bad, says) in [
            ("udp://h:1", "expected srt://"),
            ("srt://host", "no HOST:PORT"),
            ("srt://h:1?passphrase=short", "10 to 79"),
            ("srt://h:1?latency=x", "latency"),
            ("srt://h:1?mode=listener", "not a --srt-pull setting"),
        ] {
            let e = bad.parse::<SrtUrl>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
