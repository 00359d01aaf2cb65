//! What the per-stream media task hands to the viewers: timed, packetized frames, shared by
//! reference (`Arc`) between every viewer. Here, below both the media task and the WebRTC
//! engine, so that neither imports the other for it.

use std::sync::Arc;
use std::time::Instant;

use super::Stream;
pub use crate::codec::Recovery;
use crate::rtp::Payload;

/// Video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Video,
    Audio,
}

/// One unit for the viewers: an H.264/H.265 access unit (Annex B, parameter sets before
/// keyframes) or one Opus packet. Shared by reference between every viewer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Counts the stream's frames (both kinds): lets a viewer skip what it already got.
    pub seq: u64,
    pub kind: Kind,
    /// In the track's RTP clock (90 kHz video, 48 kHz Opus), random offset included; viewers
    /// cut it to 32 bits.
    pub rtp_time: u64,
    /// The wall-clock instant this media time maps to (one mapping per stream, for RTCP SR).
    pub wallclock: Instant,
    /// When the frame's last TS byte reached this node: the bridge's added latency is measured
    /// from here to its first RTP packet on the wire.
    pub arrived: Instant,
    /// When it reached the cluster, in µs since the Unix epoch: here, or at the origin when
    /// this node pulls the stream (see `ts::mark`). Sent as abs-capture-time.
    pub ingested_us: u64,
    pub data: Arc<[u8]>,
    /// An IDR (H.264) or IRAP picture (H.265): every decoder starts here, browsers' WebRTC
    /// decoders only here. Audio frames are all keyframes.
    pub keyframe: bool,
    /// Video: a recovery point, where decoders that do not insist on an IDR start too, or an
    /// H.265 RASL picture, which a viewer that started at the CRA before it skips.
    pub recovery: Recovery,
    /// The frame as RTP payloads, made once per stream and shared by every viewer (each only
    /// adds its own header, SRTP and the send).
    pub payloads: Arc<[Payload]>,
}

impl Frame {
    /// Where a viewer may start: a keyframe, or a recovery point (a viewer that needs an IDR,
    /// a browser, asks for one; see `media` for who makes it).
    pub fn is_start(&self) -> bool {
        self.keyframe || self.recovery.is_point()
    }
}

/// Where frames go (the WebRTC engine).
pub trait FrameSink: Send + Sync + 'static {
    fn frame(&self, stream: &Arc<Stream>, frame: Frame);

    /// A new PMT changed the stream's track set (the new one is in its status).
    fn tracks_changed(&self, _stream: &Arc<Stream>) {}
}
