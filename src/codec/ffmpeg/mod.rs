//! FFmpeg's libavcodec decoders, `--features ffmpeg`: the reference decoders of what the
//! pure-Rust ones do not play (AC-3, E-AC-3, multichannel and HE-AAC). Decode only: Opus is
//! still encoded by the transcoder's own encoder.
//!
//! The calls go through `shim.c`, compiled against the installed headers by `build.rs`; this
//! file is the only Rust that touches them. Why a shim and not `ffmpeg-next`: docs/DESIGN.md.

// The FFI of the `ffmpeg` feature: the only unsafe code of the transcoder.
#![allow(unsafe_code)]

use std::os::raw::c_int;
use std::ptr::NonNull;

/// The opaque decoder state of `shim.c`.
#[repr(C)]
struct Raw {
    _private: [u8; 0],
}

extern "C" {
    fn tsb_audio_open(which: c_int) -> *mut Raw;
    fn tsb_audio_close(d: *mut Raw);
    fn tsb_audio_send(d: *mut Raw, data: *const u8, size: c_int) -> c_int;
    fn tsb_audio_receive(d: *mut Raw) -> c_int;
    fn tsb_audio_rate(d: *const Raw) -> c_int;
    fn tsb_audio_samples(d: *const Raw) -> c_int;
    fn tsb_audio_planes(d: *const Raw) -> c_int;
    fn tsb_audio_copy(d: *const Raw, out: *mut f32, cap: c_int) -> c_int;
    fn tsb_video_open(which: c_int) -> *mut Raw;
    fn tsb_video_close(d: *mut Raw);
    fn tsb_video_send(d: *mut Raw, data: *const u8, size: c_int, pts: i64) -> c_int;
    fn tsb_video_receive(d: *mut Raw) -> c_int;
    fn tsb_video_info(d: *const Raw, info: *mut c_int);
    fn tsb_video_pts(d: *const Raw) -> i64;
    fn tsb_video_copy(d: *const Raw, out: *mut u8, cap: usize) -> c_int;
}

/// The audio decoders used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioCodec {
    Ac3,
    Eac3,
    /// AAC in ADTS frames (the header travels with each frame).
    AacAdts,
    /// AAC in LATM, one LOAS frame at a time.
    AacLatm,
}

impl AudioCodec {
    fn which(self) -> c_int {
        match self {
            AudioCodec::Ac3 => 0,
            AudioCodec::Eac3 => 1,
            AudioCodec::AacAdts => 2,
            AudioCodec::AacLatm => 3,
        }
    }
}

/// One decoded frame: `planes` planes of `samples` floats back to back in `data` — 1 (mono),
/// 2 (left, right) or 6 (front left, front right, centre, LFE, left and right surround, as
/// ITU-R BS.775 names them; the ones the source lacks are silent).
#[derive(Debug, Default, Clone)]
pub struct DecodedAudio {
    pub rate: u32,
    pub samples: usize,
    pub planes: usize,
    pub data: Vec<f32>,
}

impl DecodedAudio {
    pub fn plane(&self, i: usize) -> &[f32] {
        self.data
            .get(i * self.samples..(i + 1) * self.samples)
            .unwrap_or(&[])
    }
}

/// A libavcodec audio decoder.
pub struct AudioDecoder {
    raw: NonNull<Raw>,
    codec: AudioCodec,
}

// SAFETY: the decoder state is owned by this value alone and used from one thread at a time
// (`&mut self`); libavcodec contexts may move between threads.
unsafe impl Send for AudioDecoder {}

impl AudioDecoder {
    /// `None` when this FFmpeg has no such decoder, or it cannot be opened.
    pub fn new(codec: AudioCodec) -> Option<Self> {
        // SAFETY: plain constructor; a null pointer is handled.
        let raw = unsafe { tsb_audio_open(codec.which()) };
        NonNull::new(raw).map(|raw| AudioDecoder { raw, codec })
    }

    pub fn codec(&self) -> AudioCodec {
        self.codec
    }

