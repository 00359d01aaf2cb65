//! WHEP/WHIP offers: `tsbridge::webrtc::Offer::parse` on the body as UTF-8 (lossy), then, when
//! str0m parses it, a real answer through `accept_offer` with the `RtcConfig`s tsbridge builds
//! (a viewer's: H.264 with the extra Constrained High / source-profile entries + Opus; a
//! publisher's: H.264 + Opus). tsbridge wraps `accept_offer` in `catch_unwind`; here a panic
//! inside str0m is NOT caught: it is a finding (a malformed offer must be an error).
//!
//! Property: str0m's own answer parses back as SDP.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::rtp::Extension;
use str0m::{Candidate, RtcConfig};

/// One certificate for every run, as the engine does (generating one costs milliseconds).
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

/// `Engine::accept`'s config for a stream with H.264 (profile `own`, if any) and Opus.
fn viewer_config(own: Option<u32>) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_dtls_cert(cert())
        .set_rtp_mode(true)
        .clear_extension_map()
        .set_extension(4, Extension::RtpMid)
        .enable_h264(true);
    let codecs = cfg.codec_config();
    for (pt, rtx, plid) in [(37u8, 38u8, own), (39, 40, Some(0x640c1f))] {
        if let Some(plid) = plid {
            codecs.add_h264(pt.into(), Some(rtx.into()), true, plid);
        }
    }
    cfg.enable_opus(true, false)
}

/// `Engine::accept_publisher`'s config.
fn publisher_config() -> RtcConfig {
    RtcConfig::new()
        .clear_codecs()
        .set_dtls_cert(cert())
        .enable_h264(true)
        .enable_opus(true, false)
}

fn answer(cfg: RtcConfig, sdp: &str) {
    let Ok(offer) = SdpOffer::from_sdp_string(sdp) else {
        return;
    };
    let mut rtc = cfg.build(Instant::now());
    if let Ok(c) = Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp") {
        rtc.add_local_candidate(c);
    }
    if let Ok(answer) = rtc.sdp_api().accept_offer(offer) {
        let text = answer.to_sdp_string();
        if let Err(e) = SdpAnswer::from_sdp_string(&text) {
            panic!("str0m's answer does not parse: {e}\n--- answer:\n{text}");
        }
        let _ = rtc.direct_api().local_ice_credentials();
    }
}

fuzz_target!(|data: &[u8]| {
    let sdp = String::from_utf8_lossy(data);
    if tsbridge::webrtc::Offer::parse(&sdp).is_err() {
        return;
    }
    // One answer per input (str0m's SDP parser is the slow part): the config from the length.
    // A viewer's adds the source profile when it is not Baseline/Main/High.
    let cfg = match data.len() % 5 {
        0 => publisher_config(),
        n => viewer_config([None, Some(0x58_00_1f), Some(0x6e_00_1f), Some(0xf4_00_28)][n - 1]),
    };
    answer(cfg, &sdp);
});
