//! An RFC 6184 (packetization-mode 1) depacketizer, written to *check* a sender: it reports what
//! it saw (NAL types, marker placement, gaps, malformed fragments) rather than papering over it.

use super::RtpPkt;

/// NAL unit types used in checks.
pub mod nal {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    pub const FILLER: u8 = 12;
    pub const STAP_A: u8 = 24;
    pub const FU_A: u8 = 28;
}

/// One access unit: all packets that share an RTP timestamp (consecutive in sequence order).
#[derive(Debug, Clone, Default)]
pub struct Au {
    /// RTP timestamp shared by the AU's packets.
    pub ts: u32,
    /// Sequence number of the AU's first packet.
    pub first_seq: u16,
    /// Sequence number of the AU's last packet.
    pub last_seq: u16,
    /// Number of (distinct) RTP packets.
    pub packets: usize,
    /// NAL unit types in order, after STAP-A/FU-A reassembly (a broken FU-A adds nothing).
    pub nal_types: Vec<u8>,
    /// The reassembled NAL units (with their one-byte header, no start codes).
    pub nals: Vec<Vec<u8>>,
    /// Payload type of the AU's packets: one packet type per packet (24 STAP-A, 28 FU-A, or a NAL type).
    pub packet_types: Vec<u8>,
    /// The last packet of the AU had the marker bit.
    pub marker_on_last: bool,
    /// Some packet other than the last one had the marker bit.
    pub marker_inside: bool,
    /// No sequence gap inside or right before the AU (when there is a previous AU), every FU-A
    /// started and ended properly, and the marker is on the last packet.
    pub complete: bool,
    /// Arrival time of the first packet.
    pub first_at: Option<std::time::Instant>,
    /// What made the AU incomplete or suspicious, for assertion messages.
    pub problems: Vec<String>,
}

impl Au {
    /// Contains an IDR slice.
    pub fn is_keyframe(&self) -> bool {
        self.nal_types.contains(&nal::IDR)
    }

    /// The first SPS in this AU, if any.
    pub fn sps(&self) -> Option<&[u8]> {
        self.nals
            .iter()
            .find(|n| n.first().map(|h| h & 0x1f) == Some(nal::SPS))
            .map(|n| n.as_slice())
    }

    /// The AU as an Annex B byte stream (start code before each NAL).
    pub fn annex_b(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for n in &self.nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(n);
        }
        out
    }
}

