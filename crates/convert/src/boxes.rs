//! The ISO-BMFF box rules, written once: a box header (32- or 64-bit size; size 0 runs to
//! the end of its container), where the top-level boxes begin (leading bytes before
//! `ftyp`), and the fragment headers `tfhd` and `trun`.
//!
//! Two readers use them: the strict walk (`container.rs`, which seeks and reads only small
//! boxes, before symphonia) and the forgiving reader (`lenient.rs`, which holds the `moov`
//! in memory and tolerates what symphonia refuses). They differ in what they do with a bad
//! box, not in how a box is read.

use std::io::{self, Read, Seek, SeekFrom};

/// Box types an ISO-BMFF file may start with.
pub(crate) const KNOWN_TOP_LEVEL: [&[u8; 4]; 11] = [
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"uuid", b"moof", b"sidx",
];

/// How far into a file symphonia's probe looks for the `ftyp` marker, at most.
const MAX_JUNK_BEFORE_FTYP: u64 = 64 * 1024;

/// A box header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The box type.
    pub(crate) kind: [u8; 4],
    /// 8, or 16 with a 64-bit size.
    pub(crate) header_len: u64,
    /// The size the box declares (a size of 0, "to the end", is the room left).
    pub(crate) size: u64,
}

/// A header whose size is smaller than the header itself: no box can be read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooSmall;

/// The bytes a header needs given its first 8: 16 when it has a 64-bit size.
pub(crate) fn header_len(first8: &[u8]) -> usize {
    if first8.get(0..4).map(be32) == Some(1) { 16 } else { 8 }
}

/// Decodes the header at the start of `head`, with `room` bytes left in its container;
/// `None` when `head` is too short for it.
pub(crate) fn header(head: &[u8], room: u64) -> Option<Result<Header, TooSmall>> {
    if head.len() < 8 {
        return None;
    }
    let kind = [head[4], head[5], head[6], head[7]];
    let (size, header_len) = match be32(&head[0..4]) {
        0 => (room, 8),
        1 => (be64(head.get(8..16)?), 16),
        n => (u64::from(n), 8),
    };
    Some(if size < header_len {
        Err(TooSmall)
    } else {
        Ok(Header { kind, header_len, size })
    })
}

/// Where the boxes begin: at 0, unless the file starts with something that is not a box
/// and an `ftyp` follows. symphonia's probe skips such leading bytes to the `ftyp`
/// marker; both readers start there too, so what they check and read is what the demuxer
/// will read (a `trun` of 3 billion samples behind 36 leading zero bytes took 10 s).
pub(crate) fn top_level_start<R: Read + Seek>(r: &mut R, len: u64) -> io::Result<u64> {
    // The first header alone decides the usual case; the 64 KiB are read only after junk.
    let mut head = Vec::new();
    r.seek(SeekFrom::Start(0))?;
    r.by_ref().take(len.min(8)).read_to_end(&mut head)?;
    if head
        .get(4..8)
        .is_some_and(|kind| KNOWN_TOP_LEVEL.iter().any(|k| k.as_slice() == kind))
    {
        return Ok(0);
    }
    r.by_ref()
        .take(len.min(MAX_JUNK_BEFORE_FTYP).saturating_sub(8))
        .read_to_end(&mut head)?;
    Ok(head
        .windows(4)
        .skip(4)
        .position(|w| w == b"ftyp")
        .map_or(0, |at| at as u64))
}

/// A track fragment header (`tfhd`): which track, and the defaults its runs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tfhd {
    /// The track.
    pub(crate) track_id: u32,
    /// Where the runs' data offsets count from (else the `moof`'s start).
    pub(crate) base_data_offset: Option<u64>,
    /// Each sample's duration, unless its run says.
    pub(crate) default_duration: Option<u32>,
    /// Each sample's size, unless its run says.
    pub(crate) default_size: Option<u32>,
}

/// Reads a `tfhd` payload; a field its flags announce but the box does not hold is `None`.
pub(crate) fn tfhd(payload: &[u8]) -> Option<Tfhd> {
    let flags = be32(payload.get(0..4)?) & 0x00ff_ffff;
    let track_id = be32(payload.get(4..8)?);
    let mut at = 8;
    let mut field = |bit: u32, len: usize| {
        if flags & bit == 0 {
            return None;
        }
        let value = payload.get(at..at + len);
        at += len;
        value
    };
    let base_data_offset = field(0x01, 8).map(be64);
    let _description = field(0x02, 4);
    let default_duration = field(0x08, 4).map(be32);
    let default_size = field(0x10, 4).map(be32);
    Some(Tfhd {
        track_id,
        base_data_offset,
        default_duration,
        default_size,
    })
}

