//! The demuxer on hand-made streams: alignment, continuity, PSI, PES.

use super::*;
use crate::ts::testutil::*;
use crate::ts::{Codec, Pes, StreamType, Stride};

pub(super) const PMT_PID: u16 = 0x1000;
pub(super) const VIDEO: u16 = 0x100;
pub(super) const AUDIO: u16 = 0x101;

pub(super) fn av_pmt(version: u8) -> Vec<u8> {
    pmt(
        1,
        version,
        VIDEO,
        &[(0x1B, VIDEO, &[]), (0x06, AUDIO, OPUS_STEREO)],
    )
}

/// PAT, PMT, then `frames` video PES (no length) with PCR and audio PES (with length).
pub(super) fn av_stream(frames: u64) -> Mux {
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &av_pmt(0));
    for i in 0..frames {
        let video = pes_bytes(
            0xE0,
            Some(3000 * i),
            None,
            &vec![i as u8; 400 + i as usize * 50],
            false,
        );
        m.pes(
            VIDEO,
            &video,
            &af_pcr(i * 3000 * 300, if i == 0 { 0x40 } else { 0 }),
        );
        let audio = pes_bytes(
            0xC0,
            Some(3000 * i + 10),
            None,
            &[0xA0 | i as u8; 150],
            true,
        );
        m.pes(AUDIO, &audio, &[]);
    }
    m
}

pub(super) fn demux_all(chunks: &[&[u8]]) -> Vec<DemuxEvent> {
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    for c in chunks {
        d.push(c, &mut out);
    }
    d.flush(&mut out);
    out
}

pub(super) fn pes_events(events: &[DemuxEvent]) -> Vec<&Pes> {
    events
        .iter()
        .filter_map(|e| {
            if let DemuxEvent::Pes(p) = e {
                Some(p)
            } else {
                None
            }
        })
        .collect()
}

pub(super) fn problems(events: &[DemuxEvent]) -> Vec<DemuxProblem> {
    events
        .iter()
        .filter_map(|e| {
            if let DemuxEvent::Problem(p) = e {
                Some(*p)
            } else {
                None
            }
        })
        .collect()
}

pub(super) fn programs_events(events: &[DemuxEvent]) -> Vec<Vec<u16>> {
    events
        .iter()
        .filter_map(|e| {
            if let DemuxEvent::Programs(list) = e {
                Some(list.iter().map(|t| t.program_number).collect())
            } else {
                None
            }
        })
        .collect()
}

pub(super) fn tracks_events(events: &[DemuxEvent]) -> Vec<&TrackSet> {
    events
        .iter()
        .filter_map(|e| {
            if let DemuxEvent::Tracks(t) = e {
                Some(t)
            } else {
                None
            }
        })
        .collect()
}

#[test]
pub(super) fn clean_stream_gives_tracks_pes_and_pcr() {
    let m = av_stream(3);
    let events = demux_all(&[&m.out]);
    assert!(problems(&events).is_empty(), "{events:?}");
    let tracks = tracks_events(&events);
    assert_eq!(tracks.len(), 1);
    let t = tracks[0];
    assert_eq!(
        (t.program_number, t.pmt_pid, t.pcr_pid),
        (1, Pid(PMT_PID), Pid(VIDEO))
    );
    assert_eq!(t.video().unwrap().pid, Pid(VIDEO));
    assert_eq!(t.audio().unwrap().codec, Codec::Opus { channels: 2 });
    let pes = pes_events(&events);
    assert_eq!(pes.len(), 6);
    let video: Vec<_> = pes.iter().filter(|p| p.pid == Pid(VIDEO)).collect();
    assert_eq!(
        video.iter().map(|p| p.pts.unwrap()).collect::<Vec<_>>(),
        [0, 3000, 6000]
    );
    assert!(video[0].random_access && !video[1].random_access);
    assert_eq!(video[2].data.len(), 500);
    let pcrs: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, DemuxEvent::Pcr { .. }))
        .collect();
    assert_eq!(pcrs.len(), 3);
    assert_eq!(
        pcrs[1],
        &DemuxEvent::Pcr {
            pid: Pid(VIDEO),
            pcr_27mhz: 900_000
        }
    );
}

