//! The muxer against the demuxer, ffprobe and hand-made input: round trips, AUD and parameter
//! sets, the 33-bit wrap, continuity, PSI and PCR timing, hostile input.

use super::*;
use crate::codec::h264::{nal_units, AccessUnit, H264Assembler, NalType, AUD};
use crate::codec::opus::split_pes;
use crate::time::PTS_WRAP;
use crate::ts::packet::timestamp_bytes;
use crate::ts::packet::SYNC_BYTE;
use crate::ts::psi::crc32_mpeg2;
use crate::ts::{Codec, DemuxEvent, DemuxProblem, Demuxer, Pes, TrackSet};

// ---- input: real access units and Opus packets from testdata/h264_opus.ts ----------------

#[derive(Clone, Debug)]
struct VideoIn {
    data: Vec<u8>,
    pts: u64,
    dts: u64,
    keyframe: bool,
}

#[derive(Clone, Debug)]
struct AudioIn {
    data: Vec<u8>,
    pts: u64,
}

use crate::testdata::read as testdata;

fn has_idr(annexb: &[u8]) -> bool {
    nal_units(annexb).any(|n| NalType::of(n) == Some(NalType::IDR))
}

fn types(annexb: &[u8]) -> Vec<u8> {
    nal_units(annexb).map(|n| n[0] & 0x1F).collect()
}

/// Video PES payloads as they are in the file (AUD first, SPS/PPS before IDRs), and every
/// Opus packet with its own PTS.
fn source() -> Option<(Vec<VideoIn>, Vec<AudioIn>)> {
    let d = demux(&testdata("h264_opus.ts")?);
    assert!(d.problems.is_empty());
    let video = d
        .video_pes
        .iter()
        .map(|p| VideoIn {
            data: p.data.to_vec(),
            pts: p.pts.unwrap(),
            dts: p.dts.or(p.pts).unwrap(),
            keyframe: has_idr(&p.data),
        })
        .collect();
    Some((video, d.opus))
}

/// The access units as the project's assembler gives them (no AUD, SPS/PPS before IDRs).
fn assembled(video: &[VideoIn]) -> Vec<AccessUnit> {
    let mut a = H264Assembler::new();
    let mut out = Vec::new();
    for v in video {
        a.push(&pes(&v.data, v.pts, v.dts), &mut out);
    }
    out
}

fn pes(data: &[u8], pts: u64, dts: u64) -> Pes {
    Pes {
        pid: Pid(0x100),
        pts: Some(pts & PTS_MASK),
        dts: (pts != dts).then_some(dts & PTS_MASK),
        random_access: false,
        discontinuity: false,
        data: data.to_vec().into(),
    }
}

/// Muxes both lists interleaved by time (video first on a tie).
fn mux(cfg: MuxConfig, video: &[VideoIn], audio: &[AudioIn]) -> Vec<u8> {
    mux_skewed(cfg, video, audio, 0)
}

/// As `mux`, with `audio_skew` added to each audio PTS but not to when it is written.
fn mux_skewed(cfg: MuxConfig, video: &[VideoIn], audio: &[AudioIn], audio_skew: i64) -> Vec<u8> {
    let mut m = Muxer::new(cfg);
    let mut out = Vec::new();
    let (mut v, mut a) = (video.iter().peekable(), audio.iter().peekable());
    loop {
        match (v.peek(), a.peek()) {
            (Some(vi), Some(ai)) if vi.dts <= ai.pts => {
                m.write_video(&vi.data, vi.pts, vi.dts, vi.keyframe, &mut out)
                    .unwrap();
                v.next();
            }
            (Some(vi), None) => {
                m.write_video(&vi.data, vi.pts, vi.dts, vi.keyframe, &mut out)
                    .unwrap();
                v.next();
            }
            (_, Some(ai)) => {
                m.write_audio(&ai.data, ai.pts.wrapping_add_signed(audio_skew), &mut out)
                    .unwrap();
                a.next();
            }
            (None, None) => break,
        }
    }
    assert_eq!(out.len() % PACKET_SIZE, 0);
    out
}

// ---- output: through the project's demuxer and codec parsers ------------------------------

#[derive(Default)]
struct Demuxed {
    tracks: Vec<TrackSet>,
    video_pes: Vec<Pes>,
    aus: Vec<AccessUnit>,
    opus: Vec<AudioIn>,
    problems: Vec<DemuxProblem>,
    pcrs: Vec<u64>,
    discontinuities: usize,
}

