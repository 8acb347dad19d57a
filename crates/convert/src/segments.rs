//! N-way encoding: a long input cut into segments on the MP3 frame grid, each decoded from
//! its own packets and encoded by its own LAME on its own core, joined without a seam.
//!
//! LAME is single-threaded; its bit reservoir and psychoacoustic state carry from frame to
//! frame, which is why naive chunking clicks or drifts. The recipe (checked against LAME
//! 3.100's `lame.c` and `bitstream.c`):
//!
//! - Global frame `j` covers input samples from `j·S − 576` (`S` = 1152, or 576 below
//!   32 kHz; 576 is LAME's encoder delay). The cuts `F₁ < F₂ < …` are frame numbers.
//! - Segment `k` feeds LAME the samples from `(F_k − 32)·S` ([`PREROLL_FRAMES`] frames of
//!   warm-up, so the adaptive ATH and the masking state have settled) and calls
//!   `lame_encode_flush_nogap` once frames up to `F_k − 1` are encoded (fed
//!   `32·S + 576`): those frames are dropped, and the reservoir is empty, so frame `F_k`'s
//!   main data starts in frame `F_k`. At `F_{k+1}·S + 576` it flushes the same way and
//!   keeps what it wrote; the last segment ends with the ordinary flush.
//! - Every segment has the same settings and no resampling, so its frames lie on the same
//!   grid; they are concatenated in order and one Xing/LAME info frame is written for the
//!   whole stream (frame and byte counts, LAME's own TOC algorithm, delay and padding,
//!   music length, CRCs).
//! - Each segment decodes only its own packets plus a few before them (decoder warm-up:
//!   AAC's overlap-add, an MP3's reservoir), whose output is dropped. The samples it hands
//!   LAME are checked packet by packet against the sample tables; anything that does not
//!   add up (a damaged packet, a rate change, a count that differs) makes the whole
//!   conversion fall back to one piece, before anything is written.
//!
//! What differs from one piece (measured in the engine's `nway` tests): the drained
//! reservoir makes LAME choose other frame sizes for a while after a join, which VBR's
//! quantization ignores (V2/V5 audio is bit-identical) except where a demanding frame hits
//! the largest frame plus reservoir (V0; 22.05 kHz stereo); in CBR the reservoir carries
//! the difference through the segment. AAC with perceptual noise substitution decodes its
//! noise bands from a random generator whose state depends on every earlier packet, so
//! those bands differ (they are noise either way).
//!
//! The segment's work ([`encode_segment`]) takes its packets from any iterator: a reader
//! over the local file, or packets sent by another node.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use symphonia::core::codecs::audio::AudioCodecParameters;
use symphonia::core::codecs::audio::well_known::{CODEC_ID_AAC, CODEC_ID_ALAC, CODEC_ID_FLAC, CODEC_ID_MP3};
use symphonia::core::packet::Packet;

use super::container::EditList;
use super::decode::{Decoder, PacketError};
use super::encode::{Mp3Encoder, mp3_rate_for};
use super::error::{ConvertError, Result};
use super::frames::{Frame, FrameWriter, crc16};
use super::lenient;
use super::pipeline::{fit_channels, trim_for};
use super::settings::Quality;
use super::source::Tracked;
use super::track::ChosenTrack;
use super::{Hooks, Summary};

/// Frames encoded before a segment's first kept frame, then dropped.
pub(crate) const PREROLL_FRAMES: u64 = 32;

/// Inputs shorter than this are encoded in one piece.
pub(crate) const MIN_NWAY_SECS: f64 = 20.0;
/// Segment lengths for long inputs: several per core, for balance.
pub(crate) const SEGMENT_SECS: std::ops::RangeInclusive<f64> = 60.0..=120.0;
/// No segment is shorter than this (the warm-up would cost too much).
pub(crate) const MIN_SEGMENT_SECS: f64 = 10.0;
/// How often a thread whose slot went to a job asks again.
const BORROW_RETRY: Duration = Duration::from_millis(200);
/// LAME's encoder delay, in samples.
const ENCODER_DELAY: u64 = 576;

/// Why a conversion is not done in segments after all (it is done in one piece instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotExact(pub(crate) String);

/// What every segment of one input shares.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSetup {
    /// The track's codec parameters (as the whole-file decoder had them).
    pub(crate) params: AudioCodecParameters,
    /// `fdk-aac` or `symphonia`: the decoder the whole track's probe chose.
    pub(crate) decoder: &'static str,
    /// Decoded sample rate, also the MP3's.
    pub(crate) rate: u32,
    /// Channels the encoder takes (1 or 2).
    pub(crate) channels: usize,
    pub(crate) quality: Quality,
}