#[test]
pub(super) fn audio_pes_is_emitted_at_its_length_not_at_next_unit_start() {
    let m = av_stream(2);
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    // Everything but the flush: the last audio PES is complete, the last video PES is not.
    d.push(&m.out, &mut out);
    let pes = pes_events(&out);
    assert_eq!(pes.last().unwrap().pid, Pid(AUDIO));
    assert_eq!(pes.last().unwrap().pts, Some(3010));
    assert_eq!(pes.iter().filter(|p| p.pid == Pid(VIDEO)).count(), 1);
    d.flush(&mut out);
    assert_eq!(
        pes_events(&out)
            .iter()
            .filter(|p| p.pid == Pid(VIDEO))
            .count(),
        2
    );
}

#[test]
pub(super) fn any_split_gives_identical_events() {
    let mut m = av_stream(4);
    // Garbage (with a stray sync byte) between packets, and a truncated packet.
    let mut stream = m.out[..3 * PACKET_SIZE].to_vec();
    stream.extend([0x00, 0x47, 0x12, 0x47, 0x99]);
    stream.extend_from_slice(&m.out[3 * PACKET_SIZE..6 * PACKET_SIZE]);
    stream.extend_from_slice(&m.out[6 * PACKET_SIZE..6 * PACKET_SIZE + 100]);
    stream.extend_from_slice(&m.out[7 * PACKET_SIZE..]);
    m.out = stream;
    let whole = demux_all(&[&m.out]);
    assert!(problems(&whole).contains(&DemuxProblem::Resync { skipped: 5 }));
    for split in 1..400 {
        let (a, b) = m.out.split_at(split);
        assert_eq!(demux_all(&[a, b]), whole, "split at {split}");
    }
    let bytewise: Vec<&[u8]> = m.out.chunks(1).collect();
    assert_eq!(demux_all(&bytewise), whole);
    let odd: Vec<&[u8]> = m.out.chunks(191).collect();
    assert_eq!(demux_all(&odd), whole);
}

#[test]
pub(super) fn resync_after_leading_garbage_and_garbage_between_packets() {
    let m = av_stream(2);
    let mut stream = vec![0x47, 0x00, 0x47];
    stream.extend_from_slice(&m.out[..5 * PACKET_SIZE]);
    stream.extend([0xAB; 7]);
    stream.extend_from_slice(&m.out[5 * PACKET_SIZE..]);
    let events = demux_all(&[&stream]);
    assert_eq!(
        problems(&events),
        [
            DemuxProblem::Resync { skipped: 3 },
            DemuxProblem::Resync { skipped: 7 }
        ]
    );
    assert_eq!(pes_events(&events), pes_events(&demux_all(&[&m.out])));
}

#[test]
pub(super) fn truncated_packet_costs_only_nearby_data() {
    let m = av_stream(3);
    let packets: Vec<&[u8]> = m.packets().collect();
    // Cut the second packet of the first video PES short.
    let mut stream = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        stream.extend_from_slice(if i == 3 { &p[..100] } else { p });
    }
    stream.extend_from_slice(&packets[0][..50]); // and a partial packet at the end
    let events = demux_all(&[&stream]);
    let probs = problems(&events);
    assert!(
        probs
            .iter()
            .any(|p| matches!(p, DemuxProblem::Resync { .. })),
        "{probs:?}"
    );
    assert_eq!(probs.last(), Some(&DemuxProblem::Truncated { bytes: 50 }));
    let pes = pes_events(&events);
    // The damaged first video PES is lost; everything after it is intact.
    let video: Vec<_> = pes
        .iter()
        .filter(|p| p.pid == Pid(VIDEO))
        .map(|p| p.pts)
        .collect();
    assert_eq!(video, [Some(3000), Some(6000)]);
    assert_eq!(pes.iter().filter(|p| p.pid == Pid(AUDIO)).count(), 3);
}

#[test]
pub(super) fn continuity_error_drops_partial_pes() {
    let m = av_stream(3);
    let packets: Vec<&[u8]> = m.packets().collect();
    // Packets: PAT, PMT, V0 (3 packets), A0 (1), V1 (3), A1, ... drop V1's middle packet.
    let stream: Vec<u8> = packets
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 7)
        .flat_map(|(_, p)| p.to_vec())
        .collect();
    let events = demux_all(&[&stream]);
    assert_eq!(
        problems(&events),
        [DemuxProblem::ContinuityError { pid: Pid(VIDEO) }]
    );
    assert!(events.contains(&DemuxEvent::Discontinuity { pid: Pid(VIDEO) }));
    let video: Vec<_> = pes_events(&events)
        .into_iter()
        .filter(|p| p.pid == Pid(VIDEO))
        .collect();
    assert_eq!(
        video.iter().map(|p| p.pts).collect::<Vec<_>>(),
        [Some(0), Some(6000)]
    );
    assert!(!video[0].discontinuity && video[1].discontinuity);
}

