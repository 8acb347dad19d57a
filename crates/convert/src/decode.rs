//! Audio decoders behind one interface: packets in, mono or stereo f32 planes out.
//!
//! AAC is first shown to fdk-aac, which (unlike symphonia 0.6's AAC decoder) handles HE-AAC
//! (SBR and PS, often signalled only inside the bitstream), multichannel and 96 kHz, and
//! downmixes to stereo itself. When its first frames show plain mono or stereo AAC-LC, the
//! track goes to symphonia's AAC decoder instead: it is about ten times faster than
//! fdk-aac's fixed-point one, which matters because decoding runs beside LAME. Every other
//! codec goes to symphonia's decoders (ALAC, MP3-in-MP4, FLAC, PCM), with our own downmix.

use fdk_aac::dec::{Decoder as FdkDecoder, DecoderError, Transport};
use symphonia::core::audio::Channels;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::packet::Packet;

use super::downmix::Downmix;
use super::error::ConvertError;

/// One decoded packet: 1 or 2 planes of equal length, at `rate` Hz.
#[derive(Debug, Default)]
pub(crate) struct Pcm {
    pub(crate) rate: u32,
    pub(crate) planes: Vec<Vec<f32>>,
}

impl Pcm {
    pub(crate) fn frames(&self) -> usize {
        self.planes.first().map_or(0, Vec::len)
    }