/// One segment's work, in decoded-stream samples (before the edit list's trim).
#[derive(Debug, Clone)]
pub(crate) struct SegmentJob {
    pub(crate) index: usize,
    /// The first packet it decodes and how many.
    pub(crate) first_packet: usize,
    /// The samples each of its packets decodes to, from the sample tables.
    pub(crate) durations: Vec<u32>,
    /// Where its first packet's samples start.
    pub(crate) packets_start: u64,
    /// Leading packets decoded only to warm the decoder up.
    pub(crate) warmup_packets: usize,
    /// The samples LAME is given: `[feed_from, feed_to)`.
    pub(crate) feed_from: u64,
    pub(crate) feed_to: u64,
    /// Samples fed before the warm-up frames are flushed with the reservoir drained and
    /// dropped (0: none).
    pub(crate) preroll_samples: u64,
    /// Frames dropped there.
    pub(crate) preroll_frames: u64,
    /// The global number of its first kept frame (`F_k`).
    pub(crate) first_frame: u64,
    /// Frames it writes (0 for the last segment: whatever the final flush writes).
    pub(crate) frames: u64,
    /// The first segment writes LAME's info frame; the last ends with LAME's padding.
    pub(crate) first: bool,
    pub(crate) last: bool,
}

/// A segment's MP3 frames.
pub(crate) struct EncodedSegment {
    pub(crate) index: usize,
    /// The frames, back to back (the first segment's start with LAME's placeholder info
    /// frame, which is not counted in `frames`).
    pub(crate) file: File,
    /// Audio frames in `file`.
    pub(crate) frames: Vec<Frame>,
    /// LAME's info frame for the first segment.
    pub(crate) tag: Option<Vec<u8>>,
    /// Samples LAME was given.
    pub(crate) fed: u64,
    /// The global number of its first audio frame.
    pub(crate) first_frame: u64,
}

impl EncodedSegment {
    fn frame(&self, global: u64) -> Option<&Frame> {
        self.frames
            .get(usize::try_from(global.checked_sub(self.first_frame)?).ok()?)
    }
}

/// The cut of one input into segments.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) setup: SegmentSetup,
    pub(crate) segments: Vec<SegmentJob>,
    /// Samples of the MP3 (after the edit list), by the sample tables.
    pub(crate) total: u64,
    /// Samples the edit list drops at the start.
    pub(crate) skip: u64,
    pub(crate) frame_samples: u64,
    /// The track's sample tables, and where each segment's first packet is in them.
    pub(crate) local: LocalTrack,
}

/// The planner's reader of the track (without its file) and each segment's place in it:
/// a segment's reader opens the file again and starts there, with the tables parsed once.
pub(crate) struct LocalTrack {
    reader: lenient::Reader<()>,
    cursors: Vec<lenient::Cursor>,
}

impl std::fmt::Debug for LocalTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalTrack({} segment starts)", self.cursors.len())
    }
}

impl LocalTrack {
    /// A reader of `path` at the place `cursor` (none: the track's start).
    fn open(&self, path: &str, cursor: Option<lenient::Cursor>) -> io::Result<lenient::Reader<Tracked>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut reader = self.reader.with_source(Tracked::new(file, Default::default(), len));
        if let Some(cursor) = cursor {
            reader.resume(cursor);
        }
        Ok(reader)
    }
}

impl Plan {
    /// Samples of the MP3: up to the last segment's start by the plan, then what it was
    /// given.
    fn total_after(&self, segments: &[EncodedSegment]) -> u64 {
        let (Some(last), Some(encoded)) = (self.segments.last(), segments.last()) else {
            return self.total;
        };
        last.feed_from - self.skip + encoded.fed
    }
}

/// Samples LAME must be fed for frames `0..n` to be encoded and frame `n` not yet.
fn fed_for_frames(n: u64, frame_samples: u64) -> u64 {
    n * frame_samples + ENCODER_DELAY
}

