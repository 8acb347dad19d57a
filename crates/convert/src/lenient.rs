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
use super::container::MAX_TOP_LEVEL_BOXES;
use super::{MAX_AUDIO_SAMPLE_BYTES, PLAUSIBLE_RATES};

/// Largest `moov` (or `moof`) read into memory (a moov's tables for ~20 hours of AAC).
const MAX_MOOV_BYTES: u64 = 32 << 20;
/// Most samples taken from fragments (their sizes are held in memory: 32 MiB).
const MAX_FRAGMENT_SAMPLES: u64 = 8 << 20;
/// PCM samples are single frames: this many are read as one packet.
const PCM_FRAMES_PER_PACKET: u32 = 4096;
/// The AAC sampling frequency table (ISO/IEC 14496-3, 1.6.3.4).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

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
    tables: Tables,
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

/// A place in `stts`.
#[derive(Debug, Default, Clone, Copy)]
struct SttsAt {
    index: usize,
    /// Samples of `stts[index]` already passed.
    passed: u64,
}

/// The sample tables, clamped to what their boxes hold.
#[derive(Debug, Default)]
struct Tables {
    /// `stsz`: the constant size, or every sample's.
    constant_size: u32,
    sizes: Vec<u32>,
    samples: u64,
    /// `stsc`: (first chunk, 1-based; samples per chunk), cleaned up.
    stsc: Vec<(u64, u64)>,
    /// `stco`/`co64`.
    chunks: Vec<u64>,
    /// `stts`: (count, delta).
    stts: Vec<(u64, u64)>,
    /// Delta used when `stts` runs out.
    default_delta: u64,
}

impl Tables {
    fn size(&self, sample: u64) -> u32 {
        if self.constant_size != 0 {
            self.constant_size
        } else {
            usize::try_from(sample)
                .ok()
                .and_then(|i| self.sizes.get(i))
                .copied()
                .unwrap_or(0)
        }
    }

