//! Just enough of the MP3 bitstream to splice two encodings: frame headers, the side
//! info's `main_data_begin` (the bit reservoir), and the CRC LAME uses in its info tag.

use std::io::{self, Write};

/// One MPEG audio layer III frame, as found in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Byte offset of its header in the stream.
    pub(crate) offset: u64,
    /// Its length in bytes.
    pub(crate) len: u32,
    /// Header + CRC + side info: where its main data area starts.
    pub(crate) side_len: u16,
    /// How many bytes before its header its main data starts (the bit reservoir).
    pub(crate) main_data_begin: u16,
    /// Its bitrate (what LAME's seek table sums).
    pub(crate) kbps: u16,
}

impl Frame {
    /// The byte just past the frame.
    pub(crate) fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Bytes of a frame needed to read its header, CRC and `main_data_begin`.
const PEEK: usize = 8;

/// Parses the frame starting at `bytes` (at least [`PEEK`] bytes); `None` if no layer III
/// header is there.
pub(crate) fn parse(bytes: &[u8], offset: u64) -> Option<Frame> {
    let h = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    if h >> 21 != 0x7ff || (h >> 17) & 3 != 1 {
        return None;
    }
    let version = (h >> 19) & 3; // 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    let mpeg1 = version == 3;
    if version == 1 {
        return None;
    }
    let protected = (h >> 16) & 1 == 0;
    let bitrate_index = ((h >> 12) & 15) as usize;
    let rate_index = ((h >> 10) & 3) as usize;
    let padding = (h >> 9) & 1;
    let mono = (h >> 6) & 3 == 3;
    const V1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const V2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let kbps = *if mpeg1 { &V1 } else { &V2 }.get(bitrate_index)?;
    let base_rate = *[44_100u32, 48_000, 32_000].get(rate_index)?;
    let rate = match version {
        3 => base_rate,
        2 => base_rate / 2,
        _ => base_rate / 4,
    };
    if kbps == 0 {
        return None; // free format: not produced by us
    }
    let len = if mpeg1 {
        144_000 * kbps / rate
    } else {
        72_000 * kbps / rate
    } + padding;
    let side = match (mpeg1, mono) {
        (true, true) => 17,
        (true, false) => 32,
        (false, true) => 9,
        (false, false) => 17,
    };
    let crc = if protected { 2 } else { 0 };
    let at = 4 + crc;
    let main_data_begin = if mpeg1 {
        (u16::from(*bytes.get(at)?) << 1) | u16::from(*bytes.get(at + 1)? >> 7)
    } else {
        u16::from(*bytes.get(at)?)
    };
    Some(Frame {
        offset,
        len,
        side_len: (4 + crc + side) as u16,
        main_data_begin,
        kbps: kbps as u16,
    })
}

/// A writer that records every frame passing through (the stream must start at a frame).
pub(crate) struct FrameWriter<W> {
    inner: W,
    written: u64,
    next: u64,
    peek: Vec<u8>,
    /// The frames seen so far.
    pub(crate) frames: Vec<Frame>,
}

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            written: 0,
            next: 0,
            peek: Vec::with_capacity(PEEK),
            frames: Vec::new(),
        }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    fn scan(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let mut at = self.written;
        while !buf.is_empty() {
            if at < self.next {
                let skip = (self.next - at).min(buf.len() as u64) as usize;
                buf = &buf[skip..];
                at += skip as u64;
                continue;
            }
            let take = (PEEK - self.peek.len()).min(buf.len());
            self.peek.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            at += take as u64;
            if self.peek.len() == PEEK {
                let frame = parse(&self.peek, self.next).ok_or_else(|| {
                    io::Error::other(format!("no MP3 frame at byte {} of the encoder's output", self.next))
                })?;
                self.next += u64::from(frame.len);
                self.frames.push(frame);
                self.peek.clear();
            }
        }
        Ok(())
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// CRC-16/ARC (polynomial 0x8005 reflected, initial 0): LAME's music and tag CRCs.
pub(crate) fn crc16(mut crc: u16, bytes: &[u8]) -> u16 {
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xa001 } else { crc >> 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_arc() {
        assert_eq!(crc16(0, b"123456789"), 0xbb3d);
    }

    #[test]
    fn headers_give_length_side_info_and_reservoir() {
        // MPEG-1 layer III, 192 kbps, 44.1 kHz, no padding, joint stereo; mdb = 0x1ab.
        let bytes = [0xff, 0xfb, 0xb0, 0x44, 0xd5, 0x80, 0, 0];
        let f = parse(&bytes, 10).unwrap();
        assert_eq!((f.len, f.side_len, f.main_data_begin, f.kbps), (626, 36, 0x1ab, 192));
        assert_eq!(parse(&[0u8; 8], 0), None);
    }
}
