//! Opus RTP payloader, RFC 7587: one Opus packet per RTP payload, as is.

use std::sync::Arc;

use super::Payload;

/// Opus packets of at most this many bytes are DTX / silence frames (libopus: "a return value
/// of 2 bytes or less means the packet does not need to be transmitted").
const DTX_MAX_LEN: usize = 2;

/// Packetizes Opus packets for RTP, once per stream.
///
/// Each Opus packet (as split out of its PES by [`crate::codec::opus::split_pes`]) becomes one
/// payload, unchanged: RFC 7587 has no payload header, no fragmentation and no aggregation, so
/// no size limit is applied (an Opus packet is at most 1275 bytes per frame). Empty packets are
/// dropped (a payload must at least hold the TOC byte).
///
/// Marker bit (RFC 7587 §4.2: "the first packet of a talkspurt"): set on the first packet of
/// the stream and on the first real packet after a run of DTX packets (≤ 2 bytes), otherwise
/// clear. TS carries no other talkspurt signal. Packetizing is per stream, so a viewer that
/// joins later does not see the stream's first marker; receivers (libwebrtc's NetEq) don't
/// need it, and a per-viewer send path may set it on its own first packet.
#[derive(Clone, Debug)]
pub struct OpusPacketizer {
    /// The next real packet starts a talkspurt.
    talkspurt: bool,
}

impl Default for OpusPacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl OpusPacketizer {
    pub fn new() -> Self {
        Self { talkspurt: true }
    }

    /// One Opus packet in, at most one payload appended to `out`.
    pub fn packetize(&mut self, packet: &[u8], out: &mut Vec<Payload>) {
        if packet.is_empty() {
            return;
        }
        let marker = if packet.len() <= DTX_MAX_LEN {
            self.talkspurt = true;
            false
        } else {
            std::mem::replace(&mut self.talkspurt, false)
        };
        out.push(Payload {
            marker,
            data: Arc::from(packet),
        });
    }

    /// The source changed: the next real packet starts a talkspurt.
    pub fn reset(&mut self) {
        self.talkspurt = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut OpusPacketizer, packets: &[&[u8]]) -> Vec<Payload> {
        let mut out = Vec::new();
        for packet in packets {
            p.packetize(packet, &mut out);
        }
        out
    }

    #[test]
    fn one_packet_per_payload_unchanged() {
        // TOC 0xFC: CELT fullband 20 ms, stereo, one frame.
        let a: Vec<u8> = [0xFC]
            .into_iter()
            .chain((0..160).map(|i| i as u8))
            .collect();
        let b: Vec<u8> = [0xFC]
            .into_iter()
            .chain((0..1274).map(|i| i as u8))
            .collect();
        let out = run(&mut OpusPacketizer::new(), &[&a, &b]);
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].data[..], &a[..]);
        assert_eq!(&out[1].data[..], &b[..]);
    }

    #[test]
    fn marker_on_the_first_packet_and_after_dtx_only() {
        let speech: &[u8] = &[0xFC, 1, 2, 3, 4];
        let dtx: &[u8] = &[0xFC];
        let out = run(
            &mut OpusPacketizer::new(),
            &[speech, speech, dtx, dtx, &[0xFC, 0xFF], speech, speech],
        );
        let markers: Vec<bool> = out.iter().map(|p| p.marker).collect();
        assert_eq!(markers, [true, false, false, false, false, true, false]);
        // Starting in silence: the marker waits for the first real packet.
        let out = run(&mut OpusPacketizer::new(), &[dtx, speech, speech]);
        let markers: Vec<bool> = out.iter().map(|p| p.marker).collect();
        assert_eq!(markers, [false, true, false]);
    }

    #[test]
    fn empty_packet_gives_nothing() {
        let mut p = OpusPacketizer::new();
        assert!(run(&mut p, &[&[]]).is_empty());
        // ... and does not use up the talkspurt marker.
        assert!(run(&mut p, &[&[0xFC, 1, 2, 3]])[0].marker);
    }

    #[test]
    fn reset_starts_a_talkspurt() {
        let mut p = OpusPacketizer::new();
        let speech: &[u8] = &[0xFC, 1, 2, 3];
        run(&mut p, &[speech, speech]);
        p.reset();
        assert!(run(&mut p, &[speech])[0].marker);
    }

    #[test]
    fn packetizer_enum_dispatches() {
        use crate::rtp::{H264Packetizer, Packetizer};
        let mut out = Vec::new();
        Packetizer::Opus(OpusPacketizer::new()).packetize(&[0xFC, 1, 2, 3], &mut out);
        Packetizer::H264(H264Packetizer::default()).packetize(&[0, 0, 1, 0x41, 7], &mut out);
        assert_eq!(&out[0].data[..], &[0xFC, 1, 2, 3]);
        assert_eq!(&out[1].data[..], &[0x41, 7]);
        assert!(out[0].marker && out[1].marker);
    }
}