/// Decoder warm-up packets: AAC's overlap-add needs the packet before; an MP3 in MP4 its
/// bit reservoir (up to 511 bytes back); ALAC, FLAC and PCM packets stand alone.
fn warmup_packets(params: &AudioCodecParameters, decoder: &str) -> usize {
    match params.codec {
        CODEC_ID_AAC if decoder == "fdk-aac" => 8,
        CODEC_ID_AAC => 2,
        CODEC_ID_MP3 => 8,
        CODEC_ID_ALAC | CODEC_ID_FLAC => 0,
        c if is_pcm(c) => 0,
        _ => 8,
    }
}

fn is_pcm(codec: symphonia::core::codecs::audio::AudioCodecId) -> bool {
    use symphonia::core::codecs::audio::well_known::*;
    [
        CODEC_ID_PCM_S16LE,
        CODEC_ID_PCM_S16BE,
        CODEC_ID_PCM_S24LE,
        CODEC_ID_PCM_S24BE,
        CODEC_ID_PCM_S32LE,
        CODEC_ID_PCM_S32BE,
        CODEC_ID_PCM_F32LE,
        CODEC_ID_PCM_F32BE,
        CODEC_ID_PCM_F64LE,
        CODEC_ID_PCM_F64BE,
        CODEC_ID_PCM_U8,
        CODEC_ID_PCM_S8,
    ]
    .contains(&codec)
}

/// What the planner needs besides the file.
pub(crate) struct PlanInput<'a> {
    pub(crate) track: &'a ChosenTrack,
    /// Audio tracks before it (the track option).
    pub(crate) wanted: Option<usize>,
    pub(crate) edit: Option<EditList>,
    pub(crate) quality: Quality,
    pub(crate) threads: usize,
    /// A fixed segment length (tests); otherwise chosen from the length and the threads.
    pub(crate) segment_secs: Option<f64>,
}

