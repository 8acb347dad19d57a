//! MP3 encoding through LAME (mp3lame-encoder), with a correct Xing/LAME info frame.
//!
//! LAME writes a placeholder info frame first; its real content (frame count, encoder delay
//! and padding, so players show the right duration and trim gaplessly) is only known at the
//! end, when [`Mp3Encoder::finish`] seeks back and overwrites it.

use std::io::{Seek, SeekFrom, Write};
use std::num::NonZeroU32;

use mp3lame_encoder::{Builder, DualPcm, FlushGap, FlushNoGap, Mode, MonoPcm, VbrMode};

use super::error::{ConvertError, Result};
use super::settings::Quality;

/// The sample rates MP3 can carry (MPEG-1, MPEG-2 and MPEG-2.5 layer III).
pub const MP3_SAMPLE_RATES: [u32; 9] = [8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000];

/// The MP3 rate used for an input at `rate`: the same when MP3 has it, otherwise the nearest
/// one, except that rates above 48 kHz go to their own family (88.2 kHz → 44.1 kHz,
/// 96 kHz → 48 kHz), where resampling is an exact halving.
pub fn mp3_rate_for(rate: u32) -> u32 {
    if MP3_SAMPLE_RATES.contains(&rate) {
        return rate;
    }
    if rate > 48_000 {
        return if rate.is_multiple_of(11_025) { 44_100 } else { 48_000 };
    }
    MP3_SAMPLE_RATES
        .into_iter()
        .min_by_key(|&r| r.abs_diff(rate))
        .unwrap_or(44_100)
}

/// An MP3 encoder for one output stream of 1 or 2 channels.
pub(crate) struct Mp3Encoder {
    lame: mp3lame_encoder::Encoder,
    channels: usize,
    buf: Vec<u8>,
}

fn lame_error(what: &str, e: impl std::fmt::Debug) -> ConvertError {
    ConvertError::Encoder(format!("{what}: {e:?}"))
}

impl Mp3Encoder {
    /// An encoder taking `channels` (1 or 2) planes at `in_rate`; LAME resamples to
    /// [`mp3_rate_for`] when needed.
    pub(crate) fn new(in_rate: u32, channels: usize, quality: Quality) -> Result<Self> {
        Self::build(in_rate, channels, quality, true)
    }

    /// The same without the info frame: for the later segments of an N-way encoding.
    pub(crate) fn untagged(in_rate: u32, channels: usize, quality: Quality) -> Result<Self> {
        Self::build(in_rate, channels, quality, false)
    }

    fn build(in_rate: u32, channels: usize, quality: Quality, tagged: bool) -> Result<Self> {
        let mut b = Builder::new().ok_or_else(|| ConvertError::Encoder("LAME could not allocate".into()))?;
        let (count, mode) = match channels {
            1 => (1, Mode::Mono),
            2 => (2, Mode::JointStereo),
            n => return Err(ConvertError::Encoder(format!("{n} channels reached the encoder"))),
        };
        b.set_num_channels(count).map_err(|e| lame_error("channels", e))?;
        b.set_mode(mode).map_err(|e| lame_error("mode", e))?;
        b.set_sample_rate(in_rate).map_err(|e| lame_error("input rate", e))?;
        b.set_output_sample_rate(NonZeroU32::new(mp3_rate_for(in_rate)))
            .map_err(|e| lame_error("output rate", e))?;
        b.set_to_write_vbr_tag(tagged).map_err(|e| lame_error("info tag", e))?;
        match quality {
            Quality::Cbr { kbps } => {
                b.set_vbr_mode(VbrMode::Off).map_err(|e| lame_error("vbr mode", e))?;
                // The crate's Bitrate enum lacks 56 kbps; LAME itself takes any kbps value.
                // SAFETY: the pointer is the builder's live LAME handle; lame_set_brate only
                // stores the value for lame_init_params to validate.
                let res = unsafe { mp3lame_sys::lame_set_brate(b.as_ptr(), i32::from(kbps)) };
                if res != 0 {
                    return Err(lame_error("bitrate", res));
                }
            }
            Quality::Vbr { quality } => {
                b.set_vbr_mode(VbrMode::Mtrh).map_err(|e| lame_error("vbr mode", e))?;
                b.set_vbr_quality(vbr_quality(quality))
                    .map_err(|e| lame_error("vbr quality", e))?;
            }
        }
        let lame = b.build().map_err(|e| lame_error("init", e))?;
        Ok(Mp3Encoder {
            lame,
            channels,
            buf: Vec::new(),
        })
    }

