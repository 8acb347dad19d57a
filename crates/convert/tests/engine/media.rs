//! Media fixtures and analysis shared by the engine's tests and the service's (which
//! include this file as `tests/it/common/media.rs`).
//!
//! Fixtures are made at test time with ffmpeg (a test oracle, never used by the product)
//! and, for HE-AAC, which Debian's ffmpeg cannot encode, with fdk-aac. They are cached under
//! cargo's per-target temp dir, so each is generated once per build directory.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

/// The fixture directory.
pub fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Seconds of audio in a file per ffprobe (which honours an MP3's LAME delay/padding).
pub fn duration(path: &Path) -> f64 {
    probe(path)["format"]["duration"].as_str().unwrap().parse().unwrap()
}

/// Seconds of audio in MP3 `bytes` (written to `dir/check.mp3` for ffprobe).
pub fn mp3_seconds(dir: &Path, bytes: &[u8]) -> f64 {
    let path = dir.join("check.mp3");
    std::fs::write(&path, bytes).unwrap();
    duration(&path)
}

/// Runs ffmpeg with `args`, panicking with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg must be installed for the tests (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fixture file `name`, made by `make(path)` unless it already exists.
pub fn fixture(name: &str, make: impl FnOnce(&str)) -> PathBuf {
    let path = dir().join(name);
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let tmp = dir().join(format!("tmp-{}-{name}", std::process::id()));
        make(tmp.to_str().unwrap());
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// `secs` of a 440 Hz tone on the left and 880 Hz on the right, 44.1 kHz AAC in M4A, with tags
/// and a cover picture.
pub fn stereo_tagged() -> PathBuf {
    let cover = fixture("cover.png", |p| {
        ffmpeg(&["-f", "lavfi", "-i", "color=c=red:s=16x16:d=1", "-frames:v", "1", p])
    });
    fixture("stereo_tagged.m4a", |p| {
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=5:r=44100",
            "-f",
            "lavfi",
            "-i",
            "sine=f=880:d=5:r=44100",
            "-i",
            cover.to_str().unwrap(),
            "-filter_complex",
            "[0][1]amerge=inputs=2[a]",
            "-map",
            "[a]",
            "-map",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-c:v",
            "png",
            "-disposition:v",
            "attached_pic",
            "-metadata",
            "title=Test Title",
            "-metadata",
            "artist=Test Artist",
            "-metadata",
            "album=Test Album",
            "-metadata",
            "album_artist=Album Artist",
            "-metadata",
            "date=2019",
            "-metadata",
            "track=3/9",
            "-metadata",
            "genre=Rock",
            "-metadata",
            "comment=Hello comment",
            p,
        ])
    })
}

/// A sine tone through ffmpeg with `codec` at `rate` Hz for `secs`, `channels` channels
/// (each channel the same tone), in a container chosen by `name`'s extension.
pub fn tone(name: &str, freq: u32, rate: u32, secs: f64, channels: u32, extra: &[&str]) -> PathBuf {
    fixture(name, |p| {
        let src = format!("sine=f={freq}:d={secs}:r={rate}");
        let ac = channels.to_string();
        let mut args = vec!["-f", "lavfi", "-i", &src, "-ac", &ac];
        args.extend_from_slice(extra);
        args.push(p);
        ffmpeg(&args)
    })
}

/// A fragmented M4A (a moof per 0.5 s) of a 440 Hz stereo AAC tone: cut anywhere, what
/// comes before the cut is whole fragments and one broken one (a recording cut short).
pub fn fragmented(name: &str, secs: f64) -> PathBuf {
    let frag = [
        "-c:a",
        "aac",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
        "-frag_duration",
        "500000",
    ];
    tone(name, 440, 44_100, secs, 2, &frag)
}

/// H.264 video + AAC audio (440 Hz) of `secs`, with moov at the end (ffmpeg's default).
pub fn video(secs: u32) -> PathBuf {
    fixture(&format!("video_{secs}s.mp4"), |p| {
        let v = format!("testsrc=size=160x120:rate=25:d={secs}");
        let a = format!("sine=f=440:d={secs}:r=44100");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &v,
            "-f",
            "lavfi",
            "-i",
            &a,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-ac",
            "2",
            "-shortest",
            p,
        ])
    })
}

/// What ffprobe says about the first audio stream (and format tags) of `path`.
pub fn probe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decoded audio: planes of f32 at `rate`.
pub struct Decoded {
    pub rate: u32,
    pub planes: Vec<Vec<f32>>,
}

impl Decoded {
    pub fn secs(&self) -> f64 {
        self.planes[0].len() as f64 / f64::from(self.rate)
    }
}

/// Decodes `path` with ffmpeg (which honours the MP3 info frame's delay and padding and the
/// MP4 edit list) into `channels` planes at its own sample rate.
pub fn decode(path: &Path, channels: usize) -> Decoded {
    let info = probe(path);
    let stream = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "audio")
        .unwrap();
    let rate: u32 = stream["sample_rate"].as_str().unwrap().parse().unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:a:0", "-f", "f32le", "-ac", &channels.to_string(), "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let planes = (0..channels)
        .map(|c| samples.iter().skip(c).step_by(channels).copied().collect())
        .collect();
    Decoded { rate, planes }
}

/// The dominant frequency of `samples` at `rate`, by counting zero crossings of the middle
/// part (enough for the pure tones the fixtures hold).
pub fn dominant_hz(samples: &[f32], rate: u32) -> f64 {
    let n = samples.len();
    let mid = &samples[n / 4..3 * n / 4];
    let crossings = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
    crossings as f64 / 2.0 / (mid.len() as f64 / f64::from(rate))
}

/// Root mean square level of `samples`.
pub fn rms(samples: &[f32]) -> f64 {
    (samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len().max(1) as f64).sqrt()
}

/// HE-AAC (v1, or v2 with parametric stereo) of a 440 Hz tone, 44.1 kHz, encoded with
/// fdk-aac into ADTS and remuxed into M4A by ffmpeg (implicit SBR signalling, as in most
/// podcasts and streams).
pub fn he_aac(v2: bool) -> PathBuf {
    use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};
    let name = if v2 { "he_aac_v2.m4a" } else { "he_aac.m4a" };
    fixture(name, |p| {
        let enc = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(if v2 { 32_000 } else { 48_000 }),
            sample_rate: 44_100,
            transport: Transport::Adts,
            channels: ChannelMode::Stereo,
            audio_object_type: if v2 {
                AudioObjectType::Mpeg4HeAacV2
            } else {
                AudioObjectType::Mpeg4HeAac
            },
        })
        .unwrap();
        let frames = 44_100 * 5;
        let pcm: Vec<i16> = (0..frames)
            .flat_map(|i| {
                let s = ((i as f64 * 440.0 * std::f64::consts::TAU / 44_100.0).sin() * 12_000.0) as i16;
                [s, s]
            })
            .collect();
        let mut adts = Vec::new();
        let mut out = vec![0u8; 1 << 16];
        let mut rest = &pcm[..];
        while !rest.is_empty() {
            let info = enc.encode(rest, &mut out).unwrap();
            adts.extend_from_slice(&out[..info.output_size]);
            rest = &rest[info.input_consumed..];
        }
        let raw = format!("{p}.aac");
        std::fs::write(&raw, adts).unwrap();
        ffmpeg(&["-f", "aac", "-i", &raw, "-c", "copy", "-f", "mp4", p]);
        std::fs::remove_file(raw).unwrap();
    })
}