/// Cuts the track into segments, or says why it is encoded in one piece.
pub(crate) fn plan(reopen: &str, input: &PlanInput<'_>) -> std::result::Result<Plan, NotExact> {
    let no = |why: &str| NotExact(why.to_string());
    if input.threads < 2 {
        return Err(no("one thread"));
    }
    if matches!(input.quality, Quality::Cbr { kbps } if kbps < 64) {
        // LAME may write no info frame at low constant bitrates.
        return Err(no("a constant bitrate under 64 kbps"));
    }
    let file = File::open(reopen).map_err(|e| no(&e.to_string()))?;
    let len = file.metadata().map_err(|e| no(&e.to_string()))?.len();
    let source = Tracked::new(file, Default::default(), len);
    let (mut reader, info) = match lenient::open(source, len, input.wanted) {
        Ok(Some(opened)) => opened,
        _ => return Err(no("the sample tables could not be read")),
    };
    if info.id != input.track.id {
        return Err(no("the sample tables are another track's"));
    }
    let origin = reader.cursor();
    let mut ticks = Vec::new();
    loop {
        match reader.advance() {
            Ok(Some(at)) => ticks.push(at.dur),
            Ok(None) => break,
            Err(_) => return Err(no("a packet cannot be read")),
        }
    }
    reader.resume(origin);
    let mut local = LocalTrack {
        reader: reader.with_source(()),
        cursors: Vec::new(),
    };
    let (decoder, rate, channels) = probe(&local, reopen, input)?;
    if mp3_rate_for(rate) != rate {
        return Err(no("the rate is resampled"));
    }
    // Ticks to samples, exactly.
    let timescale = u64::from(info.timescale.max(1));
    let mut durations = Vec::with_capacity(ticks.len());
    for t in ticks {
        let scaled = t * u64::from(rate);
        if !scaled.is_multiple_of(timescale) {
            return Err(no("packet durations are not whole samples"));
        }
        durations.push(u32::try_from(scaled / timescale).map_err(|_| no("a packet is too long"))?);
    }
    let decoded: u64 = durations.iter().map(|&d| u64::from(d)).sum();
    let trim = trim_for(input.edit, input.track.duration_ts, rate);
    let total = decoded.saturating_sub(trim.skip).min(trim.keep.unwrap_or(u64::MAX));
    let secs = total as f64 / f64::from(rate);
    if secs < MIN_NWAY_SECS {
        return Err(no("too short"));
    }
    let frame_samples: u64 = if rate >= 32_000 { 1152 } else { 576 };
    let segment_secs = input.segment_secs.unwrap_or_else(|| {
        let balanced = (secs / (3 * input.threads) as f64).clamp(*SEGMENT_SECS.start(), *SEGMENT_SECS.end());
        if secs / balanced < input.threads as f64 {
            (secs / input.threads as f64).max(MIN_SEGMENT_SECS)
        } else {
            balanced
        }
    });
    let grid = total / frame_samples; // whole frames of audio
    let count = ((secs / segment_secs).round() as u64).clamp(1, grid / (4 * PREROLL_FRAMES));
    if count < 2 {
        return Err(no("one segment"));
    }
    let cuts: Vec<u64> = (0..=count).map(|k| k * grid / count).collect();
    let setup = SegmentSetup {
        params: input.track.params.clone(),
        decoder,
        rate,
        channels,
        quality: input.quality,
    };
    let warmup = warmup_packets(&setup.params, decoder);
    let mut starts = Vec::with_capacity(durations.len() + 1);
    let mut at = 0u64;
    for &d in &durations {
        starts.push(at);
        at += u64::from(d);
    }
    starts.push(at);
    // The packet holding decoded sample `s`.
    let packet_of = |s: u64| starts.partition_point(|&start| start <= s).saturating_sub(1);
    let mut segments = Vec::with_capacity(count as usize);
    for k in 0..count as usize {
        let (first, last) = (k == 0, k + 1 == count as usize);
        let from_frame = cuts[k].saturating_sub(if first { 0 } else { PREROLL_FRAMES });
        let to_frame = cuts.get(k + 1).copied();
        let feed_from = trim.skip + from_frame * frame_samples;
        // The last segment takes what the decoder gives up to the edit list's end: the
        // track's last packet may decode to more than the tables say it lasts.
        let feed_to = match to_frame {
            Some(to) if !last => trim.skip + fed_for_frames(to, frame_samples),
            _ => trim.keep.map_or(u64::MAX, |keep| trim.skip.saturating_add(keep)),
        };
        let first_needed = packet_of(feed_from);
        let first_packet = first_needed.saturating_sub(warmup);
        let end_packet = (packet_of(feed_to.min(decoded) - 1) + 1).min(durations.len());
        segments.push(SegmentJob {
            index: k,
            first_packet,
            durations: durations[first_packet..end_packet].to_vec(),
            packets_start: starts[first_packet],
            warmup_packets: first_needed - first_packet,
            feed_from,
            feed_to,
            preroll_samples: if first {
                0
            } else {
                fed_for_frames(cuts[k] - from_frame, frame_samples)
            },
            preroll_frames: cuts[k] - from_frame,
            first_frame: cuts[k],
            frames: if last { 0 } else { to_frame.unwrap_or(0) - cuts[k] },
            first,
            last,
        });
    }
    // Each segment's first packet's place in the tables (a second walk: the first one
    // could not know where the segments start).
    let mut packet = 0usize;
    for job in &segments {
        while packet < job.first_packet {
            match reader.advance() {
                Ok(Some(_)) => packet += 1,
                _ => return Err(no("a packet cannot be read")),
            }
        }
        local.cursors.push(reader.cursor());
    }
    Ok(Plan {
        setup,
        segments,
        total,
        skip: trim.skip,
        frame_samples,
        local,
    })
}

/// Decodes the track's first packets to learn what the whole-file decode will give: the
/// decoder chosen, the rate and the channels.
fn probe(
    local: &LocalTrack,
    reopen: &str,
    input: &PlanInput<'_>,
) -> std::result::Result<(&'static str, u32, usize), NotExact> {
    let no = |why: &str| NotExact(why.to_string());
    let mut reader = local.open(reopen, None).map_err(|e| no(&e.to_string()))?;
    let mut decoder = Decoder::new(&input.track.params).map_err(|e| no(&e.to_string()))?;
    for _ in 0..64 {
        let Ok(Some(packet)) = reader.next_packet() else { break };
        if let Ok(Some(pcm)) = decoder.decode(&packet)
            && pcm.frames() > 0
        {
            let channels = pcm.planes.len().min(2);
            return Ok((decoder.name(), pcm.rate, channels));
        }
    }
    Err(no("the first packets gave no audio"))
}

