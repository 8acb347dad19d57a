//! Splicing two halves encoded in parallel into one MP3.
//!
//! Encoder A encodes the audio up to a little past the split point; encoder B starts
//! [`WARMUP_MIN`]+ frames before it, on the same frame grid (the split is a multiple of the
//! frame size and both encoders have the same delay), so B's frame `i` carries the same
//! samples as A's frame `m + i`. The seam is the first frame `w` in B's warm-up window
//! whose bit reservoir (`main_data_begin`) fits in the bytes A had reserved for its own
//! frame `m + w`, which are free once A's later frames are dropped. B's reservoir bytes
//! are copied there, so every frame's main data is where its side info says. Finally the
//! Xing/LAME info frame is rewritten for the whole stream: frame and byte counts, TOC,
//! padding, music length and both CRCs.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::frames::{Frame, crc16};

/// Frames B encodes before the earliest possible seam (psychoacoustic and reservoir
/// warm-up).
pub(crate) const WARMUP_MIN: usize = 16;
/// The last frame of B's window that may become the seam.
pub(crate) const WARMUP_MAX: usize = 96;

/// Where the two encodings join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seam {
    /// Index (among A's audio frames) of the first frame taken from B.
    pub(crate) a_index: usize,
    /// Index of that frame among B's frames.
    pub(crate) b_index: usize,
}

/// Finds the seam: `m` is B's start in frames, `a`/`b` the audio frames (no info frame).
pub(crate) fn find_seam(a: &[Frame], b: &[Frame], m: usize) -> Option<Seam> {
    (WARMUP_MIN..=WARMUP_MAX)
        .find(|&w| match (a.get(m + w), b.get(w)) {
            (Some(fa), Some(fb)) => fb.main_data_begin <= fa.main_data_begin,
            _ => false,
        })
        .map(|w| Seam {
            a_index: m + w,
            b_index: w,
        })
}

/// The stream offsets of the last `count` main-data bytes before `frames[upto]`'s header,
/// in stream order.
fn reservoir_positions(frames: &[Frame], upto: usize, count: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(count);
    for f in frames[..upto].iter().rev() {
        for pos in f.main_data().rev() {
            if out.len() == count {
                break;
            }
            out.push(pos);
        }
        if out.len() == count {
            break;
        }
    }
    out.reverse();
    out
}

