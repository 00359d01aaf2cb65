//! The direct send path: a viewer's RTP written, protected and queued by tsbridge itself.
//!
//! Through str0m, every packet for every viewer is queued in its send queue, polled out of it
//! into a fresh buffer, copied into its retransmission cache, and then encrypted into another
//! fresh buffer, with a timer turn and a walk of the whole `Rtc` per packet: about half of the
//! server's CPU per packet at hundreds of viewers. Here, the header is written straight into
//! the outbox, and the shared payload is encrypted after it in place: no allocation, one pass
//! over the bytes.
//!
//! str0m still does everything else: ICE, DTLS, RTCP. Once a second a packet of each kind goes
//! through it (see `session`), so its sender reports keep the RTP/NTP time mapping that lip
//! sync needs; their packet and octet counts then cover only those packets. NACKs are answered
//! here, from the frames sent (str0m's packets are written non-nackable, so it never sends on
//! the RTX SSRC, whose sequence numbers, and so SRTP indexes, are ours alone). Primary-SSRC
//! sequence numbers are the session's for both paths, so no SRTP index is used twice.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::outbox::Outbox;
use super::srtp::{RtpProtector, TAG_LEN};
use crate::rtp::Payload;

/// Frames kept for retransmission: 3 s at 30 fps, as str0m's own RTX cache.
const HISTORY_FRAMES: usize = 90;

/// Retransmissions may add this share to what a viewer is sent (str0m's cap too): on a link
/// that loses more, resending everything would only congest it further; such a viewer is
/// moved on to the next keyframe instead (see `session`).
const RTX_SHARE: f32 = 0.15;
/// Most retransmission bytes saved up for a burst of NACKs.
const RTX_BURST: f32 = 64_000.0;

pub(super) struct Direct {
    srtp: RtpProtector,
    ssrc: u32,
    /// The RTX SSRC and payload type (RFC 4588), when the viewer negotiated RTX.
    rtx: Option<(u32, u8)>,
    /// Next RTX sequence number; random start below 2^15.
    rtx_seq: u64,
    /// The header extension block with the MID (RFC 8285 one-byte form), or empty.
    ext: Vec<u8>,
    /// The extensions written on a frame's first packet.
    frame_exts: FrameExts,
    /// The viewer reported on our SSRC: it has bound it to the MID, which our packets then
    /// leave out (as libwebrtc and str0m do; RFC 8843 §9.2). Retransmissions keep it.
    ssrc_bound: bool,
    /// Recently sent frames: (first sequence number, RTP time, payload type, payloads).
    history: VecDeque<(u64, u32, u8, Arc<[Payload]>)>,
    /// Where an RTX packet is put together before it is encrypted.
    scratch: Vec<u8>,
    /// Bytes retransmissions may use now: `RTX_SHARE` of every packet sent, up to
    /// `RTX_BURST`.
    rtx_budget: f32,
}