fn demux(ts: &[u8]) -> Demuxed {
    let mut d = Demuxer::new();
    let mut events = Vec::new();
    d.push(ts, &mut events);
    d.flush(&mut events);
    let mut r = Demuxed::default();
    let mut h264 = H264Assembler::new();
    for e in events {
        match e {
            DemuxEvent::Tracks(t) => r.tracks.push(t),
            DemuxEvent::Programs(_) | DemuxEvent::Ingested(_) | DemuxEvent::Cue { .. } => {}
            DemuxEvent::Problem(p) => r.problems.push(p),
            DemuxEvent::Pcr { pcr_27mhz, .. } => r.pcrs.push(pcr_27mhz),
            DemuxEvent::Discontinuity { .. } => r.discontinuities += 1,
            DemuxEvent::Pes(p) => {
                let t = r.tracks.last().expect("PES after the PMT");
                if Some(p.pid) == t.h264().map(|v| v.pid) {
                    h264.push(&p, &mut r.aus);
                    r.video_pes.push(p);
                } else if Some(p.pid) == t.audio().map(|a| a.pid) {
                    let mut packets = Vec::new();
                    split_pes(&p.data, &mut packets).expect("valid Opus PES");
                    for packet in packets {
                        r.opus.push(AudioIn {
                            data: packet.data.to_vec(),
                            pts: p.pts.unwrap() + u64::from(packet.offset_samples) * 15 / 8,
                        });
                    }
                }
            }
        }
    }
    r
}

fn packets(ts: &[u8]) -> impl Iterator<Item = &[u8; PACKET_SIZE]> {
    ts.chunks_exact(PACKET_SIZE)
        .map(|p| <&[u8; PACKET_SIZE]>::try_from(p).unwrap())
}

fn pid_of(pkt: &[u8]) -> u16 {
    u16::from(pkt[1] & 0x1F) << 8 | u16::from(pkt[2])
}

/// PCR base of a packet, if it has one.
fn pcr_of(pkt: &[u8; PACKET_SIZE]) -> Option<u64> {
    (pkt[3] & 0x20 != 0 && pkt[4] >= 7 && pkt[5] & 0x10 != 0).then(|| {
        u64::from(pkt[6]) << 25
            | u64::from(pkt[7]) << 17
            | u64::from(pkt[8]) << 9
            | u64::from(pkt[9]) << 1
            | u64::from(pkt[10] >> 7)
    })
}

fn stereo() -> MuxConfig {
    MuxConfig::default()
}

// ---- tests -------------------------------------------------------------------------------

#[test]
fn round_trip_restores_tracks_access_units_and_opus_packets() {
    let Some((video, audio)) = source() else {
        return;
    };
    let ts = mux(stereo(), &video, &audio);
    let d = demux(&ts);
    assert_eq!(d.problems, []);
    assert_eq!(d.discontinuities, 0);
    assert_eq!(d.tracks.len(), 1);
    let t = &d.tracks[0];
    assert_eq!(
        (t.program_number, t.pmt_pid, t.pcr_pid),
        (1, Pid(0x1000), Pid(0x100))
    );
    let codecs: Vec<_> = t.tracks.iter().map(|t| (t.pid, t.codec.clone())).collect();
    assert_eq!(
        codecs,
        [
            (Pid(0x100), Codec::H264),
            (Pid(0x101), Codec::Opus { channels: 2 })
        ]
    );
    // The file already has one AUD per access unit: none is added, the PES data is the same.
    assert_eq!(d.video_pes.len(), video.len());
    for (p, v) in d.video_pes.iter().zip(&video) {
        assert_eq!(&p.data[..], &v.data[..]);
        assert_eq!((p.pts, p.random_access), (Some(v.pts), v.keyframe));
    }
    assert_eq!(d.aus, assembled(&video));
    assert_eq!(d.aus.len(), 180);
    assert_eq!(d.aus.iter().filter(|au| au.keyframe).count(), 6);
    assert_eq!(d.opus.len(), 301);
    for (got, sent) in d.opus.iter().zip(&audio) {
        assert_eq!((&got.data, got.pts), (&sent.data, sent.pts));
    }
    assert!(!d.pcrs.is_empty());
    assert!(
        d.pcrs.windows(2).all(|w| w[1] >= w[0]),
        "PCR never goes back"
    );
}

