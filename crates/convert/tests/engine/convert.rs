//! The conversion engine, end to end on real files: every input variant the issue names,
//! checked on content (decoded duration, rate, channels, tones, tags) with ffmpeg as oracle.

use std::io::Cursor;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::media::{decode, dominant_hz, probe};
use mp4tomp3_convert::{self as convert, ConvertError, ConvertOptions, Hooks, Quality};

fn convert_to_vec(input: &Path, opts: &ConvertOptions) -> Result<(Vec<u8>, convert::Summary), ConvertError> {
    let mut out = Cursor::new(Vec::new());
    let summary = convert::convert_file(input, &mut out, opts, Hooks::default())?;
    Ok((out.into_inner(), summary))
}

/// Converts `input` with `opts` into a temp MP3 file and returns its path.
fn convert_to_file(input: &Path, opts: &ConvertOptions) -> tempfile::TempPath {
    let (bytes, _) = convert_to_vec(input, opts).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let tmp = tempfile::Builder::new().suffix(".mp3").tempfile().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    tmp.into_temp_path()
}

fn audio_stream(info: &serde_json::Value) -> &serde_json::Value {
    info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "audio")
        .unwrap()
}

/// The input's audio duration as ffprobe states it (edit list applied).
fn input_secs(path: &Path) -> f64 {
    audio_stream(&probe(path))["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Converts and checks what every conversion must give: an MP3 whose decoded duration is the
/// input's within 50 ms, at `rate` with `channels`, holding a tone at `hz` on the first channel.
fn check(input: &Path, rate: u32, channels: usize, hz: f64) -> tempfile::TempPath {
    check_with(input, rate, channels, hz, None)
}

/// [`check`], also asserting which decoder did the work.
fn check_with(input: &Path, rate: u32, channels: usize, hz: f64, decoder: Option<&str>) -> tempfile::TempPath {
    let (bytes, summary) =
        convert_to_vec(input, &ConvertOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    if let Some(decoder) = decoder {
        assert_eq!(summary.decoder, decoder, "{}", input.display());
    }
    let tmp = tempfile::Builder::new().suffix(".mp3").tempfile().unwrap();
    std::fs::write(tmp.path(), bytes).unwrap();
    let mp3 = tmp.into_temp_path();
    let info = probe(&mp3);
    let stream = audio_stream(&info);
    assert_eq!(stream["codec_name"], "mp3");
    assert_eq!(stream["sample_rate"], rate.to_string(), "{}", input.display());
    assert_eq!(stream["channels"], channels, "{}", input.display());
    let decoded = decode(&mp3, channels);
    let want = input_secs(input);
    assert!(
        (decoded.secs() - want).abs() <= 0.050,
        "{}: MP3 lasts {:.4} s, input {want:.4} s",
        input.display(),
        decoded.secs()
    );
    let got = dominant_hz(&decoded.planes[0], decoded.rate);
    assert!(
        (got - hz).abs() < hz * 0.02,
        "{}: dominant {got:.1} Hz, want {hz}",
        input.display()
    );
    mp3
}

#[test]
fn stereo_aac_keeps_left_and_right_apart_with_tags_and_cbr_info_frame() {
    let input = crate::media::stereo_tagged();
    let mp3 = check_with(&input, 44_100, 2, 440.0, Some("symphonia"));
    let decoded = decode(&mp3, 2);
    let right = dominant_hz(&decoded.planes[1], decoded.rate);
    assert!((right - 880.0).abs() < 15.0, "right channel stays 880 Hz, got {right}");

    let info = probe(&mp3);
    let stream = audio_stream(&info);
    assert_eq!(stream["bit_rate"], "192000");
    let tags = &info["format"]["tags"];
    assert_eq!(tags["title"], "Test Title");
    assert_eq!(tags["artist"], "Test Artist");
    assert_eq!(tags["album"], "Test Album");
    assert_eq!(tags["album_artist"], "Album Artist");
    assert_eq!(tags["genre"], "Rock");
    assert_eq!(tags["track"], "3/9");
    assert!(tags["date"].as_str().unwrap_or_default().starts_with("2019"), "{tags}");
    assert_eq!(tags["comment"], "Hello comment");
    let streams = info["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["disposition"]["attached_pic"] == 1),
        "cover art carried over: {streams:?}"
    );

    let bytes = std::fs::read(&mp3).unwrap();
    let id3_len = 10 + bytes[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
    assert_eq!(&bytes[..3], b"ID3");
    let first_frame = &bytes[id3_len..id3_len + 400];
    assert!(
        first_frame.windows(4).any(|w| w == b"Info"),
        "CBR Info header right after the tag"
    );
    assert!(first_frame.windows(4).any(|w| w == b"LAME"));
}

#[test]
fn video_mp4_moov_at_end_fast_start_and_fragmented_all_convert() {
    let moov_at_end = crate::media::video(5);
    check(&moov_at_end, 44_100, 2, 440.0);
    let fast_start = crate::media::fixture("video_faststart.mp4", |p| {
        crate::media::ffmpeg(&[
            "-i",
            moov_at_end.to_str().unwrap(),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            p,
        ])
    });
    check(&fast_start, 44_100, 2, 440.0);
    let fragmented = crate::media::fixture("video_fragmented.mp4", |p| {
        crate::media::ffmpeg(&[
            "-i",
            moov_at_end.to_str().unwrap(),
            "-c",
            "copy",
            "-movflags",
            "frag_keyframe+empty_moov",
            p,
        ])
    });
    check(&fragmented, 44_100, 2, 440.0);
    let mov = crate::media::fixture("video.mov", |p| {
        crate::media::ffmpeg(&["-i", moov_at_end.to_str().unwrap(), "-c", "copy", p])
    });
    check(&mov, 44_100, 2, 440.0);
}

#[test]
fn mono_stays_mono_at_every_mp3_rate() {
    for rate in [8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000] {
        let input = crate::media::tone(&format!("mono_{rate}.m4a"), 440, rate, 3.0, 1, &["-c:a", "aac"]);
        check(&input, rate, 1, 440.0);
    }
}

#[test]
fn rates_mp3_lacks_are_resampled_to_the_nearest() {
    for (rate, want) in [(96_000, 48_000), (88_200, 44_100), (64_000, 48_000), (7_350, 8_000)] {
        let input = crate::media::tone(&format!("mono_{rate}.m4a"), 440, rate, 3.0, 1, &["-c:a", "aac"]);
        // symphonia loses the rate of 96 kHz AAC, so that one must go through fdk-aac.
        let decoder = (rate == 96_000).then_some("fdk-aac");
        check_with(&input, want, 1, 440.0, decoder);
    }
}

#[test]
fn five_one_aac_is_downmixed_to_stereo() {
    // A different tone on each side: the downmix must keep them apart.
    let input = crate::media::fixture("five_one.m4a", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=4:r=48000",
            "-f",
            "lavfi",
            "-i",
            "sine=f=1000:d=4:r=48000",
            "-filter_complex",
            "[0][1]amerge=inputs=2,pan=5.1|FL=c0|FR=c1|FC=0*c0|LFE=0*c0|BL=c0|BR=c1[a]",
            "-map",
            "[a]",
            "-c:a",
            "aac",
            p,
        ])
    });
    assert_eq!(audio_stream(&probe(&input))["channels"], 6);
    let mp3 = check_with(&input, 48_000, 2, 440.0, Some("fdk-aac"));
    let decoded = decode(&mp3, 2);
    let right = dominant_hz(&decoded.planes[1], decoded.rate);
    assert!((right - 1000.0).abs() < 20.0, "right keeps the right tone: {right}");
}

#[test]
fn five_one_alac_is_downmixed_by_our_matrix() {
    let input = crate::media::fixture("five_one_alac.m4a", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=3:r=44100",
            "-f",
            "lavfi",
            "-i",
            "sine=f=1000:d=3:r=44100",
            "-filter_complex",
            "[0][1]amerge=inputs=2,pan=5.1|FL=c0|FR=c1|FC=0*c0|LFE=0*c0|BL=c0|BR=c1[a]",
            "-map",
            "[a]",
            "-c:a",
            "alac",
            p,
        ])
    });
    let mp3 = check_with(&input, 44_100, 2, 440.0, Some("symphonia"));
    let decoded = decode(&mp3, 2);
    assert!((dominant_hz(&decoded.planes[1], decoded.rate) - 1000.0).abs() < 20.0);
}

