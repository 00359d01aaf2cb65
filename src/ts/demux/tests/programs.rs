//! The demuxer on multi-program streams: every PMT listed, one program followed.

use super::*;

// ---- programs of an MPTS --------------------------------------------------------------

const HEVC_PMT: u16 = 0x1000;
const AV_PMT: u16 = 0x1001;
const H264_PMT: u16 = 0x1002;

/// Program 1: HEVC only; program 2: H.264 + Opus; program 3: H.264 only.
fn mpts_pmt(program: u16) -> Vec<u8> {
    match program {
        1 => pmt(1, 0, 0x100, &[(0x24, 0x100, &[])]),
        2 => pmt(
            2,
            0,
            0x200,
            &[(0x1B, 0x200, &[]), (0x06, 0x201, OPUS_STEREO)],
        ),
        _ => pmt(3, 0, 0x300, &[(0x1B, 0x300, &[])]),
    }
}

/// PSI for three programs, `cycles` times, then one video PES on each program's video PID.
fn mpts(cycles: usize) -> Mux {
    let mut m = Mux::default();
    for _ in 0..cycles {
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT), (3, H264_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
        m.psi(AV_PMT, &mpts_pmt(2));
        m.psi(H264_PMT, &mpts_pmt(3));
    }
    for (i, pid) in [0x100, 0x200, 0x300].into_iter().enumerate() {
        let pes = pes_bytes(0xE0, Some(i as u64), None, &[i as u8; 50], true);
        m.pes(pid, &pes, &[]);
    }
    m
}

fn demux_with(choice: ProgramChoice, data: &[u8]) -> (Demuxer, Vec<DemuxEvent>) {
    let mut d = Demuxer::with_program(choice);
    let mut out = Vec::new();
    d.push(data, &mut out);
    d.flush(&mut out);
    (d, out)
}

#[test]
fn mpts_auto_follows_first_program_with_h264_or_opus() {
    let m = mpts(2);
    let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
    assert!(problems(&events).is_empty(), "{events:?}");
    let t = tracks_events(&events);
    assert_eq!(t.len(), 1, "decided once, when every PMT was seen");
    assert_eq!((t[0].program_number, t[0].pmt_pid), (2, Pid(AV_PMT)));
    assert_eq!(d.followed(), Some(2));
    assert_eq!(d.tracks(), Some(t[0]));
    // Only the followed program's supported tracks are reassembled.
    let pids: Vec<Pid> = pes_events(&events).iter().map(|p| p.pid).collect();
    assert_eq!(pids, [Pid(0x200)]);
    // Nothing plays everywhere: the first program with a supported track; none: the first.
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001), (3, 0x1002)]));
    m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x02, 0x100, &[])]));
    m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x24, 0x200, &[])]));
    m.psi(0x1002, &pmt(3, 0, 0x300, &[(0x0F, 0x300, &[])]));
    let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
    // MPEG-2 video plays everywhere re-encoded, when FFmpeg's decoder is built in.
    let ffmpeg = cfg!(feature = "ffmpeg");
    let want = if ffmpeg { 1 } else { 3 };
    assert_eq!(d.followed(), Some(want), "AAC goes through the transcoder");
    // HEVC is supported (for viewers that offer H.265), MPEG-2 video only with FFmpeg.
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001)]));
    m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x02, 0x100, &[])]));
    m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x24, 0x200, &[])]));
    let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
    assert_eq!(d.followed(), Some(if ffmpeg { 1 } else { 2 }));
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, 0x1000), (2, 0x1001)]));
    m.psi(0x1000, &pmt(1, 0, 0x100, &[(0x01, 0x100, &[])]));
    m.psi(0x1001, &pmt(2, 0, 0x200, &[(0x81, 0x200, &[])]));
    let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
    // MPEG-1 video plays nowhere; AC-3 through FFmpeg's decoder when it is built in.
    let want = if ffmpeg { 2 } else { 1 };
    assert_eq!(d.followed(), Some(want));
    assert_eq!(tracks_events(&events)[0].program_number, want);
}