    /// Encodes one block of planes (as many as the encoder's channels) and writes the MP3
    /// bytes LAME hands back.
    pub(crate) fn encode<P: AsRef<[f32]>>(&mut self, planes: &[P], out: &mut impl Write) -> Result<()> {
        let frames = planes.first().map_or(0, |p| p.as_ref().len());
        if frames == 0 {
            return Ok(());
        }
        self.buf.clear();
        self.buf.reserve(mp3lame_encoder::max_required_buffer_size(frames));
        let written = match (self.channels, planes) {
            (1, [mono, ..]) => self.lame.encode_to_vec(MonoPcm(mono.as_ref()), &mut self.buf),
            (2, [left, right, ..]) => self.lame.encode_to_vec(
                DualPcm {
                    left: left.as_ref(),
                    right: right.as_ref(),
                },
                &mut self.buf,
            ),
            _ => return Err(ConvertError::Encoder("channel count changed mid-stream".into())),
        }
        .map_err(|e| lame_error("encode", e))?;
        out.write_all(&self.buf[..written])?;
        Ok(())
    }

    /// Flushes LAME, then rewrites the info frame at `audio_start` (where the first MP3
    /// frame was written) and leaves `out` positioned at its end.
    pub(crate) fn finish<W: Write + Seek>(mut self, out: &mut W, audio_start: u64) -> Result<()> {
        self.flush(out)?;
        self.write_tag(out, audio_start)
    }

    /// Flushes LAME's last frames into `out`.
    pub(crate) fn flush(&mut self, out: &mut impl Write) -> Result<()> {
        self.flush_with::<FlushGap>(out)
    }

    fn flush_with<F: mp3lame_encoder::EncoderFlush>(&mut self, out: &mut impl Write) -> Result<()> {
        self.buf.clear();
        self.buf.reserve(7200 * 2);
        let n = self
            .lame
            .flush_to_vec::<F>(&mut self.buf)
            .map_err(|e| lame_error("flush", e))?;
        out.write_all(&self.buf[..n])?;
        Ok(())
    }

    /// Writes every frame encoded so far with the bit reservoir drained (LAME's
    /// `lame_encode_flush_nogap`): the next frame's main data starts in that frame, while
    /// the filterbank and psychoacoustic state go on. Nothing is padded.
    pub(crate) fn flush_nogap(&mut self, out: &mut impl Write) -> Result<()> {
        self.flush_with::<FlushNoGap>(out)
    }

    /// LAME's info frame for what it encoded (`lame_get_lametag_frame`), if it writes one.
    pub(crate) fn tag_frame(&mut self) -> Option<Vec<u8>> {
        self.buf.clear();
        self.buf.reserve(self.lame.lame_tag_size().max(2880));
        let len = self.lame.lame_tag_encode_to_vec(&mut self.buf)?;
        Some(self.buf[..len.get()].to_vec())
    }

    /// Overwrites the info frame at `audio_start` (after [`Self::flush`]).
    pub(crate) fn write_tag<W: Write + Seek>(mut self, out: &mut W, audio_start: u64) -> Result<()> {
        let end = out.stream_position()?;
        self.buf.clear();
        self.buf.reserve(self.lame.lame_tag_size().max(2880));
        if let Some(len) = self.lame.lame_tag_encode_to_vec(&mut self.buf) {
            out.seek(SeekFrom::Start(audio_start))?;
            out.write_all(&self.buf[..len.get()])?;
            out.seek(SeekFrom::Start(end))?;
        }
        Ok(())
    }
}

fn vbr_quality(q: u8) -> mp3lame_encoder::Quality {
    use mp3lame_encoder::Quality as Q;
    match q {
        0 => Q::Best,
        1 => Q::SecondBest,
        2 => Q::NearBest,
        3 => Q::VeryNice,
        4 => Q::Nice,
        5 => Q::Good,
        6 => Q::Decent,
        7 => Q::Ok,
        8 => Q::SecondWorst,
        _ => Q::Worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_map_to_mp3_rates() {
        assert_eq!(mp3_rate_for(44_100), 44_100);
        assert_eq!(mp3_rate_for(8_000), 8_000);
        assert_eq!(mp3_rate_for(96_000), 48_000);
        assert_eq!(mp3_rate_for(88_200), 44_100);
        assert_eq!(mp3_rate_for(192_000), 48_000);
        assert_eq!(mp3_rate_for(64_000), 48_000);
        assert_eq!(mp3_rate_for(7_350), 8_000);
        assert_eq!(mp3_rate_for(37_800), 32_000);
        for r in 1..200_000u32 {
            assert!(MP3_SAMPLE_RATES.contains(&mp3_rate_for(r)));
        }
    }

    #[test]
    fn encodes_and_writes_an_info_frame() {
        let mut enc = Mp3Encoder::new(44_100, 2, Quality::Cbr { kbps: 128 }).unwrap();
        let tone: Vec<f32> = (0..44_100).map(|i| (i as f32 * 0.06).sin() * 0.5).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        enc.encode(&[tone.clone(), tone], &mut out).unwrap();
        enc.finish(&mut out, 0).unwrap();
        let bytes = out.into_inner();
        assert!(bytes.len() > 1000);
        assert_eq!(bytes[0], 0xFF, "starts with a frame sync");
        let head = &bytes[..400];
        assert!(
            head.windows(4).any(|w| w == b"Info"),
            "CBR output carries an Info frame"
        );
        assert!(head.windows(4).any(|w| w == b"LAME"), "with a LAME extension");
    }
}
