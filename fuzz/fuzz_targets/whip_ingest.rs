//! The WHIP side's muxer as a property test: a `MuxConfig` and a sequence of `write_video` /
//! `write_audio` calls with arbitrary data and timestamps (absolute, or small steps forward and
//! back from the previous one), then the muxer's output through the `Demuxer`. With a config
//! flag set (half the inputs), a per-call flag repeats the call's bytes to 65 000–65 744 bytes:
//! across the PES_packet_length limit (video: exact length or an unbounded PES; audio: accepted
//! or `OpusPacketTooLarge`).
//!
//! Properties, for the calls the muxer accepted (`Ok`):
//! - the demuxer reports no `Problem` and the PMT's tracks are the configured ones;
//! - one PES per accepted call, in order on its PID, with the PTS/DTS given (mod 2^33);
//!   `random_access` on video exactly for keyframes (flagged, or with an IDR slice);
//! - audio: the PES splits (`opus::split_pes`) into exactly the packet written;
//! - video: every NAL unit of the access unit is in the PES, in order;
//! - the PCR never steps back except at a `discontinuity_indicator`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::codec::h264::nal_units;
use tsbridge::codec::opus::split_pes;
use tsbridge::ts::{Codec, DemuxEvent, Demuxer, MuxConfig, Muxer, Pid};

const MASK: u64 = (1 << 33) - 1;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some(u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }
    /// A timestamp: absolute (any u64), or a step of -4096..=+4095 ticks (scaled) from `prev`.
    fn time(&mut self, prev: u64) -> Option<u64> {
        let mode = self.byte()?;
        Some(match mode & 3 {
            0 => self.u64()?,
            _ => {
                let step = i64::from(self.u16()? as i16) * i64::from(mode >> 2);
                prev.wrapping_add_signed(step)
            }
        })
    }
}

/// What a call wrote, to check the demuxed PES against.
enum Wrote {
    Video {
        au: Vec<u8>,
        pts: u64,
        dts: u64,
        key: bool,
    },
    Audio {
        packet: Vec<u8>,
        pts: u64,
    },
}

/// `bytes`, or with the "big" flag, `bytes` repeated to 65 000 + 24 * `extra` bytes (up to
/// 65 744: across the largest Opus packet one PES takes, ~65 270, and the largest video access
/// unit with an exact PES_packet_length, ~65 510).
fn payload(bytes: &[u8], big: bool, extra: u8) -> Vec<u8> {
    if !big || bytes.is_empty() {
        return bytes.to_vec();
    }
    let n = 65_000 + 24 * usize::from(extra);
    bytes.iter().copied().cycle().take(n).collect()
}

/// Signed distance on the 33-bit clock, as the muxer measures it.
fn diff(from: u64, to: u64) -> i64 {
    let d = (to.wrapping_sub(from) & MASK) as i64;
    if d > 1 << 32 {
        d - (1 << 33)
    } else {
        d
    }
}