    /// Makes every sample a finite value in -1..=1. Decoders fed damaged data can return
    /// NaN or huge values, and LAME aborts the whole process on some of them (an assertion
    /// in its quantizer, found by the fuzz target: tests/fixtures/lame_assertion.mp4).
    pub(crate) fn sanitize(&mut self) {
        for sample in self.planes.iter_mut().flatten() {
            *sample = if sample.is_finite() {
                sample.clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
    }

    /// `frames` of silence.
    pub(crate) fn silence(rate: u32, channels: usize, frames: usize) -> Pcm {
        Pcm {
            rate,
            planes: vec![vec![0.0; frames]; channels],
        }
    }

    /// Appends `other` (same layout); an empty block simply becomes `other`.
    pub(crate) fn append(&mut self, other: Pcm) {
        if self.planes.is_empty() {
            *self = other;
            return;
        }
        for (dst, src) in self.planes.iter_mut().zip(other.planes) {
            dst.extend_from_slice(&src);
        }
    }
}

/// Why one packet did not decode.
#[derive(Debug)]
pub(crate) enum PacketError {
    /// This packet is bad; later ones may be fine (skip it with a warning).
    Skip(String),
    /// Decoding cannot go on.
    Fatal(ConvertError),
}

/// A decoder for the chosen track.
pub(crate) enum Decoder {
    /// AAC whose profile is not known yet: fdk-aac decodes the first frames to find out.
    Probing(Box<AacProbe>),
    Fdk(Box<FdkAac>),
    Symphonia(Box<SymphoniaAudio>),
}

/// Packets fdk-aac may see before the AAC decoder is chosen anyway.
const PROBE_PACKETS: usize = 8;

/// The first AAC packets, held until fdk-aac has said what kind of AAC they are.
pub(crate) struct AacProbe {
    params: AudioCodecParameters,
    fdk: FdkAac,
    held: Vec<Packet>,
    fdk_out: Vec<Pcm>,
}

impl AacProbe {
    /// Feeds one packet; once the profile is known, returns the chosen decoder and the audio
    /// of every packet held so far.
    fn feed(&mut self, packet: &Packet) -> Result<Option<(Decoder, Option<Pcm>)>, PacketError> {
        self.held.push(packet.clone());
        match self.fdk.decode(&packet.data) {
            Ok(Some(pcm)) => self.fdk_out.push(pcm),
            Ok(None) | Err(PacketError::Skip(_)) => {}
            Err(fatal) => return Err(fatal),
        }
        if self.fdk_out.is_empty() && self.held.len() < PROBE_PACKETS {
            return Ok(None);
        }
        if !self.fdk_out.is_empty() && !self.fdk.is_plain_lc(&self.params) {
            let fdk = std::mem::replace(&mut self.fdk, FdkAac::placeholder());
            return Ok(Some((
                Decoder::Fdk(Box::new(fdk)),
                concat(std::mem::take(&mut self.fdk_out)),
            )));
        }
        let mut symphonia = SymphoniaAudio::new(&self.params).map_err(PacketError::Fatal)?;
        let mut out = Vec::new();
        for held in &self.held {
            match symphonia.decode(held) {
                Ok(Some(pcm)) => out.push(pcm),
                Ok(None) => {}
                Err(PacketError::Skip(why)) => tracing::debug!(%why, "dropping a damaged AAC packet"),
                Err(fatal) => return Err(fatal),
            }
        }
        Ok(Some((Decoder::Symphonia(Box::new(symphonia)), concat(out))))
    }
}

/// Joins consecutive blocks of the same layout into one.
fn concat(blocks: Vec<Pcm>) -> Option<Pcm> {
    let mut blocks = blocks.into_iter();
    let mut first = blocks.next()?;
    blocks.for_each(|block| first.append(block));
    Some(first)
}

/// The human name of a codec, for `unsupported_codec` errors.
pub(crate) fn codec_name(params: &AudioCodecParameters) -> String {
    use symphonia::core::codecs::audio::well_known::*;
    let name = match params.codec {
        CODEC_ID_AAC => "AAC",
        CODEC_ID_ALAC => "ALAC",
        CODEC_ID_MP3 => "MP3",
        CODEC_ID_MP2 => "MP2",
        CODEC_ID_MP1 => "MP1",
        CODEC_ID_AC3 => "AC-3",
        CODEC_ID_EAC3 => "E-AC-3",
        CODEC_ID_AC4 => "AC-4",
        CODEC_ID_DCA => "DTS",
        CODEC_ID_OPUS => "Opus",
        CODEC_ID_VORBIS => "Vorbis",
        CODEC_ID_FLAC => "FLAC",
        CODEC_ID_TRUEHD => "TrueHD",
        CODEC_ID_PCM_ALAW => "A-law PCM",
        CODEC_ID_PCM_MULAW => "mu-law PCM",
        CODEC_ID_ADPCM_IMA_QT => "IMA ADPCM",
        other => return format!("codec id {other}"),
    };
    name.to_string()
}

impl Decoder {
    /// A decoder for the track's codec, or `UnsupportedCodec`.
    pub(crate) fn new(params: &AudioCodecParameters) -> Result<Self, ConvertError> {
        if params.codec == CODEC_ID_AAC {
            return Ok(Decoder::Probing(Box::new(AacProbe {
                params: params.clone(),
                fdk: FdkAac::new(params)?,
                held: Vec::new(),
                fdk_out: Vec::new(),
            })));
        }
        SymphoniaAudio::new(params).map(|d| Decoder::Symphonia(Box::new(d)))
    }

    /// The decoder a segment of an N-way encoding uses: the kind (`name`) the whole
    /// track's probe chose, without probing again (its first packets are only warm-up).
    pub(crate) fn chosen(params: &AudioCodecParameters, name: &str) -> Result<Self, ConvertError> {
        match name {
            "fdk-aac" => FdkAac::new(params).map(|d| Decoder::Fdk(Box::new(d))),
            _ => SymphoniaAudio::new(params).map(|d| Decoder::Symphonia(Box::new(d))),
        }
    }

    /// Decodes one packet. `Ok(None)` when it produced no audio (e.g. decoder warm-up, or
    /// AAC packets held while the profile is being found out).
    pub(crate) fn decode(&mut self, packet: &Packet) -> Result<Option<Pcm>, PacketError> {
        match self {
            Decoder::Probing(probe) => match probe.feed(packet)? {
                Some((chosen, pcm)) => {
                    *self = chosen;
                    Ok(pcm)
                }
                None => Ok(None),
            },
            Decoder::Fdk(d) => d.decode(&packet.data),
            Decoder::Symphonia(d) => d.decode(packet),
        }
    }

    /// Which decoder is at work (for logs and tests).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Decoder::Probing(_) => "aac-probe",
            Decoder::Fdk(_) => "fdk-aac",
            Decoder::Symphonia(_) => "symphonia",
        }
    }
}

/// AAC through fdk-aac, fed raw access units with the track's AudioSpecificConfig.
pub(crate) struct FdkAac {
    inner: FdkDecoder,
    pcm: Vec<i16>,
}

/// Largest frame fdk-aac can hand back: 2048 samples (SBR) × 8 channels, with headroom.
const FDK_MAX_SAMPLES: usize = 2048 * 8 * 2;

impl FdkAac {
    fn new(params: &AudioCodecParameters) -> Result<Self, ConvertError> {
        let asc = params
            .extra_data
            .as_deref()
            .ok_or_else(|| ConvertError::Corrupt("AAC track without an AudioSpecificConfig".into()))?;
        let mut inner = FdkDecoder::new(Transport::Raw);
        inner
            .config_raw(asc)
            .map_err(|e| ConvertError::UnsupportedCodec(format!("AAC variant refused by the decoder ({e})")))?;
        inner
            .set_max_output_channels(2)
            .map_err(|e| ConvertError::Encoder(format!("fdk-aac downmix: {e}")))?;
        Ok(FdkAac {
            inner,
            pcm: vec![0; FDK_MAX_SAMPLES],
        })
    }

    /// An unconfigured decoder, left behind when the probe hands its real one over.
    fn placeholder() -> Self {
        FdkAac {
            inner: FdkDecoder::new(Transport::Raw),
            pcm: Vec::new(),
        }
    }

