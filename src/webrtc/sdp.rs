//! SDP text around str0m's offer/answer: what an offer holds (for error messages), the check
//! str0m needs before it sees an offer, and the shape of the answer's idle sections.
//!
//! # Idle sections
//!
//! A viewer's offer usually has an audio and a video m-section; a stream may have only one
//! kind, or a codec the viewer did not offer (HEVC to an H.264-only browser). str0m rejects
//! such a section as `m=audio 0 UDP/TLS/RTP/SAVPF 0` with no rtpmap and a sending direction.
//! Chromium copes; aiortc fails ("Failed to set remote audio description send parameters":
//! payload type 0 was never offered), and GStreamer's webrtcbin stalls in ICE checking when
//! that section is the first one (its BUNDLE tag). So every audio/video section the viewer
//! gets nothing on is answered the way every stack accepts (RFC 3264 §6, RFC 8829 §5.3.1):
//! kept (port 9, in the BUNDLE group, with the transport attributes), `a=inactive`, and
//! carrying a payload type the offer listed, with its rtpmap/fmtp.

use std::collections::HashMap;

use super::OfferError;

/// Whether the answer has an active `m=` section of `kind` that we receive on.
pub(super) fn media_receives(answer: &str, kind: &str) -> bool {
    let mut in_kind = false;
    let mut active = false;
    for line in answer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            if in_kind && active {
                return true;
            }
            let mut it = m.split_whitespace();
            in_kind = it.next() == Some(kind);
            active = it.next().is_some_and(|port| port != "0");
        } else if in_kind && (line == "a=inactive" || line == "a=sendonly") {
            active = false;
        }
    }
    in_kind && active
}

/// Codec names that are not a codec of their own (retransmission, redundancy, FEC, comfort
/// noise, DTMF).
fn is_auxiliary(codec: &str) -> bool {
    matches!(
        codec.to_ascii_lowercase().as_str(),
        "rtx" | "red" | "ulpfec" | "flexfec-03" | "cn" | "telephone-event"
    )
}

/// The codec names an SDP offers (`a=rtpmap:PT NAME/…`), for error messages.
pub(super) fn offered_codecs(sdp: &str) -> String {
    let mut names: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('/').next())
        .filter(|c| !is_auxiliary(c))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "no codecs".into()
    } else {
        names.join(", ")
    }
}

/// A payload type must mean one thing in the whole offer (RFC 8843 §7.5: bundled m-lines may
/// share a payload type only for the same codec configuration). str0m assumes so and panics
/// ("Pt locked multiple times") on an offer that breaks it: found by the `sdp_offer` fuzz
/// target, answered 400 here.
pub(super) fn check_payload_types(sdp: &str) -> Result<(), OfferError> {
    // (PT, "rtpmap" | "fmtp") → (media kind, value) as first declared.
    let mut seen: HashMap<(&str, &str), (&str, &str)> = HashMap::new();
    let mut kind = "";
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split_whitespace().next().unwrap_or("");
            continue;
        }
        for attr in ["rtpmap", "fmtp"] {
            let Some(rest) = line.strip_prefix("a=").and_then(|l| l.strip_prefix(attr)) else {
                continue;
            };
            let Some((pt, value)) = rest.strip_prefix(':').and_then(|r| r.split_once(' ')) else {
                continue;
            };
            let value = value.trim();
            match seen.get(&(pt, attr)) {
                Some(&(k, v)) if k != kind || !v.eq_ignore_ascii_case(value) => {
                    return Err(OfferError::Malformed(format!(
                        "payload type {pt} is declared twice with different meanings \
                         ({k} a={attr}:{pt} {v}, then {kind} a={attr}:{pt} {value})"
                    )));
                }
                Some(_) => {}
                None => {
                    seen.insert((pt, attr), (kind, value));
                }
            }
        }
    }
    Ok(())
}

/// An SDP split into its session part and its m-sections (each starting with its `m=` line).
struct Sections<'a> {
    session: Vec<&'a str>,
    media: Vec<Vec<&'a str>>,
}

impl<'a> Sections<'a> {
    fn parse(sdp: &'a str) -> Self {
        let mut s = Sections {
            session: Vec::new(),
            media: Vec::new(),
        };
        for line in sdp.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if line.starts_with("m=") {
                s.media.push(vec![line]);
            } else if let Some(m) = s.media.last_mut() {
                m.push(line);
            } else {
                s.session.push(line);
            }
        }
        s
    }
}

fn attr<'a>(section: &[&'a str], name: &str) -> Option<&'a str> {
    section
        .iter()
        .find_map(|l| l.strip_prefix("a=")?.strip_prefix(name)?.strip_prefix(':'))
}

fn mid<'a>(section: &[&'a str]) -> Option<&'a str> {
    attr(section, "mid").map(str::trim)
}

