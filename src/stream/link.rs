//! What a source's transport saw on its way in: RTP sequence gaps on `--udp` (RTP-wrapped TS),
//! the figures of an SRT connection; and on the way out, those of each SRT reader
//! (`m=request`).
//!
//! Kept apart from the stream's media counters: these say how the network treated the source,
//! which is the first question when a contribution link from another site plays badly.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// An RTP receiver's counts since its source began (plain numbers: the sans-IO depacketizer
/// keeps them; [`LinkStats::set_rtp`] publishes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpCounts {
    /// RTP packets carrying TS that arrived (duplicates included).
    pub packets: u64,
    /// Sequence numbers given up on: not there when the reorder window had to move on.
    pub lost: u64,
    /// Packets that arrived after one with a higher sequence number, in time to be put back
    /// in order.
    pub reordered: u64,
    /// Packets that arrived twice (the copy is dropped).
    pub duplicates: u64,
    /// Packets that came after they were given up on (dropped: their place was passed).
    pub late: u64,
    /// Times the sequence jumped so far (or the SSRC changed) that the sender was taken as
    /// restarted rather than thousands of packets counted lost.
    pub resyncs: u64,
}

/// A WHIP publisher's jitter buffer figures since it began: the video's (where a hole costs
/// pictures, and which is NACKed), and the audio's packets and losses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WhipCounts {
    /// The video's hold now (`--whip-jitter-ms` between MIN and MAX).
    pub delay_ms: u64,
    /// Video RTP packets (duplicates included).
    pub packets: u64,
    /// Video packets given up on: missing when their deadline passed.
    pub lost: u64,
    /// Video packets that came after they were given up on.
    pub late: u64,
    /// Video packets that filled a hole in time: reordered, or resent after a NACK.
    pub recovered: u64,
    pub duplicates: u64,
    /// Video access units dropped while waiting for a keyframe after a loss.
    pub skipped_frames: u64,
    /// Keyframe requests (PLI) sent to the publisher.
    pub plis: u64,
    /// NACKs sent to the publisher (str0m's count).
    pub nacks: u64,
    /// Audio RTP packets, and those given up on (audio is not NACKed: a lost Opus packet is
    /// a few ms of sound the decoder conceals).
    pub audio_packets: u64,
    pub audio_lost: u64,
}

/// The transport counters of a stream, read by the API and metrics.
#[derive(Debug, Default)]
pub struct LinkStats {
    rtp_packets: AtomicU64,
    rtp_lost: AtomicU64,
    rtp_reordered: AtomicU64,
    rtp_duplicates: AtomicU64,
    rtp_late: AtomicU64,
    rtp_resyncs: AtomicU64,
    /// The SRT publisher's connection: its peer and latest figures (kept after it leaves).
    srt: Mutex<Option<(String, SrtStats)>>,
    /// The WHIP publisher's jitter buffer (kept after it leaves).
    whip: Mutex<Option<WhipCounts>>,
    /// The SRT readers connected now, in the order they came (each removed as it leaves).
    srt_readers: Mutex<Vec<SrtReader>>,
    next_reader: AtomicU64,
    /// The SRT readers' counts summed over every reader since the stream began (each reader's
    /// growth added as it is published, so what left stays counted): for counters.
    srt_reader_totals: Mutex<SrtReaderTotals>,
}

/// What every SRT reader of a stream was sent, summed since the stream began (never going
/// down as readers leave, as counters must not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtReaderTotals {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub lost: u64,
    pub retransmitted: u64,
    pub dropped: u64,
}

/// One SRT reader (`m=request`) of a stream: its peer and its connection's latest sender-side
/// figures.
#[derive(Debug, Clone, PartialEq)]
pub struct SrtReader {
    /// Its place in [`LinkStats`] (see [`LinkStats::add_srt_reader`]).
    pub id: u64,
    pub peer: String,
    pub stats: SrtSendStats,
}

impl LinkStats {
    /// Publishes the RTP receiver's counts (cumulative, so a store).
    pub fn set_rtp(&self, c: &RtpCounts) {
        let r = Ordering::Relaxed;
        self.rtp_packets.store(c.packets, r);
        self.rtp_lost.store(c.lost, r);
        self.rtp_reordered.store(c.reordered, r);
        self.rtp_duplicates.store(c.duplicates, r);
        self.rtp_late.store(c.late, r);
        self.rtp_resyncs.store(c.resyncs, r);
    }

    /// The RTP counts; `None` when no RTP-wrapped TS came.
    pub fn rtp(&self) -> Option<RtpCounts> {
        let r = Ordering::Relaxed;
        let c = RtpCounts {
            packets: self.rtp_packets.load(r),
            lost: self.rtp_lost.load(r),
            reordered: self.rtp_reordered.load(r),
            duplicates: self.rtp_duplicates.load(r),
            late: self.rtp_late.load(r),
            resyncs: self.rtp_resyncs.load(r),
        };
        (c.packets > 0).then_some(c)
    }

    /// Publishes an SRT connection's figures (once a second while it lasts).
    pub fn set_srt(&self, peer: String, stats: SrtStats) {
        *self.srt.lock() = Some((peer, stats));
    }

    /// Publishes a WHIP publisher's jitter buffer figures.
    pub fn set_whip(&self, c: WhipCounts) {
        *self.whip.lock() = Some(c);
    }

    /// The latest WHIP publisher's jitter buffer figures, if one ever came.
    pub fn whip(&self) -> Option<WhipCounts> {
        *self.whip.lock()
    }