impl Direct {
    /// `mid`: the negotiated extension id of the MID header extension, and the MID.
    pub fn new(
        srtp: RtpProtector,
        (ssrc, rtx): (u32, Option<(u32, u8)>),
        mid: Option<(u8, &str)>,
        frame_exts: FrameExts,
    ) -> Self {
        Direct {
            srtp,
            ssrc,
            rtx,
            rtx_seq: u64::from(rand::random::<u16>() >> 1),
            ext: mid
                .map(|(id, mid)| mid_extension(id, mid))
                .unwrap_or_default(),
            frame_exts,
            history: VecDeque::with_capacity(HISTORY_FRAMES),
            scratch: Vec::new(),
            rtx_budget: 0.0,
            ssrc_bound: false,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Queue one packet of a frame; returns its size on the wire. `first`: the frame's
    /// ingest time (µs since the Unix epoch) on its first packet, which carries the per-frame
    /// header extensions.
    pub fn send(
        &mut self,
        out: &mut Outbox,
        to: SocketAddr,
        (pt, seq, time): (u8, u64, u32),
        p: &Payload,
        first: Option<u64>,
    ) -> usize {
        let mut elements = [0u8; FrameExts::MAX_LEN];
        let n = first.map_or(0, |us| self.frame_exts.write(us, &mut elements));
        let header = (pt, seq, time, self.ssrc);
        let len = self.write_with(out, to, header, p.marker, &p.data, &elements[..n]);
        self.rtx_budget = (self.rtx_budget + len as f32 * RTX_SHARE).min(RTX_BURST);
        len
    }

    /// The viewer sent a reception report on `ssrc`.
    pub fn reported(&mut self, ssrc: u32) {
        self.ssrc_bound |= ssrc == self.ssrc;
    }

    /// Keep a frame sent from `first_seq` on for retransmission.
    pub fn remember(&mut self, first_seq: u64, pt: u8, time: u32, payloads: Arc<[Payload]>) {
        if self.history.len() == HISTORY_FRAMES {
            self.history.pop_front();
        }
        self.history.push_back((first_seq, time, pt, payloads));
    }

    /// Retransmit the packet with sequence number `seq` (16 bits, as a NACK names it), if it
    /// is still kept and the budget allows; `next_seq` is the next one to be sent. True if it
    /// was sent.
    pub fn resend(&mut self, out: &mut Outbox, to: SocketAddr, seq: u16, next_seq: u64) -> bool {
        let mut ext = (next_seq & !0xffff) | u64::from(seq);
        if ext >= next_seq {
            let Some(earlier) = ext.checked_sub(1 << 16) else {
                return false;
            };
            ext = earlier;
        }
        let Some((first, time, pt, payloads)) = self
            .history
            .iter()
            .find(|(first, _, _, p)| (*first..*first + p.len() as u64).contains(&ext))
        else {
            return false;
        };
        let (time, pt, p) = (*time, *pt, payloads[(ext - first) as usize].clone());
        if self.rtx_budget < p.data.len() as f32 {
            return false;
        }
        self.rtx_budget -= p.data.len() as f32;
        match self.rtx {
            Some((ssrc, rtx_pt)) => {
                // RFC 4588 §4: the original sequence number, then the original payload.
                let mut body = std::mem::take(&mut self.scratch);
                body.clear();
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(&p.data);
                let rtx_seq = self.rtx_seq;
                self.rtx_seq += 1;
                self.write(out, to, (rtx_pt, rtx_seq, time, ssrc), p.marker, &body);
                self.scratch = body;
            }
            // Without RTX the packet goes again as it was (same index, same bytes).
            None => {
                self.write(out, to, (pt, ext, time, self.ssrc), p.marker, &p.data);
            }
        }
        true
    }

    fn write(
        &mut self,
        out: &mut Outbox,
        to: SocketAddr,
        header: (u8, u64, u32, u32),
        marker: bool,
        payload: &[u8],
    ) -> usize {
        self.write_with(out, to, header, marker, payload, &[])
    }

    /// `elements`: one-byte header extension elements besides the MID.
    fn write_with(
        &mut self,
        out: &mut Outbox,
        to: SocketAddr,
        (pt, index, time, ssrc): (u8, u64, u32, u32),
        marker: bool,
        payload: &[u8],
        elements: &[u8],
    ) -> usize {
        let mid: &[u8] = match self.ssrc_bound && ssrc == self.ssrc {
            true => &[],
            false => &self.ext,
        };
        let mut block = [0u8; 4 + MID_EXT_MAX + FrameExts::MAX_LEN + 3];
        let ext: &[u8] = match elements.is_empty() {
            true => mid,
            false => one_byte_block(mid, elements, &mut block),
        };
        let header_len = 12 + ext.len();
        let len = header_len + payload.len() + TAG_LEN;
        let srtp = &mut self.srtp;
        out.push_with(to, len, |buf| {
            buf[0] = 0x80 | if ext.is_empty() { 0 } else { 0x10 };
            buf[1] = pt & 0x7f | u8::from(marker) << 7;
            buf[2..4].copy_from_slice(&(index as u16).to_be_bytes());
            buf[4..8].copy_from_slice(&time.to_be_bytes());
            buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
            buf[12..header_len].copy_from_slice(ext);
            srtp.protect(buf, header_len, payload, index);
            len
        });
        len
    }
}

/// Most bytes of the MID extension block (header and a 16-byte MID, padded).
const MID_EXT_MAX: usize = 4 + 17 + 3;

/// A one-byte-form extension block (RFC 8285 §4.2): the elements of `mid_block` (a block or
/// empty) and `elements`, zero-padded to whole words (zero bytes are padding between
/// elements), in `buf`.
fn one_byte_block<'a>(mid_block: &[u8], elements: &[u8], buf: &'a mut [u8]) -> &'a [u8] {
    let mid = mid_block.get(4..).unwrap_or_default();
    let body = mid.len() + elements.len();
    let words = body.div_ceil(4);
    buf[..2].copy_from_slice(&[0xBE, 0xDE]);
    buf[2..4].copy_from_slice(&(words as u16).to_be_bytes());
    buf[4..4 + mid.len()].copy_from_slice(mid);
    buf[4 + mid.len()..4 + body].copy_from_slice(elements);
    buf[4 + body..4 + words * 4].fill(0);
    &buf[..4 + words * 4]
}

