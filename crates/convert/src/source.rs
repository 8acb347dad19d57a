//! The input as the demuxers read it: spooled to a seekable file when it is a stream,
//! its reads counted ([`Tracked`]) for progress and for telling a cut file from a broken
//! one, and the container's I/O errors classified into [`ConvertError`]s.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ConvertError, Result};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;

/// Copies a non-seekable input (stdin, a socket) into an anonymous temp file, rewound, so
/// it can be converted: MP4s often keep their index at the end.
pub fn spool(mut reader: impl Read) -> io::Result<File> {
    let mut file = tempfile::tempfile()?;
    io::copy(&mut reader, &mut file)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Probes the input; `truncated` (from the box walk) turns probe failures into
/// [`ConvertError::Truncated`], since a cut-off `moov` is not a different format.
pub(crate) fn open_format(source: Tracked, truncated: bool) -> Result<Box<dyn FormatReader + 'static>> {
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("mp4");
    let format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| match e {
            SymphoniaError::IoError(io) if io.kind() != io::ErrorKind::UnexpectedEof => ConvertError::Io(io),
            other if truncated => ConvertError::Truncated(other.to_string()),
            SymphoniaError::Unsupported(_) => ConvertError::NotMp4("no MP4 structure found".into()),
            other => ConvertError::NotMp4(other.to_string()),
        })?;
    if format.format_info().short_name != "isomp4" {
        return Err(ConvertError::NotMp4(format!(
            "the file is {}",
            format.format_info().long_name
        )));
    }
    Ok(format)
}

/// The error for a panic inside symphonia: only malformed input has been seen to cause one.
pub(crate) fn demuxer_panic() -> ConvertError {
    ConvertError::Corrupt("malformed media stopped the demuxer".into())
}

/// An I/O error while walking the box tree: broken structure means "not an MP4".
pub(crate) fn classify_container_io(e: io::Error) -> ConvertError {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ConvertError::NotMp4(e.to_string()),
        _ => ConvertError::Io(e),
    }
}

/// An I/O error from the demuxer that says the data is bad (a cut file, an offset past
/// any file), not that the disk failed.
pub(crate) fn is_data_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
    )
}

/// The input file, with its read position published for byte-based progress. A file cut
/// a few bytes into its final `moov` reads as zeros from its end up to `len`.
pub(crate) struct Tracked {
    pub(crate) file: File,
    pub(crate) position: Arc<AtomicU64>,
    pub(crate) len: u64,
    /// Where the file's own bytes end (`len` unless padded).
    pub(crate) real_len: u64,
    /// The read position (the file's own, except past `real_len`).
    pub(crate) at: u64,
}

impl Tracked {
    pub(crate) fn new(file: File, position: Arc<AtomicU64>, len: u64) -> Tracked {
        Tracked::padded(file, position, len, None)
    }

    pub(crate) fn padded(file: File, position: Arc<AtomicU64>, len: u64, pad_to: Option<u64>) -> Tracked {
        Tracked {
            file,
            position,
            len: pad_to.unwrap_or(len).max(len),
            real_len: len,
            at: 0,
        }
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.at >= self.real_len {
            let n = buf
                .len()
                .min(usize::try_from(self.len.saturating_sub(self.at)).unwrap_or(usize::MAX));
            buf[..n].fill(0);
            n
        } else {
            self.file.read(buf)?
        };
        self.at += n as u64;
        self.position.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Tracked {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.file.seek(SeekFrom::Start(target))?;
        self.at = target;
        self.position.store(target, Ordering::Relaxed);
        Ok(target)
    }
}

impl MediaSource for Tracked {
    fn is_seekable(&self) -> bool {
        true
    }

    fn byte_len(&self) -> Option<u64> {
        Some(self.len)
    }
}