#[test]
pub(super) fn duplicate_packet_is_ignored_but_a_third_copy_is_not() {
    let m = av_stream(2);
    let packets: Vec<&[u8]> = m.packets().collect();
    let mut dup = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        dup.extend_from_slice(p);
        if i == 3 {
            dup.extend_from_slice(p);
        }
    }
    assert_eq!(demux_all(&[&dup]), demux_all(&[&m.out]));
    let mut triple = dup.clone();
    triple.splice(4 * PACKET_SIZE..4 * PACKET_SIZE, packets[3].iter().copied());
    assert!(problems(&demux_all(&[&triple]))
        .contains(&DemuxProblem::ContinuityError { pid: Pid(VIDEO) }));
    // Same CC but different content: 16 packets were lost.
    let mut other = m.out.clone();
    let mut fake = packets[3].to_vec();
    fake[100] ^= 0xFF;
    other.splice(4 * PACKET_SIZE..4 * PACKET_SIZE, fake);
    assert!(problems(&demux_all(&[&other]))
        .contains(&DemuxProblem::ContinuityError { pid: Pid(VIDEO) }));
}

#[test]
pub(super) fn discontinuity_indicator_keeps_pes_and_flags_the_next() {
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &av_pmt(0));
    m.pes(
        VIDEO,
        &pes_bytes(0xE0, Some(0), None, &[1; 100], false),
        &[],
    );
    // Discontinuity with a CC jump on the next PES.
    let pes = pes_bytes(0xE0, Some(900_000), None, &[2; 100], false);
    m.out
        .extend_from_slice(&packet(VIDEO, true, 9, &[0x80], &pes));
    m.cc.insert(VIDEO, 9);
    m.pes(
        VIDEO,
        &pes_bytes(0xE0, Some(903_000), None, &[3; 100], false),
        &[],
    );
    let events = demux_all(&[&m.out]);
    assert!(problems(&events).is_empty(), "{events:?}");
    assert!(events.contains(&DemuxEvent::Discontinuity { pid: Pid(VIDEO) }));
    let pes = pes_events(&events);
    assert_eq!(
        pes.iter().map(|p| p.discontinuity).collect::<Vec<_>>(),
        [false, true, false]
    );
}

#[test]
pub(super) fn discontinuity_on_adaptation_field_only_packet_allows_a_cc_jump() {
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &av_pmt(0));
    m.pes(
        VIDEO,
        &pes_bytes(0xE0, Some(0), None, &[1; 100], false),
        &[],
    );
    m.out
        .extend_from_slice(&packet(VIDEO, false, 0, &af_pcr(27_000_000, 0x80), &[]));
    m.cc.insert(VIDEO, 11);
    m.pes(
        VIDEO,
        &pes_bytes(0xE0, Some(90_000), None, &[2; 100], false),
        &[],
    );
    let events = demux_all(&[&m.out]);
    assert!(problems(&events).is_empty(), "{events:?}");
    let at = events
        .iter()
        .position(|e| *e == DemuxEvent::Discontinuity { pid: Pid(VIDEO) });
    assert_eq!(
        events[at.unwrap() + 1],
        DemuxEvent::Pcr {
            pid: Pid(VIDEO),
            pcr_27mhz: 27_000_000
        }
    );
    let pes = pes_events(&events);
    assert_eq!(
        pes.iter().map(|p| p.discontinuity).collect::<Vec<_>>(),
        [false, true]
    );
}

#[test]
pub(super) fn non_ts_input_is_reported_while_it_lasts() {
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    let zeros = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        d.push(&zeros, &mut out);
    }
    assert!(matches!(problems(&out)[..], [DemuxProblem::Resync { skipped }] if skipped >= 1 << 20));
    d.flush(&mut out);
    let total: usize = problems(&out)
        .iter()
        .map(|p| match p {
            DemuxProblem::Resync { skipped } | DemuxProblem::Truncated { bytes: skipped } => {
                *skipped
            }
            _ => 0,
        })
        .sum();
    assert_eq!(total, 20 * 64 * 1024);
}