#[test]
fn aud_is_added_when_missing_and_never_doubled() {
    let Some((video, audio)) = source() else {
        return;
    };
    // The assembler's access units have no AUD (and SPS/PPS before every IDR).
    let aus = assembled(&video);
    let plain: Vec<VideoIn> = aus
        .iter()
        .map(|au| VideoIn {
            data: au.data.to_vec(),
            pts: au.pts,
            dts: au.dts,
            keyframe: au.keyframe,
        })
        .collect();
    let d = demux(&mux(stereo(), &plain, &audio));
    assert_eq!(d.problems, []);
    for (p, v) in d.video_pes.iter().zip(&plain) {
        assert_eq!(&p.data[..AUD.len()], &AUD);
        assert_eq!(&p.data[AUD.len()..], &v.data[..]);
        assert_eq!(types(&p.data).iter().filter(|&&t| t == 9).count(), 1);
    }
    assert_eq!(d.aus, aus);
}

#[test]
fn sps_and_pps_are_inserted_before_an_idr_that_lacks_them() {
    let Some((video, audio)) = source() else {
        return;
    };
    // Later IDRs (AUD, SPS, PPS, IDR in the file) lose their parameter sets.
    let mut stripped = video.clone();
    let mut stripped_count = 0;
    for v in stripped.iter_mut().skip(1).filter(|v| v.keyframe) {
        assert_eq!(types(&v.data), [9, 7, 8, 5]);
        let idr = nal_units(&v.data).last().unwrap().to_vec();
        v.data = [&[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1][..], &idr].concat();
        stripped_count += 1;
    }
    assert_eq!(stripped_count, 5);
    let d = demux(&mux(stereo(), &stripped, &audio));
    assert_eq!(d.problems, []);
    for (p, v) in d.video_pes.iter().zip(&video).filter(|(_, v)| v.keyframe) {
        let t = types(&p.data);
        assert_eq!(&t[..3], [9, 7, 8], "AUD, SPS, PPS");
        assert_eq!(t.iter().filter(|&&t| t == 7).count(), 1);
        let want: Vec<_> = nal_units(&v.data).filter(|n| n[0] & 0x1F != 6).collect();
        let got: Vec<_> = nal_units(&p.data).filter(|n| n[0] & 0x1F != 6).collect();
        assert_eq!(got, want, "the file's own SPS and PPS bytes");
    }
    // What a viewer gets is the same as from the original file.
    assert_eq!(d.aus, assembled(&video));
}

#[test]
fn missing_pps_goes_after_the_access_units_own_sps() {
    const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E, 0xD9];
    const PPS: &[u8] = &[0x68, 0xCE, 0x3C, 0x80];
    const IDR: &[u8] = &[0x65, 0x88, 0x84];
    const SLICE: &[u8] = &[0x41, 0x9A];
    let annexb = |nals: &[&[u8]]| -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 1][..], n].concat())
            .collect()
    };
    let mut m = Muxer::new(MuxConfig {
        audio: None,
        ..stereo()
    });
    let mut ts = Vec::new();
    m.write_video(&annexb(&[SPS, PPS, IDR]), 0, 0, true, &mut ts)
        .unwrap();
    m.write_video(&annexb(&[SLICE]), 3000, 3000, false, &mut ts)
        .unwrap();
    // Garbage before the first start code is dropped; the flag alone makes a keyframe.
    let odd = [&[0xAB, 0xCD][..], &annexb(&[SPS, IDR])].concat();
    m.write_video(&odd, 6000, 6000, false, &mut ts).unwrap();
    m.write_video(&annexb(&[SLICE]), 9000, 9000, true, &mut ts)
        .unwrap();
    let d = demux(&ts);
    assert_eq!(d.problems, []);
    let nals: Vec<Vec<&[u8]>> = d
        .video_pes
        .iter()
        .map(|p| nal_units(&p.data).collect())
        .collect();
    const AUD_NAL: &[u8] = &[0x09, 0xF0];
    assert_eq!(nals[0], [AUD_NAL, SPS, PPS, IDR]);
    assert_eq!(nals[1], [AUD_NAL, SLICE]);
    assert_eq!(nals[2], [AUD_NAL, SPS, PPS, IDR]);
    assert_eq!(nals[3], [AUD_NAL, SPS, PPS, SLICE]);
    let flags: Vec<_> = d.video_pes.iter().map(|p| p.random_access).collect();
    assert_eq!(flags, [true, false, true, true]);
    // Start codes as they were; the inserted PPS has a 4-byte one.
    let want = [
        &AUD[..],
        &[0, 0, 1],
        SPS,
        &[0, 0, 0, 1],
        PPS,
        &[0, 0, 1],
        IDR,
    ]
    .concat();
    assert_eq!(&d.video_pes[2].data[..], &want[..]);
}

