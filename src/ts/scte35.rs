//! SCTE-35 splice information (ANSI/SCTE 35), sans-IO: a `splice_info_section` in, the cue
//! out. Broadcast TS signals ad breaks and program boundaries with these; the bridge passes
//! them on to viewers as WHEP `scte35` events, so a player can switch, overlay or count
//! without a second connection.
//!
//! What is read: the command (`splice_null`, `splice_insert`, `time_signal`,
//! `bandwidth_reservation`, a private command), its splice time and break duration, and the
//! segmentation descriptors (the `time_signal` form most broadcasters use now). The section is
//! kept whole too ([`Cue::section`]), for whoever needs a field this does not read. Encrypted
//! sections are reported as such, not decoded.

use bytes::Bytes;

use super::psi::crc32_mpeg2;
use crate::time::PTS_MASK;

/// `table_id` of a splice_info_section.
pub const TABLE_ID: u8 = 0xFC;

/// One splice_info_section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cue {
    /// 33-bit 90 kHz offset the splicer adds to every time in the section.
    pub pts_adjustment: u64,
    /// The section is encrypted: only this header is readable.
    pub encrypted: bool,
    pub tier: u16,
    pub command: Command,
    /// Segmentation descriptors (identifier "CUEI", tag 2), in order.
    pub segments: Vec<Segmentation>,
    /// The whole section, CRC included.
    pub section: Bytes,
}

impl Cue {
    /// When the splice happens on the source's PTS timeline (33 bits, adjustment applied),
    /// when the command names a time.
    pub fn splice_pts(&self) -> Option<u64> {
        let t = match &self.command {
            Command::Insert(i) => i.splice_time,
            Command::TimeSignal(t) => *t,
            _ => None,
        }?;
        Some((t + self.pts_adjustment) & PTS_MASK)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Null,
    Insert(SpliceInsert),
    /// A splice time (`None`: immediate); what it means is in the segmentation descriptors.
    TimeSignal(Option<u64>),
    BandwidthReservation,
    /// A private command (its identifier) or one this reader does not know (its type).
    Other {
        command_type: u8,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Null => "splice_null",
            Command::Insert(_) => "splice_insert",
            Command::TimeSignal(_) => "time_signal",
            Command::BandwidthReservation => "bandwidth_reservation",
            Command::Other { .. } => "other",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpliceInsert {
    pub event_id: u32,
    /// The event is called off: nothing else is set.
    pub cancel: bool,
    /// Leaving the network for a break (`true`) or returning to it.
    pub out_of_network: bool,
    /// Splice as soon as possible rather than at `splice_time`.
    pub immediate: bool,
    /// 33-bit 90 kHz, without the section's adjustment; `None` when immediate, when the time
    /// is not specified, or per component (the first component's is taken).
    pub splice_time: Option<u64>,
    /// The break's length in 90 kHz ticks, and whether the splicer returns by itself.
    pub duration: Option<(u64, bool)>,
    pub unique_program_id: u16,
    pub avail_num: u8,
    pub avails_expected: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segmentation {
    pub event_id: u32,
    pub cancel: bool,
    /// segmentation_type_id (0x22 break start, 0x30 provider ad start, …; see [`type_name`]).
    pub type_id: u8,
    /// In 90 kHz ticks.
    pub duration: Option<u64>,
    pub upid_type: u8,
    pub upid: Bytes,
    pub segment_num: u8,
    pub segments_expected: u8,
}

/// A segmentation_type_id for people (SCTE 35 table 23), for the common ones.
pub fn type_name(type_id: u8) -> Option<&'static str> {
    Some(match type_id {
        0x00 => "not_indicated",
        0x01 => "content_identification",
        0x10 => "program_start",
        0x11 => "program_end",
        0x12 => "program_early_termination",
        0x13 => "program_breakaway",
        0x14 => "program_resumption",
        0x17 => "program_overlap_start",
        0x20 => "chapter_start",
        0x21 => "chapter_end",
        0x22 => "break_start",
        0x23 => "break_end",
        0x30 => "provider_advertisement_start",
        0x31 => "provider_advertisement_end",
        0x32 => "distributor_advertisement_start",
        0x33 => "distributor_advertisement_end",
        0x34 => "provider_placement_opportunity_start",
        0x35 => "provider_placement_opportunity_end",
        0x36 => "distributor_placement_opportunity_start",
        0x37 => "distributor_placement_opportunity_end",
        0x40 => "unscheduled_event_start",
        0x41 => "unscheduled_event_end",
        0x50 => "network_start",
        0x51 => "network_end",
        _ => return None,
    })
}

/// A big-endian bit reader over a byte slice; reading past the end is an error, not a panic.
struct Bits<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, bit: 0 }
    }

