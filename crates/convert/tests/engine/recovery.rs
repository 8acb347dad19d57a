//! Damaged files symphonia's reader refuses, recovered by the forgiving one
//! (crates/convert/src/lenient.rs): boxes the audio does not need missing or broken, a
//! sample entry without its decoder config or with a wrong version, a fast-start file cut
//! inside its audio, a fragmented file with a broken `moov`, a flipped bit in a sample
//! size or a chunk offset. Each result is checked by decoding it with ffmpeg: its length
//! and its tone, not only its exit code.

use std::io::Cursor;
use std::path::Path;

use mp4tomp3_convert::{self as convert, ConvertError, ConvertOptions, Hooks, Summary};

const SECS: f64 = 4.0;

fn fast_start() -> Vec<u8> {
    let path = crate::media::tone(
        "recover_fast_4s.m4a",
        440,
        44_100,
        SECS,
        2,
        &["-c:a", "aac", "-movflags", "+faststart"],
    );
    std::fs::read(path).unwrap()
}

fn convert_bytes(data: &[u8]) -> Result<(Summary, Vec<u8>), ConvertError> {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, data).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    let mut out = Cursor::new(Vec::new());
    let summary = convert::convert(file, &mut out, &ConvertOptions::default(), Hooks::default())?;
    Ok((summary, out.into_inner()))
}

/// Offset of the first box of type `kind` (its size field).
fn find_box(data: &[u8], kind: &[u8; 4]) -> usize {
    data.windows(4)
        .position(|w| w == kind)
        .unwrap_or_else(|| panic!("no {kind:?} box"))
        - 4
}

/// Makes the first `kind` box a `free` box: to every reader, it is gone.
fn drop_box(data: &mut [u8], kind: &[u8; 4]) {
    let at = find_box(data, kind);
    data[at + 4..at + 8].copy_from_slice(b"free");
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(data[at..at + 4].try_into().unwrap())
}

fn set32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Converts `data`, expecting audio: returns its seconds (per ffprobe) after checking that
/// it decodes to the 440 Hz tone.
fn recovered(name: &str, data: &[u8]) -> (Summary, f64) {
    let (summary, mp3) = convert_bytes(data).unwrap_or_else(|e| panic!("{name}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp3");
    std::fs::write(&path, &mp3).unwrap();
    let decoded = crate::media::decode(Path::new(&path), 1);
    let hz = crate::media::dominant_hz(&decoded.planes[0], decoded.rate);
    assert!((hz - 440.0).abs() < 5.0, "{name}: {hz} Hz");
    (summary, crate::media::duration(&path))
}

#[test]
fn boxes_the_audio_does_not_need_may_be_missing_or_broken() {
    let whole = fast_start();
    let (_, whole_secs) = recovered("whole", &whole);
    let stsd = find_box(&whole, b"stsd");
    let mp4a = stsd + 16;
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("no tkhd", Box::new(|d| drop_box(d, b"tkhd"))),
        ("no hdlr", Box::new(|d| drop_box(d, b"hdlr"))),
        ("no mdhd", Box::new(|d| drop_box(d, b"mdhd"))),
        ("no mvhd", Box::new(|d| drop_box(d, b"mvhd"))),
        (
            "no esds (AAC config rebuilt from the sample entry)",
            Box::new(|d| drop_box(d, b"esds")),
        ),
        // version(2) sits after the entry's header (8), reserved (6) and data ref (2).
        (
            "mp4a version 1",
            Box::new(move |d| d[mp4a + 16..mp4a + 18].copy_from_slice(&[0, 1])),
        ),
        (
            "mvhd timescale 0",
            Box::new(|d| {
                let mvhd = find_box(d, b"mvhd");
                set32(d, mvhd + 20, 0);
            }),
        ),
        (
            "stco count past its box",
            Box::new(|d| {
                let stco = find_box(d, b"stco");
                set32(d, stco + 12, 0x00ff_ffff);
            }),
        ),
    ];
    for (name, damage) in cases {
        let mut data = whole.clone();
        damage(&mut data);
        let (summary, secs) = recovered(name, &data);
        // Without tkhd or a movie timescale the edit list cannot be matched to the track,
        // so the encoder's priming (~23 ms) and padding stay in.
        assert!(
            (secs - whole_secs).abs() < 0.06,
            "{name}: {secs} s, whole {whole_secs} s"
        );
        assert_eq!(summary.concealed_packets, 0, "{name}");
        assert_eq!(summary.warning(), None, "{name}");
    }
}

#[test]
fn a_fast_start_file_cut_inside_its_audio_keeps_what_is_there() {
    let whole = fast_start();
    let mdat = find_box(&whole, b"mdat") + 8;
    let cut = mdat + (whole.len() - mdat) * 6 / 10;
    let (summary, secs) = recovered("cut", &whole[..cut]);
    let expected = SECS * 0.6;
    assert!((secs - expected).abs() < 0.2, "{secs} s, about {expected} s expected");
    let warning = summary.warning().unwrap_or_default();
    assert!(
        warning.starts_with("recovered 2.") && warning.contains("of 4.0 s"),
        "{warning}"
    );
}

