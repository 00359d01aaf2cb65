//! OpenH264's decoder for the re-encoder, through the `openh264` crate's raw API where its safe
//! API stops short of what starting at a recovery point needs. The one place in `codec/` with
//! `unsafe` (three FFI calls and the slices over the picture OpenH264 lends).
//!
//! Why: OpenH264 knows nothing of recovery points. Started at one (a P picture after its SPS
//! and PPS), it refuses every picture unless error concealment is on; with it on, it makes a
//! grey reference picture for the missing IDR and decodes — the intra refresh then paints the
//! true picture in, bit-exact after `recovery_frame_cnt` frames (checked against a decode from
//! the IDR in the tests) — but its "this picture was concealed" flag passes from each picture
//! to those that refer to it, so every later picture is flagged, and the safe API turns every
//! flagged decode into an error without its picture. Here the flags are data
//! ([`DecodeState`]) and the caller decides; the crate has no setting for concealment either.
//!
//! A decoder started at a keyframe has concealment off, as the safe API had it: a corrupt
//! access unit is an error there, and the re-encoder starts again at the next start point.

#![allow(unsafe_code)]

use std::ptr::null_mut;

use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;
use openh264_sys2::{
    dsDataErrorConcealed, dsRefLost, SBufferInfo, DECODER_OPTION_ERROR_CON_IDC,
    ERROR_CON_SLICE_COPY,
};

/// OpenH264's DECODING_STATE bits for one access unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeState(pub i32);

impl DecodeState {
    pub const OK: DecodeState = DecodeState(0);
    /// A reference picture was missing (the first picture after a recovery point: the IDR).
    pub const REF_LOST: i32 = dsRefLost;
    /// Concealed, or refers to a picture that was (after a recovery point: all of them).
    pub const CONCEALED: i32 = dsDataErrorConcealed;

    /// Bits other than `allowed` are set.
    pub fn fails(self, allowed: i32) -> bool {
        self.0 & !allowed != 0
    }
}

/// A decoded picture, lent by the decoder until its next call.
pub struct Picture<'a> {
    size: (usize, usize),
    /// Luma and chroma strides.
    strides: (usize, usize),
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
}

impl YUVSource for Picture<'_> {
    fn dimensions(&self) -> (usize, usize) {
        self.size
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.strides.0, self.strides.1, self.strides.1)
    }

    fn y(&self) -> &[u8] {
        self.y
    }

    fn u(&self) -> &[u8] {
        self.u
    }

    fn v(&self) -> &[u8] {
        self.v
    }
}

pub struct H264Decoder {
    inner: Decoder,
}

impl H264Decoder {
    /// Pictures come out in display order (no flush after each access unit). `conceal`: error
    /// concealment on (to start at a recovery point).
    pub fn new(conceal: bool) -> Result<Self, String> {
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let mut inner = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| e.to_string())?;
        if conceal {
            let mut idc = ERROR_CON_SLICE_COPY;
            // SAFETY: SetOption(DECODER_OPTION_ERROR_CON_IDC) reads one int from the pointer,
            // during the call (the crate sets the same option this way when it is made).
            let rc = unsafe {
                inner
                    .raw_api()
                    .set_option(DECODER_OPTION_ERROR_CON_IDC, (&raw mut idc).cast())
            };
            if rc != 0 {
                return Err(format!("OpenH264 refused error concealment ({rc})"));
            }
        }
        Ok(H264Decoder { inner })
    }

    /// One access unit (Annex B) in; OpenH264's state and the picture that came out, if any
    /// (it may be one the state says was concealed).
    pub fn decode(&mut self, au: &[u8]) -> (DecodeState, Option<Picture<'_>>) {
        let Ok(len) = i32::try_from(au.len()) else {
            return (DecodeState(openh264_sys2::dsInvalidArgument), None);
        };
        let mut planes = [null_mut::<u8>(); 3];
        let mut info = SBufferInfo::default();
        // SAFETY: DecodeFrameNoDelay reads `len` bytes of `au` and writes the three plane
        // pointers and the buffer info, all of which outlive the call; the decoder was set up
        // by `Decoder::with_api_config` (the crate makes this same call in `decode`).
        let state = unsafe {
            self.inner.raw_api().decode_frame_no_delay(
                au.as_ptr(),
                len,
                planes.as_mut_ptr(),
                &raw mut info,
            )
        };
        let state = DecodeState(state);
        if info.iBufferStatus != 1 || planes.iter().any(|p| p.is_null()) {
            return (state, None);
        }
        // SAFETY: with iBufferStatus 1 the decoder wrote the system-memory member of the union
        // (the only output this decoder makes).
        let sys = unsafe { info.UsrData.sSystemBuffer };
        let dims = [sys.iWidth, sys.iHeight, sys.iStride[0], sys.iStride[1]]
            .map(|v| usize::try_from(v).unwrap_or(0));
        let [width, height, y_stride, uv_stride] = dims;
        if dims.contains(&0) || y_stride < width || uv_stride < width.div_ceil(2) {
            return (state, None);
        }
        // SAFETY: OpenH264 lends the picture until the decoder's next call, which the borrow of
        // `self` rules out: `height` rows of `y_stride` bytes for luma, half the rows of
        // `uv_stride` for each chroma plane (4:2:0; the crate's `DecodedYUV` reads the same).
        let picture = unsafe {
            Picture {
                size: (width, height),
                strides: (y_stride, uv_stride),
                y: std::slice::from_raw_parts(planes[0], y_stride * height),
                u: std::slice::from_raw_parts(planes[1], uv_stride * height / 2),
                v: std::slice::from_raw_parts(planes[2], uv_stride * height / 2),
            }
        };
        (state, Some(picture))
    }

    /// The pictures the decoder still holds (the source ended).
    pub fn flush_remaining(&mut self) -> Vec<DecodedYUV<'_>> {
        self.inner.flush_remaining().unwrap_or_default()
    }
}
