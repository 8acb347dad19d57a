//! The conversion engine: an MP4/M4A/MOV file in, an MP3 out, streaming.
//!
//! ```text
//! caller thread                                 decode thread
//! ─────────────                                 ─────────────
//! probe (symphonia), pick track, tags, edits
//!                          ── spawn ──►         demux → decode (fdk-aac | symphonia)
//!                                               → downmix → trim (edit list) → batch
//! LAME encode ◄── bounded channel of PCM ──────
//! finish: rewrite the Xing/LAME info frame
//! ```
//!
//! Decode and encode overlap on two threads; the channel is bounded, so memory does not
//! grow with the input's length. No actors and no I/O policy live here: callers choose
//! where files go (the CLI writes a temp file and renames it; the service does the same
//! under its data dir).

mod container;
mod decode;
mod downmix;
mod encode;
mod error;
mod frames;
mod lenient;
mod parallel;
mod settings;
mod split;
mod tags;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

pub use encode::{MP3_SAMPLE_RATES, mp3_rate_for};
pub use error::{ConvertError, Result};
pub use settings::{ConvertOptions, DEFAULT_KBPS, Quality, STANDARD_BITRATES};

use container::EditList;
use decode::{Decoder, PacketError, Pcm};
use encode::Mp3Encoder;
use parallel::{SplitContext, SplitPlan, convert_split};

/// Callbacks into a running conversion. Both are optional.
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    /// Called with the fraction done (0..=1), from the decode thread, at most every 0.5 %,
    /// and with 1.0 once the MP3 is complete.
    pub progress: Option<&'a (dyn Fn(f64) + Sync)>,
    /// Checked between packets; when it becomes true the conversion stops with
    /// [`ConvertError::Canceled`].
    pub cancel: Option<&'a AtomicBool>,
}

impl Hooks<'_> {
    fn canceled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// What a finished conversion produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The input's audio codec.
    pub codec: String,
    /// Decoded sample rate of the input.
    pub input_rate: u32,
    /// Sample rate of the MP3.
    pub output_rate: u32,
    /// Channels of the MP3 (1 or 2).
    pub channels: usize,
    /// Duration of the audio written, after edit-list trimming.
    pub duration: Duration,
    /// The duration the container states, when it does.
    pub expected: Option<Duration>,
    /// Damaged packets replaced with silence of their length.
    pub concealed_packets: u64,
    /// Why decoding stopped before the end of the track (a cut file), if it did.
    pub ended_early: Option<String>,
    /// The decoder that did the work: `symphonia` or `fdk-aac`.
    pub decoder: &'static str,
    /// Encoded as two halves at once and spliced (see `parallel.rs`).
    pub split: bool,
}

