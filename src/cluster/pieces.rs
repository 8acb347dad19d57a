//! Files crossing the mesh in pieces: every role that moves a file to another node (the
//! MP4 of a placed conversion, its MP3 coming back, a handed-over job's files, an MP3
//! downloaded through another node) reads it with [`next_chunk`] and writes it on the
//! other side with [`stage`], [`CHUNK`] bytes per message.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes per piece (ractor_cluster frames are capped at 16 MiB; stay far below).
pub const CHUNK: u32 = 1 << 20;

/// The next (up to) [`CHUNK`] bytes of `file`.
pub async fn next_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(CHUNK as usize);
    file.take(u64::from(CHUNK)).read_to_end(&mut data).await?;
    Ok(data)
}

/// Writes one piece of a file arriving in order into `staged`: the piece at offset 0
/// creates it; `total` (on the last piece) fsyncs it and checks its size.
pub async fn stage(staged: &Path, offset: u64, data: &[u8], total: Option<u64>) -> std::io::Result<()> {
    let mut file = if offset == 0 {
        tokio::fs::File::create(staged).await?
    } else {
        let mut file = tokio::fs::OpenOptions::new().write(true).open(staged).await?;
        if file.metadata().await?.len() != offset {
            return Err(std::io::Error::other("out of order"));
        }
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        file
    };
    file.write_all(data).await?;
    // tokio's File finishes a write in the background: without a flush the next piece
    // could find the file shorter than it is.
    file.flush().await?;
    if let Some(total) = total {
        file.sync_all().await?;
        if file.metadata().await?.len() != total {
            return Err(std::io::Error::other("the file arrived incomplete"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_staged_one_after_another_make_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged.part");
        let piece = |i: u8| vec![i; CHUNK as usize];
        let total = 24 * u64::from(CHUNK);
        for i in 0..24u8 {
            let last = (i == 23).then_some(total);
            // Each piece must find the ones before it on disk (a tokio write not flushed
            // yet would make it "out of order").
            stage(&path, u64::from(i) * u64::from(CHUNK), &piece(i), last)
                .await
                .unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, total);
        assert!(
            bytes
                .chunks(CHUNK as usize)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| *b == i as u8))
        );
        // A piece at the wrong offset, or a short file at the end, is refused.
        assert!(stage(&path, 5, b"x", None).await.is_err());
        assert!(stage(&path, 0, b"abc", Some(4)).await.is_err());
    }
}