#[test]
fn pts_wrap_33bit() {
    let Some((video, audio)) = source() else {
        return;
    };
    // Shift so the 33-bit wrap falls in the middle; the muxer takes u64 modulo 2^33.
    let shift = PTS_WRAP - video[90].pts;
    let video: Vec<_> = video
        .into_iter()
        .map(|v| VideoIn {
            pts: v.pts + shift,
            dts: v.dts + shift,
            ..v
        })
        .collect();
    let audio: Vec<_> = audio
        .into_iter()
        .map(|a| AudioIn {
            pts: a.pts + shift,
            ..a
        })
        .collect();
    let ts = mux(stereo(), &video, &audio);
    let d = demux(&ts);
    assert_eq!(d.problems, []);
    assert_eq!(d.discontinuities, 0, "a wrap is not a discontinuity");
    let pts: Vec<_> = d.aus.iter().map(|au| au.pts).collect();
    let want: Vec<_> = video.iter().map(|v| v.pts & PTS_MASK).collect();
    assert_eq!(pts, want);
    assert_eq!(d.aus[90].pts, 0);
    assert!(d
        .aus
        .iter()
        .zip(&video)
        .all(|(au, v)| au.keyframe == v.keyframe));
    let opus: Vec<_> = d.opus.iter().map(|a| (a.pts, &a.data)).collect();
    let want: Vec<_> = audio.iter().map(|a| (a.pts & PTS_MASK, &a.data)).collect();
    assert_eq!(opus, want);
    // The PCR steps forward across the wrap too.
    let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
    assert!(pcrs
        .windows(2)
        .all(|w| (0..=PCR_PERIOD as i64).contains(&pts_diff(w[0], w[1]))));
    assert!(pcrs.windows(2).any(|w| w[1] < w[0]), "wrapped");
}

#[test]
fn continuity_counters_run_on_every_pid() {
    let Some((video, audio)) = source() else {
        return;
    };
    let ts = mux(stereo(), &video, &audio);
    let mut last = std::collections::HashMap::new();
    let mut af_only = 0;
    for pkt in packets(&ts) {
        assert_eq!(pkt[0], SYNC_BYTE);
        let pid = pid_of(pkt);
        let cc = pkt[3] & 0x0F;
        if pkt[3] & 0x10 != 0 {
            if let Some(prev) = last.insert(pid, cc) {
                assert_eq!(cc, (prev + 1) & 0x0F, "PID {pid:#x}");
            }
        } else {
            af_only += 1;
            if let Some(&prev) = last.get(&pid) {
                assert_eq!(cc, prev, "no payload: the counter repeats");
            }
        }
    }
    assert_eq!(
        last.keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [0, 0x100, 0x101, 0x1000].into()
    );
    // 30 fps video gives a PCR every 33 ms: the audio clock is not needed once the frame
    // interval is known.
    assert!(af_only <= 2, "{af_only}");
}

#[test]
fn psi_every_100ms_and_right_before_each_keyframe() {
    let Some((video, audio)) = source() else {
        return;
    };
    let ts = mux(stereo(), &video, &audio);
    let all: Vec<_> = packets(&ts).collect();
    assert_eq!((pid_of(all[0]), pid_of(all[1])), (0, 0x1000));
    let mut pcr = None;
    let mut pat_at = Vec::new();
    for (i, pkt) in all.iter().enumerate() {
        if let Some(p) = pcr_of(pkt) {
            pcr = Some(p);
        }
        match pid_of(*pkt) {
            0 => {
                pat_at.extend(pcr);
                assert_eq!(pid_of(all[i + 1]), 0x1000, "PMT right after the PAT");
            }
            0x100 if pkt[1] & 0x40 != 0 && pkt[5] & 0x40 != 0 => {
                assert_eq!((pid_of(all[i - 2]), pid_of(all[i - 1])), (0, 0x1000));
            }
            _ => {}
        }
    }
    // Every ~100 ms of PCR time: at most one video frame late.
    assert!(pat_at.windows(2).all(|w| w[1] - w[0] <= PSI_PERIOD + 3000));
    assert!(pat_at.len() >= 55, "{}", pat_at.len());
    // 6 s: 60 by the period (a little more: the audio timeline, 20 ms steps, may come
    // first) and 6 before the keyframes.
    assert!(pat_at.len() <= 75, "{}", pat_at.len());
}