impl Summary {
    /// What a user should know about a partial result, in words (e.g. `recovered 18.3 s
    /// of 20.0 s; 55 damaged packets replaced with silence`); `None` when the input was
    /// whole.
    pub fn warning(&self) -> Option<String> {
        let got = self.duration.as_secs_f64();
        let short = self
            .expected
            .map(|e| e.as_secs_f64())
            .filter(|e| got < e - (e * 0.02).max(0.5));
        let mut parts = Vec::new();
        match (short, &self.ended_early) {
            (Some(e), Some(why)) => parts.push(format!("recovered {got:.1} s of {e:.1} s ({why})")),
            (Some(e), None) => parts.push(format!("recovered {got:.1} s of {e:.1} s")),
            (None, Some(why)) => parts.push(format!("recovered {got:.1} s ({why})")),
            (None, None) => {}
        }
        match self.concealed_packets {
            0 => {}
            1 => parts.push("1 damaged packet replaced with silence".into()),
            n => parts.push(format!("{n} damaged packets replaced with silence")),
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Frames gathered before a block is handed to the encoder thread.
const BATCH_FRAMES: usize = 8192;
/// Blocks in flight between the threads (≈ 4 × 8192 × 2 × 4 B = 256 KiB).
const CHANNEL_BLOCKS: usize = 4;
/// Largest audio sample (packet) accepted. AAC frames are under 8 KiB even at 8 channels,
/// ALAC's 4096-frame packets of 8 × 32-bit channels are 128 KiB; a larger size is forged,
/// and refusing it keeps symphonia from reading (and buffering) that much.
const MAX_AUDIO_SAMPLE_BYTES: u32 = 4 << 20;
/// Unreadable samples in a row after which decoding stops with what it has.
const MAX_DEMUX_ERRORS: u32 = 16;
/// Tracks beyond which the forgiving reader goes first (see `convert`).
const MANY_TRACKS: usize = 64;
/// Sample rates an audio track can really have; outside them, the container's is used.
const PLAUSIBLE_RATES: std::ops::RangeInclusive<u32> = 7_350..=384_000;

/// Converts the MP4 at `input` into MP3 bytes written to `out` (which must be seekable:
/// the info frame at its start is rewritten at the end).
pub fn convert_file<W: Write + Seek>(
    input: &Path,
    out: &mut W,
    opts: &ConvertOptions,
    hooks: Hooks<'_>,
) -> Result<Summary> {
    let file = File::open(input)?;
    convert(file, out, opts, hooks)
}

/// Copies a non-seekable input (stdin, a socket) into an anonymous temp file, rewound, so
/// it can be converted: MP4s often keep their index at the end.
pub fn spool(mut reader: impl Read) -> io::Result<File> {
    let mut file = tempfile::tempfile()?;
    io::copy(&mut reader, &mut file)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Converts the MP4 in `input` (read from its start) into MP3 bytes written to `out`.
///
/// symphonia reads the file first. When it refuses a damaged file before any audio came
/// out, the forgiving reader (`lenient.rs`) tries: it needs only the sample entry and
/// tables, and reads up to the end of a cut file.
pub fn convert<W: Write + Seek>(
    mut input: File,
    out: &mut W,
    opts: &ConvertOptions,
    hooks: Hooks<'_>,
) -> Result<Summary> {
    let quality = opts.quality.validate()?;
    // A second and third view of the same file, for the halves of a split encoding.
    let reopen = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&input));
    let container = container::read_container(&mut input).map_err(classify_container_io)?;
    if let Some((samples, size)) = container.impossible_run {
        return Err(ConvertError::Corrupt(format!(
            "a track fragment claims {samples} samples of {size} bytes, more than the file holds"
        )));
    }
    input.seek(SeekFrom::Start(0))?;
    let len = input.metadata()?.len();
    let again = input.try_clone()?;
    let out_start = out.stream_position()?;
    let ctx = Attempt {
        container: &container,
        len,
        opts,
        quality,
        hooks,
    };
    // symphonia interleaves every track's samples, looking at each track for each one:
    // thousands of tracks (a damaged or hostile file) take it seconds. The forgiving reader
    // reads only the audio track.
    if container.tracks > MANY_TRACKS
        && let Some(summary) = convert_lenient(again.try_clone()?, &ctx, out)?
    {
        return Ok(summary);
    }
    match convert_symphonia(input, &reopen, &ctx, out) {
        Err(e) if e.may_be_damage() && out.stream_position()? == out_start => {
            match convert_lenient(again, &ctx, out)? {
                Some(summary) => Ok(summary),
                None => Err(e),
            }
        }
        other => other,
    }
}

/// What both readers' attempts share.
struct Attempt<'a, 'h> {
    container: &'a container::Container,
    len: u64,
    opts: &'a ConvertOptions,
    quality: Quality,
    hooks: Hooks<'h>,
}

impl Attempt<'_, '_> {
    /// Refuses a track with a forged sample size before symphonia reads (and buffers)
    /// that much; the forgiving reader skips such samples one by one instead.
    fn check_sample_sizes(&self, track: &ChosenTrack) -> Result<()> {
        let max_sample = self.container.max_sample_sizes.iter().find(|(id, _)| *id == track.id);
        if let Some(&(_, size)) = max_sample.filter(|(_, size)| *size > MAX_AUDIO_SAMPLE_BYTES) {
            return Err(ConvertError::Corrupt(format!(
                "the audio track claims a {size}-byte sample; no audio codec needs more than {MAX_AUDIO_SAMPLE_BYTES}"
            )));
        }
        Ok(())
    }

    /// Refuses a duration over the limit. Returns the edit list and the known duration.
    fn check(&self, track: &ChosenTrack) -> Result<(Option<EditList>, Option<f64>)> {
        let container = self.container;
        let edit = container.edits.iter().find(|(id, _)| *id == track.id).map(|(_, e)| *e);
        let known_secs = track.known_secs(edit);
        if let (Some(limit), Some(secs)) = (self.opts.max_duration, known_secs)
            && secs > limit.as_secs_f64()
        {
            return Err(ConvertError::TooLong {
                actual_secs: secs,
                limit_secs: limit.as_secs_f64(),
            });
        }
        Ok((edit, known_secs))
    }

    fn job(&self, track: &ChosenTrack, edit: Option<EditList>, position: Arc<AtomicU64>) -> DecodeJob<'_> {
        DecodeJob {
            track_id: track.id,
            duration_ts: track.duration_ts,
            edit,
            max_duration: self.opts.max_duration,
            truncated: self.container.truncated,
            position,
            len: self.len,
            hooks: self.hooks,
            window: None,
            timebase: track.timebase,
            fallback_rate: track.fallback_rate,
        }
    }
}

/// The duration a container states, if believable.
fn expected_duration(known_secs: Option<f64>) -> Option<Duration> {
    known_secs
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
}

/// The conversion through symphonia's reader: split in two halves when long enough.
fn convert_symphonia<W: Write + Seek>(
    input: File,
    reopen: &str,
    ctx: &Attempt<'_, '_>,
    out: &mut W,
) -> Result<Summary> {
    let container = ctx.container;
    let position = Arc::new(AtomicU64::new(0));
    let source = Tracked::padded(input, position.clone(), ctx.len, container.moov_cut);
    let (mut format, track) = open_track(source, container.truncated, ctx.opts.track)?;
    ctx.check_sample_sizes(&track)?;
    let (edit, known_secs) = ctx.check(&track)?;
    let expected = expected_duration(known_secs);
    let id3 = tags::id3_from_metadata(format.metadata().skip_to_latest());
    let decoder = Decoder::new(&track.params)?;
    let codec = decode::codec_name(&track.params);
    tracing::debug!(%codec, track = track.id, ?edit, "converting");
    // The halves read the file afresh, without the zeros a cut moov is padded with.
    let whole = container.moov_cut.is_none();
    if let Some(plan) = SplitPlan::new(&track, ctx.quality, known_secs).filter(|_| !ctx.opts.sequential && whole)
        && let Some(summary) = convert_split(
            &plan,
            reopen,
            SplitContext {
                track: ctx.opts.track,
                truncated: container.truncated,
                edit,
                max_duration: ctx.opts.max_duration,
                quality: ctx.quality,
                hooks: ctx.hooks,
                id3: &id3,
                codec: codec.clone(),
                expected,
            },
            out,
        )?
    {
        return Ok(summary);
    }
    let job = ctx.job(&track, edit, position);
    run_sequential(
        job,
        Demuxer::Symphonia(format),
        decoder,
        out,
        ctx,
        &id3,
        codec,
        expected,
    )
}

/// The conversion through the forgiving reader; `None` when it finds no audio track
/// either.
fn convert_lenient<W: Write + Seek>(input: File, ctx: &Attempt<'_, '_>, out: &mut W) -> Result<Option<Summary>> {
    let position = Arc::new(AtomicU64::new(0));
    let source = Tracked::new(input, position.clone(), ctx.len);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lenient::open(source, ctx.len, ctx.opts.track)
    }))
    .map_err(|_| demuxer_panic())?;
    let Some((reader, info)) = opened? else {
        return Ok(None);
    };
    let timebase = 1.0 / f64::from(info.timescale.max(1));
    let track = ChosenTrack {
        id: info.id,
        duration_ts: (info.duration > 0).then_some((info.duration, timebase)),
        timebase: Some(timebase),
        fallback_rate: info.fallback_rate,
        params: info.params,
    };
    let (edit, known_secs) = ctx.check(&track)?;
    let decoder = Decoder::new(&track.params)?;
    let codec = decode::codec_name(&track.params);
    tracing::debug!(%codec, track = track.id, ?edit, "converting with the forgiving reader");
    let job = ctx.job(&track, edit, position);
    let demuxer = Demuxer::Lenient(Box::new(reader));
    let id3 = id3::Tag::new();
    run_sequential(
        job,
        demuxer,
        decoder,
        out,
        ctx,
        &id3,
        codec,
        expected_duration(known_secs),
    )
    .map(Some)
}