#[test]
fn alac_mp3_in_mp4_and_pcm_mov_convert() {
    check(
        &crate::media::tone("alac.m4a", 440, 44_100, 3.0, 2, &["-c:a", "alac"]),
        44_100,
        2,
        440.0,
    );
    check(
        &crate::media::tone("mp3_in.mp4", 440, 44_100, 3.0, 2, &["-c:a", "libmp3lame"]),
        44_100,
        2,
        440.0,
    );
    check(
        &crate::media::tone("pcm.mov", 440, 48_000, 3.0, 2, &["-c:a", "pcm_s16le"]),
        48_000,
        2,
        440.0,
    );
}

#[test]
fn he_aac_v1_and_v2_decode_at_full_rate() {
    for v2 in [false, true] {
        let input = crate::media::he_aac(v2);
        let mp3 = check_with(&input, 44_100, 2, 440.0, Some("fdk-aac"));
        // SBR really decoded: the core alone would be 22.05 kHz.
        assert_eq!(decode(&mp3, 2).rate, 44_100);
    }
}

#[test]
fn vbr_writes_a_xing_header_and_varies_the_bitrate() {
    let input = crate::media::stereo_tagged();
    for q in [0, 4, 9] {
        let (bytes, _) = convert_to_vec(
            &input,
            &ConvertOptions {
                quality: Quality::Vbr { quality: q },
                ..Default::default()
            },
        )
        .unwrap();
        let id3_len = 10 + bytes[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
        assert!(
            bytes[id3_len..id3_len + 400].windows(4).any(|w| w == b"Xing"),
            "VBR q{q} has a Xing header"
        );
    }
    let small = convert_to_vec(
        &input,
        &ConvertOptions {
            quality: Quality::Vbr { quality: 9 },
            ..Default::default()
        },
    )
    .unwrap()
    .0;
    let large = convert_to_vec(
        &input,
        &ConvertOptions {
            quality: Quality::Vbr { quality: 0 },
            ..Default::default()
        },
    )
    .unwrap()
    .0;
    assert!(large.len() > small.len(), "quality 0 is larger than quality 9");
}

#[test]
fn every_standard_bitrate_is_honoured() {
    let input = crate::media::tone("bitrates.m4a", 440, 44_100, 2.0, 2, &["-c:a", "aac"]);
    for kbps in convert::STANDARD_BITRATES {
        let mp3 = convert_to_file(
            &input,
            &ConvertOptions {
                quality: Quality::Cbr { kbps },
                ..Default::default()
            },
        );
        let info = probe(&mp3);
        assert_eq!(
            audio_stream(&info)["bit_rate"],
            (u32::from(kbps) * 1000).to_string(),
            "{kbps} kbps"
        );
        let secs = decode(&mp3, 2).secs();
        assert!((secs - 2.0).abs() <= 0.050, "{kbps} kbps: decoded {secs:.4} s of 2 s");
    }
    let err = convert_to_vec(
        &input,
        &ConvertOptions {
            quality: Quality::Cbr { kbps: 100 },
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), "invalid_settings");
}

#[test]
fn track_option_picks_among_audio_tracks() {
    let input = crate::media::fixture("two_tracks.mp4", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=3",
            "-f",
            "lavfi",
            "-i",
            "sine=f=1000:d=3",
            "-map",
            "0",
            "-map",
            "1",
            "-c:a",
            "aac",
            p,
        ])
    });
    for (track, hz) in [(0, 440.0), (1, 1000.0)] {
        let mp3 = convert_to_file(
            &input,
            &ConvertOptions {
                track: Some(track),
                ..Default::default()
            },
        );
        let decoded = decode(&mp3, 1);
        assert!(
            (dominant_hz(&decoded.planes[0], decoded.rate) - hz).abs() < 20.0,
            "track {track}"
        );
    }
    let err = convert_to_vec(
        &input,
        &ConvertOptions {
            track: Some(2),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConvertError::NoSuchTrack {
                requested: 2,
                available: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn typed_errors_for_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(
        &text,
        "this is not a video, just some text that is long enough to probe",
    )
    .unwrap();
    assert_eq!(
        convert_to_vec(&text, &ConvertOptions::default()).unwrap_err().code(),
        "not_mp4"
    );

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        convert_to_vec(&empty, &ConvertOptions::default()).unwrap_err().code(),
        "not_mp4"
    );

    let plain_mp3 = crate::media::tone("plain.mp3", 440, 44_100, 1.0, 1, &[]);
    assert_eq!(
        convert_to_vec(&plain_mp3, &ConvertOptions::default())
            .unwrap_err()
            .code(),
        "not_mp4"
    );

    let silent_video = crate::media::fixture("video_only.mp4", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=10:d=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            p,
        ])
    });
    assert_eq!(
        convert_to_vec(&silent_video, &ConvertOptions::default())
            .unwrap_err()
            .code(),
        "no_audio_track"
    );

    let ac3 = crate::media::tone("ac3.mp4", 440, 48_000, 1.0, 2, &["-c:a", "ac3"]);
    let err = convert_to_vec(&ac3, &ConvertOptions::default()).unwrap_err();
    assert_eq!(err.code(), "unsupported_codec");
    assert!(err.to_string().contains("AC-3"), "names the codec: {err}");

    // A fast-start file cut in the middle of its audio data.
    let whole = std::fs::read(crate::media::tone(
        "truncate_me.m4a",
        440,
        44_100,
        4.0,
        2,
        &["-c:a", "aac", "-movflags", "+faststart"],
    ))
    .unwrap();
    let cut = dir.path().join("cut.m4a");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    // What comes before the cut is kept, and said to be partial (tests/recovery.rs checks
    // the audio); cut inside its index, nothing is left: truncated.
    let (_, summary) = convert_to_vec(&cut, &ConvertOptions::default()).unwrap();
    assert_eq!(summary.ended_early.as_deref(), Some("the file ends early"));
    assert!(summary.duration.as_secs_f64() < 2.5, "{summary:?}");
    let moov_end = whole.windows(4).position(|w| w == b"mdat").unwrap();
    std::fs::write(&cut, &whole[..moov_end / 2]).unwrap();
    assert_eq!(
        convert_to_vec(&cut, &ConvertOptions::default()).unwrap_err().code(),
        "truncated_media"
    );

    // Truncated inside the index of a file whose moov comes last.
    let whole = std::fs::read(crate::media::tone(
        "truncate_moov.m4a",
        440,
        44_100,
        4.0,
        2,
        &["-c:a", "aac"],
    ))
    .unwrap();
    let cut = dir.path().join("cut_moov.m4a");
    std::fs::write(&cut, &whole[..whole.len() - 200]).unwrap();
    assert_eq!(
        convert_to_vec(&cut, &ConvertOptions::default()).unwrap_err().code(),
        "truncated_media"
    );

    let missing = dir.path().join("missing.mp4");
    assert_eq!(
        convert_to_vec(&missing, &ConvertOptions::default()).unwrap_err().code(),
        "io_error"
    );
}