#[test]
fn pcr_every_40ms_at_low_frame_rates_from_audio_time() {
    let Some((video, audio)) = source() else {
        return;
    };
    // 5 fps: every sixth frame (the demuxer does not decode, references do not matter).
    let slow: Vec<_> = video.iter().step_by(6).cloned().collect();
    let ts = mux(stereo(), &slow, &audio);
    let d = demux(&ts);
    assert_eq!(d.problems, []);
    let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
    let steps: Vec<i64> = pcrs.windows(2).map(|w| pts_diff(w[0], w[1])).collect();
    assert!(
        steps.iter().all(|&s| (0..=PCR_PERIOD as i64).contains(&s)),
        "{steps:?}"
    );
    // Those from the audio clock are adaptation-field-only packets on the video PID.
    let af_only = packets(&ts)
        .filter(|p| pid_of(*p) == 0x100 && p[3] & 0x30 == 0x20)
        .count();
    assert!(af_only > 100, "{af_only}");
    // The PCR stays behind each video DTS by at most PCR_DELAY.
    let mut pcr = None;
    for pkt in packets(&ts) {
        if let Some(p) = pcr_of(pkt) {
            pcr = Some(p);
        }
        if pid_of(pkt) == 0x100 && pkt[1] & 0x40 != 0 {
            let payload = &pkt[4 + usize::from(pkt[4]) + 1..];
            let dts = crate::ts::packet::read_timestamp(payload[9..14].try_into().unwrap());
            let lead = pts_diff(pcr.unwrap(), dts);
            assert!((0..=PCR_DELAY as i64).contains(&lead), "{lead}");
        }
    }
}

#[test]
fn audio_skewed_against_video_does_not_pull_the_pcr() {
    let Some((video, audio)) = source() else {
        return;
    };
    let slow: Vec<_> = video.iter().step_by(6).cloned().collect();
    // Audio timestamps 444 ms behind / ahead of the video ones for the same instant.
    for skew in [-40_000i64, 40_000] {
        let ts = mux_skewed(stereo(), &slow, &audio, skew);
        let d = demux(&ts);
        assert_eq!(d.problems, []);
        // A PCR started by audio ahead of the video waits for it (PCR held), one started
        // behind it jumps to it: after a second, the PCR follows the video.
        let settled = slow[0].dts + TIME_JUMP;
        let (mut pcr, mut pcrs) = (None, Vec::new());
        for pkt in packets(&ts) {
            if let Some(p) = pcr_of(pkt) {
                pcr = Some(p);
                pcrs.push(p);
            }
            if pid_of(pkt) == 0x100 && pkt[1] & 0x40 != 0 {
                let payload = &pkt[4 + usize::from(pkt[4]) + 1..];
                let dts = crate::ts::packet::read_timestamp(payload[9..14].try_into().unwrap());
                if dts < settled {
                    pcrs.clear();
                    continue;
                }
                // Off by at most one audio packet (20 ms) from the video timing.
                let lead = pts_diff(pcr.unwrap(), dts);
                let near = PCR_DELAY as i64 - 1800..=PCR_DELAY as i64;
                assert!(near.contains(&lead), "skew {skew}: {lead}");
            }
        }
        let steps: Vec<i64> = pcrs.windows(2).map(|w| pts_diff(w[0], w[1])).collect();
        assert!(steps.len() > 100);
        let ok = 0..=(PCR_PERIOD + 1800) as i64;
        assert!(
            steps.iter().all(|s| ok.contains(s)),
            "skew {skew}: {steps:?}"
        );
    }
}