/// Decodes on one thread and encodes on this one.
#[allow(clippy::too_many_arguments)]
fn run_sequential<W: Write + Seek>(
    job: DecodeJob<'_>,
    demuxer: Demuxer,
    decoder: Decoder,
    out: &mut W,
    ctx: &Attempt<'_, '_>,
    id3: &id3::Tag,
    codec: String,
    expected: Option<Duration>,
) -> Result<Summary> {
    let hooks = ctx.hooks;
    let (tx, rx) = sync_channel(CHANNEL_BLOCKS);
    std::thread::scope(|scope| {
        let decoding = std::thread::Builder::new()
            .name("mp4tomp3-decode".into())
            .spawn_scoped(scope, move || job.run(demuxer, decoder, tx))?;
        let encoded = encode_blocks(rx, out, ctx.quality, id3, hooks);
        // symphonia has asserts that malformed input can reach (found by tests/hostile.rs):
        // a panic while demuxing or decoding is the input's fault, reported as corrupt.
        let decoded = decoding.join().map_err(|_| demuxer_panic())?;
        // A decode failure explains an encoder that stopped for want of input, so it wins.
        let stats = decoded?;
        let (input_rate, output_rate, channels, frames) = encoded?;
        if frames == 0 {
            return Err(ConvertError::Corrupt("no audio could be decoded".into()));
        }
        // A damaged input whose good packets hold less than half a second, or only silence,
        // gave nothing worth calling a recovery: what came out is concealment.
        let duration = Duration::from_secs_f64(frames as f64 / f64::from(input_rate.max(1)));
        let short =
            expected.is_some_and(|e| duration.as_secs_f64() < e.as_secs_f64() - (e.as_secs_f64() * 0.02).max(0.5));
        let damaged = stats.concealed > 0 || stats.ended_early.is_some() || short;
        let good_secs = stats.good_frames as f64 / f64::from(input_rate.max(1));
        if damaged && (good_secs < 0.5 || !stats.heard) {
            let what = if stats.heard {
                "less than half a second"
            } else {
                "only silence"
            };
            let n = stats.concealed;
            let packets = if n == 1 { "packet" } else { "packets" };
            return Err(ConvertError::Corrupt(format!(
                "the damaged audio track gave {what} ({good_secs:.2} s decoded; {n} damaged {packets} replaced with silence)"
            )));
        }
        if let Some(progress) = hooks.progress {
            progress(1.0);
        }
        Ok(Summary {
            codec,
            input_rate,
            output_rate,
            channels,
            duration,
            expected,
            concealed_packets: stats.concealed,
            ended_early: stats.ended_early,
            decoder: stats.decoder,
            split: false,
        })
    })
}