#[test]
fn plays_everywhere_means_h264_opus_or_transcodable_audio() {
    let set = |streams: &[(u8, u16, &[u8])]| {
        let section = pmt(1, 0, 0x100, streams);
        let (h, body) = psi::check_section(&section).unwrap();
        psi::parse_pmt(&h, Pid(0x1000), body).unwrap()
    };
    assert!(plays_everywhere(&set(&[(0x1B, 0x100, &[])])));
    assert!(plays_everywhere(&set(&[(0x06, 0x101, OPUS_MONO)])));
    assert!(plays_everywhere(&set(&[
        (0x24, 0x100, &[]),
        (0x0F, 0x101, &[])
    ])));
    assert!(!plays_everywhere(&set(&[(0x24, 0x100, &[])])));
    let mpeg2_ac3 = set(&[(0x02, 0x100, &[]), (0x81, 0x101, &[])]);
    assert_eq!(plays_everywhere(&mpeg2_ac3), cfg!(feature = "ffmpeg"));
}

#[test]
fn mpts_number_follows_the_chosen_program() {
    let m = mpts(1);
    let (d, events) = demux_with(ProgramChoice::Number(3), &m.out);
    let t = tracks_events(&events);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].program_number, 3);
    assert_eq!(d.followed(), Some(3));
    let pids: Vec<Pid> = pes_events(&events).iter().map(|p| p.pid).collect();
    assert_eq!(pids, [Pid(0x300)]);
    // No Tracks before its PMT: its PMT comes last in each cycle.
    let at = |pred: &dyn Fn(&DemuxEvent) -> bool| events.iter().position(pred).unwrap();
    let tracks_at = at(&|e| matches!(e, DemuxEvent::Tracks(_)));
    let all_programs_at = at(&|e| matches!(e, DemuxEvent::Programs(l) if l.len() == 3));
    assert_eq!(tracks_at, all_programs_at + 1);
    // A number the PAT does not list: programs are listed, nothing is followed.
    let (d, events) = demux_with(ProgramChoice::Number(9), &m.out);
    assert!(tracks_events(&events).is_empty() && pes_events(&events).is_empty());
    assert_eq!(programs_events(&events).last().unwrap(), &[1, 2, 3]);
    assert_eq!((d.followed(), d.tracks()), (None, None));
}

#[test]
fn programs_event_lists_every_pmt() {
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
    m.psi(HEVC_PMT, &mpts_pmt(1));
    m.psi(AV_PMT, &mpts_pmt(2));
    m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
    m.psi(HEVC_PMT, &mpts_pmt(1));
    m.psi(AV_PMT, &mpts_pmt(2));
    // Program 2's PMT changes; then program 1 leaves the PAT.
    let v1 = pmt(2, 1, 0x200, &[(0x1B, 0x200, &[])]);
    m.psi(AV_PMT, &v1);
    m.psi(0, &pat_of(1, &[(2, AV_PMT)]));
    m.psi(HEVC_PMT, &mpts_pmt(1)); // no longer listed: ignored
    m.psi(AV_PMT, &v1);
    let events = demux_all(&[&m.out]);
    assert!(problems(&events).is_empty(), "{events:?}");
    assert_eq!(
        programs_events(&events),
        [vec![1], vec![1, 2], vec![1, 2], vec![2]]
    );
    let lists: Vec<&Vec<TrackSet>> = events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Programs(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(lists[1][1].version, 0);
    assert_eq!(lists[2][1].version, 1);
    assert_eq!(lists[3][0].version, 1);
    // Program 2 is followed throughout: its Tracks follow its PMT.
    let t = tracks_events(&events);
    assert_eq!(
        t.iter()
            .map(|t| (t.program_number, t.version))
            .collect::<Vec<_>>(),
        [(2, 0), (2, 1)]
    );
}

#[test]
fn single_program_stream_gets_one_programs_event_before_its_tracks() {
    let m = av_stream(3);
    let events = demux_all(&[&m.out]);
    let t = tracks_events(&events);
    assert_eq!(t.len(), 1);
    let at = events
        .iter()
        .position(|e| matches!(e, DemuxEvent::Tracks(_)))
        .unwrap();
    assert_eq!(events[at - 1], DemuxEvent::Programs(vec![t[0].clone()]));
    assert_eq!(programs_events(&events).len(), 1);
    // As soon as its PMT arrives (and the aligner's lookahead of two packets): before the
    // first PES, without waiting for a second PSI cycle.
    let mut d = Demuxer::new();
    let mut out = Vec::new();
    d.push(&m.out[..4 * PACKET_SIZE + 1], &mut out);
    assert_eq!(d.tracks(), Some(t[0]));
    assert!(pes_events(&out).is_empty());
    // The events without `Programs` are what they were before programs were listed.
    let rest: Vec<&DemuxEvent> = events
        .iter()
        .filter(|e| !matches!(e, DemuxEvent::Programs(_)))
        .collect();
    assert!(matches!(rest[0], DemuxEvent::Tracks(_)));
    assert_eq!(rest.len(), events.len() - 1);
}

#[test]
fn late_pmt_does_not_flip_the_choice() {
    let mut m = Mux::default();
    // Program 2's PMT (H.264) is missing from the first two cycles.
    for _ in 0..2 {
        m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
        m.psi(HEVC_PMT, &mpts_pmt(1));
    }
    m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
    m.psi(HEVC_PMT, &mpts_pmt(1));
    m.psi(AV_PMT, &mpts_pmt(2));
    let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
    // Decided on the second sight of program 1's PMT, and kept.
    let t = tracks_events(&events);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].program_number, 1);
    assert_eq!(d.followed(), Some(1));
    assert_eq!(programs_events(&events), [vec![1], vec![1, 2]]);
    // With one sight only, the choice waits for the other PMT.
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (2, AV_PMT)]));
    m.psi(HEVC_PMT, &mpts_pmt(1));
    m.psi(AV_PMT, &mpts_pmt(2));
    let (d, _) = demux_with(ProgramChoice::Auto, &m.out);
    assert_eq!(d.followed(), Some(2));
}

