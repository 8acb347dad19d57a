//! Split encoding: on two or more cores, long CBR inputs are encoded as two halves at once
//! and spliced (`split.rs`), roughly halving the wall time; LAME itself is single-threaded.
//!
//! Each half has its own demuxer and decoder over the same file, running the whole
//! pipeline (edit list included) so both see identical samples; the second half's
//! decoder simply discards what comes before its start (decoding is ~5% of the work).
//! Anything unexpected (no seam found, a rate change, no info frame) returns `None` and
//! the caller encodes the ordinary way; nothing has been written to `out` by then.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

use super::container::EditList;
use super::decode::{Decoder, Pcm};
use super::encode::{Mp3Encoder, mp3_rate_for};
use super::error::{ConvertError, Result};
use super::frames::{Frame, FrameWriter};
use super::pipeline::{DecodeJob, DecodeStats, Demuxer, Trim};
use super::settings::Quality;
use super::source::{Tracked, demuxer_panic};
use super::split::{self, Halves, WARMUP_MAX};
use super::track::{ChosenTrack, open_track};
use super::{CHANNEL_BLOCKS, Hooks, Summary};

/// Shorter inputs are not worth a second pipeline.
pub(crate) const MIN_SPLIT_SECS: f64 = 20.0;

/// Where to split, in samples of the (unchanged) rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitPlan {
    rate: u32,
    frame_samples: u64,
    /// B's first sample, a multiple of `frame_samples`.
    split_at: u64,
    /// A encodes up to here, so B's warm-up window lies inside A.
    a_end: u64,
    /// Estimated total samples, for progress.
    estimate: u64,
}

impl SplitPlan {
    /// A plan when the input suits: CBR of at least 64 kbps (LAME always writes its info
    /// frame then), a rate MP3 has (no resampling, so frames align), known length over
    /// [`MIN_SPLIT_SECS`], and a second core.
    pub(crate) fn new(track: &ChosenTrack, quality: Quality, known_secs: Option<f64>) -> Option<SplitPlan> {
        let Quality::Cbr { kbps } = quality else { return None };
        let rate = track.params.sample_rate?;
        let secs = known_secs?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if kbps < 64 || mp3_rate_for(rate) != rate || secs < MIN_SPLIT_SECS || cores < 2 {
            return None;
        }
        let frame_samples = if rate >= 32_000 { 1152 } else { 576 };
        let estimate = (secs * f64::from(rate)) as u64;
        let split_at = estimate / 2 / frame_samples * frame_samples;
        Some(SplitPlan {
            rate,
            frame_samples,
            split_at,
            a_end: split_at + (WARMUP_MAX as u64 + 4) * frame_samples,
            estimate,
        })
    }
}

/// Everything else a split conversion needs.
pub(crate) struct SplitContext<'h> {
    pub(crate) track: Option<usize>,
    pub(crate) truncated: bool,
    pub(crate) edit: Option<EditList>,
    pub(crate) max_duration: Option<Duration>,
    pub(crate) quality: Quality,
    pub(crate) hooks: Hooks<'h>,
    pub(crate) id3: &'h id3::Tag,
    pub(crate) codec: String,
    /// The duration the container states.
    pub(crate) expected: Option<Duration>,
}

/// One encoded half.
struct Half {
    file: File,
    frames: Vec<Frame>,
    samples: u64,
    channels: usize,
}

/// Progress over both halves.
struct Progress<'h> {
    done: AtomicU64,
    /// The last permille reported; reports are made holding it, so the two halves' threads
    /// never report out of order.
    last: std::sync::Mutex<u64>,
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

fn decode_half(
    reopen: &str,
    ctx: &SplitContext<'_>,
    window: Trim,
    tx: std::sync::mpsc::SyncSender<Pcm>,
) -> Result<DecodeStats> {
    let file = File::open(reopen)?;
    let len = file.metadata()?.len();
    let position = Arc::new(AtomicU64::new(0));
    let source = Tracked::new(file, position.clone(), len);
    let truncated = ctx.truncated;
    let (format, track) = open_track(source, truncated, ctx.track)?;
    let decoder = Decoder::new(&track.params)?;
    let job = DecodeJob {
        track_id: track.id,
        duration_ts: track.duration_ts,
        edit: ctx.edit,
        max_duration: ctx.max_duration,
        truncated,
        position,
        len,
        hooks: Hooks {
            progress: None,
            cancel: ctx.hooks.cancel,
        },
        window: Some(window),
        timebase: track.timebase,
        fallback_rate: track.fallback_rate,
    };
    job.run(Demuxer::Symphonia(format), decoder, tx)
}