/// `profile-level-id` (6 hex digits) from an SPS NAL unit (with its header byte).
pub fn sps_profile_level_id(sps: &[u8]) -> Option<String> {
    if sps.len() < 4 || sps[0] & 0x1f != nal::SPS {
        return None;
    }
    Some(format!("{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3]))
}

/// Sorts by (unwrapped) sequence number and drops duplicates (e.g. NACK retransmissions).
fn ordered(pkts: &[RtpPkt]) -> Vec<(i64, &RtpPkt)> {
    let mut out: Vec<(i64, &RtpPkt)> = Vec::with_capacity(pkts.len());
    let mut last: Option<i64> = None;
    for p in pkts {
        let ext = match last {
            None => i64::from(p.seq),
            Some(l) => {
                let delta = p.seq.wrapping_sub(l as u16) as i16;
                l + i64::from(delta)
            }
        };
        // Track the highest seen so a late packet does not drag the reference back.
        last = Some(last.map_or(ext, |l| l.max(ext)));
        out.push((ext, p));
    }
    out.sort_by_key(|(e, _)| *e);
    out.dedup_by_key(|(e, _)| *e);
    out
}

/// Groups H.264 RTP packets into access units by RTP timestamp, reassembling STAP-A and FU-A.
///
/// Packets are first put in sequence order and de-duplicated. An AU is `complete` when its
/// packets are gap-free (and follow the previous AU without a gap), every FU-A has a start and
/// an end fragment with nothing missing between, and the marker is on its last packet.
pub fn h264_access_units(pkts: &[RtpPkt]) -> Vec<Au> {
    let pkts = ordered(pkts);
    let mut aus: Vec<Au> = Vec::new();
    let mut prev_ext: Option<i64> = None;
    let mut i = 0;
    while i < pkts.len() {
        let ts = pkts[i].1.ts;
        let mut j = i;
        while j < pkts.len() && pkts[j].1.ts == ts {
            j += 1;
        }
        let group = &pkts[i..j];
        let mut au = Au {
            ts,
            first_seq: group[0].1.seq,
            last_seq: group[group.len() - 1].1.seq,
            packets: group.len(),
            first_at: Some(group[0].1.at),
            ..Default::default()
        };
        if let Some(prev) = prev_ext {
            if group[0].0 != prev + 1 {
                au.problems.push(format!(
                    "{} packet(s) missing before seq {}",
                    group[0].0 - prev - 1,
                    group[0].1.seq
                ));
            }
        }
        // A NAL being reassembled from FU-A fragments; never crosses an AU boundary.
        let mut fu: Option<Vec<u8>> = None;
        for (k, (ext, p)) in group.iter().enumerate() {
            if k > 0 && *ext != group[k - 1].0 + 1 {
                au.problems.push(format!(
                    "{} packet(s) missing before seq {}",
                    ext - group[k - 1].0 - 1,
                    p.seq
                ));
                if fu.take().is_some() {
                    au.problems
                        .push("FU-A interrupted by a sequence gap".to_owned());
                }
            }
            if p.marker && k + 1 < group.len() {
                au.marker_inside = true;
                au.problems.push(format!(
                    "marker on seq {} which is not the AU's last",
                    p.seq
                ));
            }
            depacketize(&p.payload, p.seq, &mut fu, &mut au);
        }
        if fu.is_some() {
            au.problems.push("FU-A without an end fragment".to_owned());
        }
        au.marker_on_last = group[group.len() - 1].1.marker;
        if !au.marker_on_last {
            au.problems
                .push("no marker on the AU's last packet".to_owned());
        }
        au.complete = au.problems.is_empty();
        prev_ext = Some(group[group.len() - 1].0);
        aus.push(au);
        i = j;
    }
    aus
}

fn push_nal(au: &mut Au, n: Vec<u8>) {
    if let Some(h) = n.first() {
        au.nal_types.push(h & 0x1f);
        au.nals.push(n);
    }
}

fn depacketize(payload: &[u8], seq: u16, fu: &mut Option<Vec<u8>>, au: &mut Au) {
    let Some(&hdr) = payload.first() else {
        au.problems.push(format!("empty payload at seq {seq}"));
        return;
    };
    let typ = hdr & 0x1f;
    au.packet_types.push(typ);
    if typ != nal::FU_A && fu.take().is_some() {
        au.problems
            .push(format!("FU-A without an end fragment before seq {seq}"));
    }
    match typ {
        1..=23 => push_nal(au, payload.to_vec()),
        nal::STAP_A => {
            let mut rest = &payload[1..];
            if rest.is_empty() {
                au.problems.push(format!("empty STAP-A at seq {seq}"));
            }
            while !rest.is_empty() {
                if rest.len() < 2 {
                    au.problems
                        .push(format!("STAP-A trailing byte at seq {seq}"));
                    break;
                }
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                rest = &rest[2..];
                if size == 0 || size > rest.len() {
                    au.problems.push(format!(
                        "STAP-A NAL size {size} with {} bytes left at seq {seq}",
                        rest.len()
                    ));
                    break;
                }
                push_nal(au, rest[..size].to_vec());
                rest = &rest[size..];
            }
        }
        nal::FU_A => {
            if payload.len() < 3 {
                au.problems.push(format!("short FU-A at seq {seq}"));
                *fu = None;
                return;
            }
            let fu_hdr = payload[1];
            let (start, end) = (fu_hdr & 0x80 != 0, fu_hdr & 0x40 != 0);
            if start && end {
                au.problems
                    .push(format!("FU-A with both S and E at seq {seq}"));
            }
            if start {
                if fu.is_some() {
                    au.problems
                        .push(format!("FU-A restarted without an end at seq {seq}"));
                }
                let mut n = vec![(hdr & 0xe0) | (fu_hdr & 0x1f)];
                n.extend_from_slice(&payload[2..]);
                *fu = Some(n);
            } else if let Some(n) = fu.as_mut() {
                if n[0] & 0x1f != fu_hdr & 0x1f {
                    au.problems
                        .push(format!("FU-A type changed mid-NAL at seq {seq}"));
                }
                n.extend_from_slice(&payload[2..]);
            } else {
                au.problems
                    .push(format!("FU-A fragment without a start at seq {seq}"));
                return;
            }
            if end {
                if let Some(n) = fu.take() {
                    push_nal(au, n);
                }
            }
        }
        other => au.problems.push(format!(
            "packet type {other} (not allowed in mode 1) at seq {seq}"
        )),
    }
}

/// RTP timestamp steps from each access unit to the next.
pub fn ts_steps(aus: &[Au]) -> Vec<u32> {
    aus.windows(2)
        .map(|w| w[1].ts.wrapping_sub(w[0].ts))
        .collect()
}

/// Index of the first live AU of a viewer's video, for a source with frames `frame` ticks
/// apart. The cached GOP (instant start) comes first, stamped by the server's sending pace:
/// faster than real time, ending at the newest cached frame; live frames follow. Checks that
/// the backlog's steps are forward and below `frame`, and that it is at most `max_backlog`
/// frames (a GOP).
pub fn live_start(aus: &[Au], frame: u32, max_backlog: usize) -> usize {
    let steps = ts_steps(aus);
    let live = steps.iter().rposition(|&d| d != frame).map_or(0, |i| i + 1);
    assert!(
        steps[..live].iter().all(|&d| d > 0 && d < frame),
        "the backlog ({live} frames) is stamped faster than real time: {steps:?}"
    );
    assert!(live <= max_backlog, "a backlog of {live} frames: {steps:?}");
    live
}