/// Where packets come from: symphonia's reader, or the forgiving one.
enum Demuxer {
    Symphonia(Box<dyn FormatReader>),
    Lenient(Box<lenient::Reader<Tracked>>),
}

impl Demuxer {
    fn next_packet(&mut self) -> std::result::Result<Option<symphonia::core::packet::Packet>, SymphoniaError> {
        match self {
            Demuxer::Symphonia(format) => format.next_packet(),
            Demuxer::Lenient(reader) => reader.next_packet(),
        }
    }
}

/// Encodes what the decode thread sends; returns (input rate, output rate, channels, frames).
fn encode_blocks<W: Write + Seek>(
    rx: Receiver<Pcm>,
    out: &mut W,
    quality: Quality,
    id3: &id3::Tag,
    hooks: Hooks<'_>,
) -> Result<(u32, u32, usize, u64)> {
    let Ok(first) = rx.recv() else {
        // The decode thread ended without audio; its own result says why.
        return Ok((0, 0, 0, 0));
    };
    let (rate, channels) = (first.rate, first.planes.len());
    let mut encoder = Mp3Encoder::new(rate, channels, quality)?;
    if id3.frames().next().is_some() {
        id3.write_to(&mut *out, id3::Version::Id3v23)
            .map_err(|e| ConvertError::Io(io::Error::other(e)))?;
    }
    let audio_start = out.stream_position()?;
    let mut frames = 0u64;
    for block in std::iter::once(first).chain(rx.iter()) {
        if hooks.canceled() {
            return Err(ConvertError::Canceled);
        }
        frames += block.frames() as u64;
        encoder.encode(&block.planes, out)?;
    }
    encoder.finish(out, audio_start)?;
    Ok((rate, mp3_rate_for(rate), channels, frames))
}

/// The chosen audio track.
struct ChosenTrack {
    id: u32,
    params: symphonia::core::codecs::audio::AudioCodecParameters,
    /// Track duration in its timebase, with the timebase, when the container states it.
    duration_ts: Option<(u64, f64)>,
    /// The timebase (seconds per tick), when stated.
    timebase: Option<f64>,
    /// A plausible sample rate from the container (sample entry, else media timescale).
    fallback_rate: Option<u32>,
}

impl ChosenTrack {
    /// The playable duration in seconds, if the container says.
    fn known_secs(&self, edit: Option<EditList>) -> Option<f64> {
        if let Some(e) = edit.filter(|e| e.segment_duration > 0) {
            return Some(e.segment_duration as f64 / f64::from(e.movie_timescale));
        }
        self.duration_ts.map(|(d, tb)| d as f64 * tb)
    }
}

/// Probes the input; `truncated` (from the box walk) turns probe failures into
/// [`ConvertError::Truncated`], since a cut-off `moov` is not a different format.
fn open_format(source: Tracked, truncated: bool) -> Result<Box<dyn FormatReader + 'static>> {
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp4");
    let format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| match e {
            SymphoniaError::IoError(io) if io.kind() != io::ErrorKind::UnexpectedEof => ConvertError::Io(io),
            other if truncated => ConvertError::Truncated(other.to_string()),
            SymphoniaError::Unsupported(_) => ConvertError::NotMp4("no MP4 structure found".into()),
            other => ConvertError::NotMp4(other.to_string()),
        })?;
    if format.format_info().short_name != "isomp4" {
        return Err(ConvertError::NotMp4(format!(
            "the file is {}",
            format.format_info().long_name
        )));
    }
    Ok(format)
}

/// Probes the input and picks its audio track. symphonia can panic on malformed input
/// (see tests/hostile.rs): a panic here is reported as corrupt media.
fn open_track(
    source: Tracked,
    truncated: bool,
    wanted: Option<usize>,
) -> Result<(Box<dyn FormatReader + 'static>, ChosenTrack)> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let format = open_format(source, truncated)?;
        let track = pick_track(format.as_ref(), wanted)?;
        Ok((format, track))
    }))
    .map_err(|_| demuxer_panic())?
}

