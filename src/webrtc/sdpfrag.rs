//! `application/trickle-ice-sdpfrag` bodies (RFC 8840) for WHEP/WHIP PATCH.

use std::net::SocketAddr;

use str0m::{Candidate, IceCreds};

/// What a PATCH carries: new ICE credentials (an ICE restart) and/or candidates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SdpFrag {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `candidate:…` attribute values, without the `a=` prefix.
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpFragError {
    #[error("line {0} is not an SDP line (expected x=...)")]
    NotSdp(usize),
    #[error("sdpfrag has no ICE credentials or candidates")]
    Empty,
}

impl SdpFrag {
    pub fn parse(body: &str) -> Result<SdpFrag, SdpFragError> {
        let mut frag = SdpFrag::default();
        for (i, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bytes = line.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(SdpFragError::NotSdp(i + 1));
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue; // m=, c=, … lines give context we do not need (one transport, bundled)
            };
            if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                frag.ufrag = Some(v.to_string());
            } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                frag.pwd = Some(v.to_string());
            } else if attr.starts_with("candidate:") {
                frag.candidates.push(attr.to_string());
            } else if attr == "end-of-candidates" {
                frag.end_of_candidates = true;
            }
        }
        if frag.ufrag.is_none() && frag.candidates.is_empty() && !frag.end_of_candidates {
            return Err(SdpFragError::Empty);
        }
        Ok(frag)
    }

    /// The server's side of an ICE restart: its new credentials and candidates.
    pub fn answer(creds: &IceCreds, local: &[SocketAddr]) -> String {
        let mut s = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
            creds.ufrag, creds.pass
        );
        for addr in local {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                s.push_str(&format!("a={}\r\n", c.to_sdp_string()));
            }
        }
        s.push_str("a=end-of-candidates\r\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trickle_candidates_are_collected() {
        let body = "a=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";
        let f = SdpFrag::parse(body).unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("abcd"));
        assert_eq!(f.candidates.len(), 1);
        assert!(f.end_of_candidates);
        assert!(Candidate::from_sdp_string(&f.candidates[0]).is_ok());
    }

    #[test]
    fn garbage_sdpfrag_is_rejected() {
        assert_eq!(SdpFrag::parse("hello world"), Err(SdpFragError::NotSdp(1)));
        assert_eq!(SdpFrag::parse("a=foo:bar\r\n"), Err(SdpFragError::Empty));
    }

    #[test]
    fn restart_answer_carries_credentials_and_candidates() {
        let creds = IceCreds {
            ufrag: "uf".into(),
            pass: "pw".into(),
        };
        let s = SdpFrag::answer(&creds, &["127.0.0.1:8189".parse().unwrap()]);
        assert!(s.contains("a=ice-ufrag:uf\r\n"));
        assert!(s.contains("127.0.0.1 8189 typ host"));
    }
}