    /// Repairs what one damaged number does to the tables, from their redundancy: in a file
    /// whose chunks follow each other, a chunk's offset must be where the previous one
    /// ends and where the next one starts less its own size; and a chunk's samples must end
    /// before the next chunk (or the file) does, so one sample size that runs past it is
    /// given the room that is left.
    fn repair(&mut self, len: u64, cut: bool, mdats: &[(u64, u64)]) {
        let n = self.chunks.len();
        // Samples in each chunk, by stsc, up to the sample count.
        let mut counts = Vec::with_capacity(n);
        let mut left = self.samples;
        let mut entry = 0;
        for chunk in 1..=n as u64 {
            while entry + 1 < self.stsc.len() && self.stsc[entry + 1].0 <= chunk {
                entry += 1;
            }
            let count = self.stsc.get(entry).map_or(0, |&(_, c)| c).min(left);
            left -= count;
            counts.push(count);
        }
        let mut first = 0u64;
        let mut bytes = Vec::with_capacity(n);
        for &count in &counts {
            // A constant size may come with billions of samples: multiplied, not summed.
            bytes.push(if self.constant_size != 0 {
                count.saturating_mul(u64::from(self.constant_size))
            } else {
                (first..first + count).map(|s| u64::from(self.size(s))).sum::<u64>()
            });
            first += count;
        }
        let end = |chunks: &[u64], i: usize| chunks[i].saturating_add(bytes[i]);
        // Each chunk is checked against its neighbours, so indices it is.
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            let fixed = if i + 1 < n {
                let Some(expected) = self.chunks[i + 1].checked_sub(bytes[i]) else {
                    continue;
                };
                let agrees = if i == 0 {
                    n > 2 && end(&self.chunks, 1) == self.chunks[2] && expected >= 8
                } else {
                    end(&self.chunks, i - 1) == expected
                };
                (self.chunks[i] != expected && agrees).then_some(expected)
            } else {
                let after_previous = i.checked_sub(1).map(|p| end(&self.chunks, p));
                after_previous
                    .filter(|&p| self.chunks[i] != p && end(&self.chunks, i) > len && p.saturating_add(bytes[i]) <= len)
            };
            if let Some(offset) = fixed {
                self.chunks[i] = offset;
            }
        }
        if self.constant_size != 0 {
            return;
        }
        let mut first = 0usize;
        for (i, &count) in counts.iter().enumerate() {
            let count = count as usize;
            let range = first..first + count;
            first += count;
            // The chunk must end before the next one starts, and inside its mdat.
            let start = self.chunks[i];
            let mdat_end = mdats
                .iter()
                .find(|(from, to)| (*from..*to).contains(&start))
                .map(|&(_, to)| to);
            let next = self.chunks.get(i + 1).copied().filter(|&next| next > start);
            let bound = next.into_iter().chain(mdat_end).min().unwrap_or(len);
            // Running past the end of a file cut short is the cut, not a wrong size.
            if end(&self.chunks, i) <= bound || count == 0 || (cut && next.is_none()) {
                continue;
            }
            let Some(samples) = self.sizes.get_mut(range) else {
                break;
            };
            // A size far above the chunk's usual ones is damaged. Alone, it gets the room
            // the others leave; else each is taken for a flipped high bit, cleared until
            // the size looks like its neighbours.
            let mut sorted = samples.to_vec();
            sorted.sort_unstable();
            let usual = sorted[sorted.len() / 2].saturating_mul(8).max(1024);
            let unusual: Vec<usize> = (0..samples.len()).filter(|&j| samples[j] > usual).collect();
            let others: u64 = samples.iter().filter(|&&s| s <= usual).map(|&s| u64::from(s)).sum();
            let room = bound
                .checked_sub(start.saturating_add(others))
                .filter(|&r| r > 0 && r <= u64::from(usual));
            match (unusual.as_slice(), room) {
                (&[only], Some(room)) => samples[only] = room as u32,
                _ => {
                    for &j in &unusual {
                        while samples[j] > usual {
                            samples[j] &= !(1 << (31 - samples[j].leading_zeros()));
                        }
                    }
                }
            }
        }
    }

    /// Appends the runs of track `track_id` in one `moof` (`moof` is its payload,
    /// `start` its offset in the file): each run becomes a chunk.
    fn add_fragment(&mut self, moof: &[u8], start: u64, track_id: u32, trex_size: u32) {
        for (_, traf) in children(moof).filter(|(kind, _)| kind == b"traf") {
            let Some(tfhd) = child(traf, b"tfhd").filter(|t| t.len() >= 8) else {
                continue;
            };
            let flags = be32(tfhd) & 0x00ff_ffff;
            if be32(&tfhd[4..8]) != track_id {
                continue;
            }
            let mut at = 8;
            let mut field = |bit: u32, len: usize| {
                let value = (flags & bit != 0).then(|| tfhd.get(at..at + len)).flatten();
                if flags & bit != 0 {
                    at += len;
                }
                value
            };
            let base = field(0x01, 8).map_or(start, be64);
            let _description = field(0x02, 4);
            let default_duration = field(0x08, 4).map_or(0, be32);
            let default_size = field(0x10, 4).map_or(trex_size, be32);
            let mut data = base;
            for (_, trun) in children(traf).filter(|(kind, _)| kind == b"trun") {
                data = self.add_run(trun, base, data, default_duration, default_size);
            }
        }
    }

    /// Appends one `trun` whose data starts at `base` + its data offset (or at `data`,
    /// where the previous run's ended); returns where this run's data ends.
    fn add_run(&mut self, trun: &[u8], base: u64, data: u64, default_duration: u32, default_size: u32) -> u64 {
        let Some(head) = trun.get(..8) else { return data };
        let flags = be32(head) & 0x00ff_ffff;
        let count = be32(&head[4..8]);
        let mut at = 8;
        let offset = if flags & 0x01 != 0 {
            let offset = trun.get(at..at + 4).map_or(0, |b| i64::from(be32(b) as i32));
            at += 4;
            base.saturating_add_signed(offset)
        } else {
            data
        };
        if flags & 0x04 != 0 {
            at += 4;
        }
        let fields = [0x100, 0x200, 0x400, 0x800]
            .iter()
            .filter(|&&bit| flags & bit != 0)
            .count();
        let entry_len = 4 * fields;
        // The count, clamped to the entries the box holds (or to the file's bytes).
        let fits = trun
            .len()
            .saturating_sub(at)
            .checked_div(entry_len)
            .map_or(u64::from(u32::MAX), |n| n as u64);
        let count = u64::from(count)
            .min(fits)
            .min(MAX_FRAGMENT_SAMPLES.saturating_sub(self.samples));
        if count == 0 {
            return offset;
        }
        let mut end = offset;
        for i in 0..count as usize {
            let entry = trun.get(at + i * entry_len..).unwrap_or(&[]);
            let mut field_at = 0;
            let mut next = |bit: u32| {
                if flags & bit == 0 {
                    return None;
                }
                let v = entry.get(field_at..field_at + 4).map(be32);
                field_at += 4;
                v
            };
            let duration = u64::from(next(0x100).unwrap_or(default_duration));
            let size = next(0x200).unwrap_or(default_size);
            self.sizes.push(size);
            end = end.saturating_add(u64::from(size));
            // An impossible duration is the last good one (as in stts, where such entries
            // are dropped), so the times stay in step with the samples.
            let last = self.stts.last().map_or(1024, |&(_, d)| d);
            let duration = if (1..1 << 24).contains(&duration) {
                duration
            } else {
                last
            };
            match self.stts.last_mut() {
                Some((n, d)) if *d == duration => *n += 1,
                _ => self.stts.push((1, duration)),
            }
        }
        self.chunks.push(offset);
        self.stsc.push((self.chunks.len() as u64, count));
        self.samples += count;
        end
    }

    fn duration(&self) -> u64 {
        self.durations(&mut SttsAt::default(), self.samples)
    }

    /// The duration of the `n` samples from `at`, moving `at` past them an `stts` entry at
    /// a time: a damaged chunk may skip billions of samples (one at a time, a 52 KB file
    /// took 0.6 s in the CLI and 4 s in the fuzz target).
    fn durations(&self, at: &mut SttsAt, mut n: u64) -> u64 {
        let mut total = 0u64;
        while n > 0 {
            let Some(&(count, delta)) = self.stts.get(at.index) else {
                return total.saturating_add(n.saturating_mul(self.default_delta));
            };
            let take = count.saturating_sub(at.passed).min(n);
            total = total.saturating_add(take.saturating_mul(delta));
            n -= take;
            if n == 0 {
                at.passed += take;
            } else {
                at.index += 1;
                at.passed = 0;
            }
        }
        total
    }
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
        tables,
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
    let mut top = TopLevel::default();
    let mut pos = 0u64;
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
    if data.len() < 8 {
        return None;
    }
    let size32 = be32(&data[0..4]);
    let kind = [data[4], data[5], data[6], data[7]];
    let (size, header_len) = match size32 {
        0 => (room, 8),
        1 => (u64::from_be_bytes(data.get(8..16)?.try_into().ok()?), 16),
        n => (u64::from(n), 8),
    };
    (size >= header_len).then_some((kind, header_len, size.min(room)))
}