fn pick_track(format: &dyn FormatReader, wanted: Option<usize>) -> Result<ChosenTrack> {
    let audio: Vec<_> = format
        .tracks()
        .iter()
        .filter_map(|t| decode::audio_params(t.codec_params.as_ref()).map(|p| (t, p)))
        .collect();
    if audio.is_empty() {
        return Err(ConvertError::NoAudioTrack);
    }
    let index = wanted.unwrap_or(0);
    let (track, params) = audio.get(index).ok_or(ConvertError::NoSuchTrack {
        requested: index,
        available: audio.len(),
    })?;
    let timebase = track
        .time_base
        .map(|tb| f64::from(tb.numer.get()) / f64::from(tb.denom.get()));
    let duration_ts = match (track.duration, timebase) {
        (Some(d), Some(tb)) if d.get() > 0 => Some((d.get(), tb)),
        _ => None,
    };
    let timescale = track
        .time_base
        .filter(|tb| tb.numer.get() == 1)
        .map(|tb| tb.denom.get());
    let fallback_rate = [params.sample_rate, timescale]
        .into_iter()
        .flatten()
        .find(|r| PLAUSIBLE_RATES.contains(r));
    Ok(ChosenTrack {
        id: track.id,
        params: (*params).clone(),
        duration_ts,
        timebase,
        fallback_rate,
    })
}

/// The error for a panic inside symphonia: only malformed input has been seen to cause one.
fn demuxer_panic() -> ConvertError {
    ConvertError::Corrupt("malformed media stopped the demuxer".into())
}

/// An I/O error while walking the box tree: broken structure means "not an MP4".
fn classify_container_io(e: io::Error) -> ConvertError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ConvertError::NotMp4(e.to_string()),
        _ => ConvertError::Io(e),
    }
}

/// What the decode thread needs besides the reader and the decoder.
struct DecodeJob<'h> {
    track_id: u32,
    duration_ts: Option<(u64, f64)>,
    edit: Option<EditList>,
    max_duration: Option<Duration>,
    /// The box walk found the file cut short: demuxer errors mean "truncated".
    truncated: bool,
    position: Arc<AtomicU64>,
    len: u64,
    hooks: Hooks<'h>,
    /// Only these samples (after the edit list) go to the encoder: one half of a split.
    window: Option<Trim>,
    /// The track's timebase (seconds per tick), for the length of a damaged packet.
    timebase: Option<f64>,
    /// The rate to use when the decoder reports an impossible one: the sample entry's or
    /// the media timescale, if plausible.
    fallback_rate: Option<u32>,
}

/// Counts from the decode thread.
struct DecodeStats {
    /// Damaged packets replaced with silence.
    concealed: u64,
    /// Frames decoded from good packets (not concealment), at the stream's rate.
    good_frames: u64,
    /// Whether any good packet held sound (a sample above −80 dBFS).
    heard: bool,
    /// Why decoding stopped before the end of the track, if it did.
    ended_early: Option<String>,
    decoder: &'static str,
}

/// Silence owed for damaged packets met before the first good packet told the layout.
#[derive(Default)]
struct Owed {
    packets: u64,
    /// Their length by the container's timing (each packet under 10 s).
    secs: f64,
}

impl Owed {
    /// The frames owed at `rate`: their timed length, but no more than `longest` (a good
    /// packet's frames) for each, so forged timing cannot turn a few damaged packets into
    /// hours of silence.
    fn frames(&self, rate: u32, longest: usize) -> usize {
        let timed = (self.secs * f64::from(rate)).round() as u64;
        timed.min(self.packets.saturating_mul(longest as u64)) as usize
    }
}

/// Where decoded audio goes: the edit-list trim, the split window, the duration limit,
/// then batches to the encoder thread.
struct Sink {
    tx: SyncSender<Pcm>,
    trim: Trim,
    window: Option<Trim>,
    emitted: u64,
    batch: Pcm,
    max_duration: Option<Duration>,
}

/// Whether to go on decoding.
#[derive(Debug)]
enum Flow {
    More,
    /// Everything wanted was emitted.
    Done,
    /// The encoder is gone.
    Stopped,
}

