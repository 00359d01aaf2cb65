//! Codecs a viewer is offered and sent in: the answer's codec configuration, from the
//! stream's tracks and its SPS, and, at the first frame, the negotiated payload type that fits
//! the source best.

use str0m::format::{Codec as RtcCodec, PayloadParams};
use str0m::media::Pt;
use str0m::RtcConfig;

use crate::codec::h264::ProfileLevelId;
use crate::codec::{VideoInfo, VideoProfile};
use crate::stream::frame::Kind;
use crate::ts::{Codec, TrackSet};

/// The payload types of H.265 and its retransmissions in our answers (str0m's defaults).
const H265_PT: u8 = 102;
const H265_RTX_PT: u8 = 103;

/// The codecs a viewer of a stream with `tracks` (its video per `video`, from the SPS) may
/// be answered with: the source's video codec (H.264 at any profile a browser decodes, or
/// H.265 at the source's profile and tier), and Opus when the stream has audio.
pub(super) fn viewer_codecs(
    mut cfg: RtcConfig,
    tracks: &TrackSet,
    video: Option<VideoInfo>,
    audio: bool,
) -> RtcConfig {
    match (tracks.video().map(|t| &t.codec), video.map(|v| v.profile)) {
        // MPEG-2 goes out re-encoded to H.264 (its profile is the encoder's, once known), and
        // so does HEVC in the variant for viewers without H.265 (its SPS says H.264).
        (Some(Codec::H264 | Codec::Mpeg2Video), profile)
        | (Some(Codec::H265), profile @ Some(VideoProfile::H264(_))) => {
            cfg = cfg.enable_h264(true);
            // str0m's defaults cover Baseline, Constrained Baseline, Main and High; add
            // Constrained High (Safari) and the source's own profile when it is none of
            // those, so such an offer is answered with it rather than with a lesser
            // profile. (Two configs of one profile class would claim the same offered PT:
            // str0m panics.)
            let own = match profile {
                Some(VideoProfile::H264(plid)) => {
                    let [p, c, l] = plid.0;
                    (![0x42, 0x4d, 0x64].contains(&p)).then(|| u32::from_be_bytes([0, p, c, l]))
                }
                _ => None,
            };
            let codecs = cfg.codec_config();
            for (pt, rtx, plid) in [(37, 38, own), (39, 40, Some(0x640c1f))] {
                if let Some(plid) = plid {
                    codecs.add_h264(pt.into(), Some(rtx.into()), true, plid);
                }
            }
        }
        // The source's profile and tier (RFC 7798 §7.2.2: used symmetrically); str0m
        // answers the lower of its level and the viewer's.
        (Some(Codec::H265), Some(VideoProfile::H265(ptl))) => {
            cfg.codec_config().add_h265(
                H265_PT.into(),
                Some(H265_RTX_PT.into()),
                ptl.profile_id,
                u8::from(ptl.tier_flag),
                ptl.level_id,
            );
        }
        _ => {}
    }
    if audio {
        cfg = cfg.enable_opus(true, false);
    }
    cfg
}

/// The negotiated payload type to send with. For H.264, the one whose profile best fits the
/// stream's SPS: the same profile if the viewer took it, else the closest it decodes (any H.264
/// decoder in a browser decodes High even when it negotiated Baseline/Main, so a High source
/// still plays where only those were offered). H.265 was negotiated for the source's profile
/// and tier only.
pub(super) fn choose_pt<'a>(
    params: impl Iterator<Item = &'a PayloadParams>,
    kind: Kind,
    profile: Option<VideoProfile>,
) -> Option<Pt> {
    let want = match (kind, profile) {
        (Kind::Video, Some(VideoProfile::H265(_))) => RtcCodec::H265,
        (Kind::Video, _) => RtcCodec::H264,
        (Kind::Audio, _) => RtcCodec::Opus,
    };
    let profile = match profile {
        Some(VideoProfile::H264(p)) => Some(p),
        _ => None,
    };
    params
        .filter(|p| p.spec().codec == want)
        .max_by_key(|p| {
            let fmt = p.spec().format;
            let mode1 = u8::from(fmt.packetization_mode == Some(1));
            let score = match (kind, profile, fmt.profile_level_id) {
                (Kind::Video, Some(src), Some(plid)) => h264_fit(src, plid),
                _ => 0,
            };
            (score, mode1)
        })
        .map(|p| p.pt())
}

/// How well an offered `profile-level-id` fits the source's: higher is better. Exact match,
/// then the same profile, then the nearest profile, preferring one that is a superset of the
/// source's (Constrained Baseline ⊂ Baseline ⊂ Main ⊂ High).
fn h264_fit(src: ProfileLevelId, offered: u32) -> u8 {
    let [p, c, _] = src.0;
    let (op, oc) = ((offered >> 16) as u8, (offered >> 8) as u8);
    if op == p && oc == c {
        return 20;
    }
    if op == p {
        return 19;
    }
    let rank = |profile: u8, constraints: u8| -> i8 {
        match profile {
            0x42 if constraints & 0x40 != 0 => 0,
            0x42 => 1,
            0x4d => 2,
            0x64 => 3,
            _ => 4,
        }
    };
    let (rs, ro) = (rank(p, c), rank(op, oc));
    let distance = (rs - ro).unsigned_abs();
    18 - distance * 2 - u8::from(ro < rs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_payload_type_fits_the_source_profile_best() {
        let high = ProfileLevelId([0x64, 0x00, 0x1f]);
        // Chromium here offers 42001f, 42e01f, 4d001f: Main is the closest to High.
        assert!(h264_fit(high, 0x64001f) > h264_fit(high, 0x4d001f));
        assert!(h264_fit(high, 0x4d001f) > h264_fit(high, 0x42001f));
        assert!(h264_fit(high, 0x42001f) > h264_fit(high, 0x42e01f));
        let cb = ProfileLevelId([0x42, 0xc0, 0x1e]);
        assert_eq!(h264_fit(cb, 0x42c01f), 20);
        assert_eq!(h264_fit(cb, 0x42e01f), 19);
        // A superset profile beats a subset one at the same distance.
        let main = ProfileLevelId([0x4d, 0x00, 0x1f]);
        assert!(h264_fit(main, 0x64001f) > h264_fit(main, 0x42001f));
    }
}