#[test]
pub(super) fn pat_and_pmt_spanning_packets() {
    // A PMT with many streams: longer than one packet.
    let info = [0x0A, 0x04, b'e', b'n', b'g', 0x00];
    let mut streams: Vec<(u8, u16, &[u8])> = vec![(0x1B, VIDEO, &[]), (0x06, AUDIO, OPUS_MONO)];
    for i in 0..20 {
        streams.push((0x0F, 0x200 + i, &info));
    }
    let section = pmt(1, 3, VIDEO, &streams);
    assert!(section.len() > 184);
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &section);
    let events = demux_all(&[&m.out]);
    let t = tracks_events(&events);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].tracks.len(), 22);
    assert_eq!(t[0].version, 3);
    assert_eq!(t[0].audio().unwrap().codec, Codec::Opus { channels: 1 });
    assert_eq!(t[0].tracks[5].stream_type, StreamType::AAC_ADTS);
    assert!(!t[0].tracks[5].codec.is_supported());
}

#[test]
pub(super) fn section_continued_after_pointer_field_and_followed_by_another() {
    // Two PMT sections on one PID (another program's, then ours), ours split across packets
    // and completed through the next packet's pointer_field, which then starts ours again.
    let other = pmt(7, 0, 0x300, &[(0x1B, 0x301, &[])]);
    let ours = av_pmt(0);
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    let mut first = vec![0u8];
    first.extend(&other);
    first.extend(&ours[..20]);
    m.raw(PMT_PID, true, &[], &first);
    let mut second = vec![(ours.len() - 20) as u8];
    second.extend(&ours[20..]);
    second.extend(&ours);
    m.raw(PMT_PID, true, &[], &second);
    let events = demux_all(&[&m.out]);
    assert!(problems(&events).is_empty(), "{events:?}");
    assert_eq!(tracks_events(&events).len(), 1);
    assert_eq!(tracks_events(&events)[0].program_number, 1);
}

#[test]
pub(super) fn crc_failure_is_reported_and_section_ignored() {
    let mut section = av_pmt(0);
    let n = section.len();
    section[n - 1] ^= 1;
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &section);
    let events = demux_all(&[&m.out]);
    assert_eq!(
        problems(&events),
        [DemuxProblem::BadPsi {
            pid: Pid(PMT_PID),
            reason: "CRC mismatch"
        }]
    );
    assert!(tracks_events(&events).is_empty());
}

#[test]
pub(super) fn repeated_pmt_is_not_reemitted_but_a_change_is() {
    let mut m = Mux::default();
    for _ in 0..3 {
        m.psi(0, &pat(1, PMT_PID, 0));
        m.psi(PMT_PID, &av_pmt(0));
    }
    // Audio half-way through a PES when the PMT drops the audio track.
    let audio = pes_bytes(0xC0, Some(5), None, &[9; 300], true);
    m.raw(AUDIO, true, &[], &audio[..184]);
    m.psi(PMT_PID, &pmt(1, 1, VIDEO, &[(0x1B, VIDEO, &[])]));
    m.raw(AUDIO, false, &[], &audio[184..]);
    m.psi(
        PMT_PID,
        &pmt(1, 2, VIDEO, &[(0x1B, VIDEO, &[]), (0x0F, AUDIO, &[])]),
    );
    let events = demux_all(&[&m.out]);
    let t = tracks_events(&events);
    assert_eq!(
        t.iter()
            .map(|t| (t.version, t.tracks.len()))
            .collect::<Vec<_>>(),
        [(0, 2), (1, 1), (2, 2)]
    );
    assert_eq!(t[2].audio(), None);
    assert!(pes_events(&events).is_empty());
    assert!(problems(&events).is_empty());
}

#[test]
pub(super) fn pat_change_switches_program() {
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(PMT_PID, &av_pmt(0));
    m.psi(0, &pat(2, 0x1100, 1));
    m.psi(PMT_PID, &av_pmt(0)); // the old PMT is no longer followed
    m.psi(0x1100, &pmt(2, 0, 0x1FFF, &[(0x24, 0x400, &[])]));
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    d.push(&m.out, &mut out);
    let t = tracks_events(&out);
    assert_eq!(t.len(), 2, "{out:?}");
    assert_eq!(
        (t[1].program_number, t[1].pmt_pid, t[1].pcr_pid),
        (2, Pid(0x1100), Pid::NULL)
    );
    assert_eq!(d.tracks(), Some(t[1]));
    d.reset();
    assert_eq!(d.tracks(), None);
}

