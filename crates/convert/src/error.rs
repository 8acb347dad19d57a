//! The one error type of the conversion engine.

use std::io;

/// Why a conversion did not produce an MP3.
///
/// Every variant has a stable machine-readable [`code`](ConvertError::code), used in job
/// records and API errors, and a `Display` that a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input is not an ISO-BMFF (MP4, M4A, MOV) file.
    #[error("not an MP4/M4A/MOV file: {0}")]
    NotMp4(String),
    /// The file has no audio track at all.
    #[error("the file has no audio track")]
    NoAudioTrack,
    /// `--track N` named an audio track that does not exist.
    #[error("audio track {requested} does not exist: the file has {available} audio track(s), numbered from 0")]
    NoSuchTrack {
        /// The index that was asked for.
        requested: usize,
        /// How many audio tracks the file has.
        available: usize,
    },
    /// The audio codec is one this build cannot decode.
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
    /// The media data is damaged beyond what skipping a few packets can repair.
    #[error("corrupt media: {0}")]
    Corrupt(String),
    /// The file ends before its audio does.
    #[error("truncated media: the file ends before its audio data ({0})")]
    Truncated(String),
    /// The audio is longer than the configured maximum.
    #[error("audio is {actual_secs:.1} s long, over the {limit_secs:.1} s limit")]
    TooLong {
        /// How long the audio is (or how far decoding got before the limit was hit).
        actual_secs: f64,
        /// The configured limit.
        limit_secs: f64,
    },
    /// The caller's cancellation flag was set.
    #[error("conversion canceled")]
    Canceled,
    /// The conversion settings are invalid (e.g. a non-standard bitrate).
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    /// LAME refused to encode. Not the input's fault.
    #[error("MP3 encoder failed: {0}")]
    Encoder(String),
    /// Reading the input or writing the output failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl ConvertError {
    /// True when the error may come from damage the forgiving reader can get around: a
    /// refused box tree, a missing or broken sample entry, a cut file, unreadable audio.
    pub(crate) fn may_be_damage(&self) -> bool {
        matches!(
            self,
            ConvertError::NotMp4(_)
                | ConvertError::NoAudioTrack
                | ConvertError::UnsupportedCodec(_)
                | ConvertError::Corrupt(_)
                | ConvertError::Truncated(_)
        )
    }

    /// A stable, machine-readable code for this error (`not_mp4`, `no_audio_track`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            ConvertError::NotMp4(_) => "not_mp4",
            ConvertError::NoAudioTrack => "no_audio_track",
            ConvertError::NoSuchTrack { .. } => "no_such_track",
            ConvertError::UnsupportedCodec(_) => "unsupported_codec",
            ConvertError::Corrupt(_) => "corrupt_media",
            ConvertError::Truncated(_) => "truncated_media",
            ConvertError::TooLong { .. } => "too_long",
            ConvertError::Canceled => "canceled",
            ConvertError::InvalidSettings(_) => "invalid_settings",
            ConvertError::Encoder(_) => "encoder_failed",
            ConvertError::Io(_) => "io_error",
        }
    }

    /// True when the input or the request is at fault (a user error), false when the
    /// failure is internal (encoder, I/O) or a cancellation.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            ConvertError::Encoder(_) | ConvertError::Io(_) | ConvertError::Canceled
        )
    }
}

/// The engine's result type.
pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_input_errors_are_classified() {
        let all = [
            ConvertError::NotMp4(String::new()),
            ConvertError::NoAudioTrack,
            ConvertError::NoSuchTrack {
                requested: 1,
                available: 1,
            },
            ConvertError::UnsupportedCodec("AC-3".into()),
            ConvertError::Corrupt(String::new()),
            ConvertError::Truncated(String::new()),
            ConvertError::TooLong {
                actual_secs: 2.0,
                limit_secs: 1.0,
            },
            ConvertError::Canceled,
            ConvertError::InvalidSettings(String::new()),
            ConvertError::Encoder(String::new()),
            ConvertError::Io(io::Error::other("x")),
        ];
        let mut codes: Vec<_> = all.iter().map(ConvertError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(ConvertError::NoAudioTrack.is_input_error());
        assert!(!ConvertError::Encoder(String::new()).is_input_error());
        assert!(
            ConvertError::UnsupportedCodec("AC-3".into())
                .to_string()
                .contains("AC-3")
        );
    }
}