/// The header extensions a viewer negotiated that go on each frame's first packet.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FrameExts {
    /// abs-capture-time: the frame's ingest time, so a receiver knows its glass-to-glass delay.
    pub abs_capture_time: Option<u8>,
    /// playout-delay: the bounds of the viewer's jitter buffer.
    pub playout_delay: Option<(u8, [u8; 3])>,
}

impl FrameExts {
    const MAX_LEN: usize = 9 + 4;

    /// The elements for a frame ingested at `unix_us`, into `buf`; their length.
    fn write(&self, unix_us: u64, buf: &mut [u8; Self::MAX_LEN]) -> usize {
        let mut n = 0;
        if let Some(id) = self.abs_capture_time {
            buf[0] = id << 4 | 7;
            buf[1..9].copy_from_slice(&crate::wallclock::ntp64(unix_us).to_be_bytes());
            n = 9;
        }
        if let Some((id, delay)) = self.playout_delay {
            buf[n] = id << 4 | 2;
            buf[n + 1..n + 4].copy_from_slice(&delay);
            n += 4;
        }
        n
    }
}

/// The header extension block carrying `mid` (RFC 8285 §4.2, one-byte form; RFC 8843 §15),
/// zero-padded to 32 bits. Empty when it does not fit the one-byte form.
fn mid_extension(id: u8, mid: &str) -> Vec<u8> {
    let n = mid.len();
    if !(1..=14).contains(&id) || !(1..=16).contains(&n) {
        return Vec::new();
    }
    let words = (1 + n).div_ceil(4);
    let mut ext = vec![0xbe, 0xde];
    ext.extend_from_slice(&(words as u16).to_be_bytes());
    ext.push(id << 4 | (n - 1) as u8);
    ext.extend_from_slice(mid.as_bytes());
    ext.resize(4 + words * 4, 0);
    ext
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::webrtc::srtp::unprotect_aes_128_gcm;

    const KEY: [u8; 16] = [7; 16];
    const SALT: [u8; 12] = [9; 12];

    fn payload(marker: bool, byte: u8, len: usize) -> Payload {
        Payload {
            marker,
            data: vec![byte; len].into(),
        }
    }

    /// Sends a frame across the 16-bit sequence number wrap, then answers NACKs for it: by
    /// RTX (RFC 4588: own SSRC and sequence numbers, the original one first in the payload),
    /// within the budget, and not for what it never sent.
    #[tokio::test]
    async fn nacks_are_answered_by_rtx_across_the_sequence_wrap() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let tx = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let mut out = Outbox::new(tx, Arc::new(Metrics::default()));
        let srtp = RtpProtector::aes_128_gcm(KEY, SALT);
        let ssrcs = (0x1111, Some((0x2222, 97)));
        let mut d = Direct::new(srtp, ssrcs, Some((4, "0")), FrameExts::default());
        let start = 0xffff; // the frame's packets are 65535, 65536 (seq 0, ROC 1), 65537
        let frame: Arc<[Payload]> = vec![
            payload(false, 1, 1000),
            payload(false, 2, 1000),
            payload(true, 3, 300),
        ]
        .into();
        // Earlier packets (not kept) that earn the retransmission budget.
        let filler = payload(true, 0, 1000);
        for seq in start - 7..start {
            d.send(&mut out, to, (96, seq, 87_000), &filler, None);
        }
        for (i, p) in frame.iter().enumerate() {
            d.send(&mut out, to, (96, start + i as u64, 90_000), p, None);
        }
        d.remember(start, 96, 90_000, frame.clone());
        let next = start + 3;
        assert!(d.resend(&mut out, to, 0, next), "seq 0 is 65536, sent");
        assert!(!d.resend(&mut out, to, 5, next), "seq 5 was never sent");
        assert!(!d.resend(&mut out, to, 0xfff0, next), "nor 65520");
        out.flush();

        let mut buf = [0u8; 1500];
        let mut packets = Vec::new();
        for _ in 0..11 {
            let n = rx.recv(&mut buf).await.unwrap();
            packets.push(buf[..n].to_vec());
        }
        let packets = &packets[7..];
        let header_len = 12 + 8; // the MID extension: one word of header, one of data
        for (i, p) in packets[..3].iter().enumerate() {
            let seq = u16::from_be_bytes([p[2], p[3]]);
            assert_eq!(u64::from(seq), (start + i as u64) & 0xffff);
            assert_eq!(p[0], 0x90, "V=2, X=1");
            assert_eq!(p[1] & 0x80 != 0, i == 2, "marker on the last");
            assert_eq!(&p[12..20], [0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
            let plain = unprotect_aes_128_gcm(KEY, SALT, p, header_len, start + i as u64);
            assert_eq!(plain.as_deref(), Some(&frame[i].data[..]), "packet {i}");
        }
        let rtx = &packets[3];
        assert_eq!(rtx[1] & 0x7f, 97);
        assert_eq!(&rtx[8..12], 0x2222u32.to_be_bytes());
        let rtx_seq = u64::from(u16::from_be_bytes([rtx[2], rtx[3]]));
        assert_eq!(rtx_seq, d.rtx_seq - 1);
        let plain = unprotect_aes_128_gcm(KEY, SALT, rtx, header_len, rtx_seq).unwrap();
        assert_eq!(plain[..2], [0, 0], "original sequence number");
        assert_eq!(plain[2..], frame[1].data[..]);

        // The budget is 15 % of what was sent (~1,450 bytes here): spent.
        assert!(!d.resend(&mut out, to, 0, next), "past the budget");
        for seq in next..next + 7 {
            d.send(&mut out, to, (96, seq, 93_000), &filler, None);
        }
        assert!(d.resend(&mut out, to, 0, next + 7), "earned again");

        // Once the viewer reports on the SSRC, it has bound it to the MID: media packets
        // leave the extension out; retransmissions (another SSRC) keep it.
        d.reported(0x3333);
        d.reported(0x1111);
        for seq in next + 7..next + 14 {
            d.send(&mut out, to, (96, seq, 96_000), &filler, None);
        }
        assert!(d.resend(&mut out, to, 0, next + 14));
        out.flush();
        for _ in 0..8 {
            rx.recv(&mut buf).await.unwrap(); // the fillers and the RTX sent above
        }
        for seq in next + 7..next + 14 {
            let n = rx.recv(&mut buf).await.unwrap();
            assert_eq!((buf[0], n), (0x80, 12 + 1000 + TAG_LEN), "no extension");
            let plain = unprotect_aes_128_gcm(KEY, SALT, &buf[..n], 12, seq);
            assert_eq!(plain.as_deref(), Some(&filler.data[..]));
        }
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!((buf[0], &buf[8..12]), (0x90, &0x2222u32.to_be_bytes()[..]));
        assert_eq!(n, header_len + 2 + 1000 + TAG_LEN);
    }

    #[test]
    fn mid_extension_is_the_one_byte_form_padded_to_words() {
        assert_eq!(mid_extension(4, "0"), [0xbe, 0xde, 0, 1, 0x40, b'0', 0, 0]);
        assert_eq!(
            mid_extension(1, "abcd"),
            [0xbe, 0xde, 0, 2, 0x13, b'a', b'b', b'c', b'd', 0, 0, 0]
        );
        assert!(mid_extension(15, "0").is_empty(), "15 is reserved");
        assert!(mid_extension(1, &"x".repeat(17)).is_empty());
    }

    /// A frame's first packet carries abs-capture-time and playout-delay after the MID, in
    /// one block of whole words; the others only the MID.
    #[tokio::test]
    async fn a_frames_first_packet_carries_its_ingest_time_and_the_playout_delay() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let tx = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let mut out = Outbox::new(tx, Arc::new(Metrics::default()));
        let srtp = RtpProtector::aes_128_gcm(KEY, SALT);
        let delay = crate::webrtc::PlayoutDelay {
            min_ms: 0,
            max_ms: 400,
        };
        let exts = FrameExts {
            abs_capture_time: Some(2),
            playout_delay: Some((6, delay.bytes())),
        };
        let mut d = Direct::new(srtp, (0x1111, None), Some((4, "0")), exts);
        let us = 1_765_000_000_250_000;
        d.send(&mut out, to, (96, 10, 0), &payload(false, 1, 100), Some(us));
        d.send(&mut out, to, (96, 11, 0), &payload(true, 2, 100), None);
        out.flush();
        let mut buf = [0u8; 1500];
        let n = rx.recv(&mut buf).await.unwrap();
        let ntp = crate::wallclock::ntp64(us).to_be_bytes();
        let mut block = vec![0xBE, 0xDE, 0, 5, 0x40, b'0', 0, 0, 0x27];
        block.extend_from_slice(&ntp);
        block.extend_from_slice(&[0x62, 0, 0, 40, 0, 0, 0]);
        assert_eq!(buf[0], 0x90, "extension bit");
        assert_eq!(&buf[12..12 + block.len()], &block[..]);
        assert_eq!(n, 12 + block.len() + 100 + TAG_LEN);
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[12..20], &[0xBE, 0xDE, 0, 1, 0x40, b'0', 0, 0]);
        assert_eq!(n, 20 + 100 + TAG_LEN);
    }
}
