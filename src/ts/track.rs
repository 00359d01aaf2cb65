//! What a PMT says of a track beyond its codec: its kind (a viewer picks among the audio
//! tracks; data PIDs are listed and left alone) and its language (ISO 639-2, from the ISO 639
//! language descriptor, or the teletext/subtitling descriptor of a DVB text track).

use std::fmt;

/// What kind of elementary stream a PMT entry is, whatever its codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Video,
    Audio,
    /// Teletext, subtitles, SCTE-35 cues, KLV/ID3 metadata, private sections: listed with what
    /// they are, never sent to viewers, and not worth a warning.
    Data,
    /// A stream type nothing here knows.
    Unknown,
}

impl TrackKind {
    pub fn name(self) -> &'static str {
        match self {
            TrackKind::Video => "video",
            TrackKind::Audio => "audio",
            TrackKind::Data => "data",
            TrackKind::Unknown => "unknown",
        }
    }
}

/// An ISO 639-2 language code (three lowercase letters: `eng`, `spa`, `deu`), as a PMT
/// descriptor carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Language([u8; 3]);

impl Language {
    /// From three ASCII letters (any case); anything else (DVB's `---`, blanks, bytes that are
    /// no letters) is no language.
    pub fn new(code: &[u8]) -> Option<Self> {
        let code: [u8; 3] = code.get(..3)?.try_into().ok()?;
        code.iter()
            .all(u8::is_ascii_alphabetic)
            .then(|| Language(code.map(|b| b.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("und")
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Language({})", self.as_str())
    }
}

impl std::str::FromStr for Language {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        (s.len() == 3)
            .then(|| Language::new(s.as_bytes()))
            .flatten()
            .ok_or_else(|| format!("{s:?} is not an ISO 639-2 language code (three letters: eng)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_three_letters_lowercased() {
        assert_eq!(Language::new(b"ENG").unwrap().as_str(), "eng");
        assert_eq!(Language::new(b"spa\0").unwrap().to_string(), "spa");
        assert_eq!(Language::new(b"---"), None);
        assert_eq!(Language::new(b"en"), None);
        assert_eq!("Spa".parse::<Language>().unwrap().as_str(), "spa");
        assert!("spanish".parse::<Language>().is_err());
    }
}