/// Encodes one segment from its packets (`job.durations.len()` of them, from
/// `job.first_packet`). `Ok(Err(_))` when the samples are not what the plan expected.
pub(crate) fn encode_segment(
    setup: &SegmentSetup,
    job: &SegmentJob,
    packets: impl Iterator<Item = io::Result<Packet>>,
    hooks: Hooks<'_>,
    progress: &dyn Fn(u64),
) -> Result<std::result::Result<EncodedSegment, NotExact>> {
    let no = |why: String| Ok(Err(NotExact(format!("segment {}: {why}", job.index))));
    let mut decoder = Decoder::chosen(&setup.params, setup.decoder)?;
    let mut encoder = if job.first {
        Mp3Encoder::new(setup.rate, setup.channels, setup.quality)?
    } else {
        Mp3Encoder::untagged(setup.rate, setup.channels, setup.quality)?
    };
    let mut warm = FrameWriter::new(io::sink());
    let mut out = FrameWriter::new(tempfile::tempfile()?);
    let want = job.feed_to - job.feed_from;
    let (mut at, mut fed) = (job.packets_start, 0u64);
    let mut flushed = job.preroll_samples == 0;
    let mut count = 0usize;
    for (i, packet) in packets.enumerate() {
        if hooks.canceled() {
            return Err(ConvertError::Canceled);
        }
        let packet = packet?;
        let Some(&expected) = job.durations.get(i) else {
            return no("more packets than planned".into());
        };
        count += 1;
        let (start, expected) = (at, u64::from(expected));
        at += expected;
        let warmup = i < job.warmup_packets;
        let mut pcm = match decoder.decode(&packet) {
            Ok(Some(pcm)) if !warmup => pcm,
            Ok(None) if !warmup && expected > 0 => return no(format!("packet {} gave no audio", job.first_packet + i)),
            Err(PacketError::Skip(why)) if !warmup => {
                return no(format!("packet {} is damaged: {why}", job.first_packet + i));
            }
            Err(PacketError::Fatal(e)) => return Err(e),
            _ => continue,
        };
        // The track's last packet may decode to more than it lasts (the rest is padding,
        // which the edit list cuts).
        let end_of_track = job.last && i + 1 == job.durations.len();
        let frames = pcm.frames() as u64;
        if (frames != expected && !(end_of_track && frames > expected)) || pcm.rate != setup.rate {
            return no(format!(
                "packet {} gave {} samples at {} Hz, the tables say {expected} at {} Hz",
                job.first_packet + i,
                pcm.frames(),
                pcm.rate,
                setup.rate
            ));
        }
        pcm.sanitize();
        fit_channels(&mut pcm.planes, setup.channels);
        // The part of this packet LAME is given.
        let from = job.feed_from.clamp(start, start + frames) - start;
        let to = job.feed_to.clamp(start, start + frames) - start;
        let mut from = from as usize;
        let to = to as usize;
        while from < to {
            let mut take = to - from;
            if !flushed {
                take = take.min((job.preroll_samples - fed) as usize);
            }
            let slices: Vec<&[f32]> = pcm.planes.iter().map(|p| &p[from..from + take]).collect();
            if flushed {
                encoder.encode(&slices, &mut out)?;
            } else {
                encoder.encode(&slices, &mut warm)?;
            }
            fed += take as u64;
            from += take;
            progress(take as u64);
            if !flushed && fed == job.preroll_samples {
                encoder.flush_nogap(&mut warm)?;
                if warm.frames.len() as u64 != job.preroll_frames {
                    return no(format!(
                        "{} warm-up frames, {} planned",
                        warm.frames.len(),
                        job.preroll_frames
                    ));
                }
                flushed = true;
            }
        }
    }
    if count != job.durations.len() || (fed != want && !job.last) || fed == 0 {
        return no(format!(
            "{count} of {} packets, {fed} of {want} samples",
            job.durations.len()
        ));
    }
    let tag_frames = usize::from(job.first);
    if job.last {
        encoder.flush(&mut out)?;
    } else {
        encoder.flush_nogap(&mut out)?;
        if out.frames.len() as u64 != job.frames + tag_frames as u64 {
            return no(format!(
                "{} frames, {} planned",
                out.frames.len() - tag_frames,
                job.frames
            ));
        }
    }
    let tag = if job.first {
        match encoder.tag_frame() {
            Some(tag) => Some(tag),
            None => return no("LAME wrote no info frame".into()),
        }
    } else {
        None
    };
    let mut frames = std::mem::take(&mut out.frames);
    frames.drain(..tag_frames);
    Ok(Ok(EncodedSegment {
        index: job.index,
        file: out.into_inner(),
        frames,
        tag,
        fed,
        first_frame: job.first_frame,
    }))
}