    fn read(&mut self, n: usize) -> Result<u64, &'static str> {
        debug_assert!(n <= 64);
        if self.bit + n > self.data.len() * 8 {
            return Err("splice_info_section cut short");
        }
        let mut v = 0u64;
        for _ in 0..n {
            let byte = self.data[self.bit / 8];
            v = v << 1 | u64::from(byte >> (7 - self.bit % 8) & 1);
            self.bit += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, &'static str> {
        Ok(self.read(1)? == 1)
    }

    fn skip(&mut self, n: usize) -> Result<(), &'static str> {
        if self.bit + n > self.data.len() * 8 {
            return Err("splice_info_section cut short");
        }
        self.bit += n;
        Ok(())
    }

    /// The next `n` whole bytes (the reader is byte-aligned where this is used).
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let at = self.bit / 8;
        let b = self
            .data
            .get(at..at + n)
            .ok_or("splice_info_section cut short")?;
        self.bit += n * 8;
        Ok(b)
    }
}

/// Parses one complete splice_info_section (`table_id` to `CRC_32`).
pub fn parse(section: &[u8]) -> Result<Cue, &'static str> {
    if section.first() != Some(&TABLE_ID) {
        return Err("table_id is not 0xFC (splice_info_section)");
    }
    if section.len() < 17 {
        return Err("splice_info_section too short");
    }
    let length = usize::from(section[1] & 0x0F) << 8 | usize::from(section[2]);
    if length + 3 != section.len() {
        return Err("section_length does not match the section");
    }
    if crc32_mpeg2(section) != 0 {
        return Err("CRC mismatch");
    }
    let mut r = Bits::new(&section[3..section.len() - 4]);
    if r.read(8)? != 0 {
        return Err("unknown protocol_version");
    }
    let encrypted = r.flag()?;
    r.skip(6)?; // encryption_algorithm
    let pts_adjustment = r.read(33)?;
    r.skip(8)?; // cw_index
    let tier = r.read(12)? as u16;
    let command_length = r.read(12)? as usize;
    let command_type = r.read(8)? as u8;
    let mut cue = Cue {
        pts_adjustment,
        encrypted,
        tier,
        command: Command::Other { command_type },
        segments: Vec::new(),
        section: Bytes::copy_from_slice(section),
    };
    if encrypted {
        return Ok(cue);
    }
    // 0xFFF: the length is unknown (SCTE 35 2004); the command is then read to its end.
    let command = if command_length == 0xFFF {
        r.bytes(r.data.len() - r.bit / 8)?
    } else {
        r.bytes(command_length)?
    };
    cue.command = read_command(command_type, command)?;
    if command_length == 0xFFF {
        return Ok(cue);
    }
    let loop_length = r.read(16)? as usize;
    let mut descriptors = r.bytes(loop_length)?;
    while let [tag, len, rest @ ..] = descriptors {
        let body = rest
            .get(..usize::from(*len))
            .ok_or("splice descriptor cut short")?;
        if *tag == 0x02 && body.starts_with(b"CUEI") {
            cue.segments.push(read_segmentation(&body[4..])?);
        }
        descriptors = &rest[usize::from(*len)..];
    }
    Ok(cue)
}

fn read_command(command_type: u8, data: &[u8]) -> Result<Command, &'static str> {
    let mut r = Bits::new(data);
    Ok(match command_type {
        0x00 => Command::Null,
        0x05 => Command::Insert(read_insert(&mut r)?),
        0x06 => Command::TimeSignal(splice_time(&mut r)?),
        0x07 => Command::BandwidthReservation,
        _ => Command::Other { command_type },
    })
}

fn splice_time(r: &mut Bits) -> Result<Option<u64>, &'static str> {
    if r.flag()? {
        r.skip(6)?;
        Ok(Some(r.read(33)?))
    } else {
        r.skip(7)?;
        Ok(None)
    }
}

/// What splice_insert and segmentation_descriptor start with: the event's id, whether it
/// is cancelled, 7 reserved bits.
fn event_head(r: &mut Bits) -> Result<(u32, bool), &'static str> {
    let id = r.read(32)? as u32;
    let cancel = r.flag()?;
    r.skip(7)?;
    Ok((id, cancel))
}

