//! Hostile input: mutated MP4s never panic, always end in a typed result, and a forged
//! sample size does not make the converter allocate what the file claims.
//!
//! A bounded number of proptest cases runs in `cargo test`; `fuzz/` has the open-ended
//! coverage-guided version of the same property.

use std::io::Cursor;
use std::path::PathBuf;

use mp4tomp3_convert::{self as convert, ConvertOptions, Hooks};
use proptest::prelude::*;

/// Seeds: a fast-start M4A, a moov-at-end MP4 with video, a fragmented MP4.
fn seeds() -> Vec<Vec<u8>> {
    let m4a = crate::media::tone(
        "seed_faststart.m4a",
        440,
        22_050,
        1.0,
        1,
        &["-c:a", "aac", "-movflags", "+faststart"],
    );
    let video = crate::media::fixture("seed_video.mp4", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=32x32:rate=5:d=1",
            "-f",
            "lavfi",
            "-i",
            "sine=d=1:r=16000",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            p,
        ])
    });
    let fragmented = crate::media::fixture("seed_fragmented.mp4", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=d=1:r=16000",
            "-c:a",
            "aac",
            "-movflags",
            "frag_keyframe+empty_moov",
            "-frag_duration",
            "200000",
            p,
        ])
    });
    [m4a, video, fragmented]
        .iter()
        .map(|p: &PathBuf| std::fs::read(p).unwrap())
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte.
    Flip { at: usize, mask: u8 },
    /// Overwrite four bytes (box sizes, counts, sample sizes) with an extreme value.
    Word { at: usize, value: u32 },
    /// Cut the file.
    Truncate { at: usize },
    /// Insert garbage.
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        3 => (any::<usize>(), prop_oneof![Just(0u32), Just(1), Just(7), Just(0x7FFF_FFFF), Just(u32::MAX), any::<u32>()])
            .prop_map(|(at, value)| Mutation::Word { at, value }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, mask } => {
            let i = at % data.len();
            data[i] ^= mask;
        }
        Mutation::Word { at, value } => {
            let i = at % data.len().saturating_sub(4).max(1);
            let end = (i + 4).min(data.len());
            data[i..end].copy_from_slice(&value.to_be_bytes()[..end - i]);
        }
        Mutation::Truncate { at } => data.truncate(at % data.len()),
        Mutation::Insert { at, bytes } => {
            let i = at % data.len();
            data.splice(i..i, bytes.iter().copied());
        }
    }
}

const KNOWN_CODES: [&str; 8] = [
    "not_mp4",
    "no_audio_track",
    "unsupported_codec",
    "corrupt_media",
    "truncated_media",
    "too_long",
    "no_such_track",
    "io_error",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256,
        failure_persistence: None,
        // Fixed, so CI is repeatable; PROPTEST_CASES and the fuzz target explore further.
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d70_3474_6f6d_7033),
        ..ProptestConfig::default() })]

    #[test]
    fn mutated_inputs_end_in_a_typed_result(seed in 0usize..3, mutations in proptest::collection::vec(mutation(), 1..6)) {
        let mut data = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut data, m);
        }
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let mut out = Cursor::new(Vec::new());
        let opts = ConvertOptions { max_duration: Some(std::time::Duration::from_secs(60)), ..Default::default() };
        match convert::convert(file, &mut out, &opts, Hooks::default()) {
            Ok(summary) => prop_assert!(summary.duration.as_secs_f64() <= 60.0),
            Err(e) => prop_assert!(KNOWN_CODES.contains(&e.code()), "unexpected error {e} ({})", e.code()),
        }
    }
}

fn convert_bytes(data: &[u8]) -> Result<convert::Summary, convert::ConvertError> {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, data).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    convert::convert(
        file,
        &mut Cursor::new(Vec::new()),
        &ConvertOptions::default(),
        Hooks::default(),
    )
}

#[test]
fn a_panic_inside_symphonia_becomes_corrupt_media() {
    // Found by mutated_inputs_end_in_a_typed_result on a fresh CI machine: symphonia's
    // MediaSourceStream asserts on this fragmented file.
    let mut data = seeds()[2].clone();
    for m in [
        Mutation::Insert {
            at: 700909851671399722,
            bytes: vec![0; 10],
        },
        Mutation::Truncate {
            at: 5295792021685177998,
        },
        Mutation::Flip {
            at: 1049502515418058141,
            mask: 128,
        },
    ] {
        apply(&mut data, &m);
    }
    let err = convert_bytes(&data).unwrap_err();
    assert!(KNOWN_CODES.contains(&err.code()), "{err} ({})", err.code());
    // The CLI's answer to this input (one line, exit 2): tests/it/cli.rs, on a copy of
    // these bytes committed as tests/fixtures/symphonia_assertion.mp4.
}

#[test]
fn a_forged_sample_size_is_never_read_and_the_rest_converts() {
    let whole = seeds()[0].clone();
    let mut data = whole.clone();
    let stsz = data
        .windows(4)
        .position(|w| w == b"stsz")
        .expect("the seed has an stsz box");
    // type(4) + version/flags(4) + constant size(4) + count(4), then the first entry.
    let first_entry = stsz + 16;
    data[first_entry..first_entry + 4].copy_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
    // symphonia would read (and buffer) 2 GiB for it, so it is refused there; the
    // forgiving reader gives the sample the room its chunk has and converts the rest.
    let expected = convert_bytes(&whole).unwrap().duration.as_secs_f64();
    let summary = convert_bytes(&data).unwrap();
    let got = summary.duration.as_secs_f64();
    assert!((got - expected).abs() < 0.1, "{got} s of {expected} s");
    assert!(summary.concealed_packets <= 1, "{summary:?}");
}