/// `m=<kind> <port> <proto> <formats…>`
fn m_line<'a>(section: &[&'a str]) -> (&'a str, &'a str, &'a str, Vec<&'a str>) {
    let mut it = section
        .first()
        .and_then(|l| l.strip_prefix("m="))
        .unwrap_or("")
        .split_whitespace();
    let (kind, port, proto) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    );
    (kind, port, proto, it.collect())
}

/// Lines that describe the transport. With BUNDLE it is one for all sections, and str0m writes
/// the candidates into the first section only. Some stacks read the transport from a section
/// with media (webrtc-rs, when the first section is idle, never connects), so every kept
/// section carries all of it.
fn is_transport(line: &str) -> bool {
    [
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=ice-options:",
        "a=fingerprint:",
        "a=setup:",
        "a=rtcp-mux",
        "a=candidate:",
        "a=end-of-candidates",
    ]
    .iter()
    .any(|t| line.starts_with(t))
}

/// What the viewer gets on each m-section of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shaped {
    pub answer: String,
    /// The mids of the audio/video sections media is sent on (the first of each kind that
    /// str0m accepted and the caller wants).
    pub active: Vec<String>,
    /// The kinds of the sections answered inactive, for the log line.
    pub idle: Vec<String>,
}

/// Rewrites str0m's `answer` to `offer` so that every audio/video section the viewer gets
/// nothing on is idle in the way every WebRTC stack accepts (see the module docs). A section
/// is active when str0m accepted it (port ≠ 0), `wanted(kind)` says the stream sends that
/// kind, and no earlier section of the kind is active. Every kept section carries the whole
/// transport (see [`is_transport`]).
pub(super) fn shape_answer(answer: &str, offer: &str, wanted: impl Fn(&str) -> bool) -> Shaped {
    let ans = Sections::parse(answer);
    let off = Sections::parse(offer);
    let offered: HashMap<&str, &Vec<&str>> = off
        .media
        .iter()
        .filter_map(|m| Some((mid(m)?, m)))
        .collect();
    let transport = transport_lines(&ans);

    let mut active_kinds: Vec<&str> = Vec::new();
    let (mut active, mut idle, mut bundle) = (Vec::new(), Vec::new(), Vec::new());
    let mut media_out: Vec<Vec<String>> = Vec::new();
    for section in &ans.media {
        let (kind, port, proto, answered) = m_line(section);
        let as_is = || section.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let Some(id) = mid(section) else {
            media_out.push(as_is());
            continue;
        };
        let accepted = port != "0";
        if kind != "audio" && kind != "video" {
            if accepted {
                bundle.push(id);
            }
            media_out.push(as_is());
            continue;
        }
        if accepted && wanted(kind) && !active_kinds.contains(&kind) {
            active_kinds.push(kind);
            active.push(id.to_string());
            bundle.push(id);
            media_out.push(with_transport(
                section[0].to_string(),
                section,
                &transport,
                &[],
            ));
            continue;
        }
        // Idle: one offered payload type (the one str0m chose, if it accepted the section),
        // inactive.
        let o = offered.get(id);
        let format = match (accepted, answered.first()) {
            (true, Some(&pt)) => Some(pt),
            _ => o.and_then(|o| primary_format(o)),
        };
        let (Some(o), Some(format)) = (o, format) else {
            // Not in the offer, or nothing offered to echo: leave str0m's rejection.
            media_out.push(as_is());
            continue;
        };
        let m = format!("m={kind} 9 {proto} {format}");
        media_out.push(idle_section(m, section, o, format, &transport));
        idle.push(kind.to_string());
        bundle.push(id);
    }

    Shaped {
        answer: write_answer(&ans.session, &bundle, &media_out, answer.len() + 512),
        active,
        idle,
    }
}

/// The transport lines of `ans`, each once, in order (str0m writes them into rejected
/// sections too).
fn transport_lines<'a>(ans: &Sections<'a>) -> Vec<&'a str> {
    let mut transport: Vec<&str> = Vec::new();
    for l in ans
        .media
        .iter()
        .flatten()
        .copied()
        .filter(|l| is_transport(l))
    {
        if !transport.contains(&l) {
            transport.push(l);
        }
    }
    transport
}

