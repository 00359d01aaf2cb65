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
}