/// The muxer's config, and whether calls may be "big".
fn config(inp: &mut Input<'_>) -> Option<(MuxConfig, bool)> {
    let flags = inp.byte()?;
    let mut cfg = MuxConfig {
        video: flags & 1 != 0,
        audio: [None, Some(1), Some(2), Some(2)][usize::from(flags >> 1 & 3)],
        ..MuxConfig::default()
    };
    if flags & 0x08 != 0 {
        // Other PIDs and program: valid ones (distinct, not PAT/CAT/null), as documented.
        cfg.pmt_pid = Pid(inp.u16()? & 0x1FFF);
        cfg.video_pid = Pid(inp.u16()? & 0x1FFF);
        cfg.audio_pid = Pid(inp.u16()? & 0x1FFF);
        cfg.program_number = inp.u16()?.max(1);
        let pids = [cfg.pmt_pid, cfg.video_pid, cfg.audio_pid];
        if pids.iter().any(|p| [0, 1, 0x1FFF].contains(&p.0))
            || pids[0] == pids[1]
            || pids[0] == pids[2]
            || pids[1] == pids[2]
        {
            return None;
        }
    }
    Some((cfg, flags & 0x10 != 0))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let Some((cfg, big)) = config(&mut inp) else {
        return;
    };
    let mut mux = Muxer::new(cfg);
    let mut ts = Vec::new();
    let mut wrote: Vec<Wrote> = Vec::new();
    let (mut vpts, mut apts) = (0u64, 0u64);
    while let Some(op) = inp.byte() {
        let len = usize::from(inp.u16().unwrap_or(0)) % 2048;
        if op & 1 == 0 {
            let Some(pts) = inp.time(vpts) else { break };
            let Some(dts) = inp.time(pts) else { break };
            vpts = pts;
            let au = payload(inp.bytes(len), big && op & 4 != 0, op >> 3);
            let key = op & 2 != 0;
            if mux.write_video(&au, pts, dts, key, &mut ts).is_ok() {
                let idr = nal_units(&au).any(|n| n[0] & 0x1F == 5);
                wrote.push(Wrote::Video {
                    au,
                    pts,
                    dts,
                    key: key || idr,
                });
            }
        } else {
            let Some(pts) = inp.time(apts) else { break };
            apts = pts;
            let packet = payload(inp.bytes(len), big && op & 4 != 0, op >> 3);
            if mux.write_audio(&packet, pts, &mut ts).is_ok() {
                wrote.push(Wrote::Audio { packet, pts });
            }
        }
    }
    assert_eq!(ts.len() % 188, 0);

    let mut d = Demuxer::new();
    let mut events = Vec::new();
    d.push(&ts, &mut events);
    d.flush(&mut events);

    let mut pes = Vec::new();
    let mut last_pcr: Option<u64> = None;
    let mut discontinuity = false;
    for e in &events {
        match e {
            DemuxEvent::Problem(p) => panic!("demuxing the muxer's output: {p}"),
            DemuxEvent::Tracks(t) => {
                assert_eq!(t.video().map(|v| v.pid), cfg.video.then_some(cfg.video_pid));
                let audio = t.audio().map(|a| (a.pid, a.codec.clone()));
                let want = cfg
                    .audio
                    .map(|c| (cfg.audio_pid, Codec::Opus { channels: c }));
                assert_eq!(audio, want);
                assert_eq!(t.pcr_pid, cfg.pcr_pid());
            }
            DemuxEvent::Programs(_) | DemuxEvent::Ingested(_) | DemuxEvent::Cue { .. } => {}
            DemuxEvent::Pes(p) => pes.push(p),
            DemuxEvent::Discontinuity { pid } if *pid == cfg.pcr_pid() => discontinuity = true,
            DemuxEvent::Discontinuity { .. } => {}
            DemuxEvent::Pcr { pcr_27mhz, .. } => {
                let base = pcr_27mhz / 300;
                if let Some(last) = last_pcr {
                    assert!(
                        discontinuity || diff(last, base) >= 0,
                        "PCR stepped back from {last} to {base} without a discontinuity"
                    );
                }
                last_pcr = Some(base);
                discontinuity = false;
            }
        }
    }
    if !wrote.is_empty() {
        assert!(d.tracks().is_some(), "no PMT in the output");
    }

    // Per PID, in write order (across PIDs the order differs: a video PES longer than
    // PES_packet_length allows is only complete at the next video PES, or at the end).
    assert_eq!(pes.len(), wrote.len(), "one PES per accepted write");
    let is_video = |w: &Wrote| matches!(w, Wrote::Video { .. });
    let videos = wrote.iter().filter(|w| is_video(w)).count();
    let on_video = pes.iter().filter(|p| p.pid == cfg.video_pid).count();
    assert_eq!(on_video, videos, "video PES count");
    let video = pes.iter().filter(|p| p.pid == cfg.video_pid);
    let audio = pes.iter().filter(|p| p.pid == cfg.audio_pid);
    let pairs = video
        .zip(wrote.iter().filter(|w| is_video(w)))
        .chain(audio.zip(wrote.iter().filter(|w| !is_video(w))));
    for (p, w) in pairs {
        match w {
            Wrote::Video { au, pts, dts, key } => {
                assert_eq!(p.pid, cfg.video_pid);
                assert_eq!(p.pts, Some(pts & MASK));
                let dts = Some(dts & MASK).filter(|&d| d != pts & MASK);
                assert_eq!(p.dts, dts);
                assert_eq!(p.random_access, *key, "random_access");
                let mut out = nal_units(&p.data);
                for nal in nal_units(au) {
                    assert!(
                        out.any(|o| o == nal),
                        "NAL unit {nal:02x?} missing from the PES"
                    );
                }
            }
            Wrote::Audio { packet, pts } => {
                assert_eq!(p.pid, cfg.audio_pid);
                assert_eq!(p.pts, Some(pts & MASK));
                assert_eq!(p.dts, None);
                let mut packets = Vec::new();
                split_pes(&p.data, &mut packets).expect("the muxer's Opus PES splits");
                assert_eq!(packets.len(), 1);
                assert_eq!(packets[0].data, &packet[..]);
                assert_eq!(packets[0].offset_samples, 0);
            }
        }
    }
});