impl Sink {
    fn push(&mut self, mut pcm: Pcm) -> Result<Flow> {
        let rate = pcm.rate;
        let mut more = self.trim.apply(&mut pcm);
        if let Some(window) = self.window.as_mut() {
            more &= window.apply(&mut pcm);
        }
        self.emitted += pcm.frames() as u64;
        if let Some(limit) = self.max_duration {
            let secs = self.emitted as f64 / f64::from(rate);
            if secs > limit.as_secs_f64() {
                return Err(ConvertError::TooLong {
                    actual_secs: secs,
                    limit_secs: limit.as_secs_f64(),
                });
            }
        }
        let fresh = self.batch.planes.is_empty();
        self.batch.append(pcm);
        if fresh {
            self.batch.planes.iter_mut().for_each(|p| p.reserve(BATCH_FRAMES));
        }
        if self.batch.frames() >= BATCH_FRAMES && self.tx.send(std::mem::take(&mut self.batch)).is_err() {
            return Ok(Flow::Stopped);
        }
        Ok(if more { Flow::More } else { Flow::Done })
    }

    /// `frames` of silence, a batch at a time: the duration limit and the encoder see it
    /// as they would decoded audio, and it never sits in memory whole.
    fn push_silence(&mut self, (rate, channels): (u32, usize), mut frames: usize) -> Result<Flow> {
        while frames > 0 {
            let now = frames.min(BATCH_FRAMES);
            frames -= now;
            match self.push(Pcm::silence(rate, channels, now))? {
                Flow::More => {}
                stop => return Ok(stop),
            }
        }
        Ok(Flow::More)
    }

    fn finish(self) {
        if self.batch.frames() > 0 {
            let _ = self.tx.send(self.batch);
        }
    }
}

/// An I/O error from the demuxer that says the data is bad (a cut file, an offset past
/// any file), not that the disk failed.
fn is_data_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}

/// Applies the edit list: drops priming at the start and padding at the end.
struct Trim {
    skip: u64,
    keep: Option<u64>,
}

impl Trim {
    /// Cuts `pcm` in place; returns false once everything wanted has been emitted.
    fn apply(&mut self, pcm: &mut Pcm) -> bool {
        let frames = pcm.frames() as u64;
        let drop_front = self.skip.min(frames);
        self.skip -= drop_front;
        let mut take = frames - drop_front;
        if let Some(keep) = self.keep.as_mut() {
            take = take.min(*keep);
            *keep -= take;
        }
        let (from, to) = (drop_front as usize, (drop_front + take) as usize);
        if from > 0 || to < frames as usize {
            for plane in &mut pcm.planes {
                plane.truncate(to);
                plane.drain(..from);
            }
        }
        self.keep != Some(0)
    }
}

