//! A tiny TS muxer for building test fixtures.

use std::collections::HashMap;

use super::packet::{PACKET_SIZE, SYNC_BYTE};
use super::psi::crc32_mpeg2;

/// The 5-byte PTS/DTS field with its 4-bit prefix and marker bits.
pub fn pts_bytes(prefix: u8, ts: u64) -> [u8; 5] {
    [
        prefix << 4 | ((ts >> 29) & 0x0E) as u8 | 1,
        (ts >> 22) as u8,
        ((ts >> 14) & 0xFE) as u8 | 1,
        (ts >> 7) as u8,
        ((ts << 1) & 0xFE) as u8 | 1,
    ]
}

/// A PES packet; `with_length` fills PES_packet_length, otherwise it is 0.
pub fn pes_bytes(
    stream_id: u8,
    pts: Option<u64>,
    dts: Option<u64>,
    payload: &[u8],
    with_length: bool,
) -> Vec<u8> {
    let mut fields = Vec::new();
    let flags = match (pts, dts) {
        (Some(p), Some(d)) => {
            fields.extend(pts_bytes(0b0011, p));
            fields.extend(pts_bytes(0b0001, d));
            0xC0
        }
        (Some(p), None) => {
            fields.extend(pts_bytes(0b0010, p));
            0x80
        }
        _ => 0,
    };
    let len = if with_length {
        3 + fields.len() + payload.len()
    } else {
        0
    };
    let mut v = vec![
        0,
        0,
        1,
        stream_id,
        (len >> 8) as u8,
        len as u8,
        0x80,
        flags,
        fields.len() as u8,
    ];
    v.extend(fields);
    v.extend_from_slice(payload);
    v
}

/// A long-form PSI section with its CRC.
pub fn section(table_id: u8, id: u16, version: u8, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![table_id, 0xB0 | (len >> 8) as u8, len as u8];
    s.extend(id.to_be_bytes());
    s.extend([0xC1 | version << 1, 0, 0]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend(crc.to_be_bytes());
    s
}

pub fn pat(program: u16, pmt_pid: u16, version: u8) -> Vec<u8> {
    pat_of(version, &[(program, pmt_pid)])
}

/// A PAT listing several programs: `(program_number, pmt_pid)` in order.
pub fn pat_of(version: u8, programs: &[(u16, u16)]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(program, pmt_pid) in programs {
        body.extend(program.to_be_bytes());
        body.extend((0xE000 | pmt_pid).to_be_bytes());
    }
    section(0x00, 1, version, &body)
}

/// The packets of a 188-byte stream laid out in `stride` (M2TS headers or FEC parity filled
/// with bytes that are never sync bytes).
pub fn restride(ts: &[u8], stride: crate::ts::Stride) -> Vec<u8> {
    let mut out = Vec::new();
    for p in ts.chunks(PACKET_SIZE) {
        out.extend(std::iter::repeat_n(0x11, stride.prefix()));
        out.extend_from_slice(p);
        out.extend(std::iter::repeat_n(0x22, stride.suffix()));
    }
    out
}

/// `streams`: (stream_type, pid, ES_info descriptors).
pub fn pmt(program: u16, version: u8, pcr_pid: u16, streams: &[(u8, u16, &[u8])]) -> Vec<u8> {
    let mut body = (0xE000 | pcr_pid).to_be_bytes().to_vec();
    body.extend([0xF0, 0x00]);
    for &(stream_type, pid, info) in streams {
        body.push(stream_type);
        body.extend((0xE000 | pid).to_be_bytes());
        body.extend((0xF000 | info.len() as u16).to_be_bytes());
        body.extend_from_slice(info);
    }
    section(0x02, program, version, &body)
}

pub const OPUS_MONO: &[u8] = &[0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, 0x01];
pub const OPUS_STEREO: &[u8] = &[0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, 0x02];

/// One packet; the adaptation field (flags byte onwards, `af`) is padded with stuffing so the
/// payload ends the packet.
pub fn packet(pid: u16, pusi: bool, cc: u8, af: &[u8], payload: &[u8]) -> [u8; PACKET_SIZE] {
    assert!(payload.len() <= 184);
    let mut p = [0xFFu8; PACKET_SIZE];
    p[0] = SYNC_BYTE;
    p[1] = (pusi as u8) << 6 | (pid >> 8) as u8;
    p[2] = pid as u8;
    let room = 184 - payload.len();
    if af.is_empty() && room == 0 {
        p[3] = 0x10 | cc;
    } else {
        assert!(room > af.len(), "adaptation field does not fit");
        p[3] = if payload.is_empty() { 0x20 } else { 0x30 } | cc;
        p[4] = (room - 1) as u8;
        if room > 1 {
            p[5] = 0;
        }
        p[5..5 + af.len()].copy_from_slice(af);
    }
    p[PACKET_SIZE - payload.len()..].copy_from_slice(payload);
    p
}

/// Adaptation field bytes carrying a PCR.
pub fn af_pcr(pcr_27mhz: u64, flags: u8) -> Vec<u8> {
    let (base, ext) = (pcr_27mhz / 300, pcr_27mhz % 300);
    vec![
        flags | 0x10,
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) << 7) as u8 | 0x7E | (ext >> 8) as u8,
        ext as u8,
    ]
}

