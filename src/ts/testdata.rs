//! Demux the `testdata/*.ts` files (made with ffmpeg, each described by its `.txt`) through
//! `ts`, `codec` and `time`. A missing file skips its test.

use crate::codec::h264::{nal_units, AccessUnit, H264Assembler, NalType};
use crate::codec::opus;
use crate::codec::transcode::SourceCodec;
use crate::time::Timeline;
use crate::ts::{Codec, DemuxEvent, Demuxer, Pid, ProgramChoice, StreamType, TrackSet};

use crate::testdata::read;

#[derive(Default)]
struct Summary {
    tracks: Vec<TrackSet>,
    aus: Vec<AccessUnit>,
    opus_packets: usize,
    problems: usize,
    video_times: Vec<u64>,
    profile_level_id: Option<String>,
    size: Option<(u32, u32)>,
}

fn demux(data: &[u8], chunk: usize) -> (Vec<DemuxEvent>, Summary) {
    demux_program(data, chunk, ProgramChoice::Auto)
}

fn demux_program(data: &[u8], chunk: usize, choice: ProgramChoice) -> (Vec<DemuxEvent>, Summary) {
    let mut d = Demuxer::with_program(choice);
    let mut events = Vec::new();
    for c in data.chunks(chunk) {
        d.push(c, &mut events);
    }
    d.flush(&mut events);
    let mut s = Summary::default();
    let mut h264 = H264Assembler::new();
    let mut timeline = Timeline::new();
    for e in &events {
        match e {
            DemuxEvent::Tracks(t) => s.tracks.push(t.clone()),
            DemuxEvent::Problem(_) => s.problems += 1,
            DemuxEvent::Pes(pes) => {
                let t = s.tracks.last().expect("PES only after tracks");
                if t.h264().map(|v| v.pid) == Some(pes.pid) {
                    let first = s.aus.len();
                    h264.push(pes, &mut s.aus);
                    for au in &s.aus[first..] {
                        s.video_times.push(timeline.map(au.pts, 3000));
                    }
                } else if t.audio().map(|a| a.pid) == Some(pes.pid) {
                    let mut packets = Vec::new();
                    opus::split_pes(&pes.data, &mut packets).expect("valid Opus PES");
                    s.opus_packets += packets.len();
                    assert!(packets.iter().all(|p| p.samples == 960));
                    timeline.map(pes.pts.expect("audio PTS"), 1800);
                }
            }
            _ => {}
        }
    }
    if let Some(sps) = h264.sps() {
        s.profile_level_id = Some(sps.profile_level_id.to_string());
        s.size = Some((sps.width, sps.height));
    }
    (events, s)
}

fn check_video(s: &Summary, frames: usize, keyframes: usize, pli: &str) {
    check_video_size(s, frames, keyframes, pli, (640, 360));
}

fn check_video_size(s: &Summary, frames: usize, keyframes: usize, pli: &str, size: (u32, u32)) {
    assert_eq!(s.aus.len(), frames);
    assert_eq!(s.aus.iter().filter(|au| au.keyframe).count(), keyframes);
    assert!(s.aus[0].keyframe);
    for au in &s.aus {
        let types: Vec<_> = nal_units(&au.data)
            .map(|n| NalType::of(n).unwrap())
            .collect();
        assert!(!types.contains(&NalType::AUD));
        if au.keyframe {
            assert_eq!(types[..2], [NalType::SPS, NalType::PPS]);
        }
        assert_eq!(&au.data[..4], &[0, 0, 0, 1]);
    }
    assert_eq!(s.profile_level_id.as_deref(), Some(pli));
    assert_eq!(s.size, Some(size));
    // 30 fps, no B-frames: the timeline starts at 0 and steps by 3000.
    assert_eq!(s.video_times[0], 0);
    assert!(s.video_times.windows(2).all(|w| w[1] - w[0] == 3000));
}

#[test]
fn testdata_h264_opus() {
    let Some(data) = read("h264_opus.ts") else {
        return;
    };
    let (events, s) = demux(&data, 1316);
    assert_eq!(s.problems, 0);
    assert_eq!(
        s.tracks.len(),
        1,
        "PMT repeats every 100 ms but is reported once"
    );
    let t = &s.tracks[0];
    assert_eq!(
        (t.program_number, t.pmt_pid, t.pcr_pid),
        (1, Pid(0x1000), Pid(0x100))
    );
    assert_eq!(t.video().unwrap().pid, Pid(0x100));
    assert_eq!(t.audio().unwrap().pid, Pid(0x101));
    assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 2 });
    check_video(&s, 180, 6, "64001e");
    assert_eq!(s.opus_packets, 301);
    assert!(events.iter().any(|e| matches!(
        e,
        DemuxEvent::Pcr {
            pid: Pid(0x100),
            ..
        }
    )));
    // The same events whatever the chunking.
    for chunk in [1, 187, 189, 4096] {
        assert_eq!(demux(&data, chunk).0, events, "chunk {chunk}");
    }
}

