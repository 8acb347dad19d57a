//! A forgiving reader for damaged MP4s that symphonia's isomp4 reader refuses.
//!
//! symphonia wants a whole, well-formed box tree: a `trak` without `tkhd`, an `mdia`
//! without `hdlr`, a zero `mvhd` timescale, a sample entry with a wrong version, a table
//! whose count runs past its box or an `mdat` cut short all make it refuse the file, while
//! the audio is still there. This reader needs only what locates and decodes the samples:
//! the sample entry (`stsd`), the sample tables (`stsz`, `stsc`, `stco`/`co64`, `stts`) and
//! a timescale. It takes each from the box tree when it can and scans the track's bytes
//! for it when the tree is broken; it clamps counts to what their boxes hold, prefers the
//! redundant value that is plausible (the sample entry's rate or the AAC config's, the
//! media timescale or the sample rate), builds an AAC config when `esds` is gone, and
//! reads samples up to the end of a cut file.
//!
//! Here: the top-level walk and the sample reader; `tables.rs` builds the sample tables
//! (and fragments' runs), `entry.rs` reads the sample entry; box headers and fragment
//! headers are read by `boxes.rs`, as in the strict walk.
//!
//! It is only a fallback: whole files go through symphonia (tested, gapless, split in two
//! halves for speed). Fragmented files are not read here.

use std::io::{self, Read, Seek, SeekFrom};