/// Tracks continuity counters and splits sections and PES packets into packets.
#[derive(Default)]
pub struct Mux {
    pub cc: HashMap<u16, u8>,
    pub out: Vec<u8>,
}

impl Mux {
    fn next_cc(&mut self, pid: u16) -> u8 {
        let cc = self.cc.entry(pid).or_insert(15);
        *cc = (*cc + 1) & 0x0F;
        *cc
    }

    pub fn raw(&mut self, pid: u16, pusi: bool, af: &[u8], payload: &[u8]) -> [u8; PACKET_SIZE] {
        let cc = self.next_cc(pid);
        let p = packet(pid, pusi, cc, af, payload);
        self.out.extend_from_slice(&p);
        p
    }

    /// A section behind a pointer_field of 0, 0xFF-stuffed.
    pub fn psi(&mut self, pid: u16, section: &[u8]) {
        let mut data = vec![0];
        data.extend_from_slice(section);
        for (i, chunk) in data.chunks(184).enumerate() {
            let mut payload = [0xFF; 184];
            payload[..chunk.len()].copy_from_slice(chunk);
            self.raw(pid, i == 0, &[], &payload);
        }
    }

    /// A PES; `af` goes into the first packet (random access, PCR).
    pub fn pes(&mut self, pid: u16, pes: &[u8], af: &[u8]) {
        let first = (184 - if af.is_empty() { 0 } else { af.len() + 1 }).min(pes.len());
        self.raw(pid, true, af, &pes[..first]);
        for chunk in pes[first..].chunks(184) {
            self.raw(pid, false, &[], chunk);
        }
    }

    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.out.chunks(PACKET_SIZE)
    }
}

/// The access units (H.264 or H.265) of a `testdata/` file's video track, through the demuxer and the
/// assembler (as the media task gets them); `None` (said) when the file is missing.
pub fn testdata_video_aus(file: &str) -> Option<Vec<crate::codec::h264::AccessUnit>> {
    use crate::codec::{VideoAssembler, VideoCodec};
    use crate::ts::{Codec, DemuxEvent, Demuxer};
    let ts = crate::testdata::read(file)?;
    let mut demuxer = Demuxer::new();
    let mut events = Vec::new();
    demuxer.push(&ts, &mut events);
    demuxer.flush(&mut events);
    let video = demuxer.tracks().and_then(|t| t.video());
    let mut assembler = VideoAssembler::new(match video.map(|t| &t.codec) {
        Some(Codec::H265) => VideoCodec::H265,
        _ => VideoCodec::H264,
    });
    let video = video.map(|t| t.pid);
    let mut aus = Vec::new();
    for e in &events {
        if let DemuxEvent::Pes(pes) = e {
            if Some(pes.pid) == video {
                assembler.push(pes, &mut aus);
            }
        }
    }
    Some(aus)
}

/// The PES payloads and PTS of one PID of a TS (188-byte packets), whatever its stream type
/// (the demuxer reassembles only the tracks it plays): for tests of codecs it does not.
pub fn pes_of_pid(data: &[u8], pid: u16) -> Vec<(Vec<u8>, Option<u64>)> {
    use super::packet::{self, Header, Pid};
    use super::pes::PesAssembler;
    use super::DemuxEvent;
    let mut pes = PesAssembler::new(Pid(pid));
    let mut events = Vec::new();
    for pkt in data.chunks_exact(PACKET_SIZE) {
        let Ok(pkt) = <&[u8; PACKET_SIZE]>::try_from(pkt) else {
            continue;
        };
        let h = Header::parse(pkt);
        if h.pid != Pid(pid) || !h.has_payload() {
            continue;
        }
        if let Ok((af, payload)) = packet::split(pkt, &h) {
            let flags = (h.pusi, af.random_access, af.discontinuity, af.stuffed);
            pes.push(flags, payload, &mut events);
        }
    }
    pes.flush(&mut events);
    events
        .into_iter()
        .filter_map(|e| match e {
            DemuxEvent::Pes(p) => Some((p.data.to_vec(), p.pts)),
            _ => None,
        })
        .collect()
}