/// The packets of `plan`'s segment `job` read from the local file.
pub(crate) fn local_packets(
    reopen: &str,
    plan: &Plan,
    job: &SegmentJob,
) -> io::Result<impl Iterator<Item = io::Result<Packet>>> {
    let cursor = plan
        .local
        .cursors
        .get(job.index)
        .copied()
        .ok_or_else(|| io::Error::other("a segment the plan has no place for"))?;
    let mut reader = plan.local.open(reopen, Some(cursor))?;
    let mut left = job.durations.len();
    Ok(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        match reader.next_packet() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "fewer packets than planned",
            ))),
            Err(e) => Some(Err(io::Error::other(e))),
        }
    }))
}

/// Joins the segments (in order) into one MP3 with one info frame, after `id3`. Each
/// segment drained its reservoir at its first frame, so its frames follow the previous
/// segment's as they are. Returns the samples in it.
pub(crate) fn stitch<W: Write + Seek>(
    mut segments: Vec<EncodedSegment>,
    plan: &Plan,
    id3: &id3::Tag,
    out: &mut W,
) -> Result<u64> {
    segments.sort_by_key(|s| s.index);
    let total = plan.total_after(&segments);
    let starts: Vec<u64> = segments.iter().map(|s| s.first_frame).collect();
    let mut info = segments
        .first_mut()
        .and_then(|s| s.tag.take())
        .ok_or_else(|| ConvertError::Encoder("the first segment has no info frame".into()))?;
    if id3.frames().next().is_some() {
        id3.write_to(&mut *out, id3::Version::Id3v23)
            .map_err(|e| ConvertError::Io(io::Error::other(e)))?;
    }
    let tag_start = out.stream_position()?;
    out.write_all(&info)?;
    let mut music_crc = 0u16;
    let mut buf = vec![0u8; 64 * 1024];
    for (k, segment) in segments.iter_mut().enumerate() {
        let from = segment.first_frame;
        let to = starts
            .get(k + 1)
            .copied()
            .unwrap_or(segment.first_frame + segment.frames.len() as u64);
        if to != segment.first_frame + segment.frames.len() as u64 {
            return Err(ConvertError::Encoder(format!(
                "segment {k} does not end where the next starts"
            )));
        }
        let (Some(&first), Some(&last)) = (segment.frame(from), to.checked_sub(1).and_then(|t| segment.frame(t)))
        else {
            continue;
        };
        let (start, end) = (first.offset, last.end());
        segment.file.seek(SeekFrom::Start(start))?;
        let mut at = start;
        while at < end {
            let n = (buf.len() as u64).min(end - at) as usize;
            segment.file.read_exact(&mut buf[..n])?;
            music_crc = crc16(music_crc, &buf[..n]);
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
    }
    let end = out.stream_position()?;
    // Each segment's frames are all in the stream (checked above): no copy of the list.
    let all = segments.iter().flat_map(|s| s.frames.iter());
    rewrite_info(&mut info, all, plan.frame_samples, total, music_crc)?;
    out.seek(SeekFrom::Start(tag_start))?;
    out.write_all(&info)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(total)
}

/// Progress over every segment, reported in order.
struct Progress<'h> {
    done: AtomicU64,
    last: Mutex<u64>,
    total: u64,
    hooks: Hooks<'h>,
}

impl Progress<'_> {
    fn add(&self, samples: u64) {
        let Some(report) = self.hooks.progress else { return };
        let done = self.done.fetch_add(samples, Ordering::Relaxed) + samples;
        let permille = (done * 1000 / self.total.max(1)).min(999);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if permille >= *last + 5 {
            *last = permille;
            report(permille as f64 / 1000.0);
        }
    }
}

/// Extra cores a conversion may borrow, one segment at a time (the service's converter
/// slots); without it a conversion uses the threads it was given.
pub trait Slots: Send + Sync + std::fmt::Debug {
    /// Takes a free slot for one segment, if there is one.
    fn try_take(&self) -> bool;
    /// Gives it back.
    fn give_back(&self);
}

