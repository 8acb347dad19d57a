//! The forgiving reader's sample entry (`stsd`): the codec, channels, rate and decoder
//! config, each taken from the redundant place that is plausible (an AAC config is built
//! when `esds` is gone).

use super::*;

/// The AAC sampling frequency table (ISO/IEC 14496-3, 1.6.3.4).
pub(super) const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// What the sample entry (`stsd`'s first) says.
#[derive(Debug)]
pub(super) struct SampleEntry {
    pub(super) kind: [u8; 4],
    pub(super) channels: u32,
    pub(super) sample_size: u32,
    pub(super) rate: u32,
    /// `lpcm` (version 2) format flags.
    pub(super) lpcm_flags: u32,
    /// `esds`: object type indication and decoder config.
    pub(super) esds: Option<(u8, Option<Vec<u8>>)>,
    /// The ALAC magic cookie (24 bytes).
    pub(super) alac: Option<Vec<u8>>,
}

/// Sample entry types of audio this reader can hand to a decoder.
pub(super) const AUDIO_ENTRIES: [&[u8; 4]; 12] = [
    b"mp4a", b".mp3", b"alac", b"sowt", b"twos", b"lpcm", b"in24", b"in32", b"fl32", b"fl64", b"raw ", b"NONE",
];

impl SampleEntry {
    /// The first entry of `stsd`; `sound` when the handler says the track is audio (then
    /// an entry of unknown type is taken for what its child boxes say it is).
    pub(super) fn parse(stsd: &[u8], sound: bool) -> Option<SampleEntry> {
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
    pub(super) fn frames_per_packet(&self) -> u64 {
        match &self.kind {
            b"mp4a" => 1024,
            b".mp3" => 1152,
            b"alac" => self.alac.as_ref().map_or(4096, |c| u64::from(be32(&c[0..4]))),
            _ => 1,
        }
    }

    /// Decoder parameters and the sample rate, from this entry with `timescale` and the
    /// first sample's bytes as other witnesses.
    pub(super) fn codec_params(
        &self,
        timescale: Option<u32>,
        first_sample: &[u8],
    ) -> Option<(AudioCodecParameters, u32)> {
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
pub(super) fn pcm_codec(
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

pub(super) fn channel_layout(n: u32) -> Channels {
    match n {
        1 => Channels::Positioned(Position::FRONT_LEFT),
        2 => Channels::Positioned(Position::FRONT_LEFT | Position::FRONT_RIGHT),
        n => Channels::Discrete(n as u16),
    }
}

/// The object type indication and decoder-specific info of an `esds` payload.
pub(super) fn parse_esds(esds: &[u8]) -> Option<(u8, Option<Vec<u8>>)> {
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
pub(super) fn descriptor(r: &mut &[u8]) -> Option<(u8, usize)> {
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
pub(super) fn aac_config(
    asc: Option<&[u8]>,
    entry_rate: Option<u32>,
    entry_channels: u32,
) -> Option<(Vec<u8>, u32, u32)> {
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