#[test]
fn audio_only_and_video_only_programs() {
    let Some((video, audio)) = source() else {
        return;
    };
    let mono = MuxConfig {
        video: false,
        audio: Some(1),
        ..stereo()
    };
    let d = demux(&mux(mono, &[], &audio));
    assert_eq!(d.problems, []);
    let t = &d.tracks[0];
    assert_eq!(t.pcr_pid, Pid(0x101));
    assert_eq!(t.tracks.len(), 1);
    assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 1 });
    assert_eq!(d.opus.len(), audio.len());
    assert_eq!(d.pcrs.len(), audio.len(), "a PCR on every audio PES");

    let video_only = MuxConfig {
        audio: None,
        ..stereo()
    };
    let d = demux(&mux(video_only, &video, &[]));
    assert_eq!(d.problems, []);
    assert_eq!(d.tracks[0].tracks.len(), 1);
    assert_eq!(d.tracks[0].pcr_pid, Pid(0x100));
    assert_eq!(d.aus, assembled(&video));
    assert_eq!(d.pcrs.len(), video.len());

    let mut m = Muxer::new(video_only);
    let mut out = Vec::new();
    assert_eq!(
        m.write_audio(&[0xFC], 0, &mut out),
        Err(MuxError::NoAudioTrack)
    );
    let mut m = Muxer::new(mono);
    assert_eq!(
        m.write_video(&AUD, 0, 0, false, &mut out),
        Err(MuxError::NoVideoTrack)
    );
    assert!(out.is_empty());
}

#[test]
fn pes_headers_lengths_and_stuffing() {
    let mut m = Muxer::new(stereo());
    let mut ts = Vec::new();
    // A 100 kB access unit: PES_packet_length 0; a small one: exact; with DTS.
    let big = [&AUD[..], &[0, 0, 1, 0x65], &vec![0x55; 100_000]].concat();
    m.write_video(&big, 9000, 6000, true, &mut ts).unwrap();
    let small_at = ts.len();
    m.write_video(&[0, 0, 1, 0x41, 1, 2, 3], 12_000, 9000, false, &mut ts)
        .unwrap();
    let audio_at = ts.len();
    // 300 bytes: au_size is ff 2d.
    let opus = [&[0xFC][..], &[7; 299]].concat();
    m.write_audio(&opus, 9100, &mut ts).unwrap();

    let all: Vec<_> = packets(&ts).collect();
    let first_video = all.iter().position(|p| pid_of(*p) == 0x100).unwrap();
    let p = all[first_video];
    // Adaptation field: RAI and PCR (dts - 100 ms), then the PES header.
    assert_eq!(p[3] & 0x30, 0x30);
    assert_eq!(&p[4..6], &[7, 0x50]);
    assert_eq!(pcr_of(p), Some(PTS_WRAP + 6000 - PCR_DELAY));
    let pes = &p[12..];
    assert_eq!(&pes[..9], &[0, 0, 1, 0xE0, 0, 0, 0x84, 0xC0, 10]);
    assert_eq!(&pes[9..14], &timestamp_bytes(0b0011, 9000));
    assert_eq!(&pes[14..19], &timestamp_bytes(0b0001, 6000));

    let small = all[small_at / PACKET_SIZE..audio_at / PACKET_SIZE].to_vec();
    assert_eq!(small.len(), 1);
    let p = small[0];
    // PCR field, then 0xFF stuffing up to the PES: 19 + 13 bytes (AUD added).
    let af_len = usize::from(p[4]);
    assert_eq!(4 + 1 + af_len + 19 + 13, PACKET_SIZE);
    assert_eq!(p[5], 0x10);
    assert!(p[12..5 + af_len].iter().all(|&b| b == 0xFF));
    let pes = &p[5 + af_len..];
    assert_eq!(&pes[..9], &[0, 0, 1, 0xE0, 0, 3 + 10 + 13, 0x84, 0xC0, 10]);
    assert_eq!(
        &pes[19..],
        &[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 1, 2, 3]
    );

    let audio: Vec<_> = all[audio_at / PACKET_SIZE..]
        .iter()
        .filter(|p| pid_of(**p) == 0x101)
        .collect();
    assert_eq!(audio.len(), 2);
    let p = audio[0];
    // RAI only, no PCR on audio when there is video.
    assert_eq!(&p[4..6], &[1, 0x40]);
    // PES_packet_length 3 + 5 + 4 + 300 = 312.
    assert_eq!(&p[6..15], &[0, 0, 1, 0xBD, 0x01, 0x38, 0x84, 0x80, 5]);
    assert_eq!(&p[15..20], &timestamp_bytes(0b0010, 9100));
    assert_eq!(&p[20..24], &[0x7F, 0xE0, 0xFF, 0x2D]);
    assert!(p[24] == 0xFC && p[25..].iter().all(|&b| b == 7));
    // 14 + 4 + 300 bytes of PES; 182 in the first packet, the rest after stuffing.
    let q = audio[1];
    assert_eq!(q[1] & 0x40, 0);
    let af_len = usize::from(q[4]);
    let tail = &q[5 + af_len..];
    assert_eq!(tail.len(), 14 + 4 + 300 - 182);
    assert!(tail.iter().all(|&b| b == 7));
}

