//! Trickle ICE PATCH bodies (RFC 8840 `application/trickle-ice-sdpfrag`):
//! `tsbridge::webrtc::SdpFrag::parse` on the body as UTF-8 (lossy), then each candidate through
//! `str0m::Candidate::from_sdp_string` and into an `Rtc` (`add_remote_candidate`), as
//! `Session::patch` does.
//!
//! Properties: candidates keep their `candidate:` prefix; a candidate str0m accepted prints back
//! to SDP that str0m accepts again, and to the same candidate.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use str0m::config::DtlsCert;
use str0m::{Candidate, RtcConfig};
use tsbridge::webrtc::SdpFrag;

/// One certificate for every run (generating one per `Rtc` costs milliseconds).
fn cert() -> DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .expect("DTLS certificate");
        provider.install_process_default();
        cert
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let Ok(frag) = SdpFrag::parse(&body) else {
        return;
    };
    assert!(frag.ufrag.is_some() || !frag.candidates.is_empty() || frag.end_of_candidates);
    let mut parsed = Vec::new();
    for c in &frag.candidates {
        assert!(c.starts_with("candidate:"));
        let Ok(cand) = Candidate::from_sdp_string(c) else {
            continue;
        };
        let printed = cand.to_sdp_string();
        let again = Candidate::from_sdp_string(&printed)
            .unwrap_or_else(|e| panic!("{c:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(
            again.to_sdp_string(),
            printed,
            "candidate does not round-trip: {c:?}"
        );
        parsed.push(cand);
    }
    if !parsed.is_empty() {
        let mut rtc = RtcConfig::new().set_dtls_cert(cert()).build(Instant::now());
        for c in parsed {
            rtc.add_remote_candidate(c);
        }
    }
});