/// Encodes what arrives into a temp file, recording its frames. `None` if the audio is not
/// at the planned rate.
fn encode_half(
    rx: Receiver<Pcm>,
    plan: &SplitPlan,
    ctx: &SplitContext<'_>,
    tagged: bool,
    progress: &Progress<'_>,
) -> Result<Option<Half>> {
    let Ok(first) = rx.recv() else { return Ok(None) };
    if first.rate != plan.rate {
        return Ok(None);
    }
    let channels = first.planes.len();
    let mut encoder = if tagged {
        Mp3Encoder::new(plan.rate, channels, ctx.quality)?
    } else {
        Mp3Encoder::untagged(plan.rate, channels, ctx.quality)?
    };
    let mut out = FrameWriter::new(tempfile::tempfile()?);
    let mut samples = 0u64;
    for block in std::iter::once(first).chain(rx.iter()) {
        if ctx.hooks.canceled() {
            return Err(ConvertError::Canceled);
        }
        samples += block.frames() as u64;
        progress.add(block.frames() as u64);
        encoder.encode(&block.planes, &mut out)?;
    }
    encoder.flush(&mut out)?;
    let frames = std::mem::take(&mut out.frames);
    let mut file = out.into_inner();
    if tagged {
        encoder.write_tag(&mut file, 0)?;
    }
    Ok(Some(Half {
        file,
        frames,
        samples,
        channels,
    }))
}

/// Converts in two halves at once; `None` when the caller should encode the ordinary way.
pub(crate) fn convert_split<W: Write + Seek>(
    plan: &SplitPlan,
    reopen: &str,
    ctx: SplitContext<'_>,
    out: &mut W,
) -> Result<Option<Summary>> {
    let progress = Progress {
        done: AtomicU64::new(0),
        last: std::sync::Mutex::new(0),
        total: plan.a_end + plan.estimate.saturating_sub(plan.split_at),
        hooks: ctx.hooks,
    };
    let ctx = &ctx;
    let progress = &progress;
    let halves = std::thread::scope(|scope| -> Result<_> {
        let (tx_a, rx_a) = sync_channel(CHANNEL_BLOCKS);
        let (tx_b, rx_b) = sync_channel(CHANNEL_BLOCKS);
        let window_a = Trim {
            skip: 0,
            keep: Some(plan.a_end),
        };
        let window_b = Trim {
            skip: plan.split_at,
            keep: None,
        };
        let spawn = |name: &str| std::thread::Builder::new().name(name.into());
        let decode_a =
            spawn("mp4tomp3-decode-a").spawn_scoped(scope, move || decode_half(reopen, ctx, window_a, tx_a))?;
        let decode_b =
            spawn("mp4tomp3-decode-b").spawn_scoped(scope, move || decode_half(reopen, ctx, window_b, tx_b))?;
        let encode_b =
            spawn("mp4tomp3-encode-b").spawn_scoped(scope, move || encode_half(rx_b, plan, ctx, false, progress))?;
        let a = encode_half(rx_a, plan, ctx, true, progress);
        let b = encode_b
            .join()
            .map_err(|_| ConvertError::Encoder("the second encoder crashed".into()))?;
        let decoder_a = decode_a.join().map_err(|_| demuxer_panic())?;
        let decoder_b = decode_b.join().map_err(|_| demuxer_panic())?;
        let (stats_a, stats_b) = (decoder_a?, decoder_b?);
        // A damaged input is converted in one piece, which reports what it recovered.
        let whole = [&stats_a, &stats_b]
            .iter()
            .all(|s| s.concealed == 0 && s.ended_early.is_none());
        Ok((a?, b?, stats_a.decoder, whole))
    })?;
    let (Some(mut a), Some(mut b), decoder, true) = halves else {
        return Ok(None);
    };
    if a.samples < plan.a_end || b.samples == 0 || a.channels != b.channels {
        return Ok(None); // shorter than the container said
    }
    let m = (plan.split_at / plan.frame_samples) as usize;
    let audio_a = a.frames.get(1..).unwrap_or_default();
    if split::find_seam(audio_a, &b.frames, m).is_none() {
        tracing::debug!("no seam between the halves; encoding in one piece");
        return Ok(None);
    }
    let start = out.stream_position()?;
    if ctx.id3.frames().next().is_some() {
        ctx.id3
            .write_to(&mut *out, id3::Version::Id3v23)
            .map_err(|e| ConvertError::Io(io::Error::other(e)))?;
    }
    let total_samples = plan.split_at + b.samples;
    let spliced = split::splice(
        Halves {
            a_file: &mut a.file,
            a_frames: &a.frames,
            b_file: &mut b.file,
            b_frames: &b.frames,
            m,
            frame_samples: plan.frame_samples,
            total_samples,
        },
        out,
    );
    match spliced {
        Ok(Some(())) => {}
        Ok(None) | Err(_) => {
            // Unexpected: start over in one piece from where we began.
            out.seek(SeekFrom::Start(start))?;
            return Ok(None);
        }
    }
    if let Some(report) = ctx.hooks.progress {
        report(1.0);
    }
    Ok(Some(Summary {
        codec: ctx.codec.clone(),
        input_rate: plan.rate,
        output_rate: plan.rate,
        channels: a.channels,
        duration: Duration::from_secs_f64(total_samples as f64 / f64::from(plan.rate)),
        expected: ctx.expected,
        concealed_packets: 0,
        ended_early: None,
        decoder,
        split: true,
    }))
}
