//! Downmixing more than two channels to stereo, for decoders that do not do it themselves
//! (the AAC path asks fdk-aac to downmix; ALAC, FLAC and PCM come through here).
//!
//! Coefficients are the usual ITU-R BS.775 ones: centre and surrounds at −3 dB (1/√2) into
//! their side, LFE dropped; the matrix is then normalised so that a full-scale signal on
//! every channel cannot clip (as ffmpeg's default rematrixing does).

use symphonia::core::audio::{Channels, Position};

const MINUS_3DB: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// A fixed channels → stereo matrix: `left[i]`/`right[i]` weigh input channel `i`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Downmix {
    left: Vec<f32>,
    right: Vec<f32>,
}

/// The stereo weights of one speaker position.
fn weights(position: Position) -> (f32, f32) {
    match position {
        Position::FRONT_LEFT | Position::FRONT_LEFT_WIDE => (1.0, 0.0),
        Position::FRONT_RIGHT | Position::FRONT_RIGHT_WIDE => (0.0, 1.0),
        Position::FRONT_CENTER | Position::REAR_CENTER | Position::TOP_CENTER => (MINUS_3DB, MINUS_3DB),
        Position::FRONT_LEFT_CENTER => (1.0, 0.0),
        Position::FRONT_RIGHT_CENTER => (0.0, 1.0),
        Position::REAR_LEFT | Position::SIDE_LEFT | Position::TOP_FRONT_LEFT | Position::TOP_REAR_LEFT => {
            (MINUS_3DB, 0.0)
        }
        Position::REAR_RIGHT | Position::SIDE_RIGHT | Position::TOP_FRONT_RIGHT | Position::TOP_REAR_RIGHT => {
            (0.0, MINUS_3DB)
        }
        Position::LFE1 | Position::LFE2 => (0.0, 0.0),
        // Anything else (heights, wides, ...) goes to both sides at −3 dB.
        _ => (MINUS_3DB * MINUS_3DB, MINUS_3DB * MINUS_3DB),
    }
}

impl Downmix {
    /// The matrix for `channels` (more than two of them), in the decoder's plane order.
    pub(crate) fn for_channels(channels: &Channels) -> Self {
        let (mut left, mut right): (Vec<f32>, Vec<f32>) = match channels {
            Channels::Positioned(positions) => positions.iter().map(weights).unzip(),
            // Unlabelled channels: the first two are the front pair, the rest are shared.
            other => (0..other.count())
                .map(|i| match i {
                    0 => (1.0, 0.0),
                    1 => (0.0, 1.0),
                    _ => (MINUS_3DB, MINUS_3DB),
                })
                .unzip(),
        };
        let peak = left.iter().sum::<f32>().max(right.iter().sum::<f32>());
        if peak > 1.0 {
            left.iter_mut().chain(right.iter_mut()).for_each(|w| *w /= peak);
        }
        Downmix { left, right }
    }

    /// Mixes `planes` (one per input channel, equal lengths) into a stereo pair.
    pub(crate) fn apply(&self, planes: &[Vec<f32>]) -> [Vec<f32>; 2] {
        let frames = planes.first().map_or(0, Vec::len);
        let mut out = [vec![0.0f32; frames], vec![0.0f32; frames]];
        for ((plane, &wl), &wr) in planes.iter().zip(&self.left).zip(&self.right) {
            for (i, &s) in plane.iter().enumerate().take(frames) {
                out[0][i] += s * wl;
                out[1][i] += s * wr;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five_one() -> Channels {
        Channels::Positioned(
            Position::FRONT_LEFT
                | Position::FRONT_RIGHT
                | Position::FRONT_CENTER
                | Position::LFE1
                | Position::SIDE_LEFT
                | Position::SIDE_RIGHT,
        )
    }

    #[test]
    fn five_one_keeps_sides_apart_and_never_clips() {
        let mix = Downmix::for_channels(&five_one());
        // Plane order follows the position bits: FL FR FC LFE SL SR.
        let one = |ch: usize| -> Vec<Vec<f32>> { (0..6).map(|i| vec![if i == ch { 1.0 } else { 0.0 }]).collect() };
        let [l, r] = mix.apply(&one(0));
        assert!(l[0] > 0.4 && r[0] == 0.0, "front left stays left: {l:?} {r:?}");
        let [l, r] = mix.apply(&one(5));
        assert!(l[0] == 0.0 && r[0] > 0.2, "side right stays right");
        let [l, r] = mix.apply(&one(2));
        assert!((l[0] - r[0]).abs() < 1e-6 && l[0] > 0.2, "centre is shared");
        let [l, r] = mix.apply(&one(3));
        assert_eq!((l[0], r[0]), (0.0, 0.0), "LFE is dropped");
        let all: Vec<Vec<f32>> = (0..6).map(|_| vec![1.0]).collect();
        let [l, r] = mix.apply(&all);
        assert!(
            l[0] <= 1.0 + 1e-6 && r[0] <= 1.0 + 1e-6,
            "full scale everywhere does not clip"
        );
        assert!(l[0] > 0.99, "normalised to full scale: {}", l[0]);
    }

    #[test]
    fn discrete_channels_keep_the_first_pair_as_front() {
        let mix = Downmix::for_channels(&Channels::Discrete(4));
        let planes = vec![vec![1.0], vec![0.0], vec![0.0], vec![0.0]];
        let [l, r] = mix.apply(&planes);
        assert!(l[0] > 0.0 && r[0] == 0.0);
    }
}
