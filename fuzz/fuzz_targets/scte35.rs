//! SCTE-35 splice_info_sections (`ts::scte35::parse`), from a broadcast feed's cue PID. The
//! input is taken as a section as it is and, so that the CRC check does not stop every input
//! at the door, with its length and CRC fixed up. Properties: nothing panics; a cue read
//! keeps the whole section; its splice time is a 33-bit value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::ts::crc32_mpeg2;
use tsbridge::ts::scte35::parse;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    if data.len() < 14 || data.len() > 4000 {
        return;
    }
    let mut s = data.to_vec();
    s[0] = 0xFC;
    let n = s.len() + 4 - 3;
    s[1] = s[1] & 0xF0 | (n >> 8) as u8;
    s[2] = n as u8;
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    if let Ok(cue) = parse(&s) {
        assert_eq!(&cue.section[..], &s[..]);
        assert!(cue.splice_pts().is_none_or(|t| t < 1 << 33));
        let _ = cue.command.name();
    }
});