/// Whether the box header at the start of `data` declares more than the `room` left.
fn declared_past(data: &[u8], room: u64) -> bool {
    let declared = match data.get(0..4).map(be32) {
        Some(1) => data.get(8..16).map_or(0, be64),
        Some(n) => u64::from(n),
        None => 0,
    };
    declared > room
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

/// `kind` under `stbl` (walked), else scanned for in the whole `trak`.
fn table<'a>(trak: &'a [u8], stbl: Option<&'a [u8]>, kind: &[u8; 4]) -> Option<&'a [u8]> {
    stbl.and_then(|s| child(s, kind)).or_else(|| scan(trak, kind))
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// An audio track: its sample entry, tables, ID and media timescale (if readable).
fn audio_track(trak: &[u8], index: usize) -> Option<(SampleEntry, Tables, u32, Option<u32>)> {
    let mdia = child(trak, b"mdia");
    let stbl = mdia
        .and_then(|m| child(m, b"minf"))
        .and_then(|m| child(m, b"stbl"))
        .or_else(|| scan(trak, b"stbl"));
    let sound = mdia
        .and_then(|m| child(m, b"hdlr"))
        .and_then(|h| h.get(8..12))
        .is_some_and(|h| h == b"soun");
    let entry = SampleEntry::parse(table(trak, stbl, b"stsd")?, sound)?;
    let id = child(trak, b"tkhd")
        .and_then(|tkhd| {
            let at = if tkhd.first() == Some(&1) { 20 } else { 12 };
            tkhd.get(at..at + 4).map(be32)
        })
        .filter(|&id| id != 0)
        .unwrap_or(index as u32 + 1);
    let mdhd_timescale = mdia
        .and_then(|m| child(m, b"mdhd"))
        .or_else(|| scan(trak, b"mdhd"))
        .and_then(|mdhd| {
            let at = if mdhd.first() == Some(&1) { 20 } else { 12 };
            mdhd.get(at..at + 4).map(be32)
        });
    let tables = read_tables(trak, stbl, &entry)?;
    Some((entry, tables, id, mdhd_timescale))
}

/// The entries of a full box with a 32-bit count after its version and flags: the count
/// clamped to what the box holds, with `offset` bytes before the count.
fn entries(payload: &[u8], offset: usize, entry_len: usize) -> impl Iterator<Item = &[u8]> {
    let count = payload.get(offset..offset + 4).map_or(0, be32) as usize;
    let body = payload.get(offset + 4..).unwrap_or(&[]);
    body.chunks_exact(entry_len).take(count)
}

fn read_tables(trak: &[u8], stbl: Option<&[u8]>, entry: &SampleEntry) -> Option<Tables> {
    let mut t = Tables::default();
    let stsz = table(trak, stbl, b"stsz")?;
    t.constant_size = stsz.get(4..8).map(be32)?;
    let declared = u64::from(stsz.get(8..12).map(be32)?);
    if t.constant_size == 0 {
        t.sizes = stsz
            .get(12..)?
            .chunks_exact(4)
            .take(declared as usize)
            .map(be32)
            .collect();
        t.samples = t.sizes.len() as u64;
    } else {
        t.samples = declared;
    }
    t.chunks = match table(trak, stbl, b"stco") {
        Some(stco) => entries(stco, 4, 4).map(|e| u64::from(be32(e))).collect(),
        None => entries(table(trak, stbl, b"co64")?, 4, 8).map(be64).collect(),
    };
    // Chunks numbered from 1 and increasing; an entry breaking that is damage, skipped.
    let mut last = 0u64;
    for e in table(trak, stbl, b"stsc")
        .map(|s| entries(s, 4, 12))
        .into_iter()
        .flatten()
    {
        let (first, per_chunk) = (u64::from(be32(&e[0..4])), u64::from(be32(&e[4..8])));
        if first > last && first <= t.chunks.len() as u64 && per_chunk > 0 {
            t.stsc.push((first, per_chunk));
            last = first;
        }
    }
    if t.stsc.first().is_none_or(|&(first, _)| first != 1) {
        // No usable first entry: spread the samples evenly over the chunks.
        let per_chunk = t.samples.div_ceil(t.chunks.len().max(1) as u64).max(1);
        t.stsc.insert(0, (1, per_chunk));
    }
    // A constant size only bounds the count by the file, checked when reading; the chunks
    // bound it too.
    let in_chunks = chunk_capacity(&t.stsc, t.chunks.len() as u64);
    t.samples = t.samples.min(in_chunks);
    t.stts = table(trak, stbl, b"stts")
        .map(|s| {
            entries(s, 4, 8)
                .map(|e| (u64::from(be32(&e[0..4])), u64::from(be32(&e[4..8]))))
                .collect()
        })
        .unwrap_or_default();
    t.stts
        .retain(|&(count, delta)| count > 0 && delta > 0 && delta < 1 << 24);
    t.default_delta = t.stts.last().map_or(entry.frames_per_packet(), |&(_, d)| d);
    Some(t)
}

/// Samples the chunks can hold by `stsc`.
fn chunk_capacity(stsc: &[(u64, u64)], chunks: u64) -> u64 {
    let mut total = 0u64;
    for (i, &(first, per_chunk)) in stsc.iter().enumerate() {
        let next = stsc.get(i + 1).map_or(chunks + 1, |&(f, _)| f);
        total = total.saturating_add(next.saturating_sub(first).saturating_mul(per_chunk));
    }
    total
}

/// What the sample entry (`stsd`'s first) says.
#[derive(Debug)]
struct SampleEntry {
    kind: [u8; 4],
    channels: u32,
    sample_size: u32,
    rate: u32,
    /// `lpcm` (version 2) format flags.
    lpcm_flags: u32,
    /// `esds`: object type indication and decoder config.
    esds: Option<(u8, Option<Vec<u8>>)>,
    /// The ALAC magic cookie (24 bytes).
    alac: Option<Vec<u8>>,
}

/// Sample entry types of audio this reader can hand to a decoder.
const AUDIO_ENTRIES: [&[u8; 4]; 12] = [
    b"mp4a", b".mp3", b"alac", b"sowt", b"twos", b"lpcm", b"in24", b"in32", b"fl32", b"fl64", b"raw ", b"NONE",
];

impl SampleEntry {
    /// The first entry of `stsd`; `sound` when the handler says the track is audio (then
    /// an entry of unknown type is taken for what its child boxes say it is).
    fn parse(stsd: &[u8], sound: bool) -> Option<SampleEntry> {
        // version+flags, entry count, then the first entry (header included).
        let first = stsd.get(8..)?;
        let (mut kind, header_len, size) = parse_header(first, first.len() as u64)?;
        let entry = first.get(header_len as usize..size as usize)?;
        if !AUDIO_ENTRIES.contains(&&kind) {
            let rest = entry.get(28..)?;
            kind = match (sound, scan(rest, b"esds"), scan(rest, b"alac")) {
                (true, Some(_), _) => *b"mp4a",
                (true, None, Some(_)) => *b"alac",
                _ => return None,
            };
        }
        // reserved (6), data reference (2), version (2), revision (2), vendor (4),
        // channels (2), sample size (2), compression id (2), packet size (2), rate (16.16).
        let fixed = entry.get(..28)?;
        let version = be16(&fixed[8..10]);
        let mut parsed = SampleEntry {
            kind,
            channels: u32::from(be16(&fixed[16..18])),
            sample_size: u32::from(be16(&fixed[18..20])),
            rate: be32(&fixed[24..28]) >> 16,
            lpcm_flags: 0,
            esds: None,
            alac: None,
        };
        if version == 2
            && let Some(v2) = entry.get(28..64)
            && be32(&v2[20..24]) == 0x7f00_0000
        {
            parsed.rate = f64::from_bits(be64(&v2[4..12])) as u32;
            parsed.channels = be32(&v2[12..16]);
            parsed.sample_size = be32(&v2[24..28]);
            parsed.lpcm_flags = be32(&v2[28..32]);
        }
        // The child boxes (`esds`, `alac`, inside `wave` in QuickTime files) sit after
        // 28, 44 or 64 bytes depending on the version, which may be the damaged field:
        // found by their type codes instead.
        let rest = &entry[28..];
        parsed.esds = scan(rest, b"esds").and_then(parse_esds);
        parsed.alac = scan(rest, b"alac").and_then(|a| a.get(4..28)).map(<[u8]>::to_vec);
        Some(parsed)
    }

    /// Frames per packet, for a missing `stts`.
    fn frames_per_packet(&self) -> u64 {
        match &self.kind {
            b"mp4a" => 1024,
            b".mp3" => 1152,
            b"alac" => self.alac.as_ref().map_or(4096, |c| u64::from(be32(&c[0..4]))),
            _ => 1,
        }
    }

    /// Decoder parameters and the sample rate, from this entry with `timescale` and the
    /// first sample's bytes as other witnesses.
    fn codec_params(&self, timescale: Option<u32>, first_sample: &[u8]) -> Option<(AudioCodecParameters, u32)> {
        let rates = [Some(self.rate), timescale];
        let plausible = rates.into_iter().flatten().find(|r| PLAUSIBLE_RATES.contains(r));
        let mut params = AudioCodecParameters::new();
        let channels = self.channels.clamp(1, 8);
        let rate = match &self.kind {
            b"mp4a" => {
                let oti = self.esds.as_ref().map(|(oti, _)| *oti);
                let sync = first_sample.len() >= 2 && first_sample[0] == 0xff && first_sample[1] & 0xe0 == 0xe0;
                if matches!(oti, Some(0x69 | 0x6b)) || (oti.is_none() && sync) {
                    params.for_codec(CODEC_ID_MP3);
                    plausible.unwrap_or(44_100)
                } else {
                    let asc = self.esds.as_ref().and_then(|(_, asc)| asc.as_deref());
                    let (asc, rate, asc_channels) = aac_config(asc, plausible, channels)?;
                    params.for_codec(CODEC_ID_AAC).with_extra_data(asc.into_boxed_slice());
                    params.with_channels(channel_layout(asc_channels));
                    rate
                }
            }
            b".mp3" => {
                params.for_codec(CODEC_ID_MP3);
                plausible.unwrap_or(44_100)
            }
            b"alac" => {
                let mut cookie = self.alac.clone()?;
                let cookie_rate = be32(&cookie[20..24]);
                let rate = if PLAUSIBLE_RATES.contains(&cookie_rate) {
                    cookie_rate
                } else {
                    let rate = plausible?;
                    cookie[20..24].copy_from_slice(&rate.to_be_bytes());
                    rate
                };
                params
                    .for_codec(CODEC_ID_ALAC)
                    .with_max_frames_per_packet(u64::from(be32(&cookie[0..4])))
                    .with_extra_data(cookie.into_boxed_slice());
                rate
            }
            kind => {
                let (codec, bits) = pcm_codec(kind, self.sample_size, self.lpcm_flags)?;
                params
                    .for_codec(codec)
                    .with_bits_per_sample(bits)
                    .with_bits_per_coded_sample(bits)
                    .with_channels(channel_layout(channels));
                plausible?
            }
        };
        params.with_sample_rate(rate);
        if params.channels.is_none() {
            params.with_channels(channel_layout(channels));
        }
        Some((params, rate))
    }
}

/// PCM codec and bits per sample of a QuickTime sample entry.
fn pcm_codec(
    kind: &[u8; 4],
    sample_size: u32,
    lpcm_flags: u32,
) -> Option<(symphonia::core::codecs::audio::AudioCodecId, u32)> {
    Some(match kind {
        b"sowt" => match sample_size {
            8 => (CODEC_ID_PCM_S8, 8),
            24 => (CODEC_ID_PCM_S24LE, 24),
            32 => (CODEC_ID_PCM_S32LE, 32),
            _ => (CODEC_ID_PCM_S16LE, 16),
        },
        b"twos" => match sample_size {
            8 => (CODEC_ID_PCM_S8, 8),
            24 => (CODEC_ID_PCM_S24BE, 24),
            32 => (CODEC_ID_PCM_S32BE, 32),
            _ => (CODEC_ID_PCM_S16BE, 16),
        },
        b"in24" => (CODEC_ID_PCM_S24BE, 24),
        b"in32" => (CODEC_ID_PCM_S32BE, 32),
        b"fl32" => (CODEC_ID_PCM_F32BE, 32),
        b"fl64" => (CODEC_ID_PCM_F64BE, 64),
        b"raw " | b"NONE" => (CODEC_ID_PCM_U8, 8),
        b"lpcm" => {
            let (float, big, signed) = (lpcm_flags & 1 != 0, lpcm_flags & 2 != 0, lpcm_flags & 4 != 0);
            match (float, sample_size, big) {
                (true, 32, true) => (CODEC_ID_PCM_F32BE, 32),
                (true, 32, false) => (CODEC_ID_PCM_F32LE, 32),
                (true, 64, true) => (CODEC_ID_PCM_F64BE, 64),
                (true, 64, false) => (CODEC_ID_PCM_F64LE, 64),
                (false, 8, _) if signed => (CODEC_ID_PCM_S8, 8),
                (false, 8, _) => (CODEC_ID_PCM_U8, 8),
                (false, 16, true) => (CODEC_ID_PCM_S16BE, 16),
                (false, 24, true) => (CODEC_ID_PCM_S24BE, 24),
                (false, 32, true) => (CODEC_ID_PCM_S32BE, 32),
                (false, 24, false) => (CODEC_ID_PCM_S24LE, 24),
                (false, 32, false) => (CODEC_ID_PCM_S32LE, 32),
                _ => (CODEC_ID_PCM_S16LE, 16),
            }
        }
        _ => return None,
    })
}

fn channel_layout(n: u32) -> Channels {
    match n {
        1 => Channels::Positioned(Position::FRONT_LEFT),
        2 => Channels::Positioned(Position::FRONT_LEFT | Position::FRONT_RIGHT),
        n => Channels::Discrete(n as u16),
    }
}

/// The object type indication and decoder-specific info of an `esds` payload.
fn parse_esds(esds: &[u8]) -> Option<(u8, Option<Vec<u8>>)> {
    let mut r = esds.get(4..)?;
    let (tag, _) = descriptor(&mut r)?;
    if tag != 0x03 {
        return None;
    }
    // ES_ID, then flags saying which optional fields follow.
    let flags = *r.get(2)?;
    let mut skip = 3;
    if flags & 0x80 != 0 {
        skip += 2;
    }
    if flags & 0x40 != 0 {
        skip += 1 + usize::from(*r.get(skip)?);
    }
    if flags & 0x20 != 0 {
        skip += 2;
    }
    r = r.get(skip..)?;
    let (tag, _) = descriptor(&mut r)?;
    if tag != 0x04 {
        return None;
    }
    let oti = *r.first()?;
    // object type, stream type, buffer size (3), max and average bit rate (4 + 4).
    r = r.get(13..)?;
    let asc = descriptor(&mut r)
        .filter(|&(tag, _)| tag == 0x05)
        .and_then(|(_, len)| r.get(..len))
        .map(<[u8]>::to_vec);
    Some((oti, asc))
}

/// A descriptor's tag and length; `r` is left at its body.
fn descriptor(r: &mut &[u8]) -> Option<(u8, usize)> {
    let tag = *r.first()?;
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let b = *r.get(i)?;
        len = (len << 7) | usize::from(b & 0x7f);
        i += 1;
        if b & 0x80 == 0 || i > 4 {
            break;
        }
    }
    *r = r.get(i..)?;
    Some((tag, len))
}

/// An AudioSpecificConfig the decoder can use, with its sample rate and channel count:
/// `asc` when its rate is plausible; else one rebuilt with its object type and channels
/// and the rate of the sample entry (or timescale); else AAC-LC from the sample entry.
fn aac_config(asc: Option<&[u8]>, entry_rate: Option<u32>, entry_channels: u32) -> Option<(Vec<u8>, u32, u32)> {
    let parsed = asc.filter(|a| a.len() >= 2).map(|a| {
        let object_type = a[0] >> 3;
        let index = ((a[0] & 0x07) << 1) | (a[1] >> 7);
        let (rate, channels) = if index == 15 {
            let rate = a.get(1..5).map(|b| (be32(b) >> 7) & 0x00ff_ffff);
            (rate, a.get(4..6).map(|b| u32::from((be16(b) >> 11) & 0x0f)))
        } else {
            (
                AAC_RATES.get(usize::from(index)).copied(),
                Some(u32::from((a[1] >> 3) & 0x0f)),
            )
        };
        (object_type, rate, channels)
    });
    if let (Some(asc), Some((object_type, Some(rate), Some(channels)))) = (asc, parsed)
        && (1..=31).contains(&object_type)
        && object_type != 31
        && PLAUSIBLE_RATES.contains(&rate)
        && (1..=7).contains(&channels)
    {
        return Some((asc.to_vec(), rate, channels));
    }
    let object_type = parsed
        .map(|(o, _, _)| o)
        .filter(|o| [1, 2, 3, 4].contains(o))
        .unwrap_or(2);
    let channels = parsed
        .and_then(|(_, _, c)| c)
        .filter(|c| (1..=7).contains(c))
        .unwrap_or(entry_channels.clamp(1, 2));
    let rate = entry_rate.filter(|r| AAC_RATES.contains(r))?;
    let index = AAC_RATES.iter().position(|&r| r == rate)? as u16;
    let bits = (u16::from(object_type) << 11) | (index << 7) | ((channels as u16) << 3);
    Some((bits.to_be_bytes().to_vec(), rate, channels))
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
        let mut data = vec![0u8; bytes as usize];
        self.source.seek(SeekFrom::Start(offset))?;
        self.source.read_exact(&mut data)?;
        Ok(Some(Packet::new(
            self.track_id,
            Timestamp::new(i64::try_from(pts).unwrap_or(i64::MAX)),
            Duration::new(dur),
            data,
        )))
    }
}

#[cfg(test)]
mod tests {
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