#[test]
fn testdata_h264_aac_lists_aac_as_transcodable() {
    let Some(data) = read("h264_aac.ts") else {
        return;
    };
    let (_, s) = demux(&data, 7 * 188);
    assert_eq!(s.problems, 0);
    let t = &s.tracks[0];
    assert_eq!(t.audio(), None);
    let aac = t.track(Pid(0x101)).unwrap();
    assert_eq!(aac.stream_type, StreamType::AAC_ADTS);
    assert_eq!(aac.codec, Codec::Transcodable(SourceCodec::AacAdts));
    assert_eq!(aac.language, None);
    check_video(&s, 120, 4, "64001e");
}

#[test]
fn testdata_two_aac_tracks_have_their_languages() {
    let Some(data) = read("h264_aac_eng_spa.ts") else {
        return;
    };
    let (_, s) = demux(&data, 7 * 188);
    assert_eq!(s.problems, 0);
    let audio: Vec<(Pid, &Codec, String)> = s.tracks[0]
        .audio_tracks()
        .map(|t| {
            (
                t.pid,
                &t.codec,
                t.language.map(|l| l.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    let aac = &Codec::Transcodable(SourceCodec::AacAdts);
    assert_eq!(
        audio,
        [
            (Pid(0x101), aac, "eng".into()),
            (Pid(0x102), aac, "spa".into())
        ]
    );
}

#[test]
fn testdata_h264_only() {
    let Some(data) = read("h264_only.ts") else {
        return;
    };
    let (_, s) = demux(&data, 65536);
    assert_eq!(s.problems, 0);
    assert_eq!(s.tracks[0].tracks.len(), 1);
    check_video(&s, 120, 4, "42c01e");
}

#[test]
fn testdata_long_gop() {
    let Some(data) = read("long_gop.ts") else {
        return;
    };
    let (_, s) = demux(&data, 1316);
    assert_eq!(s.problems, 0);
    check_video(&s, 300, 2, "64001e");
    assert_eq!(s.opus_packets, 501);
}

#[test]
fn testdata_survives_damage() {
    let Some(mut data) = read("h264_opus.ts") else {
        return;
    };
    // Drop a packet, duplicate one, insert garbage and cut one short.
    data.drain(100 * 188..101 * 188);
    let dup = data[200 * 188..201 * 188].to_vec();
    data.splice(201 * 188..201 * 188, dup);
    data.splice(300 * 188..300 * 188, [0x47, 1, 2, 3, 0x47]);
    data.drain(500 * 188 + 50..500 * 188 + 150);
    let (_, s) = demux(&data, 1000);
    assert!(s.problems >= 3);
    assert!(s.aus.len() >= 176, "{}", s.aus.len());
    assert!(s.opus_packets >= 290);
}

#[test]
fn testdata_hevc_opus() {
    use crate::codec::h265::{H265Assembler, ProfileTierLevel, SpsInfo};

    let Some(data) = read("hevc_opus.ts") else {
        return;
    };
    let (events, s) = demux(&data, 1316);
    assert_eq!(s.problems, 0);
    assert_eq!(s.tracks.len(), 1);
    let t = &s.tracks[0];
    assert_eq!(t.h264(), None);
    assert_eq!(
        t.video(),
        t.hevc(),
        "video() is the H.265 track without H.264"
    );
    let hevc = t.hevc().unwrap();
    assert_eq!(
        (hevc.pid, hevc.stream_type, &hevc.codec, hevc.codec_name()),
        (Pid(0x100), StreamType::HEVC, &Codec::H265, "H.265")
    );
    assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 2 });
    assert_eq!(s.opus_packets, 301);
    let mut h265 = H265Assembler::new();
    let mut aus = Vec::new();
    for e in &events {
        if let DemuxEvent::Pes(pes) = e {
            if pes.pid == hevc.pid {
                h265.push(pes, &mut aus);
            }
        }
    }
    assert_eq!(aus.len(), 180);
    assert_eq!(aus.iter().filter(|au| au.keyframe).count(), 6);
    assert!(aus.iter().step_by(30).all(|au| au.keyframe));
    // 30 fps, no B-frames.
    assert!(aus.windows(2).all(|w| w[1].pts - w[0].pts == 3000));
    assert_eq!(
        h265.sps(),
        Some(&SpsInfo {
            ptl: ProfileTierLevel {
                profile_id: 1,
                tier_flag: false,
                level_id: 63,
            },
            width: 640,
            height: 360,
            chroma_format_idc: 1,
            bit_depth: 8,
        })
    );
}

#[test]
fn testdata_h264_opus_m2ts() {
    let (Some(data), Some(ts)) = (read("h264_opus.m2ts"), read("h264_opus.ts")) else {
        return;
    };
    assert_eq!(data.len() % 192, 0);
    let (events, s) = demux(&data, 1316);
    assert_eq!(s.problems, 0, "the 4-byte headers are no garbage");
    assert_eq!(s.tracks.len(), 1);
    let t = &s.tracks[0];
    assert_eq!(
        (t.program_number, t.pmt_pid, t.pcr_pid),
        (1, Pid(0x100), Pid(0x1011))
    );
    assert_eq!(t.video().unwrap().pid, Pid(0x1011));
    assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 2 });
    check_video(&s, 90, 3, "64001e");
    // The first 3 s of h264_opus.ts, remuxed: the same access units.
    let (_, s188) = demux(&ts, 1316);
    assert!(s.aus[..] == s188.aus[..90]);
    for chunk in [1, 191, 192, 193, 4096] {
        assert_eq!(demux(&data, chunk).0, events, "chunk {chunk}");
    }
}

