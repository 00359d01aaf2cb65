//! Elementary stream parsing, sans-IO: H.264 and H.265 access units and Opus packets out of PES
//! payloads.

pub mod aac;
pub mod h264;
pub mod h265;
pub mod mpa;
pub mod opus;
pub mod reorder;
pub mod transcode;