#[test]
fn a_fragmented_file_with_a_broken_moov_still_converts() {
    let whole = std::fs::read(crate::media::fragmented("recover_frag_3s.m4a", 3.0)).unwrap();
    let (_, whole_secs) = recovered("whole", &whole);
    for kind in [b"hdlr", b"mdhd"] {
        let mut data = whole.clone();
        drop_box(&mut data, kind);
        let (_, secs) = recovered("fragmented", &data);
        assert!(
            (secs - whole_secs).abs() < 0.06,
            "no {kind:?}: {secs} s, whole {whole_secs} s"
        );
    }
}

/// `data` (moov at the end, one chunk) with its samples regrouped into chunks of
/// `per_chunk`, back to back: the layout of files written by other muxers.
fn rechunk(data: &[u8], per_chunk: u32) -> Vec<u8> {
    let stsz = find_box(data, b"stsz");
    let count = be32(data, stsz + 16);
    let sizes: Vec<u32> = (0..count as usize).map(|i| be32(data, stsz + 20 + 4 * i)).collect();
    let stco = find_box(data, b"stco");
    let stsc = find_box(data, b"stsc");
    assert!(
        stsc < stco && find_box(data, b"mdat") < stsc,
        "moov at the end, stsc before stco"
    );
    let mut at = u64::from(be32(data, stco + 16));
    let mut offsets = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        if i % per_chunk as usize == 0 {
            offsets.push(at as u32);
        }
        at += u64::from(*size);
    }
    let full_box = |kind: &[u8; 4], words: &[u32]| {
        let mut b = ((12 + 4 * words.len()) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(&[0; 4]);
        words.iter().for_each(|w| b.extend_from_slice(&w.to_be_bytes()));
        b
    };
    let mut stco_words = vec![offsets.len() as u32];
    stco_words.extend_from_slice(&offsets);
    let mut stsc_words = vec![1, 1, per_chunk, 1];
    if !count.is_multiple_of(per_chunk) {
        stsc_words = vec![2, 1, per_chunk, 1, offsets.len() as u32, count % per_chunk, 1];
    }
    let (old_stsc, old_stco) = (be32(data, stsc) as usize, be32(data, stco) as usize);
    let mut out = data[..stsc].to_vec();
    out.extend(full_box(b"stsc", &stsc_words));
    out.extend_from_slice(&data[stsc + old_stsc..stco]);
    out.extend(full_box(b"stco", &stco_words));
    out.extend_from_slice(&data[stco + old_stco..]);
    let grown = out.len() - data.len();
    for kind in [b"moov", b"trak", b"mdia", b"minf", b"stbl"] {
        let at = find_box(&out, kind);
        let size = be32(&out, at);
        set32(&mut out, at, size + grown as u32);
    }
    out
}

#[test]
fn a_flipped_high_bit_in_a_sample_size_or_a_chunk_offset_is_repaired() {
    let whole = fast_start();
    let (_, whole_secs) = recovered("whole", &whole);

    let mut data = whole.clone();
    let stsz = find_box(&data, b"stsz");
    let count = be32(&data, stsz + 16) as usize;
    let middle = stsz + 20 + 4 * (count / 2);
    let size = be32(&data, middle);
    set32(&mut data, middle, size | 1 << 28);
    let (summary, secs) = recovered("sample size", &data);
    assert!((secs - whole_secs).abs() < 0.06, "sample size: {secs} s");
    assert!(summary.concealed_packets <= 1, "{summary:?}");

    // Chunks back to back, read by the forgiving reader (the handler box is gone): the
    // second chunk's offset with a flipped bit is put back where the first one ends.
    let end = std::fs::read(crate::media::tone(
        "recover_end_4s.m4a",
        440,
        44_100,
        SECS,
        2,
        &["-c:a", "aac"],
    ))
    .unwrap();
    let chunked = rechunk(&end, 10);
    let (_, chunked_secs) = recovered("rechunked", &chunked);
    assert!((chunked_secs - whole_secs).abs() < 0.03, "rechunked: {chunked_secs} s");
    let mut data = chunked.clone();
    drop_box(&mut data, b"hdlr");
    let stco = find_box(&data, b"stco");
    let second = stco + 16 + 4;
    let offset = be32(&data, second);
    set32(&mut data, second, offset ^ 1 << 20);
    let (summary, secs) = recovered("chunk offset", &data);
    assert!((secs - chunked_secs).abs() < 0.03, "chunk offset: {secs} s");
    assert_eq!(summary.concealed_packets, 0, "{summary:?}");
}