#[test]
pub(super) fn unsupported_tracks_are_listed_not_reassembled() {
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    m.psi(
        PMT_PID,
        &pmt(1, 0, VIDEO, &[(0x1B, VIDEO, &[]), (0x0F, AUDIO, &[])]),
    );
    m.pes(AUDIO, &pes_bytes(0xC0, Some(5), None, &[9; 100], true), &[]);
    let events = demux_all(&[&m.out]);
    let t = tracks_events(&events)[0];
    assert_eq!(t.audio(), None);
    assert_eq!(
        t.tracks[1].codec,
        Codec::Transcodable(crate::codec::transcode::SourceCodec::AacAdts)
    );
    assert!(pes_events(&events).is_empty(), "no transcoder asked for it");
}

/// Two AAC tracks: the one the audio choice picks is reassembled for the transcoder, the
/// other not; the language comes from each track's ISO 639 descriptor.
#[test]
fn the_chosen_audio_track_is_reassembled_for_the_transcoder() {
    const SECOND: u16 = AUDIO + 1;
    let eng: &[u8] = &[0x0A, 4, b'e', b'n', b'g', 0];
    let spa: &[u8] = &[0x0A, 4, b's', b'p', b'a', 0];
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    let streams = [
        (0x1B, VIDEO, &[][..]),
        (0x0F, AUDIO, eng),
        (0x0F, SECOND, spa),
    ];
    m.psi(PMT_PID, &pmt(1, 0, VIDEO, &streams));
    m.pes(AUDIO, &pes_bytes(0xC0, Some(5), None, &[9; 100], true), &[]);
    m.pes(
        SECOND,
        &pes_bytes(0xC0, Some(5), None, &[8; 100], true),
        &[],
    );
    let pes_of = |choice| {
        let mut d = Demuxer::new();
        d.set_transcodable_audio(true);
        d.set_audio(choice);
        let mut events = Vec::new();
        d.push(&m.out, &mut events);
        d.flush(&mut events);
        let t = tracks_events(&events)[0].clone();
        let pids: Vec<Pid> = pes_events(&events).iter().map(|p| p.pid).collect();
        (t, pids)
    };
    let (t, pids) = pes_of(AudioChoice::Auto);
    assert_eq!(pids, [Pid(AUDIO)]);
    let langs: Vec<String> = t
        .audio_tracks()
        .map(|a| a.language.unwrap().to_string())
        .collect();
    assert_eq!(langs, ["eng", "spa"]);
    assert_eq!(
        AudioChoice::Auto.pick(&t).map(|(i, a)| (i, a.pid)),
        Some((0, Pid(AUDIO)))
    );
    let (t, pids) = pes_of(AudioChoice::Index(1));
    assert_eq!(pids, [Pid(SECOND)]);
    assert_eq!(
        AudioChoice::Index(1).transcoded(&t).map(|a| a.pid),
        Some(Pid(SECOND))
    );
    let (_, pids) = pes_of(AudioChoice::Index(2));
    assert!(pids.is_empty(), "no third audio track");
}

#[test]
pub(super) fn bad_packets_are_dropped_without_panicking() {
    let m = av_stream(1);
    let mut stream = m.out.clone();
    stream[PACKET_SIZE + 1] |= 0x80; // TEI on the PMT
    let events = demux_all(&[&stream]);
    assert_eq!(
        problems(&events),
        [DemuxProblem::TransportError { pid: Pid(PMT_PID) }]
    );
    // Every byte pattern at every header position.
    for pos in [1usize, 3, 4, 5, 6, 11, 12, 13] {
        for v in [0x00, 0x0F, 0x20, 0x47, 0x80, 0xB7, 0xFF] {
            let mut s = m.out.clone();
            for p in 0..s.len() / PACKET_SIZE {
                s[p * PACKET_SIZE + pos] = v;
            }
            demux_all(&[&s]);
        }
    }
    // Random garbage.
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..20_000)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 188 == 0 {
                0x47
            } else {
                x as u8
            }
        })
        .collect();
    demux_all(&[&noise]);
}

#[test]
pub(super) fn problem_causes_are_stable() {
    assert_eq!(DemuxProblem::Resync { skipped: 1 }.cause(), "resync");
    assert_eq!(
        DemuxProblem::ContinuityError { pid: Pid(1) }.cause(),
        "continuity_error"
    );
    assert_eq!(
        DemuxProblem::BadPsi {
            pid: Pid(0x20),
            reason: "CRC mismatch"
        }
        .to_string(),
        "PID 0x0020: bad PSI section (CRC mismatch)"
    );
}