    /// One coded frame in; what it decodes to is appended to `out`. `Err` with libavcodec's
    /// error code when it rejects the frame (the caller puts silence in its place).
    pub fn decode(&mut self, frame: &[u8], out: &mut Vec<DecodedAudio>) -> Result<(), i32> {
        let size = c_int::try_from(frame.len()).map_err(|_| -1)?;
        // SAFETY: `raw` is a live decoder; `frame` is valid for `size` bytes and copied.
        let sent = unsafe { tsb_audio_send(self.raw.as_ptr(), frame.as_ptr(), size) };
        if sent < 0 {
            return Err(sent);
        }
        loop {
            // SAFETY: a live decoder.
            let got = unsafe { tsb_audio_receive(self.raw.as_ptr()) };
            if got < 0 {
                return Err(got);
            }
            if got == 0 {
                return Ok(());
            }
            let d = self.raw.as_ptr();
            // SAFETY: a frame was just received: its fields are readable until the next call.
            let (rate, samples, planes) =
                unsafe { (tsb_audio_rate(d), tsb_audio_samples(d), tsb_audio_planes(d)) };
            let (Ok(rate), Ok(samples), Ok(planes)) = (
                u32::try_from(rate),
                usize::try_from(samples),
                usize::try_from(planes),
            ) else {
                return Err(-1);
            };
            if rate == 0 || planes == 0 || samples == 0 {
                continue;
            }
            let mut decoded = DecodedAudio {
                rate,
                samples,
                planes,
                data: vec![0.0; planes * samples],
            };
            // SAFETY: `data` holds `planes` planes of `samples` floats, `samples` is the
            // frame's length (what `cap` bounds); the shim writes no more.
            let copied = unsafe { tsb_audio_copy(d, decoded.data.as_mut_ptr(), samples as c_int) };
            if copied < 0 {
                return Err(copied);
            }
            out.push(decoded);
        }
    }
}

impl Drop for AudioDecoder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `tsb_audio_open` and is freed once.
        unsafe { tsb_audio_close(self.raw.as_ptr()) }
    }
}

/// The video decoders (for the H.264 re-encoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    /// MPEG-2 video (and MPEG-1).
    Mpeg2,
    Hevc,
}

/// One decoded picture, in display order: 8-bit 4:2:0 as I420 (Y, U, V planes, no padding).
#[derive(Debug, Default, Clone)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// The PTS its access unit was sent with.
    pub pts: i64,
    /// Two fields woven into one frame: to be deinterlaced before encoding.
    pub interlaced: bool,
    pub top_field_first: bool,
    pub yuv: Vec<u8>,
}

impl Picture {
    /// The chroma planes' size.
    pub fn chroma(&self) -> (usize, usize) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }
}

/// Why a picture did not come out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VideoError {
    #[error("the decoder rejected the data (FFmpeg error {0})")]
    Decode(i32),
    #[error("{width}x{height} picture is not 8-bit 4:2:0, which the H.264 encoder takes")]
    Format { width: usize, height: usize },
}

/// A libavcodec video decoder: access units in (decode order, with their PTS), pictures out
/// in display order with the PTS of their own access unit (libavcodec keeps it through its
/// reordering, unlike OpenH264).
pub struct VideoDecoder {
    raw: NonNull<Raw>,
}

// SAFETY: as for `AudioDecoder`: owned state, used through `&mut self` only.
unsafe impl Send for VideoDecoder {}

impl VideoDecoder {
    pub fn new(codec: VideoCodec) -> Option<Self> {
        let which = match codec {
            VideoCodec::Mpeg2 => 0,
            VideoCodec::Hevc => 1,
        };
        // SAFETY: plain constructor; a null pointer is handled.
        NonNull::new(unsafe { tsb_video_open(which) }).map(|raw| VideoDecoder { raw })
    }

    /// One access unit in; the pictures it completes are appended to `out`. An empty one
    /// drains what the decoder holds back (the end of a stream): it takes nothing after that,
    /// a new decoder does.
    pub fn decode(
        &mut self,
        au: &[u8],
        pts: i64,
        out: &mut Vec<Picture>,
    ) -> Result<(), VideoError> {
        let size = c_int::try_from(au.len()).map_err(|_| VideoError::Decode(-1))?;
        // SAFETY: a live decoder; `au` is valid for `size` bytes and copied.
        let sent = unsafe { tsb_video_send(self.raw.as_ptr(), au.as_ptr(), size, pts) };
        if sent < 0 {
            return Err(VideoError::Decode(sent));
        }
        loop {
            let d = self.raw.as_ptr();
            // SAFETY: a live decoder.
            let got = unsafe { tsb_video_receive(d) };
            if got < 0 {
                return Err(VideoError::Decode(got));
            }
            if got == 0 {
                return Ok(());
            }
            let mut info: [c_int; 5] = [0; 5];
            // SAFETY: a picture was just received; `info` has the 5 slots the shim writes.
            let pts = unsafe {
                tsb_video_info(d, info.as_mut_ptr());
                tsb_video_pts(d)
            };
            let [w, h, interlaced, tff, i420] = info;
            let (width, height) = (w.max(0) as usize, h.max(0) as usize);
            if i420 == 0 {
                return Err(VideoError::Format { width, height });
            }
            let mut p = Picture {
                width,
                height,
                pts,
                interlaced: interlaced != 0,
                top_field_first: tff != 0,
                yuv: Vec::new(),
            };
            let (cw, ch) = p.chroma();
            p.yuv = vec![0; width * height + 2 * cw * ch];
            // SAFETY: `yuv` has the I420 size of the picture, which `cap` says.
            let copied = unsafe { tsb_video_copy(d, p.yuv.as_mut_ptr(), p.yuv.len()) };
            if copied < 0 {
                return Err(VideoError::Format { width, height });
            }
            out.push(p);
        }
    }
}