#[test]
fn a_few_corrupt_packets_become_silence_but_mostly_corrupt_input_fails() {
    let input = crate::media::tone(
        "corruptible.m4a",
        440,
        44_100,
        10.0,
        1,
        &["-c:a", "aac", "-movflags", "+faststart"],
    );
    let whole = std::fs::read(&input).unwrap();
    let mdat = whole.windows(4).position(|w| w == b"mdat").unwrap() + 4;
    let dir = tempfile::tempdir().unwrap();

    // Damage a few packets near the middle: the conversion goes on.
    let mut few = whole.clone();
    let mid = mdat + (whole.len() - mdat) / 2;
    for b in &mut few[mid..mid + 600] {
        *b = 0xFF;
    }
    let few_path = dir.path().join("few.m4a");
    std::fs::write(&few_path, &few).unwrap();
    let (_, summary) = convert_to_vec(&few_path, &ConvertOptions::default()).unwrap();
    assert!(
        summary.concealed_packets >= 1,
        "some packets were concealed: {summary:?}"
    );
    // Each damaged packet became silence of its length: the MP3 is as long as the input.
    assert!((summary.duration.as_secs_f64() - 10.0).abs() < 0.03, "{summary:?}");
    let warning = summary.warning().unwrap();
    assert!(
        warning.ends_with("damaged packets replaced with silence")
            || warning == "1 damaged packet replaced with silence",
        "{warning}"
    );

    // Damage everything: the conversion fails as corrupt.
    let mut all = whole.clone();
    for (i, b) in all[mdat + 4..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    let all_path = dir.path().join("all.m4a");
    std::fs::write(&all_path, &all).unwrap();
    assert_eq!(
        convert_to_vec(&all_path, &ConvertOptions::default())
            .unwrap_err()
            .code(),
        "corrupt_media"
    );
}

#[test]
fn too_long_inputs_are_refused() {
    let input = crate::media::tone("six_secs.m4a", 440, 44_100, 6.0, 1, &["-c:a", "aac"]);
    let opts = ConvertOptions {
        max_duration: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    let err = convert_to_vec(&input, &opts).unwrap_err();
    assert_eq!(err.code(), "too_long", "{err}");
    let opts = ConvertOptions {
        max_duration: Some(std::time::Duration::from_secs(7)),
        ..Default::default()
    };
    assert!(convert_to_vec(&input, &opts).is_ok());
}

#[test]
fn progress_rises_to_one_and_cancel_stops_between_packets() {
    let input = crate::media::video(20);
    let seen = Mutex::new(Vec::new());
    let progress = |f: f64| seen.lock().unwrap().push(f);
    let mut out = Cursor::new(Vec::new());
    convert::convert_file(
        &input,
        &mut out,
        &ConvertOptions::default(),
        Hooks {
            progress: Some(&progress),
            cancel: None,
        },
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    assert!(seen.len() > 20, "many progress reports: {}", seen.len());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic");
    assert!(seen.iter().all(|f| (0.0..=1.0).contains(f)));
    assert_eq!(*seen.last().unwrap(), 1.0);
    assert!(seen[seen.len() - 2] > 0.9, "reaches near the end before finishing");

    // Cancel once a quarter is done: the conversion stops with Canceled.
    let cancel = AtomicBool::new(false);
    let cancel_at_quarter = |f: f64| {
        if f > 0.25 {
            cancel.store(true, Ordering::Relaxed);
        }
    };
    let max_seen = Mutex::new(0.0f64);
    let both = |f: f64| {
        cancel_at_quarter(f);
        let mut m = max_seen.lock().unwrap();
        *m = m.max(f);
    };
    let mut out = Cursor::new(Vec::new());
    let err = convert::convert_file(
        &input,
        &mut out,
        &ConvertOptions::default(),
        Hooks {
            progress: Some(&both),
            cancel: Some(&cancel),
        },
    )
    .unwrap_err();
    assert!(matches!(err, ConvertError::Canceled), "{err}");
    assert!(*max_seen.lock().unwrap() < 0.5, "stopped soon after the flag was set");
}

#[test]
fn non_seekable_input_is_spooled() {
    let input = crate::media::stereo_tagged();
    let file = convert::spool(std::fs::File::open(&input).unwrap()).unwrap();
    let mut out = Cursor::new(Vec::new());
    let summary = convert::convert(file, &mut out, &ConvertOptions::default(), Hooks::default()).unwrap();
    assert_eq!(summary.channels, 2);
    assert!((summary.duration.as_secs_f64() - 5.0).abs() < 0.05);
}

/// 45 s: a 440 Hz tone with pink noise on the left, 880 Hz on the right, tagged.
fn long_stereo() -> std::path::PathBuf {
    crate::media::fixture("long_stereo_45s_seed7.m4a", |p| {
        crate::media::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=45:r=44100",
            "-f",
            "lavfi",
            "-i",
            "anoisesrc=d=45:c=pink:a=0.1:r=44100:seed=7",
            "-f",
            "lavfi",
            "-i",
            "sine=f=880:d=45:r=44100",
            "-filter_complex",
            "[0][1]amix=inputs=2:normalize=0[l];[l][2]amerge=inputs=2[a]",
            "-map",
            "[a]",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-metadata",
            "title=Halves",
            p,
        ])
    })
}

fn rms_of(samples: impl Iterator<Item = f32>) -> f64 {
    let (sum, n) = samples.fold((0.0f64, 0usize), |(s, n), x| (s + f64::from(x) * f64::from(x), n + 1));
    (sum / n.max(1) as f64).sqrt()
}

#[test]
fn long_inputs_are_encoded_in_segments_equivalent_to_one_piece() {
    let input = long_stereo();
    let split = tempfile::NamedTempFile::new().unwrap();
    let summary = convert::convert_file(
        &input,
        &mut split.reopen().unwrap(),
        &ConvertOptions::default(),
        Hooks::default(),
    )
    .unwrap();
    assert!(
        summary.segments >= 2,
        "a 45 s input on two cores is encoded in segments"
    );
    let whole = tempfile::NamedTempFile::new().unwrap();
    let opts = ConvertOptions {
        threads: 1,
        ..Default::default()
    };
    let summary = convert::convert_file(&input, &mut whole.reopen().unwrap(), &opts, Hooks::default()).unwrap();
    assert_eq!(summary.segments, 1);

    // ffmpeg reads the spliced stream without a single complaint (bad main_data_begin,
    // overread, CRC) and trusts its info frame: the same length as the input, to the sample.
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(split.path())
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = crate::media::decode(split.path(), 2);
    let b = crate::media::decode(whole.path(), 2);
    assert_eq!(
        a.planes[0].len(),
        b.planes[0].len(),
        "same sample count as the one-piece encoding"
    );
    assert!((a.secs() - 45.0).abs() < 0.001, "{} s", a.secs());
    assert_eq!(crate::media::probe(split.path())["format"]["tags"]["title"], "Halves");

    // Both encodings are judged against the source. The halves must cost nothing: their error
    // is within 0.5 dB of the one-piece error, over the whole file and over B's half alone. The
    // two MP3s are not bit-identical after the seam (B's bit reservoir and psychoacoustic state
    // differ from the one-piece encoder's), so they are compared with each other only loosely:
    // they must agree far better (8 dB) than either agrees with the source. A half shifted by
    // even one sample fails both; a click at the seam fails the window check below.
    let source = crate::media::decode(&input, 2);
    let n = a.planes[0].len().min(source.planes[0].len());
    let within = |e: f64, reference: f64| e <= reference * 10f64.powf(0.5 / 20.0);
    for ch in [0, 1] {
        let (x, y, s) = (&a.planes[ch][..n], &b.planes[ch][..n], &source.planes[ch][..n]);
        let err = |v: &[f32], from: usize| rms_of(v[from..].iter().zip(&s[from..]).map(|(p, q)| p - q));
        let signal = rms_of(y.iter().copied());
        let (split_err, whole_err) = (err(x, 0), err(y, 0));
        assert!(
            within(split_err, whole_err),
            "channel {ch}: halves' error {split_err} vs one piece's {whole_err}"
        );
        let (split_err_b, whole_err_b) = (err(x, n / 2), err(y, n / 2));
        assert!(
            within(split_err_b, whole_err_b),
            "channel {ch}, second half: halves' error {split_err_b} vs one piece's {whole_err_b}"
        );
        let diff = rms_of(x.iter().zip(y).map(|(p, q)| p - q));
        assert!(
            diff < whole_err * 0.4,
            "channel {ch}: the encodings differ by {diff}, their error from the source is {whole_err}"
        );
        // No click at the seam: no 10 ms window differs by more than -14 dB (encoding the
        // noise twice differs at about -30 dB; a broken splice decodes to garbage).
        for (i, (wx, wy)) in x.chunks(441).zip(y.chunks(441)).enumerate() {
            let d = rms_of(wx.iter().zip(wy).map(|(p, q)| p - q));
            assert!(
                d < signal * 0.2,
                "channel {ch}, window at {} s differs by {d}",
                i as f64 / 100.0
            );
        }
    }
    // The right channel's tone (the left one is noisy) is intact in B's half.
    let right = &a.planes[1][a.planes[1].len() * 3 / 4..];
    assert!((crate::media::dominant_hz(right, a.rate) - 880.0).abs() < 3.0);
}