use symphonia::core::audio::{Channels, Position};
use symphonia::core::codecs::audio::AudioCodecParameters;
use symphonia::core::codecs::audio::well_known::{
    CODEC_ID_AAC, CODEC_ID_ALAC, CODEC_ID_MP3, CODEC_ID_PCM_F32BE, CODEC_ID_PCM_F32LE, CODEC_ID_PCM_F64BE,
    CODEC_ID_PCM_F64LE, CODEC_ID_PCM_S8, CODEC_ID_PCM_S16BE, CODEC_ID_PCM_S16LE, CODEC_ID_PCM_S24BE,
    CODEC_ID_PCM_S24LE, CODEC_ID_PCM_S32BE, CODEC_ID_PCM_S32LE, CODEC_ID_PCM_U8,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::packet::Packet;
use symphonia::core::units::{Duration, Timestamp};

// The same limits as the main path and the box walk: the largest sample (or packet of PCM
// frames) read, the rates a track can have, the top-level boxes looked at.
mod entry;
mod tables;

use entry::SampleEntry;
use tables::{SttsAt, Tables, audio_track};

use super::boxes::{self, Trun, be16, be32, be64};
use super::container::MAX_TOP_LEVEL_BOXES;
use super::{MAX_AUDIO_SAMPLE_BYTES, PLAUSIBLE_RATES};

/// Largest `moov` (or `moof`) read into memory (a moov's tables for ~20 hours of AAC).
const MAX_MOOV_BYTES: u64 = 32 << 20;
/// PCM samples are single frames: this many are read as one packet.
const PCM_FRAMES_PER_PACKET: u32 = 4096;

/// The audio track found, described for the decoder.
#[derive(Debug)]
pub(crate) struct TrackInfo {
    /// `tkhd`'s track ID when it is readable, else the track's place (1-based).
    pub(crate) id: u32,
    pub(crate) params: AudioCodecParameters,
    /// Ticks per second of the sample times: the media timescale if plausible, else the
    /// sample rate.
    pub(crate) timescale: u32,
    /// Sum of the sample durations, in `timescale` ticks.
    pub(crate) duration: u64,
    /// A plausible sample rate from the sample entry or the timescale.
    pub(crate) fallback_rate: Option<u32>,
}

/// Reads the chosen track's samples as packets.
pub(crate) struct Reader<R> {
    source: R,
    len: u64,
    track_id: u32,
    /// Shared by the readers [`Reader::with_source`] makes (a long file's segments).
    tables: std::sync::Arc<Tables>,
    /// Consecutive samples per packet (PCM), else 1.
    group: u32,
    /// The last chunk that starts inside the file.
    last_in_file: Option<usize>,
    at: Next,
}

/// Where the next sample is.
#[derive(Debug, Default, Clone, Copy)]
struct Next {
    sample: u64,
    /// 0-based chunk of the next sample.
    chunk: usize,
    /// Samples left in that chunk.
    left_in_chunk: u64,
    /// Offset of the next sample.
    offset: u64,
    stsc_index: usize,
    stts: SttsAt,
    ts: u64,
}

/// Opens the audio track number `wanted` (0-based among audio tracks), or `None` when
/// this reader finds no usable audio track either.
pub(crate) fn open<R: Read + Seek>(
    mut source: R,
    len: u64,
    wanted: Option<usize>,
) -> io::Result<Option<(Reader<R>, TrackInfo)>> {
    let top = read_top_level(&mut source, len)?;
    let Some(moov) = top.moov else {
        return Ok(None);
    };
    let mut audio = children(&moov)
        .filter(|(kind, _)| kind == b"trak")
        .enumerate()
        .filter_map(|(i, (_, trak))| audio_track(trak, i));
    let Some((entry, mut tables, id, mdhd_timescale)) = audio.nth(wanted.unwrap_or(0)) else {
        return Ok(None);
    };
    if tables.samples > 0 {
        tables.repair(len, top.cut, &top.mdats);
    } else if !top.moofs.is_empty() {
        let trex_size = child(&moov, b"mvex")
            .into_iter()
            .flat_map(children)
            .filter(|(kind, _)| kind == b"trex")
            .find(|(_, trex)| trex.get(4..8).map(be32) == Some(id))
            .and_then(|(_, trex)| trex.get(16..20).map(be32));
        tables = Tables::default();
        for &(start, payload, end) in &top.moofs {
            if end - payload > MAX_MOOV_BYTES {
                continue;
            }
            let mut moof = vec![0u8; (end - payload) as usize];
            source.seek(SeekFrom::Start(payload))?;
            source.read_exact(&mut moof)?;
            tables.add_fragment(&moof, start, id, trex_size.unwrap_or(0));
        }
        tables.default_delta = tables.stts.last().map_or(entry.frames_per_packet(), |&(_, d)| d);
    }
    if tables.samples == 0 || tables.chunks.is_empty() {
        return Ok(None);
    }
    let first_sample = read_first_bytes(&mut source, &tables, len)?;
    let Some((params, rate)) = entry.codec_params(mdhd_timescale, &first_sample) else {
        return Ok(None);
    };
    let timescale = mdhd_timescale.filter(|t| PLAUSIBLE_RATES.contains(t)).unwrap_or(rate);
    let fallback_rate = [Some(rate), mdhd_timescale]
        .into_iter()
        .flatten()
        .find(|r| PLAUSIBLE_RATES.contains(r));
    let group = if is_pcm(&params) && tables.constant_size != 0 {
        PCM_FRAMES_PER_PACKET
            .min(MAX_AUDIO_SAMPLE_BYTES / tables.constant_size)
            .max(1)
    } else {
        1
    };
    let info = TrackInfo {
        id,
        params,
        timescale,
        duration: tables.duration(),
        fallback_rate,
    };
    let last_in_file = tables.chunks.iter().rposition(|&c| c < len);
    let mut reader = Reader {
        source,
        len,
        track_id: id,
        tables: std::sync::Arc::new(tables),
        group,
        last_in_file,
        at: Next::default(),
    };
    reader.enter_chunk(0);
    Ok(Some((reader, info)))
}

fn is_pcm(params: &AudioCodecParameters) -> bool {
    ![CODEC_ID_AAC, CODEC_ID_ALAC, CODEC_ID_MP3].contains(&params.codec)
}

/// The top-level boxes this reader uses: the first `moov`, and every `moof` as (its
/// offset, its payload's offset, its end).
#[derive(Default)]
struct TopLevel {
    moov: Option<Vec<u8>>,
    /// A top-level box runs past the end of the file: the file was cut short.
    cut: bool,
    /// Every `mdat`, as (payload offset, end).
    mdats: Vec<(u64, u64)>,
    moofs: Vec<(u64, u64, u64)>,
}

/// Walks the top-level boxes, reading the first `moov` (what the file holds of it).
fn read_top_level<R: Read + Seek>(r: &mut R, len: u64) -> io::Result<TopLevel> {
    // From the first byte; where that finds neither a moov nor a moof, from where the boxes
    // begin behind leading bytes (the strict walk's and the probe's start). A damaged first
    // box is more common than junk, and an `ftyp` found further on may be audio bytes.
    let top = read_top_level_from(r, len, 0)?;
    if top.moov.is_some() || !top.moofs.is_empty() {
        return Ok(top);
    }
    match boxes::top_level_start(r, len)? {
        0 => Ok(top),
        start => read_top_level_from(r, len, start),
    }
}

/// [`read_top_level`] from `start`.
fn read_top_level_from<R: Read + Seek>(r: &mut R, len: u64, start: u64) -> io::Result<TopLevel> {
    let mut top = TopLevel::default();
    let mut pos = start;
    for _ in 0..MAX_TOP_LEVEL_BOXES {
        if pos.saturating_add(8) > len {
            break;
        }
        r.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 16];
        let got = read_up_to(r, &mut head)?;
        let Some((kind, header_len, size)) = parse_header(&head[..got], len - pos) else {
            break;
        };
        let (payload, end) = (pos + header_len, pos.saturating_add(size).min(len));
        top.cut |= declared_past(&head[..got], len - pos);
        match &kind {
            b"moov" if top.moov.is_none() && end - payload <= MAX_MOOV_BYTES => {
                let mut moov = vec![0u8; (end - payload) as usize];
                r.seek(SeekFrom::Start(payload))?;
                r.read_exact(&mut moov)?;
                top.moov = Some(moov);
            }
            b"moof" => top.moofs.push((pos, payload, end)),
            b"mdat" => top.mdats.push((payload, end)),
            _ => {}
        }
        pos = pos.saturating_add(size);
    }
    Ok(top)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A box header at the start of `data` with `room` bytes left in its container:
/// (type, header length, size). Size 0 means "to the end of the container"; a size past
/// the container is clamped; a size smaller than the header ends the walk.
fn parse_header(data: &[u8], room: u64) -> Option<([u8; 4], u64, u64)> {
    let h = boxes::header(data, room)?.ok()?;
    Some((h.kind, h.header_len, h.size.min(room)))
}

/// Whether the box header at the start of `data` declares more than the `room` left.
fn declared_past(data: &[u8], room: u64) -> bool {
    boxes::header(data, room)
        .and_then(Result::ok)
        .is_some_and(|h| h.size > room)
}

/// The children of a container's payload, as (type, payload).
fn children(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = data.get(pos..)?;
        let (kind, header_len, size) = parse_header(rest, rest.len() as u64)?;
        let payload = rest.get(header_len as usize..size as usize)?;
        pos += size as usize;
        Some((kind, payload))
    })
}