/// Runs the plan on `threads` threads (the first always; each other one a segment at a
/// time, while `slots` lends it a slot) and writes the MP3. `Ok(Err(_))`: encode in one piece instead (nothing written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<W: Write + Seek>(
    plan: &Plan,
    reopen: &str,
    threads: usize,
    slots: Option<&dyn Slots>,
    hooks: Hooks<'_>,
    id3: &id3::Tag,
    codec: String,
    expected: Option<Duration>,
    out: &mut W,
) -> Result<std::result::Result<Summary, NotExact>> {
    let progress = Progress {
        done: AtomicU64::new(0),
        last: Mutex::new(0),
        total: plan.total.max(1),
        hooks,
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<EncodedSegment>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<NotExact>> = Mutex::new(None);
    let work = |borrowed: bool| -> Result<()> {
        loop {
            if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                return Ok(());
            }
            if next.load(Ordering::Relaxed) >= plan.segments.len() {
                return Ok(());
            }
            if borrowed && !slots.is_none_or(|s| s.try_take()) {
                // Lent to a job for now: try again shortly, while segments remain.
                if hooks.canceled() {
                    return Ok(());
                }
                std::thread::sleep(BORROW_RETRY);
                continue;
            }
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = plan.segments.get(index) else {
                if borrowed && let Some(s) = slots {
                    s.give_back();
                }
                return Ok(());
            };
            let done = local_packets(reopen, plan, job)
                .map_err(ConvertError::Io)
                .and_then(|packets| encode_segment(&plan.setup, job, packets, hooks, &|n| progress.add(n)));
            if borrowed && let Some(s) = slots {
                s.give_back();
            }
            match done? {
                Ok(segment) => results.lock().unwrap_or_else(|p| p.into_inner()).push(segment),
                Err(not) => {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(not);
                    return Ok(());
                }
            }
        }
    };
    let extra = threads.min(plan.segments.len()).saturating_sub(1);
    std::thread::scope(|scope| -> Result<()> {
        let mut helpers = Vec::with_capacity(extra);
        for i in 0..extra {
            let work = &work;
            helpers.push(
                std::thread::Builder::new()
                    .name(format!("mp4tomp3-segment-{}", i + 1))
                    .spawn_scoped(scope, move || work(true))?,
            );
        }
        let mine = work(false);
        for helper in helpers {
            helper
                .join()
                .map_err(|_| ConvertError::Encoder("a segment's encoder crashed".into()))??;
        }
        mine
    })?;
    if let Some(not) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Ok(Err(not));
    }
    let segments = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let total = stitch(segments, plan, id3, out)?;
    if let Some(report) = hooks.progress {
        report(1.0);
    }
    Ok(Ok(Summary {
        codec,
        input_rate: plan.setup.rate,
        output_rate: plan.setup.rate,
        channels: plan.setup.channels,
        duration: Duration::from_secs_f64(total as f64 / f64::from(plan.setup.rate)),
        expected,
        concealed_packets: 0,
        ended_early: None,
        decoder: plan.setup.decoder,
        segments: plan.segments.len(),
    }))
}

/// LAME's seek table (`VbrTag.c`: `addVbr`, `Xing_seek_table`) for frames of these
/// bitrates: LAME sums bitrates, sampling the running sum into 400 slots that halve as
/// they fill. Reproduced exactly, so a stream joined from segments seeks as LAME's own.
fn lame_toc(kbps: impl Iterator<Item = u16>) -> [u8; 100] {
    const SIZE: usize = 400;
    let mut bag = [0i64; SIZE];
    let (mut sum, mut seen, mut want, mut pos) = (0i64, 0u64, 1u64, 0usize);
    for k in kbps {
        sum += i64::from(k);
        seen += 1;
        if seen < want {
            continue;
        }
        if pos < SIZE {
            bag[pos] = sum;
            pos += 1;
            seen = 0;
        }
        if pos == SIZE {
            for i in (1..SIZE).step_by(2) {
                bag[i / 2] = bag[i];
            }
            want *= 2;
            pos /= 2;
        }
    }
    let mut toc = [0u8; 100];
    if pos == 0 {
        return toc;
    }
    for (i, entry) in toc.iter_mut().enumerate().skip(1) {
        let j = i as f32 / 100f32;
        let index = ((j * pos as f32).floor() as usize).min(pos - 1);
        let (act, total) = (bag[index] as f32, sum as f32);
        *entry = ((256.0 * f64::from(act) / f64::from(total)) as i64).min(255) as u8;
    }
    toc
}

