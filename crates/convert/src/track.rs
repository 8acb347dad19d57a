//! Which audio track is converted ([`pick_track`]: the first decodable one, or the one
//! asked for) and opening it (symphonia's reader on a [`Tracked`] source).

use crate::container::EditList;
use crate::source::{Tracked, demuxer_panic, open_format};
use crate::{ConvertError, PLAUSIBLE_RATES, Result, decode};
use symphonia::core::formats::FormatReader;

/// The chosen audio track.
pub(crate) struct ChosenTrack {
    pub(crate) id: u32,
    pub(crate) params: symphonia::core::codecs::audio::AudioCodecParameters,
    /// Track duration in its timebase, with the timebase, when the container states it.
    pub(crate) duration_ts: Option<(u64, f64)>,
    /// The timebase (seconds per tick), when stated.
    pub(crate) timebase: Option<f64>,
    /// A plausible sample rate from the container (sample entry, else media timescale).
    pub(crate) fallback_rate: Option<u32>,
}

impl ChosenTrack {
    /// The playable duration in seconds, if the container says.
    pub(crate) fn known_secs(&self, edit: Option<EditList>) -> Option<f64> {
        if let Some(e) = edit.filter(|e| e.segment_duration > 0) {
            return Some(e.segment_duration as f64 / f64::from(e.movie_timescale));
        }
        self.duration_ts.map(|(d, tb)| d as f64 * tb)
    }
}

/// Probes the input and picks its audio track. symphonia can panic on malformed input
/// (see the engine tests' hostile.rs): a panic here is reported as corrupt media.
pub(crate) fn open_track(
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

pub(crate) fn pick_track(format: &dyn FormatReader, wanted: Option<usize>) -> Result<ChosenTrack> {
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