/// The first child of `data` of type `kind`.
fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(data).find(|(k, _)| k == kind).map(|(_, p)| p)
}

/// The box of type `kind` anywhere in `data`, found by its type code where the tree cannot
/// be walked (a box with a wrong size hides its siblings): the first place where the code
/// follows a size that fits.
fn scan<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    let mut from = 4;
    while let Some(found) = data.get(from..)?.windows(4).position(|w| w == kind) {
        let at = from + found;
        let size = be32(&data[at - 4..at]) as usize;
        let start = at + 4;
        if size == 0 {
            return data.get(start..);
        }
        if size >= 8 && at - 4 + size <= data.len() {
            return data.get(start..at - 4 + size);
        }
        from = at + 1;
    }
    None
}

/// The first bytes of the first sample (to tell MP3 from AAC when `esds` is gone).
fn read_first_bytes<R: Read + Seek>(r: &mut R, tables: &Tables, len: u64) -> io::Result<Vec<u8>> {
    let offset = tables.chunks[0];
    if offset >= len {
        return Ok(Vec::new());
    }
    r.seek(SeekFrom::Start(offset))?;
    let mut buf = [0u8; 4];
    let got = read_up_to(r, &mut buf)?;
    Ok(buf[..got].to_vec())
}

/// Where a [`Reader`] is in its track: another reader of the same file, made with
/// [`Reader::with_source`], goes on from there without walking the packets before it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor(Next);

