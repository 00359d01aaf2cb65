//! `serve --replay` / `tsbridge replay`: `Replayer::new(file, looping = true)` on arbitrary
//! bytes, then up to 200 `next_chunk()`s (each loop after the first rewrites PCR, PTS/DTS and
//! continuity counters of whatever the file holds).
//!
//! Properties:
//! - for a file of 188-byte packets (as the crate's `Aligner` finds them), the first pass is
//!   the file unchanged from the first packet on; for 192/204-byte packets it is 188-byte TS;
//! - for a clean file (whole aligned packets, continuity counters in order on every PID), the
//!   looped output keeps every PID's counters in order too: they are carried across the loop
//!   point.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use tsbridge::ingest::replay::Replayer;
use tsbridge::ts::{Aligned, Aligner, Stride};

const TS: usize = 188;

fuzz_target!(|data: &[u8]| {
    let Some(mut r) = Replayer::new(data.to_vec(), true) else {
        return;
    };
    assert!(r.duration_90k() > 0);
    // Where the replayer starts: the first packet the aligner finds; and whether every packet
    // is a plain 188-byte one.
    let (mut start, mut plain) = (None, true);
    let mut on = |item: Aligned<'_>| {
        if let Aligned::Packet { offset, stride, .. } = item {
            start.get_or_insert(offset as usize);
            plain &= stride == Stride::Ts188;
        }
        ControlFlow::Continue(())
    };
    let mut aligner = Aligner::new();
    let _ = aligner.push(data, &mut on);
    let _ = aligner.flush(&mut on);
    let start = start.expect("Replayer::new accepted a file without a packet");
    if !plain {
        // 192/204-byte packets: the output is 188-byte packets (and any garbage as it was).
        for _ in 0..200 {
            let Some(chunk) = r.next_chunk() else { break };
            assert!(!chunk.data.is_empty(), "empty chunk");
        }
        return;
    }
    let file = &data[start..];

    let mut out = Vec::new();
    let mut passes_end = None;
    for _ in 0..200 {
        let Some(chunk) = r.next_chunk() else { break };
        assert!(!chunk.data.is_empty(), "empty chunk");
        out.extend_from_slice(chunk.data);
        if passes_end.is_none() && out.len() >= file.len() {
            passes_end = Some(out.len());
        }
    }
    if let Some(end) = passes_end {
        assert_eq!(&out[..file.len()], file, "the first pass is not the file");
        assert_eq!(end, file.len(), "a chunk straddles the loop point");
    }

    // Clean files loop without continuity errors.
    let clean = file.len() % TS == 0
        && file.chunks(TS).all(|p| p[0] == 0x47)
        && continuity_breaks(file).is_none();
    if clean && out.len() > file.len() {
        let whole = &out[..out.len() / TS * TS];
        if let Some((at, pid)) = continuity_breaks(whole) {
            panic!(
                "looped output breaks continuity on PID {pid:#x} at packet {} (file of {} packets)",
                at / TS,
                file.len() / TS
            );
        }
    }
});

/// The first packet (offset, PID) whose continuity counter does not follow the one before on
/// its PID (ISO/IEC 13818-1 §2.4.3.3: +1 on each payload-bearing packet, a repeat allowed, any
/// value after a discontinuity_indicator). `buf` is whole aligned packets.
fn continuity_breaks(buf: &[u8]) -> Option<(usize, u16)> {
    let mut last = vec![None::<u8>; 8192];
    for (i, p) in buf.chunks_exact(TS).enumerate() {
        let pid = u16::from_be_bytes([p[1], p[2]]) & 0x1FFF;
        let afc = p[3] >> 4 & 3;
        let discontinuity = afc & 2 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
        if discontinuity {
            last[usize::from(pid)] = None;
        }
        if afc & 1 == 0 {
            continue;
        }
        let cc = p[3] & 0x0F;
        if let Some(prev) = last[usize::from(pid)] {
            if cc != prev && cc != (prev + 1) & 0x0F {
                return Some((i * TS, pid));
            }
        }
        last[usize::from(pid)] = Some(cc);
    }
    None
}