impl DecodeJob<'_> {
    /// Demuxes and decodes the track, sending PCM to the encoder. A damaged packet becomes
    /// silence of its length; an unreadable sample or a cut file ends decoding with what
    /// came before. Fails when nothing decodes or when most packets are damaged.
    fn run(mut self, mut format: Demuxer, mut decoder: Decoder, tx: SyncSender<Pcm>) -> Result<DecodeStats> {
        let mut packets = 0u64;
        let mut bad = 0u64;
        let (mut good_frames, mut heard) = (0u64, false);
        let mut demux_errors = 0u32;
        let mut ended_early: Option<(String, bool)> = None;
        let mut layout: Option<(u32, usize)> = None;
        // Silence owed for damaged packets met before the first good one set the layout.
        let mut owed = Owed::default();
        // The most frames one good packet decoded to: a damaged packet of the same track
        // lasts no longer, whatever its (perhaps forged) timing says.
        let mut longest = 1usize;
        let mut sink = Sink {
            tx,
            trim: Trim { skip: 0, keep: None },
            window: self.window.take(),
            emitted: 0,
            batch: Pcm::default(),
            max_duration: self.max_duration,
        };
        let mut last_progress = 0.0f64;
        loop {
            if self.hooks.canceled() {
                return Err(ConvertError::Canceled);
            }
            let packet = match format.next_packet() {
                Ok(Some(p)) => {
                    demux_errors = 0;
                    p
                }
                Ok(None) => {
                    // The reader found an end, but the box walk says the file was cut short.
                    if self.truncated {
                        ended_early = Some(("the last box is cut short".into(), true));
                    }
                    break;
                }
                Err(SymphoniaError::IoError(e)) if !is_data_error(&e) => return Err(ConvertError::Io(e)),
                Err(e) => {
                    // A cut file, or a sample the tables place where it cannot be read:
                    // keep what came before (and what comes after, if the reader goes on).
                    let cut = self.truncated
                        || matches!(&e, SymphoniaError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof);
                    demux_errors += 1;
                    if cut || demux_errors >= MAX_DEMUX_ERRORS {
                        ended_early = Some((e.to_string(), cut));
                        break;
                    }
                    tracing::debug!(error = %e, "an unreadable audio sample");
                    continue;
                }
            };
            if packet.track_id != self.track_id {
                continue;
            }
            packets += 1;
            self.report_progress(packet.pts.get(), &mut last_progress);
            let pcm = match decoder.decode(&packet) {
                Ok(Some(pcm)) => {
                    good_frames += pcm.frames() as u64;
                    heard = heard || pcm.planes.iter().flatten().any(|s| s.abs() > 1e-4);
                    pcm
                }
                Ok(None) => continue,
                Err(PacketError::Fatal(e)) => return Err(e),
                Err(PacketError::Skip(why)) => {
                    bad += 1;
                    tracing::debug!(packet = packets, %why, "a damaged audio packet becomes silence");
                    if packets >= 64 && bad * 10 > packets * 9 {
                        return Err(ConvertError::Corrupt(format!(
                            "{bad} of {packets} audio packets did not decode (last: {why})"
                        )));
                    }
                    let secs = self.packet_secs(&packet);
                    let Some((rate, channels)) = layout else {
                        owed.packets += 1;
                        owed.secs += secs.unwrap_or(0.0);
                        continue;
                    };
                    let frames = secs.map_or(longest, |s| (s * f64::from(rate)).round() as usize);
                    Pcm::silence(rate, channels, frames.min(longest))
                }
            };
            let mut pcm = pcm;
            pcm.sanitize();
            if !PLAUSIBLE_RATES.contains(&pcm.rate) {
                pcm.rate = self.fallback_rate.ok_or_else(|| {
                    ConvertError::Corrupt(format!("the audio claims an impossible sample rate ({} Hz)", pcm.rate))
                })?;
            }
            longest = longest.max(pcm.frames());
            let (rate, channels) = match layout {
                Some(known) => known,
                None => {
                    let known = (pcm.rate, pcm.planes.len());
                    layout = Some(known);
                    sink.trim = self.trim_for(pcm.rate);
                    if let Flow::Done | Flow::Stopped = sink.push_silence(known, owed.frames(pcm.rate, longest))? {
                        break;
                    }
                    known
                }
            };
            if pcm.rate != rate {
                return Err(ConvertError::Corrupt(format!(
                    "sample rate changes mid-stream ({rate} Hz → {} Hz)",
                    pcm.rate
                )));
            }
            fit_channels(&mut pcm.planes, channels);
            match sink.push(pcm)? {
                Flow::More => {}
                Flow::Done => break,
                // The encoder stopped; its error is reported by the caller.
                Flow::Stopped => break,
            }
        }
        if sink.emitted == 0 {
            return Err(match ended_early {
                Some((why, true)) if bad == 0 => ConvertError::Truncated(why),
                Some((why, _)) if bad == 0 => ConvertError::Corrupt(format!("no audio sample could be read ({why})")),
                _ if bad > 0 => ConvertError::Corrupt(format!("none of the {packets} audio packets decoded")),
                _ => ConvertError::Corrupt("the audio track holds no audio".into()),
            });
        }
        if bad * 2 > packets {
            return Err(ConvertError::Corrupt(format!(
                "{bad} of {packets} audio packets did not decode"
            )));
        }
        sink.finish();
        Ok(DecodeStats {
            concealed: bad,
            good_frames,
            heard,
            ended_early: ended_early.map(|(why, cut)| {
                if cut {
                    "the file ends early".to_string()
                } else {
                    format!("the rest is unreadable: {why}")
                }
            }),
            decoder: decoder.name(),
        })
    }

    /// How long a packet lasts, from the container's timing.
    fn packet_secs(&self, packet: &symphonia::core::packet::Packet) -> Option<f64> {
        let tb = self.timebase?;
        let secs = packet.dur.get() as f64 * tb;
        (secs > 0.0 && secs < 10.0).then_some(secs)
    }

    /// The edit list's trim at `rate`, unless the edit list cannot be right: a start at or
    /// beyond the end of the track, or a kept length under half of the rest (a damaged
    /// timescale), when the track's duration is known. Then the whole track is kept.
    fn trim_for(&self, rate: u32) -> Trim {
        let Some(edit) = self.edit else {
            return Trim { skip: 0, keep: None };
        };
        let (skip, keep) = (edit.skip_frames(rate), edit.keep_frames(rate));
        let total = self.duration_ts.map(|(d, tb)| (d as f64 * tb * f64::from(rate)) as u64);
        let plausible = match total {
            Some(total) if total > 0 => skip < total && keep.is_none_or(|k| k.saturating_mul(2) >= total - skip),
            _ => skip < u64::from(rate) * 60,
        };
        if plausible {
            Trim { skip, keep }
        } else {
            tracing::debug!(?edit, ?total, "ignoring an edit list that cannot be right");
            Trim { skip: 0, keep: None }
        }
    }

    fn report_progress(&self, pts: i64, last: &mut f64) {
        let Some(progress) = self.hooks.progress else {
            return;
        };
        let fraction = match self.duration_ts {
            Some((duration, _)) => pts.max(0) as f64 / duration as f64,
            None => self.position.load(Ordering::Relaxed) as f64 / self.len.max(1) as f64,
        }
        .clamp(0.0, 0.999);
        if fraction >= *last + 0.005 {
            *last = fraction;
            progress(fraction);
        }
    }
}