    /// True when the frames decoded so far are mono or stereo AAC-LC without SBR or PS, at
    /// the rate and channel count the container states: what symphonia decodes correctly.
    fn is_plain_lc(&self, params: &AudioCodecParameters) -> bool {
        let info = self.inner.stream_info();
        let container_channels = params.channels.as_ref().map_or(0, |c| c.count());
        info.aot == fdk_aac_sys::AUDIO_OBJECT_TYPE_AOT_AAC_LC
            && info.sampleRate == info.aacSampleRate
            && info.numChannels == info.aacNumChannels
            && (1..=2).contains(&info.numChannels)
            && params.sample_rate == u32::try_from(info.sampleRate).ok()
            && container_channels <= 2
    }

    fn decode(&mut self, data: &[u8]) -> Result<Option<Pcm>, PacketError> {
        if data.is_empty() {
            return Ok(None);
        }
        self.inner
            .fill(data)
            .map_err(|e| PacketError::Skip(format!("AAC packet refused: {e}")))?;
        match self.inner.decode_frame(&mut self.pcm) {
            Ok(()) => {}
            Err(e) if e == DecoderError::NOT_ENOUGH_BITS => return Ok(None),
            Err(e) => return Err(PacketError::Skip(format!("AAC frame did not decode: {e}"))),
        }
        let info = self.inner.stream_info();
        let channels = usize::try_from(info.numChannels).unwrap_or(0);
        let frames = usize::try_from(info.frameSize).unwrap_or(0);
        let rate = u32::try_from(info.sampleRate).unwrap_or(0);
        if channels == 0 || frames == 0 || rate == 0 || channels * frames > self.pcm.len() {
            return Err(PacketError::Skip("AAC frame with no audio".into()));
        }
        if channels > 2 {
            return Err(PacketError::Fatal(ConvertError::Encoder(format!(
                "fdk-aac returned {channels} channels despite the stereo downmix"
            ))));
        }
        let interleaved = &self.pcm[..channels * frames];
        let planes = (0..channels)
            .map(|c| {
                interleaved
                    .iter()
                    .skip(c)
                    .step_by(channels)
                    .map(|&s| f32::from(s) / 32768.0)
                    .collect()
            })
            .collect();
        Ok(Some(Pcm { rate, planes }))
    }
}

/// Any codec symphonia decodes, downmixed to stereo when it has more channels.
pub(crate) struct SymphoniaAudio {
    decoder: Box<dyn AudioDecoder>,
    planes: Vec<Vec<f32>>,
    downmix: Option<(Channels, Downmix)>,
}

impl SymphoniaAudio {
    fn new(params: &AudioCodecParameters) -> Result<Self, ConvertError> {
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|_| ConvertError::UnsupportedCodec(codec_name(params)))?;
        Ok(SymphoniaAudio {
            decoder,
            planes: Vec::new(),
            downmix: None,
        })
    }

    fn decode(&mut self, packet: &Packet) -> Result<Option<Pcm>, PacketError> {
        let buf = match self.decoder.decode(packet) {
            Ok(buf) => buf,
            Err(SymphoniaError::DecodeError(e)) => return Err(PacketError::Skip(e.to_string())),
            Err(SymphoniaError::IoError(e)) => return Err(PacketError::Skip(e.to_string())),
            // Mid-stream, "unsupported" is what garbage looks like to the decoder: skip it
            // like any corrupt packet (a track made only of it fails as corrupt).
            Err(SymphoniaError::Unsupported(what)) => {
                return Err(PacketError::Skip(format!("unsupported feature: {what}")));
            }
            Err(other) => return Err(PacketError::Fatal(ConvertError::Corrupt(other.to_string()))),
        };
        if buf.frames() == 0 {
            return Ok(None);
        }
        let spec = buf.spec().clone();
        buf.copy_to_vecs_planar::<f32>(&mut self.planes);
        let rate = spec.rate();
        let channels = spec.channels();
        let planes = match channels.count() {
            0 => return Err(PacketError::Skip("audio with no channels".into())),
            1 | 2 => self.planes.clone(),
            _ => {
                if self.downmix.as_ref().is_none_or(|(c, _)| c != channels) {
                    self.downmix = Some((channels.clone(), Downmix::for_channels(channels)));
                }
                let (_, mix) = self
                    .downmix
                    .as_ref()
                    .ok_or_else(|| PacketError::Fatal(ConvertError::Encoder("downmix matrix missing".into())))?;
                mix.apply(&self.planes).into()
            }
        };
        Ok(Some(Pcm { rate, planes }))
    }
}

/// The audio codec parameters of a track, if it is an audio track.
pub(crate) fn audio_params(params: Option<&CodecParameters>) -> Option<&AudioCodecParameters> {
    params.and_then(CodecParameters::audio)
}
