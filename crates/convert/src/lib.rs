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

mod boxes;
mod container;
mod decode;
mod downmix;
mod encode;
mod error;
mod frames;
mod lenient;
mod pipeline;
mod segments;
mod settings;
mod source;
mod tags;
mod track;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use encode::{MP3_SAMPLE_RATES, mp3_rate_for};
pub use error::{ConvertError, Result};
pub use segments::Slots;
pub use settings::{ConvertOptions, DEFAULT_KBPS, Quality, STANDARD_BITRATES};

use container::EditList;
use decode::Decoder;
use pipeline::{DecodeJob, Demuxer, run_sequential};
pub use source::spool;
use source::{Tracked, classify_container_io, demuxer_panic};
use track::{ChosenTrack, open_track};

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
    /// Segments encoded at once and joined (see `segments.rs`); 1 when in one piece.
    pub segments: usize,
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
pub(crate) const BATCH_FRAMES: usize = 8192;
/// Blocks in flight between the threads (≈ 4 × 8192 × 2 × 4 B = 256 KiB).
pub(crate) const CHANNEL_BLOCKS: usize = 4;
/// Largest audio sample (packet) accepted. AAC frames are under 8 KiB even at 8 channels,
/// ALAC's 4096-frame packets of 8 × 32-bit channels are 128 KiB; a larger size is forged,
/// and refusing it keeps symphonia from reading (and buffering) that much.
pub(crate) const MAX_AUDIO_SAMPLE_BYTES: u32 = 4 << 20;
/// Unreadable samples in a row after which decoding stops with what it has.
pub(crate) const MAX_DEMUX_ERRORS: u32 = 16;
/// Tracks beyond which the forgiving reader goes first (see `convert`).
pub(crate) const MANY_TRACKS: usize = 64;
/// Sample rates an audio track can really have; outside them, the container's is used.
pub(crate) const PLAUSIBLE_RATES: std::ops::RangeInclusive<u32> = 7_350..=384_000;

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
    // More views of the same file, for the segments of an N-way encoding.
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

/// The conversion through symphonia's reader: in segments on several cores when long
/// enough (`segments.rs`), else in one piece.
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
    // Segments read the file afresh, without the zeros a cut moov is padded with.
    let whole = container.moov_cut.is_none() && !container.truncated;
    let threads = ctx.opts.threads();
    if whole && threads > 1 {
        let input = segments::PlanInput {
            track: &track,
            wanted: ctx.opts.track,
            edit,
            quality: ctx.quality,
            threads,
            segment_secs: ctx.opts.segment_secs,
        };
        match segments::plan(reopen, &input) {
            Ok(plan) => {
                let start = out.stream_position()?;
                let slots = ctx.opts.slots.as_deref();
                let done = segments::run(
                    &plan,
                    reopen,
                    threads,
                    slots,
                    ctx.hooks,
                    &id3,
                    codec.clone(),
                    expected,
                    out,
                )?;
                match done {
                    Ok(summary) => return Ok(summary),
                    Err(why) => {
                        tracing::debug!(why = %why.0, "encoding in one piece");
                        out.seek(SeekFrom::Start(start))?;
                    }
                }
            }
            Err(why) => tracing::debug!(why = %why.0, "encoding in one piece"),
        }
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