fn read_at(file: &mut File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Copies `len` bytes from `from` at `pos` to `out`, updating `crc`.
fn copy_crc(from: &mut File, pos: u64, len: u64, out: &mut impl Write, crc: &mut u16) -> io::Result<()> {
    from.seek(SeekFrom::Start(pos))?;
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        from.read_exact(&mut buf[..n])?;
        *crc = crc16(*crc, &buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What the splice needs to know about the two encodings.
pub(crate) struct Halves<'a> {
    /// A's output: its info frame, then its audio frames.
    pub(crate) a_file: &'a mut File,
    /// A's frames, the info frame first.
    pub(crate) a_frames: &'a [Frame],
    /// B's output: audio frames only.
    pub(crate) b_file: &'a mut File,
    /// B's frames.
    pub(crate) b_frames: &'a [Frame],
    /// B's first frame is A's audio frame `m`.
    pub(crate) m: usize,
    /// Samples per frame.
    pub(crate) frame_samples: u64,
    /// Audio samples (per channel) in the whole input.
    pub(crate) total_samples: u64,
}

/// Writes the spliced stream to `out` (at its current position). `None` if no seam fits.
pub(crate) fn splice<W: Write + Seek>(h: Halves<'_>, out: &mut W) -> io::Result<Option<()>> {
    let (tag, a) = h
        .a_frames
        .split_first()
        .ok_or_else(|| io::Error::other("encoder A wrote nothing"))?;
    let b = h.b_frames;
    let Some(seam) = find_seam(a, b, h.m) else {
        return Ok(None);
    };
    let need = usize::from(b[seam.b_index].main_data_begin);
    // B's reservoir bytes for its seam frame, and where they go in A's stream.
    let mut reservoir = Vec::with_capacity(need);
    for pos in reservoir_positions(b, seam.b_index, need) {
        reservoir.extend(read_at(h.b_file, pos, 1)?);
    }
    let targets = reservoir_positions(a, seam.a_index, need);
    if targets.len() != need || reservoir.len() != need {
        return Ok(None);
    }

    let tag_start = out.stream_position()?;
    let mut info = read_at(h.a_file, tag.offset, tag.len as usize)?;
    out.write_all(&info)?;
    // A's audio up to the seam, with B's reservoir bytes laid over its tail.
    let a_end = a[seam.a_index].offset;
    let first_target = targets.first().copied().unwrap_or(a_end);
    let mut music_crc = 0u16;
    copy_crc(h.a_file, a[0].offset, first_target - a[0].offset, out, &mut music_crc)?;
    let mut tail = read_at(h.a_file, first_target, (a_end - first_target) as usize)?;
    for (pos, byte) in targets.iter().zip(&reservoir) {
        tail[(pos - first_target) as usize] = *byte;
    }
    music_crc = crc16(music_crc, &tail);
    out.write_all(&tail)?;
    // B from the seam to its end.
    let b_start = b[seam.b_index].offset;
    let b_end = b.last().map_or(b_start, |f| f.offset + u64::from(f.len));
    copy_crc(h.b_file, b_start, b_end - b_start, out, &mut music_crc)?;
    let end = out.stream_position()?;

    let lengths: Vec<u32> = a[..seam.a_index]
        .iter()
        .chain(&b[seam.b_index..])
        .map(|f| f.len)
        .collect();
    rewrite_info(&mut info, &lengths, h.frame_samples, h.total_samples, music_crc)?;
    out.seek(SeekFrom::Start(tag_start))?;
    out.write_all(&info)?;
    out.seek(SeekFrom::Start(end))?;
    Ok(Some(()))
}

/// Rewrites a LAME info frame for a stream of audio frames of `lengths` bytes.
pub(crate) fn rewrite_info(
    info: &mut [u8],
    lengths: &[u32],
    frame_samples: u64,
    total_samples: u64,
    music_crc: u16,
) -> io::Result<()> {
    let bad = || io::Error::other("the encoder's info frame has an unexpected layout");
    let t = (0..64usize)
        .find(|&i| info.get(i..i + 4).is_some_and(|s| s == b"Info" || s == b"Xing"))
        .ok_or_else(bad)?;
    if info.len() < t + 156 || &info[t + 120..t + 124] != b"LAME" {
        return Err(bad());
    }
    let frames = lengths.len() as u32;
    let audio_bytes: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
    let stream_size = u32::try_from(audio_bytes + info.len() as u64).unwrap_or(u32::MAX);
    info[t + 8..t + 12].copy_from_slice(&frames.to_be_bytes());
    info[t + 12..t + 16].copy_from_slice(&stream_size.to_be_bytes());
    // TOC: the share of the audio bytes before each percent of the frames.
    let mut before = Vec::with_capacity(lengths.len());
    let mut sum = 0u64;
    for &l in lengths {
        before.push(sum);
        sum += u64::from(l);
    }
    for i in 1..100usize {
        let frame = (i * lengths.len() / 100).min(lengths.len().saturating_sub(1));
        let share = before.get(frame).copied().unwrap_or(0) * 256 / audio_bytes.max(1);
        info[t + 16 + i] = share.min(255) as u8;
    }
    let lame = t + 120;
    let delay = (u64::from(info[lame + 21]) << 4) | (u64::from(info[lame + 22]) >> 4);
    let padding = (u64::from(frames) * frame_samples)
        .checked_sub(delay + total_samples)
        .ok_or_else(bad)?
        .min(0xfff);
    info[lame + 22] = (info[lame + 22] & 0xf0) | (padding >> 8) as u8;
    info[lame + 23] = padding as u8;
    info[lame + 28..lame + 32].copy_from_slice(&stream_size.to_be_bytes());
    info[lame + 32..lame + 34].copy_from_slice(&music_crc.to_be_bytes());
    let tag_crc = crc16(0, &info[..lame + 34]);
    info[lame + 34..lame + 36].copy_from_slice(&tag_crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::encode::Mp3Encoder;
    use super::super::frames::FrameWriter;
    use super::super::settings::Quality;
    use super::*;

    /// LAME's own info frame for a stream, and the stream's frames and audio bytes.
    fn lame_stream(samples: usize) -> (Vec<u8>, Vec<Frame>, Vec<u8>) {
        let tone: Vec<f32> = (0..samples).map(|i| (i as f32 * 0.0627).sin() * 0.4).collect();
        let noise: Vec<f32> = (0..samples)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.2)
            .collect();
        let mut enc = Mp3Encoder::new(44_100, 2, Quality::Cbr { kbps: 192 }).unwrap();
        let mut out = FrameWriter::new(tempfile::tempfile().unwrap());
        enc.encode(&[tone, noise], &mut out).unwrap();
        enc.flush(&mut out).unwrap();
        let frames = std::mem::take(&mut out.frames);
        let mut file = out.into_inner();
        enc.write_tag(&mut file, 0).unwrap();
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        let info = bytes[..frames[0].len as usize].to_vec();
        let audio = bytes[frames[0].len as usize..].to_vec();
        (info, frames, audio)
    }

    #[test]
    fn rewriting_lames_info_frame_for_its_own_stream_reproduces_it() {
        let samples = 44_100 * 7 + 123;
        let (info, frames, audio) = lame_stream(samples);
        let lengths: Vec<u32> = frames[1..].iter().map(|f| f.len).collect();
        let mut ours = info.clone();
        rewrite_info(&mut ours, &lengths, 1152, samples as u64, crc16(0, &audio)).unwrap();
        let t = info.windows(4).position(|w| w == b"Info").unwrap();
        // Every field but the TOC is byte-identical: counts, padding, length, music CRC.
        let crc_at = t + 120 + 34;
        assert_eq!(ours[..t + 16], info[..t + 16]);
        assert_eq!(ours[t + 116..crc_at], info[t + 116..crc_at]);
        // The tag CRC covers the TOC: with LAME's TOC it is LAME's CRC.
        let mut with_lames_toc = ours[..crc_at].to_vec();
        with_lames_toc[t + 16..t + 116].copy_from_slice(&info[t + 16..t + 116]);
        assert_eq!(crc16(0, &with_lames_toc).to_be_bytes(), info[crc_at..crc_at + 2]);
        assert_eq!(crc16(0, &ours[..crc_at]).to_be_bytes(), ours[crc_at..crc_at + 2]);
        // LAME samples its TOC coarsely; ours is exact: within a step of each other.
        for i in 0..100 {
            assert!(ours[t + 16 + i].abs_diff(info[t + 16 + i]) <= 3, "toc[{i}]");
        }
    }

    #[test]
    fn the_seam_is_the_first_frame_whose_reservoir_fits() {
        let frame = |mdb| Frame {
            offset: 0,
            len: 626,
            side_len: 36,
            main_data_begin: mdb,
        };
        let a: Vec<Frame> = (0..200).map(|_| frame(100)).collect();
        let mut b: Vec<Frame> = (0..150).map(|_| frame(300)).collect();
        assert_eq!(find_seam(&a, &b, 50), None);
        b[WARMUP_MIN + 3].main_data_begin = 100;
        b[WARMUP_MIN + 5].main_data_begin = 0;
        assert_eq!(
            find_seam(&a, &b, 50),
            Some(Seam {
                a_index: 50 + WARMUP_MIN + 3,
                b_index: WARMUP_MIN + 3
            })
        );
    }
}