impl<R> Reader<R> {
    /// Where this reader is.
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor(self.at)
    }

    /// Goes on from `cursor` (taken from this reader or one of its copies).
    pub(crate) fn resume(&mut self, cursor: Cursor) {
        self.at = cursor.0;
    }

    /// A reader of the same track over `source` (the same file opened again), at this
    /// one's place, sharing its sample tables (not parsed again).
    pub(crate) fn with_source<S>(&self, source: S) -> Reader<S> {
        Reader {
            source,
            len: self.len,
            track_id: self.track_id,
            tables: self.tables.clone(),
            group: self.group,
            last_in_file: self.last_in_file,
            at: self.at,
        }
    }
}

impl<R: Read + Seek> Reader<R> {
    /// Moves to the start of 0-based `chunk`.
    fn enter_chunk(&mut self, chunk: usize) {
        let t = &self.tables;
        let number = chunk as u64 + 1;
        while self.at.stsc_index + 1 < t.stsc.len() && t.stsc[self.at.stsc_index + 1].0 <= number {
            self.at.stsc_index += 1;
        }
        self.at.chunk = chunk;
        self.at.left_in_chunk = t.stsc.get(self.at.stsc_index).map_or(0, |&(_, n)| n);
        self.at.offset = t.chunks.get(chunk).copied().unwrap_or(u64::MAX);
    }

    /// Whether a later chunk starts inside the file.
    fn more_in_file(&self) -> bool {
        self.last_in_file.is_some_and(|last| last > self.at.chunk)
    }

    /// The next packet of the track: `Ok(None)` at its end; an `UnexpectedEof` error when
    /// the file ends before the samples do; a decode error for a sample that cannot be
    /// read (outside the file, or forged large), after which reading goes on.
    pub(crate) fn next_packet(&mut self) -> Result<Option<Packet>, SymphoniaError> {
        let Some(at) = self.advance()? else {
            return Ok(None);
        };
        let mut data = vec![0u8; at.bytes as usize];
        self.source.seek(SeekFrom::Start(at.offset))?;
        self.source.read_exact(&mut data)?;
        Ok(Some(Packet::new(
            self.track_id,
            Timestamp::new(i64::try_from(at.pts).unwrap_or(i64::MAX)),
            Duration::new(at.dur),
            data,
        )))
    }

    /// Where the next packet is and how long it lasts, without reading it (the same
    /// walk and the same errors as [`Self::next_packet`]).
    pub(crate) fn advance(&mut self) -> Result<Option<PacketAt>, SymphoniaError> {
        while self.at.left_in_chunk == 0 {
            if self.at.chunk + 1 >= self.tables.chunks.len() || self.at.sample >= self.tables.samples {
                return Ok(None);
            }
            self.enter_chunk(self.at.chunk + 1);
        }
        if self.at.sample >= self.tables.samples {
            return Ok(None);
        }
        let n = self
            .at
            .left_in_chunk
            .min(u64::from(self.group))
            .min(self.tables.samples - self.at.sample);
        let bytes = (0..n)
            .map(|i| u64::from(self.tables.size(self.at.sample + i)))
            .sum::<u64>();
        let dur = self.tables.durations(&mut self.at.stts, n);
        let (offset, pts) = (self.at.offset, self.at.ts);
        self.at.sample += n;
        self.at.left_in_chunk -= n;
        self.at.offset = offset.saturating_add(bytes);
        self.at.ts = pts.saturating_add(dur);
        if bytes > u64::from(MAX_AUDIO_SAMPLE_BYTES) {
            return Err(SymphoniaError::DecodeError("a sample larger than any audio codec's"));
        }
        let end = offset.saturating_add(bytes);
        if end > self.len {
            if offset < self.len || !self.more_in_file() {
                return Err(SymphoniaError::IoError(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ends before this sample",
                )));
            }
            // This chunk lies outside the file but later ones do not (a damaged offset):
            // skip the rest of the chunk.
            let rest = self.at.left_in_chunk.min(self.tables.samples - self.at.sample);
            let skipped = self.tables.durations(&mut self.at.stts, rest);
            self.at.ts = self.at.ts.saturating_add(skipped);
            self.at.sample += rest;
            self.at.left_in_chunk = 0;
            return Err(SymphoniaError::DecodeError(
                "a sample the tables place outside the file",
            ));
        }
        Ok(Some(PacketAt {
            offset,
            bytes,
            pts,
            dur,
        }))
    }
}

