//! The TS input path as `media.rs` runs it: arbitrary bytes, pushed in chunks (sizes from the
//! first two bytes), through `Demuxer`, the video PES through `H264Assembler` (and its access
//! units through the RTP payloader), the audio PES through `opus::split_pes`; the same chunks
//! through `StartPoint` (the `GET /streams/{s}.ts` join point).
//!
//! Properties checked besides "no panic":
//! - the demuxer's events do not depend on how the input is split (its documented promise):
//!   the chunked run gives the same events as one `push` of everything;
//! - once `StartPoint` has started on 188-byte packets, every later byte passes through
//!   untouched; started on 192/204-byte packets (M2TS, FEC), it outputs whole 188-byte packets
//!   only (the input's packets without their headers/parity);
//! - RTP payloads never exceed the payloader's `max_payload`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::codec::h264::{AccessUnit, H264Assembler};
use tsbridge::codec::opus::{self, OpusPacket};
use tsbridge::rtp::{H264Packetizer, OpusPacketizer, Payload, DEFAULT_MAX_PAYLOAD};
use tsbridge::time::Timeline;
use tsbridge::ts::start::StartPoint;
use tsbridge::ts::{DemuxEvent, Demuxer, TrackSet};

/// Chunk lengths from a 16-bit seed: 0 = everything at once; else 1..=4 packets' worth,
/// xorshift-driven, so both odd tails and packet-sized pieces occur.
fn chunks(seed: u16, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut x = u32::from(seed) | 0x1_0000;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let max = match seed & 3 {
            0 => 7,
            1 => 188,
            2 => 4 * 188,
            _ => 3 * 188 + 5,
        };
        let n = (x as usize % max + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

fn demux_all<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<DemuxEvent> {
    let mut d = Demuxer::new();
    let mut events = Vec::new();
    for p in pieces {
        d.push(p, &mut events);
    }
    d.flush(&mut events);
    events
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = match input {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return,
    };
    let pieces = chunks(seed, data);

    // Demuxer, chunked, then the codec layer as media.rs drives it.
    let events = demux_all(pieces.iter().copied());
    let mut tracks: Option<TrackSet> = None;
    let mut h264 = H264Assembler::new();
    let max_payload = [20, 200, DEFAULT_MAX_PAYLOAD, 65_535][usize::from(seed >> 4) & 3];
    let mut h264_rtp = H264Packetizer::new(max_payload);
    let mut opus_rtp = OpusPacketizer::new();
    let mut timeline = Timeline::new();
    let mut aus: Vec<AccessUnit> = Vec::new();
    let mut packets: Vec<OpusPacket<'_>> = Vec::new();
    let mut payloads: Vec<Payload> = Vec::new();
    for e in &events {
        match e {
            DemuxEvent::Tracks(t) => tracks = Some(t.clone()),
            DemuxEvent::Pes(pes) => {
                let Some(t) = &tracks else { continue };
                if Some(pes.pid) == t.video().map(|v| v.pid) {
                    aus.clear();
                    h264.push(pes, &mut aus);
                    let _ = h264.sps();
                    for au in &aus {
                        let _ = timeline.map(au.pts, 3000);
                        payloads.clear();
                        h264_rtp.packetize(&au.data, &mut payloads);
                        assert!(payloads
                            .iter()
                            .all(|p| p.data.len() <= h264_rtp.max_payload()));
                    }
                } else if Some(pes.pid) == t.audio().map(|a| a.pid) {
                    packets.clear();
                    let _ = opus::split_pes(&pes.data, &mut packets);
                    if let Some(pts) = pes.pts {
                        let t = timeline.map(pts, 1800);
                        let _ = tsbridge::time::rescale(t, tsbridge::time::ClockRate::OPUS);
                    }
                    for p in &packets {
                        payloads.clear();
                        opus_rtp.packetize(p.data, &mut payloads);
                    }
                }
            }
            DemuxEvent::Discontinuity { .. } => timeline.discontinuity(),
            _ => {}
        }
    }

    // Split-independence: one push of everything gives the same events.
    if pieces.len() > 1 {
        let whole = demux_all([data]);
        assert_eq!(events, whole, "demux events depend on the input split");
    }

    // StartPoint on the same chunks.
    let mut sp = StartPoint::new();
    let mut out = Vec::new();
    let mut fed = 0usize;
    for p in &pieces {
        let passing = sp.passes_through();
        let before = out.len();
        sp.push(p, &mut out);
        if passing {
            assert_eq!(
                &out[before..],
                *p,
                "StartPoint altered bytes after the start"
            );
        }
        fed += p.len();
    }
    if sp.started() {
        // What it sends after the held-back PAT/PMT is the input from the start packet on.
        assert!(out.len() <= fed + 2 * 188);
        if !sp.passes_through() {
            assert!(
                out.len() % 188 == 0 && out.chunks(188).all(|p| p[0] == 0x47),
                "StartPoint output on 192/204-byte input is not whole 188-byte packets"
            );
        }
    } else {
        assert!(out.is_empty());
    }
});
