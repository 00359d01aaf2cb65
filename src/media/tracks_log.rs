//! The media task's log lines for a new PMT (what viewers get of each track), and the audio
//! transcoder's verdict on its track, for the API.

use tracing::{debug, info, warn};

use crate::stream::Stream;
use crate::ts::{Codec, TrackSet};

/// One line per track of a new PMT: what viewers get of it. Data PIDs (teletext,
/// subtitles, SCTE-35, metadata) are expected in broadcast TS: debug level only.
pub(super) fn log_tracks(stream: &Stream, tracks: &TrackSet, transcoding: bool) {
    let name = &stream.name;
    let chosen = stream.audio_choice().pick(tracks).map(|(_, t)| t.pid);
    for t in &tracks.tracks {
        let index = tracks.audio_tracks().position(|a| a.pid == t.pid);
        // (None is left out of the line.)
        let lang = t.language.map(|l| l.to_string());
        match &t.codec {
            Codec::Transcodable(_) if transcoding && chosen == Some(t.pid) => {
                info!(stream = %name, pid = %t.pid, source = t.codec_name(), lang,
                    "transcoding audio to Opus for WebRTC")
            }
            Codec::Transcodable(_) | Codec::Opus { .. } if chosen != Some(t.pid) => {
                info!(stream = %name, pid = %t.pid, codec = t.codec_name(), lang, index,
                    "another audio track: viewers pick it with ?audio={}",
                    index.unwrap_or_default())
            }
            Codec::Transcodable(_) => warn!(stream = %name, pid = %t.pid,
                codec = t.codec_name(), "audio track not playable: --audio-transcode is off"),
            Codec::Data { what } => {
                debug!(stream = %name, pid = %t.pid, what, "data track, not sent to viewers")
            }
            Codec::Unsupported { reason } => warn!(
                stream = %name, pid = %t.pid, stream_type = t.stream_type.0,
                codec = t.stream_type.name(), "track not playable over WebRTC: {reason}"
            ),
            codec => info!(stream = %name, pid = %t.pid, ?codec, lang, "track"),
        }
    }
}

/// The audio transcoder cannot play its track (`Some(why)`: HE-AAC or 5.1 AAC without FFmpeg's
/// decoders, …), or a new source may be playable again (`None`): the API says so on the
/// track. Published only when it changes (the transcoder repeats its error on every PES).
pub(super) fn transcode_failed(stream: &Stream, why: Option<&str>) {
    if stream.status().transcode_error.as_deref() != why {
        stream.update_status(|s| s.transcode_error = why.map(Into::into));
    }
}
