//! What a conversion is asked to produce.

use std::time::Duration;

use super::error::{ConvertError, Result};

/// The standard MPEG-1 layer III bitrates from 32 to 320 kbps.
pub const STANDARD_BITRATES: [u16; 14] = [32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];

/// The default CBR bitrate.
pub const DEFAULT_KBPS: u16 = 192;

/// Constant or variable bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// Constant bitrate, one of [`STANDARD_BITRATES`].
    Cbr {
        /// Kilobits per second.
        kbps: u16,
    },
    /// LAME's VBR (mtrh) at quality 0 (best) to 9 (smallest).
    Vbr {
        /// 0..=9.
        quality: u8,
    },
}

impl Default for Quality {
    fn default() -> Self {
        Quality::Cbr { kbps: DEFAULT_KBPS }
    }
}

impl Quality {
    /// Checks the values against what MP3 allows.
    pub fn validate(self) -> Result<Self> {
        match self {
            Quality::Cbr { kbps } if !STANDARD_BITRATES.contains(&kbps) => Err(ConvertError::InvalidSettings(format!(
                "bitrate {kbps} kbps is not a standard MP3 bitrate (one of {STANDARD_BITRATES:?})"
            ))),
            Quality::Vbr { quality } if quality > 9 => Err(ConvertError::InvalidSettings(format!(
                "VBR quality {quality} is out of range 0..=9"
            ))),
            ok => Ok(ok),
        }
    }
}

/// Everything a conversion needs besides its input and output.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Bitrate mode.
    pub quality: Quality,
    /// Which audio track, counting audio tracks only, from 0. `None`: the first one.
    pub track: Option<usize>,
    /// Refuse inputs whose audio is longer than this.
    pub max_duration: Option<Duration>,
    /// Encoder threads for one long input (`segments.rs`): 1 encodes in one piece; 0 uses
    /// every core. The output is the same MP3 stream either way (bit-identical audio for
    /// VBR).
    pub threads: usize,
    /// Where threads beyond the first are borrowed from, one segment at a time (the
    /// service's converter slots); `None`: `threads` are used as given.
    pub slots: Option<std::sync::Arc<dyn crate::Slots>>,
    /// A fixed segment length in seconds (for tests); otherwise 60–120 s, several per
    /// thread.
    pub segment_secs: Option<f64>,
}

impl ConvertOptions {
    /// The encoder threads to use.
    pub fn threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_bitrates_and_vbr_0_to_9_are_valid() {
        assert!(Quality::Cbr { kbps: 56 }.validate().is_ok());
        assert!(Quality::Cbr { kbps: 100 }.validate().is_err());
        assert!(Quality::Cbr { kbps: 8 }.validate().is_err());
        assert!(Quality::Vbr { quality: 9 }.validate().is_ok());
        assert!(Quality::Vbr { quality: 10 }.validate().is_err());
        assert_eq!(Quality::default(), Quality::Cbr { kbps: 192 });
    }
}