    /// The latest SRT publisher's peer and figures, if one ever came.
    pub fn srt(&self) -> Option<(String, SrtStats)> {
        self.srt.lock().clone()
    }

    /// Lists an SRT reader that just connected (no figures yet); its id is for
    /// [`LinkStats::set_srt_reader`] and [`LinkStats::remove_srt_reader`].
    pub fn add_srt_reader(&self, peer: String) -> u64 {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        self.srt_readers.lock().push(SrtReader {
            id,
            peer,
            stats: SrtSendStats::default(),
        });
        id
    }

    /// Publishes an SRT reader's figures (once a second while it reads, and as it leaves).
    pub fn set_srt_reader(&self, id: u64, stats: SrtSendStats) {
        let mut readers = self.srt_readers.lock();
        let Some(r) = readers.iter_mut().find(|r| r.id == id) else {
            return;
        };
        let (was, now) = (r.stats, stats);
        let mut t = self.srt_reader_totals.lock();
        t.packets_sent += now.packets_sent.saturating_sub(was.packets_sent);
        t.bytes_sent += now.bytes_sent.saturating_sub(was.bytes_sent);
        t.lost += now.lost.saturating_sub(was.lost);
        t.retransmitted += now.retransmitted.saturating_sub(was.retransmitted);
        t.dropped += now.dropped.saturating_sub(was.dropped);
        r.stats = stats;
    }

    /// Every SRT reader's counts summed since the stream began (readers gone included).
    pub fn srt_reader_totals(&self) -> SrtReaderTotals {
        *self.srt_reader_totals.lock()
    }

    /// The reader left.
    pub fn remove_srt_reader(&self, id: u64) {
        self.srt_readers.lock().retain(|r| r.id != id);
    }

    /// The SRT readers connected now.
    pub fn srt_readers(&self) -> Vec<SrtReader> {
        self.srt_readers.lock().clone()
    }
}

/// The figures of one SRT connection that the API and metrics show.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SrtStats {
    pub rtt_ms: f64,
    /// The link's estimated bandwidth.
    pub bandwidth_mbps: f64,
    pub recv_rate_mbps: f64,
    pub send_rate_mbps: f64,
    pub packets_received: u64,
    pub packets_sent: u64,
    /// Packets found missing (each then asked for again).
    pub lost: u64,
    /// Packets sent again (sender) or received again (receiver): the ARQ at work.
    pub retransmitted: u64,
    /// Packets given up on: too late to play (receiver) or to send (sender).
    pub dropped: u64,
    /// Packets that did not decrypt.
    pub undecrypted: u64,
    /// Media time waiting in the receive buffer.
    pub receive_buffer_ms: u64,
    /// The negotiated latency (TSBPD delay).
    pub latency_ms: u64,
}

/// The sender side of one SRT connection (a reader's, `m=request`): what libsrt's
/// `srt_bstats` says of the packets this node sent and the receiver's reports on them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SrtSendStats {
    pub rtt_ms: f64,
    /// The link's estimated bandwidth.
    pub bandwidth_mbps: f64,
    pub send_rate_mbps: f64,
    /// Packets and payload bytes sent (retransmissions included).
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Packets the receiver reported missing (NAKs; each then sent again unless too late).
    pub lost: u64,
    /// Packets sent again.
    pub retransmitted: u64,
    /// Packets given up on: too late to send within the latency (the reader's picture is
    /// damaged).
    pub dropped: u64,
    /// Media time waiting in the send buffer (unsent or unacknowledged).
    pub send_buffer_ms: u64,
    /// The negotiated latency (TSBPD delay).
    pub latency_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srt_readers_are_listed_updated_and_removed_each_by_its_own_id() {
        let link = LinkStats::default();
        let a = link.add_srt_reader("10.0.0.1:5000".into());
        let b = link.add_srt_reader("10.0.0.2:5000".into());
        assert_ne!(a, b);
        let figures = SrtSendStats {
            packets_sent: 7,
            ..Default::default()
        };
        link.set_srt_reader(b, figures);
        let readers = link.srt_readers();
        assert_eq!(readers.len(), 2);
        assert_eq!(readers[0].stats, SrtSendStats::default());
        assert_eq!(
            (readers[1].peer.as_str(), readers[1].stats),
            ("10.0.0.2:5000", figures)
        );
        link.remove_srt_reader(a);
        assert_eq!(
            link.srt_readers().iter().map(|r| r.id).collect::<Vec<_>>(),
            [b]
        );
        link.remove_srt_reader(b);
        link.set_srt_reader(b, figures);
        assert!(link.srt_readers().is_empty(), "a reader gone stays gone");
    }

    #[test]
    fn srt_reader_totals_add_each_readers_growth_and_keep_what_left() {
        let link = LinkStats::default();
        let a = link.add_srt_reader("a".into());
        let b = link.add_srt_reader("b".into());
        let sent = |packets_sent, lost| SrtSendStats {
            packets_sent,
            bytes_sent: packets_sent * 1316,
            lost,
            ..Default::default()
        };
        link.set_srt_reader(a, sent(10, 1));
        link.set_srt_reader(a, sent(25, 1));
        link.set_srt_reader(b, sent(5, 0));
        link.remove_srt_reader(a);
        let t = link.srt_reader_totals();
        assert_eq!((t.packets_sent, t.bytes_sent, t.lost), (30, 30 * 1316, 1));
        // A figure going down (never from libsrt) adds nothing.
        link.set_srt_reader(b, sent(3, 0));
        assert_eq!(link.srt_reader_totals().packets_sent, 30);
    }
}