/// One packet's place in the file and in time (in the track's timescale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PacketAt {
    pub(crate) offset: u64,
    pub(crate) bytes: u64,
    pub(crate) pts: u64,
    pub(crate) dur: u64,
}

#[cfg(test)]
mod tests {
    use super::entry::{aac_config, parse_esds};
    use super::*;

    #[test]
    fn durations_advance_an_stts_entry_at_a_time() {
        let tables = Tables {
            stts: vec![(2, 10), (0, 99), (3, 20), (u64::from(u32::MAX), 1024)],
            default_delta: 7,
            samples: 8,
            ..Tables::default()
        };
        let mut at = SttsAt::default();
        // Across the end of an entry and past an empty one, as one sample at a time would.
        assert_eq!(tables.durations(&mut at, 1), 10);
        assert_eq!(tables.durations(&mut at, 2), 10 + 20);
        assert_eq!(tables.durations(&mut at, 0), 0);
        assert_eq!(tables.durations(&mut at, 2), 20 + 20);
        // Billions of samples in one step, then past the table's end: the default delta.
        assert_eq!(
            tables.durations(&mut at, u64::from(u32::MAX)),
            u64::from(u32::MAX) * 1024
        );
        assert_eq!(tables.durations(&mut at, 3), 3 * 7);
        // The track's duration is the same walk from the start.
        assert_eq!(tables.duration(), 2 * 10 + 3 * 20 + 3 * 1024);
    }

    #[test]
    fn an_aac_config_with_an_impossible_rate_is_rebuilt_from_the_sample_entry() {
        // AAC-LC, 44.1 kHz (index 4), stereo: kept as it is.
        let good = [0x12, 0x10];
        assert_eq!(
            aac_config(Some(&good), Some(48_000), 2),
            Some((good.to_vec(), 44_100, 2))
        );
        // Index 15 with an explicit rate of 1 Hz: object type and channels kept, the
        // sample entry's rate used.
        let explicit_one = [0x17, 0x80, 0x00, 0x00, 0x90];
        let (asc, rate, channels) = aac_config(Some(&explicit_one), Some(48_000), 2).unwrap();
        assert_eq!((rate, channels), (48_000, 2));
        assert_eq!(asc, vec![0x11, 0x90], "AAC-LC, index 3 (48 kHz), 2 channels");
        // No config at all: AAC-LC from the sample entry; no plausible rate: nothing.
        assert_eq!(aac_config(None, Some(22_050), 1), Some((vec![0x13, 0x88], 22_050, 1)));
        assert_eq!(aac_config(None, Some(1), 1), None);
    }

    #[test]
    fn esds_descriptors_give_the_object_type_and_config() {
        // version/flags, ES_Descriptor (tag 3) with ES_ID and flags 0, DecoderConfig (tag 4):
        // object type 0x40, stream type, buffer, bit rates, then DecSpecificInfo (tag 5).
        let mut esds = vec![0, 0, 0, 0, 0x03, 0x80, 0x80, 0x80, 25, 0, 1, 0, 0x04, 17, 0x40, 0x15];
        esds.extend_from_slice(&[0; 11]);
        esds.extend_from_slice(&[0x05, 2, 0x12, 0x10]);
        assert_eq!(parse_esds(&esds), Some((0x40, Some(vec![0x12, 0x10]))));
        assert_eq!(parse_esds(&esds[..10]), None, "cut short");
    }
}