/// An idle section: `m_line`, the section's lines but its direction, formats and sources,
/// the whole transport, then `a=inactive` and the offered `rtpmap`/`fmtp` of `format`.
fn idle_section(
    m_line: String,
    section: &[&str],
    offered: &[&str],
    format: &str,
    transport: &[&str],
) -> Vec<String> {
    let dropped = |l: &&str| {
        [
            "a=sendonly",
            "a=recvonly",
            "a=sendrecv",
            "a=inactive",
            "a=rtpmap:",
            "a=fmtp:",
            "a=rtcp-fb:",
            "a=ssrc",
            "a=msid:",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let kept: Vec<&str> = section.iter().copied().filter(|l| !dropped(l)).collect();
    let mut tail = vec!["a=inactive".to_string()];
    for name in ["rtpmap", "fmtp"] {
        let prefix = format!("a={name}:{format} ");
        tail.extend(
            offered
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .map(|l| l.to_string()),
        );
    }
    with_transport(m_line, &kept, transport, &tail)
}

/// The session lines (the BUNDLE group made of `bundle`, or none when it is empty), then the
/// media sections.
fn write_answer(session: &[&str], bundle: &[&str], media: &[Vec<String>], cap: usize) -> String {
    let mut out = String::with_capacity(cap);
    for line in session {
        if line.starts_with("a=group:BUNDLE") {
            if !bundle.is_empty() {
                out.push_str("a=group:BUNDLE ");
                out.push_str(&bundle.join(" "));
                out.push_str("\r\n");
            }
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for l in media.iter().flatten() {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out
}

/// A section as `m_line`, its `c=`/`b=` lines, the whole transport, its other lines (the
/// section's own transport lines are replaced), then `tail`.
fn with_transport(
    m_line: String,
    section: &[&str],
    transport: &[&str],
    tail: &[String],
) -> Vec<String> {
    let mut out = vec![m_line];
    let body = section.iter().skip(1);
    let conn: Vec<&&str> = body
        .clone()
        .filter(|l| l.starts_with("c=") || l.starts_with("b="))
        .collect();
    if conn.is_empty() {
        out.push("c=IN IP4 0.0.0.0".into());
    }
    out.extend(conn.iter().map(|l| l.to_string()));
    out.extend(transport.iter().map(|l| l.to_string()));
    out.extend(
        body.filter(|l| !(l.starts_with("c=") || l.starts_with("b=") || is_transport(l)))
            .map(|l| l.to_string()),
    );
    out.extend(tail.iter().cloned());
    out
}

/// The offered section's first payload type that is a codec of its own (not RTX, RED, FEC,
/// comfort noise or DTMF), else its first.
fn primary_format<'a>(section: &[&'a str]) -> Option<&'a str> {
    let (_, _, _, formats) = m_line(section);
    let codec_of = |pt: &str| {
        section.iter().find_map(|l| {
            let rest = l.strip_prefix("a=rtpmap:")?.strip_prefix(pt)?;
            rest.strip_prefix(' ')?.split('/').next()
        })
    };
    formats
        .iter()
        .copied()
        .find(|pt| codec_of(pt).is_some_and(|c| !is_auxiliary(c)))
        .or_else(|| formats.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = include_str!("../../fuzz/seeds/sdp_offer/chromium_whep_recvonly");

    /// str0m's answer to the Chromium offer for a stream with video only (audio rejected).
    fn rejected_audio_answer() -> String {
        [
            "v=0",
            "o=str0m-1 1 2 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "a=fingerprint:sha-256 AA:BB",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:efghijklmnopqrstuvwxyz",
            "a=ice-options:trickle",
            "m=video 9 UDP/TLS/RTP/SAVPF 102 103",
            "c=IN IP4 0.0.0.0",
            "a=setup:passive",
            "a=mid:0",
            "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=sendonly",
            "a=msid:a b",
            "a=rtcp-mux",
            "a=rtpmap:102 H264/90000",
            "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            "a=rtpmap:103 rtx/90000",
            "a=fmtp:103 apt=102",
            "a=ssrc:1 cname:x",
            "a=candidate:1 1 udp 2130706175 127.0.0.1 8189 typ host",
            "m=audio 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=setup:passive",
            "a=mid:1",
            "a=sendonly",
            "a=rtcp-mux",
            "",
        ]
        .join("\r\n")
    }

    /// str0m's answer to the Chromium offer for an Opus-only stream, as it writes it: the
    /// rejected video section first, with the transport and the only candidate.
    fn rejected_video_first_answer() -> String {
        [
            "v=0",
            "o=str0m-0.25.0 1 2 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 1",
            "a=msid-semantic: WMS x",
            "m=video 0 UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:efghijklmnopqrstuvwxyz",
            "a=ice-options:trickle",
            "a=fingerprint:sha-256 AA:BB",
            "a=setup:passive",
            "a=candidate:1 1 udp 2130706175 127.0.0.1 8189 typ host",
            "a=mid:0",
            "a=sendonly",
            "a=rtcp-mux",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:efghijklmnopqrstuvwxyz",
            "a=ice-options:trickle",
            "a=fingerprint:sha-256 AA:BB",
            "a=setup:passive",
            "a=mid:1",
            "a=sendonly",
            "a=msid:x y",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=ssrc:3 cname:z",
            "",
        ]
        .join("\r\n")
    }

    #[test]
    fn a_rejected_first_section_is_kept_inactive_and_its_candidates_reach_the_active_one() {
        let shaped = shape_answer(&rejected_video_first_answer(), CHROMIUM_OFFER, |k| {
            k == "audio"
        });
        assert_eq!(shaped.active, ["1"]);
        assert!(shaped.answer.contains("a=group:BUNDLE 0 1\r\n"));
        let video = section(&shaped.answer, "video");
        assert_eq!(
            video[0], "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "the offer's first codec"
        );
        assert!(video.contains(&"a=inactive") && video.contains(&"a=rtpmap:96 VP8/90000"));
        let audio = section(&shaped.answer, "audio");
        assert!(audio.contains(&"a=candidate:1 1 udp 2130706175 127.0.0.1 8189 typ host"));
        assert!(audio.contains(&"a=sendonly"));
    }

    fn section<'a>(sdp: &'a str, kind: &str) -> Vec<&'a str> {
        Sections::parse(sdp)
            .media
            .into_iter()
            .find(|m| m_line(m).0 == kind)
            .expect("section of that kind")
    }

    #[test]
    fn a_rejected_section_becomes_inactive_with_an_offered_payload_type() {
        let shaped = shape_answer(&rejected_audio_answer(), CHROMIUM_OFFER, |k| k == "video");
        assert_eq!(shaped.active, ["0"]);
        assert_eq!(shaped.idle, ["audio"]);
        let audio = section(&shaped.answer, "audio");
        assert_eq!(audio[0], "m=audio 9 UDP/TLS/RTP/SAVPF 111");
        assert!(audio.contains(&"a=inactive"), "{audio:?}");
        assert!(!audio.contains(&"a=sendonly"), "{audio:?}");
        assert!(audio.contains(&"a=rtpmap:111 opus/48000/2"), "{audio:?}");
        assert!(audio.contains(&"a=fmtp:111 minptime=10;useinbandfec=1"));
        assert!(audio.contains(&"a=setup:passive") && audio.contains(&"a=rtcp-mux"));
        assert!(audio.contains(&"a=mid:1"));
        assert!(
            shaped.answer.contains("a=group:BUNDLE 0 1\r\n"),
            "{}",
            shaped.answer
        );
        // The video section has the same lines (the transport moved up).
        let sorted = |mut v: Vec<&str>| {
            v.sort_unstable();
            v.into_iter().map(str::to_string).collect::<Vec<_>>()
        };
        let answer = rejected_audio_answer();
        assert_eq!(
            sorted(section(&shaped.answer, "video")),
            sorted(section(&answer, "video"))
        );
    }

    #[test]
    fn every_kept_section_carries_the_candidates() {
        let shaped = shape_answer(&rejected_audio_answer(), CHROMIUM_OFFER, |k| k == "video");
        for kind in ["audio", "video"] {
            let s = section(&shaped.answer, kind);
            assert_eq!(
                s.iter().filter(|l| l.starts_with("a=candidate:")).count(),
                1,
                "{kind}"
            );
            assert_eq!(
                s.iter().filter(|l| l.starts_with("a=setup:")).count(),
                1,
                "{kind}"
            );
        }
    }

    #[test]
    fn an_accepted_section_of_an_unwanted_kind_is_answered_inactive_without_ssrcs() {
        let shaped = shape_answer(&rejected_audio_answer(), CHROMIUM_OFFER, |k| k == "audio");
        assert!(shaped.active.is_empty());
        let video = section(&shaped.answer, "video");
        assert_eq!(video[0], "m=video 9 UDP/TLS/RTP/SAVPF 102");
        assert!(video.contains(&"a=inactive"));
        assert!(!video
            .iter()
            .any(|l| l.starts_with("a=ssrc") || l.starts_with("a=msid")));
        // Candidates stay (they are the transport's, wherever str0m put them).
        assert!(video.iter().any(|l| l.starts_with("a=candidate")));
    }

    #[test]
    fn the_offers_primary_codec_is_echoed_not_rtx_or_red() {
        let offer = CHROMIUM_OFFER.replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63",
            "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",
        );
        let shaped = shape_answer(&rejected_audio_answer(), &offer, |k| k == "video");
        assert_eq!(
            section(&shaped.answer, "audio")[0],
            "m=audio 9 UDP/TLS/RTP/SAVPF 111"
        );
    }

    #[test]
    fn only_the_first_section_of_a_kind_is_active() {
        let two_video = rejected_audio_answer().replace(
            "m=audio 0 UDP/TLS/RTP/SAVPF 0",
            "m=video 9 UDP/TLS/RTP/SAVPF 102",
        );
        let offer = CHROMIUM_OFFER.replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 102",
        );
        let shaped = shape_answer(&two_video, &offer, |_| true);
        assert_eq!(shaped.active, ["0"]);
        assert_eq!(shaped.idle, ["video"]);
    }
}