#[test]
fn hostile_input_never_panics() {
    let mut m = Muxer::new(stereo());
    let mut out = Vec::new();
    for au in [&[][..], &[0], &[0, 0, 1], &[0, 0, 0, 1], &[1, 2, 3, 4, 5]] {
        assert_eq!(
            m.write_video(au, 0, 0, true, &mut out),
            Err(MuxError::NoNalUnits)
        );
    }
    assert!(out.is_empty(), "nothing written for refused input");
    assert_eq!(
        m.write_audio(&[], 0, &mut out),
        Err(MuxError::InvalidOpusPacket { len: 0 })
    );
    assert_eq!(
        m.write_audio(&[0xFF, 0x00], 0, &mut out),
        Err(MuxError::InvalidOpusPacket { len: 2 })
    );
    let huge = vec![0xFC; 70_000];
    assert_eq!(
        m.write_audio(&huge, 0, &mut out),
        Err(MuxError::OpusPacketTooLarge { len: 70_000 })
    );
    // The largest that fits: 3 + 5 + 2 + 256 + n = 65535.
    let largest = vec![0xFC; 65_269];
    m.write_audio(&largest, 0, &mut out).unwrap();
    assert_eq!(
        m.write_audio(&[0xFC; 65_270], 0, &mut out),
        Err(MuxError::OpusPacketTooLarge { len: 65_270 })
    );
    let big = [&[0, 0, 1, 0x65][..], &vec![0x01; 300_000]].concat();
    m.write_video(&big, 0, 0, true, &mut out).unwrap();
    assert_eq!(
        m.write_video(&vec![0x01; 300_000], 0, 0, true, &mut out),
        Err(MuxError::NoNalUnits)
    );
    assert_eq!(demux(&out).problems, []);

    // Pseudo-random access units and packets; timestamps that step, stall, go back a
    // little or a lot, jump anywhere (u64::MAX too).
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let configs = [
        stereo(),
        MuxConfig {
            video: false,
            ..stereo()
        },
        MuxConfig {
            audio: None,
            ..stereo()
        },
    ];
    for cfg in configs {
        let mut m = Muxer::new(cfg);
        let mut out = Vec::new();
        let mut t = next();
        for i in 0..3000 {
            t = match next() % 20 {
                0 => next(),
                1 => u64::MAX,
                2 => t.wrapping_sub(next() % 200_000),
                _ => t.wrapping_add(next() % 6000),
            };
            let len = (next() % 600) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8 % 4).collect();
            if i % 2 == 0 {
                data.splice(0..0, [0, 0, 1, (next() % 32) as u8]);
            }
            if next() % 2 == 0 {
                let dts = t.wrapping_sub(next() % 3 * 3000);
                let _ = m.write_video(&data, t, dts, i % 5 == 0, &mut out);
            } else {
                let _ = m.write_audio(&data, t, &mut out);
            }
        }
        assert_eq!(out.len() % PACKET_SIZE, 0);
        // Whatever went in, the output is valid TS: no problem for the demuxer.
        let d = demux(&out);
        assert_eq!(d.problems, [], "{cfg:?}");
        assert!(!d.video_pes.is_empty() || !cfg.video);
        assert!(!d.opus.is_empty() || cfg.audio.is_none());
    }
}