fn read_insert(r: &mut Bits) -> Result<SpliceInsert, &'static str> {
    let (event_id, cancel) = event_head(r)?;
    let mut s = SpliceInsert {
        event_id,
        cancel,
        ..Default::default()
    };
    if s.cancel {
        return Ok(s);
    }
    s.out_of_network = r.flag()?;
    let program = r.flag()?;
    let has_duration = r.flag()?;
    s.immediate = r.flag()?;
    r.skip(4)?; // event_id_compliance_flag, reserved
    if program {
        if !s.immediate {
            s.splice_time = splice_time(r)?;
        }
    } else {
        let components = r.read(8)?;
        for i in 0..components {
            r.skip(8)?; // component_tag
            if !s.immediate {
                let t = splice_time(r)?;
                if i == 0 {
                    s.splice_time = t;
                }
            }
        }
    }
    if has_duration {
        let auto_return = r.flag()?;
        r.skip(6)?;
        s.duration = Some((r.read(33)?, auto_return));
    }
    s.unique_program_id = r.read(16)? as u16;
    s.avail_num = r.read(8)? as u8;
    s.avails_expected = r.read(8)? as u8;
    Ok(s)
}

/// A segmentation_descriptor after its identifier.
fn read_segmentation(data: &[u8]) -> Result<Segmentation, &'static str> {
    let mut r = Bits::new(data);
    let (event_id, cancel) = event_head(&mut r)?;
    let mut s = Segmentation {
        event_id,
        cancel,
        ..Default::default()
    };
    if s.cancel {
        return Ok(s);
    }
    let program = r.flag()?;
    let has_duration = r.flag()?;
    r.skip(6)?; // delivery restrictions
    if !program {
        let components = r.read(8)? as usize;
        r.skip(components * 48)?;
    }
    if has_duration {
        s.duration = Some(r.read(40)?);
    }
    s.upid_type = r.read(8)? as u8;
    let upid_length = r.read(8)? as usize;
    s.upid = Bytes::copy_from_slice(r.bytes(upid_length)?);
    s.type_id = r.read(8)? as u8;
    s.segment_num = r.read(8)? as u8;
    s.segments_expected = r.read(8)? as u8;
    Ok(s)
}