#[test]
fn testdata_mpts_auto_follows_the_h264_opus_program() {
    let Some(data) = read("mpts.ts") else {
        return;
    };
    let (events, s) = demux(&data, 1316);
    assert_eq!(s.problems, 0);
    let programs: Vec<&Vec<TrackSet>> = events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Programs(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(
        programs.len(),
        2,
        "one per new PMT, repetitions not reported"
    );
    let all = programs[1];
    assert_eq!(
        all.iter()
            .map(|t| (t.program_number, t.pmt_pid, t.pcr_pid))
            .collect::<Vec<_>>(),
        [(1, Pid(0x1000), Pid(0x100)), (2, Pid(0x1001), Pid(0x101))]
    );
    assert_eq!(all[0].tracks.len(), 1);
    assert_eq!(all[0].tracks[0].stream_type, StreamType::HEVC);
    // Program 1 is HEVC only: Auto follows program 2, once both PMTs were seen.
    assert_eq!(s.tracks.len(), 1);
    let t = &s.tracks[0];
    assert_eq!(t, &all[1]);
    assert_eq!(t.video().unwrap().pid, Pid(0x101));
    assert_eq!(t.audio().unwrap().pid, Pid(0x102));
    check_video_size(&s, 120, 4, "42c00d", (320, 180));
    assert_eq!(s.opus_packets, 201);
    // The same events whatever the chunking.
    for chunk in [1, 187, 4096] {
        assert_eq!(demux(&data, chunk).0, events, "chunk {chunk}");
    }
    // Following program 1 by number: its tracks (H.265), and only its PES.
    let (events, s) = demux_program(&data, 1316, ProgramChoice::Number(1));
    assert_eq!(s.tracks.len(), 1);
    assert_eq!(s.tracks[0].program_number, 1);
    assert_eq!(s.tracks[0].tracks[0].codec, Codec::H265);
    let hevc = s.tracks[0].tracks[0].pid;
    assert!(events
        .iter()
        .any(|e| matches!(e, DemuxEvent::Pes(p) if p.pid == hevc)));
    assert!(events
        .iter()
        .all(|e| !matches!(e, DemuxEvent::Pes(p) if p.pid != hevc)));
}

/// ffmpeg ends each video PES with adaptation-field stuffing: once the demuxer has seen that
/// hold, nearly every video PES comes out at its own last packet, a frame interval before the
/// next one starts (the latency the bridge would otherwise add), and none comes out cut.
#[test]
fn testdata_video_pes_come_out_at_their_last_packet() {
    for name in [
        "h264_opus.ts",
        "h264_aac.ts",
        "hevc_opus.ts",
        "long_gop.ts",
        "h264_bframes.ts",
    ] {
        let Some(data) = read(name) else { continue };
        let mut d = Demuxer::new();
        let (mut events, mut video) = (Vec::new(), None);
        let (mut early, mut total) = (0, 0);
        for pkt in data.chunks(188) {
            let start = events.len();
            d.push(pkt, &mut events);
            let pid = Pid(u16::from(pkt[1] & 0x1F) << 8 | u16::from(pkt[2]));
            let pusi = pkt[1] & 0x40 != 0;
            for e in &events[start..] {
                match e {
                    DemuxEvent::Tracks(t) => video = t.video().map(|v| v.pid),
                    DemuxEvent::Problem(p) => assert_ne!(p.cause(), "pes_cut_early", "{name}"),
                    DemuxEvent::Pes(p) if Some(p.pid) == video => {
                        total += 1;
                        // Out at the start of the next one, or before it.
                        early += usize::from(!(pusi && pid == p.pid));
                    }
                    _ => {}
                }
            }
        }
        assert!(total > 20, "{name}: {total} video PES");
        assert!(
            early * 10 >= total * 9,
            "{name}: {early} of {total} out at their last packet"
        );
    }
}