#[test]
pub(super) fn m2ts_and_fec_strides_demux_to_the_same_events_in_any_split() {
    let m = av_stream(4);
    let whole = demux_all(&[&m.out]);
    assert!(problems(&whole).is_empty());
    for stride in [Stride::M2ts192, Stride::Fec204] {
        let data = restride(&m.out, stride);
        assert_eq!(demux_all(&[&data]), whole, "{stride:?}");
        for split in 1..3 * stride.unit_len() {
            let (a, b) = data.split_at(split);
            assert_eq!(demux_all(&[a, b]), whole, "{stride:?} split at {split}");
        }
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(demux_all(&bytewise), whole, "{stride:?} bytewise");
        let odd: Vec<&[u8]> = data.chunks(191).collect();
        assert_eq!(demux_all(&odd), whole, "{stride:?} in 191-byte chunks");
    }
}

#[test]
pub(super) fn stride_change_after_garbage_resyncs() {
    let m = av_stream(4);
    let n = m.out.len() / PACKET_SIZE;
    let (a, b) = (5 * PACKET_SIZE, (n - 6) * PACKET_SIZE);
    let mut stream = restride(&m.out[..a], Stride::M2ts192);
    stream.extend([0x00; 9]);
    stream.extend_from_slice(&m.out[a..b]);
    stream.extend([0x01, 0x02, 0x03]);
    stream.extend(restride(&m.out[b..], Stride::Fec204));
    let events = demux_all(&[&stream]);
    assert_eq!(
        problems(&events),
        [
            DemuxProblem::Resync { skipped: 9 },
            DemuxProblem::Resync { skipped: 3 }
        ]
    );
    assert_eq!(pes_events(&events), pes_events(&demux_all(&[&m.out])));
    for split in (1..stream.len()).step_by(97) {
        let (x, y) = stream.split_at(split);
        assert_eq!(demux_all(&[x, y]), events, "split at {split}");
    }
}

mod programs;

/// SCTE-35 (issue 21): the cue PID of the followed program is read, each splice_info_section
/// becomes a `Cue`, a long one across packets too; a bad one is a problem, and the media go on.
#[test]
fn scte35_sections_become_cues() {
    use crate::ts::scte35;
    const CUES: u16 = 0x1F0;
    let mut m = Mux::default();
    m.psi(0, &pat(1, PMT_PID, 0));
    let streams: &[(u8, u16, &[u8])] = &[
        (0x1B, VIDEO, &[]),
        (0x86, CUES, &[0x05, 4, b'C', b'U', b'E', b'I']),
    ];
    m.psi(PMT_PID, &pmt(1, 0, VIDEO, streams));
    let insert = scte35::insert_command(7, true, Some(90_000), Some(30 * 90_000));
    m.psi(CUES, &scte35::section(0, 0x05, &insert, &[]));
    // A time_signal with 40 descriptors: ~400 bytes, three packets.
    let mut desc = Vec::new();
    for i in 0..40u8 {
        desc.extend_from_slice(&[0x00, 8, b'C', b'U', b'E', b'I', 0, 0, 0, i]);
    }
    m.psi(CUES, &scte35::section(0, 0x06, &[0xFE, 0, 0, 0, 9], &desc));
    let mut bad = scte35::section(0, 0x00, &[], &[]);
    bad[5] ^= 1;
    m.psi(CUES, &bad);
    m.pes(
        VIDEO,
        &pes_bytes(0xE0, Some(0), None, &[1; 300], false),
        &[],
    );
    let events = demux_all(&[&m.out]);
    let cues: Vec<&scte35::Cue> = events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Cue { pid, cue } if pid.0 == CUES => Some(&**cue),
            _ => None,
        })
        .collect();
    assert_eq!(cues.len(), 2, "{events:?}");
    assert!(
        matches!(&cues[0].command, scte35::Command::Insert(i) if i.event_id == 7 && i.out_of_network)
    );
    assert_eq!(cues[0].splice_pts(), Some(90_000));
    assert_eq!(cues[1].command, scte35::Command::TimeSignal(Some(9)));
    assert!(events.iter().any(|e| matches!(
        e,
        DemuxEvent::Problem(DemuxProblem::BadPsi {
            reason: "CRC mismatch",
            ..
        })
    )));
    assert_eq!(pes_events(&events).len(), 1, "the video goes on");
}