/// Writes a splice_info_section (for tests and test data): `command_type`, its bytes, the
/// descriptor loop, no encryption; the CRC is computed.
pub fn section(
    pts_adjustment: u64,
    command_type: u8,
    command: &[u8],
    descriptors: &[u8],
) -> Vec<u8> {
    let mut s = vec![TABLE_ID, 0, 0, 0];
    s.push((pts_adjustment >> 32) as u8 & 1);
    s.extend_from_slice(&(pts_adjustment as u32).to_be_bytes());
    s.push(0); // cw_index
    let tier = 0xFFFu16;
    let len = command.len() as u16;
    s.extend_from_slice(&[
        (tier >> 4) as u8,
        (tier << 4) as u8 | (len >> 8) as u8,
        len as u8,
    ]);
    s.push(command_type);
    s.extend_from_slice(command);
    s.extend_from_slice(&(descriptors.len() as u16).to_be_bytes());
    s.extend_from_slice(descriptors);
    let section_length = s.len() - 3 + 4;
    s[1] = 0x30 | (section_length >> 8) as u8; // sap_type 3 (not specified)
    s[2] = section_length as u8;
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// A splice_insert command's bytes (program splice): out of or back into the network at
/// `pts` (90 kHz, `None`: immediate), with a break `duration` (auto return).
pub fn insert_command(
    event_id: u32,
    out_of_network: bool,
    pts: Option<u64>,
    duration: Option<u64>,
) -> Vec<u8> {
    let mut c = event_id.to_be_bytes().to_vec();
    c.push(0x7F); // not cancelled
    let flags = u8::from(out_of_network) << 7
        | 1 << 6 // program_splice_flag
        | u8::from(duration.is_some()) << 5
        | u8::from(pts.is_none()) << 4
        | 0x0F;
    c.push(flags);
    if let Some(pts) = pts {
        c.extend_from_slice(&time_bytes(0x80 | 0x7E, pts));
    }
    if let Some(d) = duration {
        c.extend_from_slice(&time_bytes(0x80 | 0x7E, d));
    }
    c.extend_from_slice(&[0x00, 0x01, 0, 0]); // unique_program_id 1, avail 0 of 0
    c
}

/// A flag byte's top 7 bits, then 33 bits of `t`.
fn time_bytes(top: u8, t: u64) -> [u8; 5] {
    let t = t & PTS_MASK;
    [
        top & 0xFE | (t >> 32) as u8,
        (t >> 24) as u8,
        (t >> 16) as u8,
        (t >> 8) as u8,
        t as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SCTE 35's sample splice_insert (section 14.2, base64
    /// `/DAvAAAAAAAA///wFAVIAACPf+/+c2nALv4AUsz1AAAAAAAKAAhDVUVJAAABNWLbowo=`): out of the
    /// network with a break duration and an avail descriptor; its CRC checks.
    const SPEC_INSERT: &str = "FC302F000000000000FFFFF014054800008F7FEFFE7369C02EFE0052CCF500000000000A0008435545490000013562DBA30A";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn reads_a_splice_insert_made_by_another_tool() {
        let data = hex(SPEC_INSERT);
        let cue = parse(&data).unwrap();
        assert_eq!(cue.command.name(), "splice_insert");
        let Command::Insert(i) = &cue.command else {
            unreachable!()
        };
        assert_eq!(i.event_id, 0x4800_008F);
        assert!(i.out_of_network && !i.immediate && !i.cancel);
        assert_eq!(i.splice_time, Some(0x7369_C02E));
        assert_eq!(i.duration, Some((0x0052_CCF5, true)));
        assert!(
            cue.segments.is_empty(),
            "an avail descriptor, not segmentation"
        );
        assert_eq!(cue.splice_pts(), i.splice_time);
    }

    #[test]
    fn what_it_writes_it_reads() {
        let cmd = insert_command(77, true, Some(PTS_MASK - 10), Some(30 * 90_000));
        let data = section(100, 0x05, &cmd, &[]);
        let cue = parse(&data).unwrap();
        let Command::Insert(i) = &cue.command else {
            panic!("{cue:?}")
        };
        assert_eq!((i.event_id, i.out_of_network), (77, true));
        assert_eq!(i.duration, Some((30 * 90_000, true)));
        // The adjustment wraps at 33 bits.
        assert_eq!(cue.splice_pts(), Some(89));
    }

    #[test]
    fn reads_time_signal_segmentation() {
        // time_signal at 1000, a segmentation descriptor: provider ad start, 15 s, a 4-byte
        // ad ID (upid type 3 would be 12 bytes; any length is taken as given).
        let cmd = time_bytes(0xFE, 1000);
        let mut d = b"CUEI".to_vec();
        d.extend_from_slice(&0x4800_0001u32.to_be_bytes());
        d.push(0x7F);
        d.push(0xC0 | 0x3F); // program, duration
        d.extend_from_slice(&[0, 0, 0x14, 0x99, 0x70]); // 15 s = 1_350_000
        d.extend_from_slice(&[0x0C, 4, b'a', b'd', b'0', b'1']);
        d.extend_from_slice(&[0x30, 1, 1]);
        let mut desc = vec![0x02, d.len() as u8];
        desc.extend_from_slice(&d);
        let cue = parse(&section(0, 0x06, &cmd, &desc)).unwrap();
        assert_eq!(cue.command, Command::TimeSignal(Some(1000)));
        let s = &cue.segments[0];
        assert_eq!((s.event_id, s.type_id), (0x4800_0001, 0x30));
        assert_eq!(type_name(s.type_id), Some("provider_advertisement_start"));
        assert_eq!(s.duration, Some(1_350_000));
        assert_eq!(&s.upid[..], b"ad01");
    }

    #[test]
    fn bad_sections_are_errors_not_panics() {
        let good = hex(SPEC_INSERT);
        let mut bad_crc = good.clone();
        bad_crc[20] ^= 1;
        assert_eq!(parse(&bad_crc), Err("CRC mismatch"));
        assert!(parse(&good[..good.len() - 1]).is_err());
        assert!(parse(&[0x02, 0xB0, 0x0D]).is_err());
        // Every cut and every single-byte change with a fixed CRC: an error or a cue.
        for n in 0..good.len() {
            let _ = parse(&good[..n]);
            for v in [0x00, 0xFF, 0x80] {
                let mut b = good.clone();
                b[n] = v;
                let l = b.len();
                let crc = crc32_mpeg2(&b[..l - 4]);
                b[l - 4..].copy_from_slice(&crc.to_be_bytes());
                let _ = parse(&b);
            }
        }
    }
}