impl Drop for VideoDecoder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `tsb_video_open` and is freed once.
        unsafe { tsb_video_close(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decoder_opens_and_garbage_is_an_error_not_a_crash() {
        for codec in [
            AudioCodec::Ac3,
            AudioCodec::Eac3,
            AudioCodec::AacAdts,
            AudioCodec::AacLatm,
        ] {
            let mut d = AudioDecoder::new(codec).expect("FFmpeg has the decoder");
            let mut out = Vec::new();
            for junk in [&[0u8; 0][..], &[0x0B, 0x77, 1, 2, 3], &[0xFF; 2000]] {
                let _ = d.decode(junk, &mut out);
            }
            assert!(out.iter().all(|f| f.data.len() == f.planes * f.samples));
        }
    }

    /// The PES payloads and PTS of one PID of a testdata file.
    fn pes_of(name: &str, pid: u16) -> Option<Vec<(Vec<u8>, u64)>> {
        let data = crate::testdata::read(name)?;
        let pes = crate::ts::testutil::pes_of_pid(&data, pid);
        Some(
            pes.into_iter()
                .filter_map(|(d, pts)| Some((d, pts?)))
                .collect(),
        )
    }

    /// MPEG-2 576i with B-frames (testdata/mpeg2_576i_mp2.ts): every picture comes out, in
    /// display order (rising PTS), interlaced, top field first; blending takes the combs
    /// out of its moving parts.
    #[test]
    fn mpeg2_interlaced_pictures_come_out_in_display_order_and_deinterlace() {
        use crate::codec::deinterlace::{blend_i420, combing};
        let Some(aus) = pes_of("mpeg2_576i_mp2.ts", 0x100) else {
            return;
        };
        assert_eq!(aus.len(), 25);
        let mut d = VideoDecoder::new(VideoCodec::Mpeg2).expect("FFmpeg has MPEG-2");
        let mut pictures = Vec::new();
        for (au, pts) in &aus {
            d.decode(au, *pts as i64, &mut pictures).unwrap();
        }
        d.decode(&[], 0, &mut pictures).unwrap();
        assert_eq!(pictures.len(), 25);
        assert!(
            pictures.windows(2).all(|w| w[1].pts > w[0].pts),
            "display order"
        );
        let p = &mut pictures[10];
        assert_eq!((p.width, p.height), (720, 576));
        assert!(p.interlaced && p.top_field_first);
        let before = combing(&p.yuv[..720 * 576], 720, 576);
        blend_i420(&mut p.yuv, 720, 576, &mut Vec::new());
        let after = combing(&p.yuv[..720 * 576], 720, 576);
        // (Averaged over the whole picture, most of which stands still.)
        assert!(before > 0.5 && after < before / 5.0, "{before} -> {after}");
    }

    /// HEVC Main 640x360 (testdata/hevc_opus.ts): every one of its 180 pictures comes out,
    /// progressive, each with its own access unit's PTS.
    #[test]
    fn hevc_pictures_come_out_with_their_pts() {
        let Some(aus) = pes_of("hevc_opus.ts", 0x100) else {
            return;
        };
        let mut d = VideoDecoder::new(VideoCodec::Hevc).expect("FFmpeg has HEVC");
        let mut pictures = Vec::new();
        for (au, pts) in &aus {
            d.decode(au, *pts as i64, &mut pictures).unwrap();
        }
        d.decode(&[], 0, &mut pictures).unwrap();
        assert_eq!(pictures.len(), 180);
        let sent: Vec<i64> = aus.iter().map(|(_, pts)| *pts as i64).collect();
        let got: Vec<i64> = pictures.iter().map(|p| p.pts).collect();
        assert_eq!(got, sent, "no B-frames: display order is decode order");
        let p = &pictures[0];
        assert_eq!((p.width, p.height, p.interlaced), (640, 360, false));
        assert_eq!(p.yuv.len(), 640 * 360 * 3 / 2);
    }
}