#[test]
fn followed_program_leaving_the_pat() {
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(2, AV_PMT), (3, H264_PMT)]));
    m.psi(AV_PMT, &mpts_pmt(2));
    m.psi(H264_PMT, &mpts_pmt(3));
    m.psi(0, &pat_of(1, &[(3, H264_PMT)]));
    m.psi(H264_PMT, &mpts_pmt(3));
    m.pes(0x300, &pes_bytes(0xE0, Some(1), None, &[3; 50], true), &[]);

    // Auto: decided again among the programs left; program 3's PMT is known already.
    let (d, events) = demux_with(ProgramChoice::Auto, &m.out);
    let t = tracks_events(&events);
    assert_eq!(
        t.iter().map(|t| t.program_number).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(d.followed(), Some(3));
    assert_eq!(pes_events(&events).len(), 1);
    assert_eq!(programs_events(&events), [vec![2], vec![2, 3], vec![3]]);

    // Number: nothing is followed any more; the last tracks stay until a PMT replaces them.
    let (mut d, events) = demux_with(ProgramChoice::Number(2), &m.out);
    assert_eq!(tracks_events(&events).len(), 1);
    assert_eq!(d.followed(), None);
    assert_eq!(d.tracks().map(|t| t.program_number), Some(2));
    assert!(pes_events(&events).is_empty());
    // It comes back: followed again, same tracks, no new Tracks event.
    let mut back = Mux {
        cc: m.cc.clone(),
        ..Mux::default()
    };
    back.psi(0, &pat_of(2, &[(2, AV_PMT), (3, H264_PMT)]));
    back.psi(AV_PMT, &mpts_pmt(2));
    let mut out = Vec::new();
    d.push(&back.out, &mut out);
    d.flush(&mut out);
    assert_eq!(d.followed(), Some(2));
    assert!(tracks_events(&out).is_empty());
}

#[test]
fn reset_keeps_the_program_choice_and_transcoding() {
    let mut d = Demuxer::with_program(ProgramChoice::Number(3));
    d.set_transcodable_audio(true);
    let mut out = Vec::new();
    d.push(&mpts(1).out, &mut out);
    d.reset();
    assert_eq!((d.followed(), d.tracks()), (None, None));
    let mut m = Mux::default();
    m.psi(0, &pat_of(0, &[(1, HEVC_PMT), (3, H264_PMT)]));
    m.psi(
        H264_PMT,
        &pmt(3, 0, 0x300, &[(0x1B, 0x300, &[]), (0x0F, 0x301, &[])]),
    );
    m.pes(0x301, &pes_bytes(0xC0, Some(1), None, &[1; 50], true), &[]);
    let mut out = Vec::new();
    d.push(&m.out, &mut out);
    assert_eq!(d.followed(), Some(3));
    assert_eq!(pes_events(&out).len(), 1, "the AAC track is reassembled");
}