/// Makes `planes` have `channels` planes: mono is duplicated, stereo averaged.
fn fit_channels(planes: &mut Vec<Vec<f32>>, channels: usize) {
    match (planes.len(), channels) {
        (1, 2) => planes.push(planes[0].clone()),
        (2, 1) => {
            let right = planes.pop().unwrap_or_default();
            for (l, r) in planes[0].iter_mut().zip(right) {
                *l = (*l + r) * 0.5;
            }
        }
        _ => {}
    }
}

/// The input file, with its read position published for byte-based progress. A file cut
/// a few bytes into its final `moov` reads as zeros from its end up to `len`.
struct Tracked {
    file: File,
    position: Arc<AtomicU64>,
    len: u64,
    /// Where the file's own bytes end (`len` unless padded).
    real_len: u64,
    /// The read position (the file's own, except past `real_len`).
    at: u64,
}

impl Tracked {
    fn new(file: File, position: Arc<AtomicU64>, len: u64) -> Tracked {
        Tracked::padded(file, position, len, None)
    }

    fn padded(file: File, position: Arc<AtomicU64>, len: u64, pad_to: Option<u64>) -> Tracked {
        Tracked {
            file,
            position,
            len: pad_to.unwrap_or(len).max(len),
            real_len: len,
            at: 0,
        }
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.at >= self.real_len {
            let n = buf
                .len()
                .min(usize::try_from(self.len.saturating_sub(self.at)).unwrap_or(usize::MAX));
            buf[..n].fill(0);
            n
        } else {
            self.file.read(buf)?
        };
        self.at += n as u64;
        self.position.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Tracked {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.file.seek(SeekFrom::Start(target))?;
        self.at = target;
        self.position.store(target, Ordering::Relaxed);
        Ok(target)
    }
}

impl MediaSource for Tracked {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_drops_priming_and_padding_across_blocks() {
        let mut trim = Trim {
            skip: 1500,
            keep: Some(1000),
        };
        let block = |n: usize| Pcm {
            rate: 44_100,
            planes: vec![(0..n).map(|i| i as f32).collect()],
        };
        let mut a = block(1024);
        assert!(trim.apply(&mut a));
        assert_eq!(a.frames(), 0);
        let mut b = block(1024);
        assert!(trim.apply(&mut b));
        assert_eq!(b.frames(), 548);
        assert_eq!(b.planes[0][0], 476.0, "starts right after the skipped samples");
        let mut c = block(1024);
        assert!(!trim.apply(&mut c), "the keep budget is spent");
        assert_eq!(c.frames(), 452);
    }

    #[test]
    fn owed_silence_lasts_no_longer_than_a_good_packet_for_each_damaged_one() {
        let owed = Owed { packets: 3, secs: 0.05 };
        assert_eq!(owed.frames(48_000, 1024), 2400, "the timed length when under the cap");
        let forged = Owed {
            packets: 63,
            secs: 63.0 * 9.9,
        };
        assert_eq!(forged.frames(384_000, 65_536), 63 * 65_536, "forged timing is capped");
        assert_eq!(Owed::default().frames(48_000, 1024), 0);
    }

    #[test]
    fn silence_reaches_the_encoder_a_batch_at_a_time_under_the_duration_limit() {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let mut sink = Sink {
            tx,
            trim: Trim { skip: 0, keep: None },
            window: None,
            emitted: 0,
            batch: Pcm::default(),
            max_duration: Some(Duration::from_secs(1)),
        };
        assert!(matches!(
            sink.push_silence((48_000, 2), 3 * BATCH_FRAMES / 2 + 7).unwrap(),
            Flow::More
        ));
        assert_eq!(rx.try_recv().unwrap().frames(), BATCH_FRAMES, "one full batch is sent");
        assert!(rx.try_recv().is_err(), "the rest waits in the batch");
        assert_eq!(sink.emitted, (3 * BATCH_FRAMES / 2 + 7) as u64);
        // Hours of silence stop at the limit after a second's worth, not after allocation.
        let err = sink.push_silence((48_000, 2), usize::MAX / 16).unwrap_err();
        assert!(matches!(err, ConvertError::TooLong { .. }), "{err}");
        assert!(sink.emitted < 2 * 48_000, "{} frames", sink.emitted);
    }

    #[test]
    fn channel_fitting_duplicates_and_averages() {
        let mut mono = vec![vec![1.0, 2.0]];
        fit_channels(&mut mono, 2);
        assert_eq!(mono, vec![vec![1.0, 2.0], vec![1.0, 2.0]]);
        let mut stereo = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        fit_channels(&mut stereo, 1);
        assert_eq!(stereo, vec![vec![0.5, 0.5]]);
    }
}
