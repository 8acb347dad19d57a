//! The pipeline: the decode thread (demux → decode → downmix → edit-list trim → batches
//! of PCM, with damaged packets replaced by silence) feeding LAME on the caller's thread
//! through a bounded channel ([`run_sequential`]).

use std::io::{self, Seek, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use crate::container::EditList;
use crate::decode::{Decoder, PacketError, Pcm};
use crate::encode::Mp3Encoder;
use crate::source::{Tracked, demuxer_panic, is_data_error};
use crate::{
    Attempt, BATCH_FRAMES, CHANNEL_BLOCKS, ConvertError, Hooks, MAX_DEMUX_ERRORS, PLAUSIBLE_RATES, Quality, Result,
    Summary, lenient, mp3_rate_for,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatReader;

/// Decodes on one thread and encodes on this one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_sequential<W: Write + Seek>(
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
        // symphonia has asserts that malformed input can reach (found by the engine tests' hostile.rs):
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
            segments: 1,
        })
    })
}

/// Where packets come from: symphonia's reader, or the forgiving one.
pub(crate) enum Demuxer {
    Symphonia(Box<dyn FormatReader>),
    Lenient(Box<lenient::Reader<Tracked>>),
}

impl Demuxer {
    pub(crate) fn next_packet(
        &mut self,
    ) -> std::result::Result<Option<symphonia::core::packet::Packet>, SymphoniaError> {
        match self {
            Demuxer::Symphonia(format) => format.next_packet(),
            Demuxer::Lenient(reader) => reader.next_packet(),
        }
    }
}

/// Encodes what the decode thread sends; returns (input rate, output rate, channels, frames).
pub(crate) fn encode_blocks<W: Write + Seek>(
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

/// What the decode thread needs besides the reader and the decoder.
pub(crate) struct DecodeJob<'h> {
    pub(crate) track_id: u32,
    pub(crate) duration_ts: Option<(u64, f64)>,
    pub(crate) edit: Option<EditList>,
    pub(crate) max_duration: Option<Duration>,
    /// The box walk found the file cut short: demuxer errors mean "truncated".
    pub(crate) truncated: bool,
    pub(crate) position: Arc<AtomicU64>,
    pub(crate) len: u64,
    pub(crate) hooks: Hooks<'h>,
    /// Only these samples (after the edit list) go to the encoder: one half of a split.
    pub(crate) window: Option<Trim>,
    /// The track's timebase (seconds per tick), for the length of a damaged packet.
    pub(crate) timebase: Option<f64>,
    /// The rate to use when the decoder reports an impossible one: the sample entry's or
    /// the media timescale, if plausible.
    pub(crate) fallback_rate: Option<u32>,
}

/// Counts from the decode thread.
pub(crate) struct DecodeStats {
    /// Damaged packets replaced with silence.
    pub(crate) concealed: u64,
    /// Frames decoded from good packets (not concealment), at the stream's rate.
    pub(crate) good_frames: u64,
    /// Whether any good packet held sound (a sample above −80 dBFS).
    pub(crate) heard: bool,
    /// Why decoding stopped before the end of the track, if it did.
    pub(crate) ended_early: Option<String>,
    pub(crate) decoder: &'static str,
}

/// Silence owed for damaged packets met before the first good packet told the layout.
#[derive(Default)]
pub(crate) struct Owed {
    pub(crate) packets: u64,
    /// Their length by the container's timing (each packet under 10 s).
    pub(crate) secs: f64,
}

impl Owed {
    /// The frames owed at `rate`: their timed length, but no more than `longest` (a good
    /// packet's frames) for each, so forged timing cannot turn a few damaged packets into
    /// hours of silence.
    pub(crate) fn frames(&self, rate: u32, longest: usize) -> usize {
        let timed = (self.secs * f64::from(rate)).round() as u64;
        timed.min(self.packets.saturating_mul(longest as u64)) as usize
    }
}

/// Where decoded audio goes: the edit-list trim, the split window, the duration limit,
/// then batches to the encoder thread.
pub(crate) struct Sink {
    pub(crate) tx: SyncSender<Pcm>,
    pub(crate) trim: Trim,
    pub(crate) window: Option<Trim>,
    pub(crate) emitted: u64,
    pub(crate) batch: Pcm,
    pub(crate) max_duration: Option<Duration>,
}

/// Whether to go on decoding.
#[derive(Debug)]
pub(crate) enum Flow {
    More,
    /// Everything wanted was emitted.
    Done,
    /// The encoder is gone.
    Stopped,
}

impl Sink {
    pub(crate) fn push(&mut self, mut pcm: Pcm) -> Result<Flow> {
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
    pub(crate) fn push_silence(&mut self, (rate, channels): (u32, usize), mut frames: usize) -> Result<Flow> {
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

    pub(crate) fn finish(self) {
        if self.batch.frames() > 0 {
            let _ = self.tx.send(self.batch);
        }
    }
}

/// Applies the edit list: drops priming at the start and padding at the end.
pub(crate) struct Trim {
    pub(crate) skip: u64,
    pub(crate) keep: Option<u64>,
}

impl Trim {
    /// Cuts `pcm` in place; returns false once everything wanted has been emitted.
    pub(crate) fn apply(&mut self, pcm: &mut Pcm) -> bool {
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
    pub(crate) fn run(mut self, mut format: Demuxer, mut decoder: Decoder, tx: SyncSender<Pcm>) -> Result<DecodeStats> {
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
    pub(crate) fn packet_secs(&self, packet: &symphonia::core::packet::Packet) -> Option<f64> {
        let tb = self.timebase?;
        let secs = packet.dur.get() as f64 * tb;
        (secs > 0.0 && secs < 10.0).then_some(secs)
    }

    /// The edit list's trim at `rate`, unless the edit list cannot be right: a start at or
    /// beyond the end of the track, or a kept length under half of the rest (a damaged
    /// timescale), when the track's duration is known. Then the whole track is kept.
    pub(crate) fn trim_for(&self, rate: u32) -> Trim {
        trim_for(self.edit, self.duration_ts, rate)
    }

    pub(crate) fn report_progress(&self, pts: i64, last: &mut f64) {
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

/// The edit list's trim at `rate` (see [`DecodeJob::trim_for`]).
pub(crate) fn trim_for(edit: Option<EditList>, duration_ts: Option<(u64, f64)>, rate: u32) -> Trim {
    let Some(edit) = edit else {
        return Trim { skip: 0, keep: None };
    };
    let (skip, keep) = (edit.skip_frames(rate), edit.keep_frames(rate));
    let total = duration_ts.map(|(d, tb)| (d as f64 * tb * f64::from(rate)) as u64);
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

/// Makes `planes` have `channels` planes: mono is duplicated, stereo averaged.
pub(crate) fn fit_channels(planes: &mut Vec<Vec<f32>>, channels: usize) {
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