/// Rewrites a LAME info frame for a stream of these audio frames.
pub(crate) fn rewrite_info<'a>(
    info: &mut [u8],
    frames: impl Iterator<Item = &'a Frame> + Clone,
    frame_samples: u64,
    total_samples: u64,
    music_crc: u16,
) -> io::Result<()> {
    let bad = || io::Error::other("the encoder's info frame has an unexpected layout");
    let t = (0..64usize)
        .find(|&i| info.get(i..i + 4).is_some_and(|s| s == b"Info" || s == b"Xing"))
        .ok_or_else(bad)?;
    if info.len() < t + 156 || &info[t + 120..t + 124] != b"LAME" {
        return Err(bad());
    }
    let count = frames.clone().count() as u32;
    let audio_bytes: u64 = frames.clone().map(|f| u64::from(f.len)).sum();
    let stream_size = u32::try_from(audio_bytes + info.len() as u64).unwrap_or(u32::MAX);
    info[t + 8..t + 12].copy_from_slice(&count.to_be_bytes());
    info[t + 12..t + 16].copy_from_slice(&stream_size.to_be_bytes());
    info[t + 16..t + 116].copy_from_slice(&lame_toc(frames.map(|f| f.kbps)));
    let lame = t + 120;
    let delay = (u64::from(info[lame + 21]) << 4) | (u64::from(info[lame + 22]) >> 4);
    let padding = (u64::from(count) * frame_samples)
        .checked_sub(delay + total_samples)
        .ok_or_else(bad)?
        .min(0xfff);
    info[lame + 22] = (info[lame + 22] & 0xf0) | (padding >> 8) as u8;
    info[lame + 23] = padding as u8;
    info[lame + 28..lame + 32].copy_from_slice(&stream_size.to_be_bytes());
    info[lame + 32..lame + 34].copy_from_slice(&music_crc.to_be_bytes());
    let tag_crc = crc16(0, &info[..lame + 34]);
    info[lame + 34..lame + 36].copy_from_slice(&tag_crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::encode::Mp3Encoder;
    use super::super::frames::FrameWriter;
    use super::super::settings::Quality;
    use super::*;

    /// LAME's own info frame for a stream, and the stream's frames and audio bytes.
    fn lame_stream(samples: usize, quality: Quality) -> (Vec<u8>, Vec<Frame>, Vec<u8>) {
        let tone: Vec<f32> = (0..samples).map(|i| (i as f32 * 0.0627).sin() * 0.4).collect();
        let noise: Vec<f32> = (0..samples)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
            .collect();
        let mut enc = Mp3Encoder::new(44_100, 2, quality).unwrap();
        let mut out = FrameWriter::new(tempfile::tempfile().unwrap());
        enc.encode(&[tone, noise], &mut out).unwrap();
        enc.flush(&mut out).unwrap();
        let frames = std::mem::take(&mut out.frames);
        let mut file = out.into_inner();
        enc.write_tag(&mut file, 0).unwrap();
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        let info = bytes[..frames[0].len as usize].to_vec();
        let audio = bytes[frames[0].len as usize..].to_vec();
        (info, frames, audio)
    }

    #[test]
    fn rewriting_lames_info_frame_for_its_own_stream_reproduces_it_byte_for_byte() {
        for (samples, quality) in [
            (44_100 * 7 + 123, Quality::Cbr { kbps: 192 }),
            (44_100 * 31 + 5, Quality::Vbr { quality: 2 }),
            (44_100 * 3, Quality::Vbr { quality: 7 }),
        ] {
            let (info, frames, audio) = lame_stream(samples, quality);
            let mut ours = info.clone();
            rewrite_info(&mut ours, frames[1..].iter(), 1152, samples as u64, crc16(0, &audio)).unwrap();
            // Counts, seek table, padding, length, music CRC and tag CRC: all LAME's.
            assert_eq!(ours, info, "{quality:?}, {samples} samples");
        }
    }

    #[test]
    fn lame_encodes_frame_n_only_once_fed_past_its_lookahead() {
        // The flush points of the recipe: fed `n·S + 576` samples, frames 0..n are out.
        for (rate, frame_samples) in [(44_100, 1152u64), (22_050, 576)] {
            let mut enc = Mp3Encoder::new(rate, 1, Quality::Vbr { quality: 2 }).unwrap();
            let mut out = FrameWriter::new(io::sink());
            let n = 40;
            let fed = fed_for_frames(n, frame_samples) as usize;
            let tone: Vec<f32> = (0..fed).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
            enc.encode(&[tone], &mut out).unwrap();
            enc.flush_nogap(&mut out).unwrap();
            assert_eq!(out.frames.len() as u64, n + 1, "{rate} Hz: n frames and the info frame");
            assert!(out.frames.iter().skip(1).all(|f| f.len > 0));
            let more: Vec<f32> = vec![0.1; 1];
            enc.encode(&[more], &mut out).unwrap();
            enc.flush_nogap(&mut out).unwrap();
            assert_eq!(out.frames.len() as u64, n + 1, "one more sample encodes no frame");
        }
    }
}