#[test]
fn pat_and_pmt_sections() {
    let cfg = MuxConfig {
        audio: Some(1),
        program_number: 7,
        pmt_pid: Pid(0x1234),
        ..stereo()
    };
    let pat = pat_packet(&cfg);
    assert_eq!(&pat[..5], &[0x47, 0x40, 0x00, 0x10, 0x00]);
    let section = &pat[5..5 + 16];
    assert_eq!(
        &section[..12],
        &[0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x07, 0xF2, 0x34]
    );
    assert_eq!(crc32_mpeg2(section), 0);
    assert!(pat[5 + 16..].iter().all(|&b| b == 0xFF));

    let pmt = pmt_packet(&cfg);
    assert_eq!(&pmt[..5], &[0x47, 0x52, 0x34, 0x10, 0x00]);
    let len = 3 + (usize::from(pmt[6] & 0x0F) << 8 | usize::from(pmt[7]));
    let section = &pmt[5..5 + len];
    assert_eq!(crc32_mpeg2(section), 0);
    assert_eq!(
        &section[3..len - 4],
        &[
            0x00, 0x07, 0xC1, 0x00, 0x00, // program 7, version 0, current
            0xE1, 0x00, 0xF0, 0x00, // PCR PID 0x100, no program info
            0x1B, 0xE1, 0x00, 0xF0, 0x00, // H.264
            0x06, 0xE1, 0x01, 0xF0, 0x0A, // private PES, 10 bytes of descriptors
            0x05, 0x04, b'O', b'p', b'u', b's', 0x7F, 0x02, 0x80, 0x01,
        ][..]
    );
}

#[test]
fn backwards_jump_starts_a_new_timeline() {
    let mut m = Muxer::new(MuxConfig {
        audio: None,
        ..stereo()
    });
    let mut ts = Vec::new();
    let slice = [0, 0, 1, 0x41, 9];
    for (i, pts) in [900_000u64, 903_000, 906_000, 902_000, 90_000, 93_000]
        .into_iter()
        .enumerate()
    {
        m.write_video(&slice, pts, pts, i == 0, &mut ts).unwrap();
    }
    let d = demux(&ts);
    assert_eq!(d.problems, []);
    let pcrs: Vec<u64> = d.pcrs.iter().map(|p| p / 300).collect();
    let at = |pts: u64| pts - PCR_DELAY;
    // A small step back holds the PCR; a big one is a new timeline.
    assert_eq!(
        pcrs,
        [
            at(900_000),
            at(903_000),
            at(906_000),
            at(906_000),
            at(90_000),
            at(93_000)
        ]
    );
    assert_eq!(d.discontinuities, 1);
    assert!(d.video_pes[4].discontinuity);
}

#[test]
fn ffprobe_reads_the_muxed_file() {
    let Some((video, audio)) = source() else {
        return;
    };
    if std::process::Command::new("ffprobe")
        .arg("-version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffprobe is required in CI"
        );
        eprintln!("skipping: ffprobe not found");
        return;
    }
    let path = std::env::temp_dir().join(format!("tsbridge-mux-{}.ts", std::process::id()));
    std::fs::write(&path, mux(stereo(), &video, &audio)).unwrap();
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_packets",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "ffprobe complained: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2);
    let index_of = |codec: &str| {
        let s = streams
            .iter()
            .find(|s| s["codec_name"] == codec)
            .unwrap_or_else(|| panic!("no {codec} stream"));
        s["index"].as_u64().unwrap()
    };
    let (v, a) = (index_of("h264"), index_of("opus"));
    let opus = &streams[a as usize];
    assert_eq!(opus["channels"], 2);
    assert_eq!(opus["id"], "0x101");
    assert_eq!(streams[v as usize]["id"], "0x100");
    let packets = json["packets"].as_array().unwrap();
    let pts_of = |index: u64| -> Vec<u64> {
        packets
            .iter()
            .filter(|p| p["stream_index"].as_u64() == Some(index))
            .map(|p| p["pts"].as_u64().unwrap())
            .collect()
    };
    let key_count = packets
        .iter()
        .filter(|p| p["stream_index"].as_u64() == Some(v))
        .filter(|p| p["flags"].as_str().unwrap_or("").starts_with('K'))
        .count();
    assert_eq!(pts_of(v), video.iter().map(|v| v.pts).collect::<Vec<_>>());
    assert_eq!(pts_of(a), audio.iter().map(|a| a.pts).collect::<Vec<_>>());
    assert_eq!(key_count, 6);
}
