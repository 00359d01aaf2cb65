//! Opus in TS: `split_pes` (the `opus_control_header` framing of an audio PES) and
//! `packet_samples` (TOC parsing), then the RTP payloader.
//!
//! Properties: every packet returned is a sub-slice of the input whose `samples` is what
//! `packet_samples` says for it, offsets are the running sum of the samples before it, and the
//! packets parsed before an error are kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::codec::opus::{packet_samples, split_pes, OpusPacket};
use tsbridge::rtp::{OpusPacketizer, Payload};

fuzz_target!(|data: &[u8]| {
    if let Some(n) = packet_samples(data) {
        assert!(n > 0 && n <= 5760, "{n} samples");
    }
    let mut packets: Vec<OpusPacket<'_>> = Vec::new();
    let result = split_pes(data, &mut packets);
    let range = data.as_ptr_range();
    let mut offset = 0u32;
    for p in &packets {
        let r = p.data.as_ptr_range();
        assert!(
            range.start <= r.start && r.end <= range.end,
            "packet outside the PES"
        );
        assert_eq!(packet_samples(p.data), Some(p.samples));
        assert_eq!(p.offset_samples, offset);
        offset = offset.saturating_add(p.samples);
    }
    if result.is_ok() && !data.is_empty() {
        assert!(!packets.is_empty());
    }
    let mut rtp = OpusPacketizer::new();
    let mut out: Vec<Payload> = Vec::new();
    for p in &packets {
        rtp.packetize(p.data, &mut out);
    }
    assert_eq!(
        out.len(),
        packets.len(),
        "an Opus packet (never empty) was not sent"
    );
});