/// A track run's header (`trun`), up to its sample entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trun {
    /// Its flags (which per-sample fields each entry holds).
    pub(crate) flags: u32,
    /// The samples it declares.
    pub(crate) sample_count: u32,
    /// Its data's offset from the fragment's base, when it gives one.
    pub(crate) data_offset: Option<i32>,
    /// Where the entries start in the payload.
    pub(crate) entries_at: usize,
    /// Bytes per entry (4 per field present: duration, size, flags, composition offset).
    pub(crate) entry_len: usize,
}

impl Trun {
    /// Each entry carries its sample's duration.
    pub(crate) const DURATION: u32 = 0x100;
    /// Each entry carries its sample's size.
    pub(crate) const SIZE: u32 = 0x200;

    /// Whether each entry carries `field` ([`Trun::DURATION`], [`Trun::SIZE`], ...).
    pub(crate) fn has(&self, field: u32) -> bool {
        self.flags & field != 0
    }
}

/// Reads a `trun` payload's header (8 bytes at least).
pub(crate) fn trun(payload: &[u8]) -> Option<Trun> {
    let flags = be32(payload.get(0..4)?) & 0x00ff_ffff;
    let sample_count = be32(payload.get(4..8)?);
    let mut at = 8;
    let data_offset = if flags & 0x01 != 0 {
        let offset = payload.get(at..at + 4).map(|b| be32(b) as i32);
        at += 4;
        Some(offset.unwrap_or(0))
    } else {
        None
    };
    if flags & 0x04 != 0 {
        at += 4; // first_sample_flags
    }
    let fields = [0x100, 0x200, 0x400, 0x800]
        .iter()
        .filter(|&&bit| flags & bit != 0)
        .count();
    Some(Trun {
        flags,
        sample_count,
        data_offset,
        entries_at: at,
        entry_len: 4 * fields,
    })
}

pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A box of type `kind` around `payload` (for the engine's unit tests).
    pub(crate) fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_walk_starts_at_the_ftyp_behind_leading_junk() {
        let ftyp = boxed(b"ftyp", b"isomiso2");
        let start = |bytes: &[u8]| top_level_start(&mut Cursor::new(bytes), bytes.len() as u64).unwrap();
        assert_eq!(start(&ftyp), 0);
        assert_eq!(start(&[[0u8; 36].as_slice(), &ftyp].concat()), 36);
        // A file of boxes from offset 0 is walked from 0, whatever its later bytes say.
        assert_eq!(start(&[boxed(b"moov", b"....ftyp"), ftyp.clone()].concat()), 0);
        // Bytes that are neither boxes nor hide an ftyp: from 0, as before (not an MP4).
        assert_eq!(start(b"hello, this is text"), 0);
    }

    #[test]
    fn headers_of_every_size_form() {
        let plain = [0, 0, 0, 16, b'f', b'r', b'e', b'e'];
        assert_eq!(
            header(&plain, 100),
            Some(Ok(Header {
                kind: *b"free",
                header_len: 8,
                size: 16
            }))
        );
        let to_end = [0, 0, 0, 0, b'm', b'd', b'a', b't'];
        assert_eq!(header(&to_end, 77).unwrap().unwrap().size, 77);
        let mut large = vec![0, 0, 0, 1, b'm', b'd', b'a', b't'];
        assert_eq!(header_len(&large), 16);
        assert_eq!(header(&large, 100), None, "the 64-bit size is missing");
        large.extend_from_slice(&(1u64 << 33).to_be_bytes());
        assert_eq!(header(&large, 100).unwrap().unwrap().size, 1 << 33);
        assert_eq!(header(&[0, 0, 0, 7, b'x', b'x', b'x', b'x'], 100), Some(Err(TooSmall)));
        assert_eq!(header(&[0, 0, 0], 100), None);
    }

    #[test]
    fn fragment_headers_read_what_their_flags_announce() {
        // tfhd: flags base offset (0x01) + default size (0x10); track 2.
        let mut t = vec![0, 0, 0, 0x11, 0, 0, 0, 2];
        t.extend_from_slice(&1000u64.to_be_bytes());
        t.extend_from_slice(&512u32.to_be_bytes());
        let h = tfhd(&t).unwrap();
        assert_eq!(
            (h.track_id, h.base_data_offset, h.default_size),
            (2, Some(1000), Some(512))
        );
        assert_eq!(h.default_duration, None);
        // Announced but missing: None, not a read past the box.
        assert_eq!(tfhd(&t[..16]).unwrap().default_size, None);
        // trun: data offset (0x01) + sizes (0x200) + durations (0x100), 3 samples.
        let mut r = vec![0, 0, 0x03, 0x01, 0, 0, 0, 3];
        r.extend_from_slice(&(-8i32).to_be_bytes());
        let run = trun(&r).unwrap();
        assert_eq!(
            (run.sample_count, run.data_offset, run.entries_at, run.entry_len),
            (3, Some(-8), 12, 8)
        );
        assert!(run.has(Trun::SIZE) && run.has(Trun::DURATION));
        assert_eq!(trun(&r[..7]), None);
    }
}
