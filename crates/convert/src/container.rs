//! What we read from the MP4 box tree ourselves, before symphonia: each track's edit list
//! (`moov/trak/edts/elst`), which symphonia 0.6 parses but neither exposes nor applies; each
//! track's largest sample (`stsz`), so a forged size is refused before anything is read; and
//! whether the file was cut short.
//!
//! The edit list is how an MP4 says "skip the encoder's priming samples and stop before
//! its padding": without it, an AAC track decodes about 1024 samples too long at the start
//! and up to a frame too long at the end. We walk the box tree with seeks and read only the
//! few small boxes we need, so memory stays bounded whatever the file holds.

use std::io::{self, Read, Seek, SeekFrom};

use crate::boxes;

/// The playable part of a track, from its first edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EditList {
    /// The track's media timescale (`mdhd`), in which `media_time` counts.
    pub(crate) media_timescale: u32,
    /// The movie timescale (`mvhd`), in which `segment_duration` counts.
    pub(crate) movie_timescale: u32,
    /// Media time where playback starts: the samples before it are priming.
    pub(crate) media_time: u64,
    /// Length of the playable segment; 0 means "to the end" (fragmented files).
    pub(crate) segment_duration: u64,
}

/// Most top-level boxes we look at before giving up on finding `moov`.
pub(crate) const MAX_TOP_LEVEL_BOXES: usize = 100_000;
/// Most children we look at inside one container box.
const MAX_CHILDREN: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct BoxHeader {
    kind: [u8; 4],
    /// Offset of the payload (after the header).
    payload: u64,
    /// Offset just past the box (clamped to its container).
    end: u64,
    /// True when the box claims to run past the end of its container (a cut file).
    overruns: bool,
    /// Offset just past the box as its size says (not clamped).
    declared_end: u64,
}

/// Reads the header of the box at `pos`, or `None` at (or past) `limit`.
fn read_header<R: Read + Seek>(r: &mut R, pos: u64, limit: u64) -> io::Result<Option<BoxHeader>> {
    if pos.checked_add(8).is_none_or(|p| p > limit) {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(pos))?;
    let mut head = [0u8; 16];
    r.read_exact(&mut head[..8])?;
    let header_len = boxes::header_len(&head[..8]);
    r.read_exact(&mut head[8..header_len])?;
    let Some(header) = boxes::header(&head[..header_len], limit - pos) else {
        return Err(io::ErrorKind::UnexpectedEof.into());
    };
    let Ok(header) = header else {
        return Err(invalid("box smaller than its header"));
    };
    let declared_end = pos.saturating_add(header.size);
    Ok(Some(BoxHeader {
        kind: header.kind,
        payload: pos + header.header_len,
        end: declared_end.min(limit),
        overruns: declared_end > limit,
        declared_end,
    }))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Iterates the children of a container spanning `[start, end)`, calling `f` on each.
fn for_each_child<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    max: usize,
    mut f: impl FnMut(&mut R, BoxHeader) -> io::Result<bool>,
) -> io::Result<()> {
    let mut pos = start;
    for _ in 0..max {
        let Some(header) = read_header(r, pos, end)? else {
            return Ok(());
        };
        if !f(r, header)? {
            return Ok(());
        }
        if header.end <= pos {
            return Err(invalid("box does not advance"));
        }
        pos = header.end;
    }
    Ok(())
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64<R: Read>(r: &mut R) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Reads a full box's version byte (and skips its flags).
fn read_version<R: Read>(r: &mut R) -> io::Result<u8> {
    Ok(read_u32(r)?.to_be_bytes()[0])
}

/// Reads the `u32` that follows a full box's creation and modification times: the
/// timescale of `mvhd` and `mdhd`, the `track_ID` of `tkhd` (the three share that layout).
fn read_u32_after_times<R: Read + Seek>(r: &mut R, header: BoxHeader) -> io::Result<u32> {
    r.seek(SeekFrom::Start(header.payload))?;
    let version = read_version(r)?;
    let skip = if version == 1 { 16 } else { 8 };
    r.seek(SeekFrom::Current(skip))?;
    read_u32(r)
}

/// Reads the first non-empty edit of an `elst` box: (segment_duration, media_time).
fn read_first_edit<R: Read + Seek>(r: &mut R, header: BoxHeader) -> io::Result<Option<(u64, u64)>> {
    r.seek(SeekFrom::Start(header.payload))?;
    let version = read_version(r)?;
    let count = read_u32(r)?;
    let entry_len: u64 = if version == 1 { 20 } else { 12 };
    let fits = header.end.saturating_sub(header.payload + 8) / entry_len;
    for _ in 0..u64::from(count).min(fits) {
        let (duration, media_time) = if version == 1 {
            (read_u64(r)?, read_u64(r)? as i64)
        } else {
            (u64::from(read_u32(r)?), i64::from(read_u32(r)? as i32))
        };
        let _rate = read_u32(r)?;
        // media_time -1 is an empty edit (a delay before the track starts): skip it.
        if media_time >= 0 {
            return Ok(Some((duration, media_time as u64)));
        }
    }
    Ok(None)
}

#[derive(Default)]
struct TrakInfo {
    track_id: Option<u32>,
    media_timescale: Option<u32>,
    edit: Option<(u64, u64)>,
    max_sample_size: u32,
}

/// Largest sample size in an `stsz` box (the constant size, or the largest entry).
fn read_max_sample_size<R: Read + Seek>(r: &mut R, header: BoxHeader) -> io::Result<u32> {
    r.seek(SeekFrom::Start(header.payload))?;
    let _version = read_version(r)?;
    let constant = read_u32(r)?;
    let count = read_u32(r)?;
    if constant != 0 {
        return Ok(constant);
    }
    let fits = header.end.saturating_sub(header.payload + 12) / 4;
    let mut entries = io::BufReader::with_capacity(64 * 1024, r.take(4 * u64::from(count).min(fits)));
    let mut max = 0;
    let mut entry = [0u8; 4];
    while entries.read_exact(&mut entry).is_ok() {
        max = max.max(u32::from_be_bytes(entry));
    }
    Ok(max)
}

fn read_trak<R: Read + Seek>(r: &mut R, trak: BoxHeader) -> io::Result<TrakInfo> {
    let mut info = TrakInfo::default();
    for_each_child(r, trak.payload, trak.end, MAX_CHILDREN, |r, child| {
        match &child.kind {
            b"tkhd" => info.track_id = Some(read_u32_after_times(r, child)?),
            b"mdia" => for_each_child(r, child.payload, child.end, MAX_CHILDREN, |r, c| {
                match &c.kind {
                    b"mdhd" => info.media_timescale = Some(read_u32_after_times(r, c)?),
                    // mdia/minf/stbl/stsz
                    b"minf" => for_each_child(r, c.payload, c.end, MAX_CHILDREN, |r, c| {
                        if &c.kind == b"stbl" {
                            for_each_child(r, c.payload, c.end, MAX_CHILDREN, |r, c| {
                                if &c.kind == b"stsz" {
                                    info.max_sample_size = read_max_sample_size(r, c)?;
                                }
                                Ok(true)
                            })?;
                        }
                        Ok(true)
                    })?,
                    _ => {}
                }
                Ok(true)
            })?,
            b"edts" => for_each_child(r, child.payload, child.end, MAX_CHILDREN, |r, c| {
                if &c.kind == b"elst" {
                    info.edit = read_first_edit(r, c)?;
                }
                Ok(true)
            })?,
            _ => {}
        }
        Ok(true)
    })?;
    Ok(info)
}

/// What the box walk learns about a file.
#[derive(Debug, Default)]
pub(crate) struct Container {
    /// The edit list of every track that has one, as `(track_id, edit list)`.
    pub(crate) edits: Vec<(u32, EditList)>,
    /// The largest sample of every track with an `stsz`, as `(track_id, bytes)`.
    pub(crate) max_sample_sizes: Vec<(u32, u32)>,
    /// A top-level box runs past the end of the file: the file was cut short.
    pub(crate) truncated: bool,
    /// The file ends a few bytes into its last box, a `moov` (a moov-at-end file cut
    /// short): the length the file should have. Its tables are (nearly) whole, so the
    /// missing bytes are read as zeros, as ffmpeg does.
    pub(crate) moov_cut: Option<u64>,
    /// A track fragment run (`moof/traf/trun`) claiming more samples than the file can
    /// hold, as (samples, bytes each): refused before the demuxer walks them one by one.
    pub(crate) impossible_run: Option<(u64, u64)>,
    /// How many `trak` boxes the `moov` holds.
    pub(crate) tracks: usize,
}

/// One `trun` as the box walk saw it, for [`Container::impossible_run`].
#[derive(Debug, Clone, Copy)]
struct RunClaim {
    track_id: u32,
    samples: u32,
    /// The `tfhd` default sample size, when it sets one.
    default_size: Option<u32>,
    /// The run lists each sample's size itself (its box then bounds the count).
    sized_entries: bool,
}

/// Reads the runs of one `moof`.
fn read_moof<R: Read + Seek>(r: &mut R, moof: BoxHeader, runs: &mut Vec<RunClaim>) -> io::Result<()> {
    for_each_child(r, moof.payload, moof.end, MAX_CHILDREN, |r, traf| {
        if &traf.kind != b"traf" {
            return Ok(true);
        }
        let (mut track_id, mut default_size) = (0, None);
        for_each_child(r, traf.payload, traf.end, MAX_CHILDREN, |r, c| {
            match &c.kind {
                b"tfhd" => {
                    if let Some(tfhd) = boxes::tfhd(&read_payload(r, c, MAX_TFHD_BYTES)?) {
                        track_id = tfhd.track_id;
                        default_size = tfhd.default_size;
                    }
                }
                b"trun" => {
                    // Its header only: the entries are the demuxer's to read.
                    if let Some(run) = boxes::trun(&read_payload(r, c, 8)?) {
                        runs.push(RunClaim {
                            track_id,
                            samples: run.sample_count,
                            default_size,
                            sized_entries: run.has(boxes::Trun::SIZE),
                        });
                    }
                }
                _ => {}
            }
            Ok(true)
        })?;
        Ok(true)
    })
}

/// The largest `tfhd` payload: flags and track, then five optional fields.
const MAX_TFHD_BYTES: u64 = 8 + 8 + 4 + 4 + 4 + 4;

/// The first `max` bytes of a box's payload (fewer if the box is smaller).
fn read_payload<R: Read + Seek>(r: &mut R, b: BoxHeader, max: u64) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(b.payload))?;
    let mut bytes = Vec::new();
    r.by_ref()
        .take(b.end.saturating_sub(b.payload).min(max))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The `trex` default sample size of each track in `moov/mvex`, as `(track_id, bytes)`.
fn read_trex<R: Read + Seek>(r: &mut R, mvex: BoxHeader, out: &mut Vec<(u32, u32)>) -> io::Result<()> {
    for_each_child(r, mvex.payload, mvex.end, MAX_CHILDREN, |r, c| {
        if &c.kind == b"trex" {
            r.seek(SeekFrom::Start(c.payload + 4))?;
            let track_id = read_u32(r)?;
            // default_sample_description_index, default_sample_duration
            r.seek(SeekFrom::Current(8))?;
            out.push((track_id, read_u32(r)?));
        }
        Ok(true)
    })
}

/// The first run whose samples, at their default size (at least a byte each), cannot fit
/// in a file of `len` bytes.
fn first_impossible_run(runs: &[RunClaim], trex: &[(u32, u32)], len: u64) -> Option<(u64, u64)> {
    runs.iter().filter(|run| !run.sized_entries).find_map(|run| {
        let trex_size = trex.iter().find(|(id, _)| *id == run.track_id).map(|(_, s)| *s);
        let size = u64::from(run.default_size.or(trex_size).unwrap_or(0)).max(1);
        let samples = u64::from(run.samples);
        (samples.saturating_mul(size) > len).then_some((samples, size))
    })
}

/// A moov cut by at most this many bytes (and at most a tenth of it) is read padded with
/// zeros: the last bytes of a moov are its metadata (`udta`), rarely the sample tables.
const MAX_MOOV_CUT: u64 = 4096;

/// Walks the top-level boxes and `moov`. Files without a readable `moov` give no edit
/// lists; errors only for I/O failures and broken box structure.
pub(crate) fn read_container<R: Read + Seek>(r: &mut R) -> io::Result<Container> {
    let len = r.seek(SeekFrom::End(0))?;
    let mut moov = None;
    let mut truncated = false;
    let mut looks_like_mp4 = None;
    let mut runs = Vec::new();
    let start = boxes::top_level_start(r, len)?;
    let walked_top = for_each_child(r, start, len, MAX_TOP_LEVEL_BOXES, |r, header| {
        // Only an ISO-BMFF file can be "truncated"; text that happens to parse as a huge
        // box is just not an MP4.
        if !*looks_like_mp4.get_or_insert(boxes::KNOWN_TOP_LEVEL.contains(&&header.kind)) {
            return Ok(false);
        }
        truncated |= header.overruns;
        if &header.kind == b"moov" && moov.is_none() {
            moov = Some(header);
        }
        if &header.kind == b"moof" {
            // A damaged run is the demuxer's to report; only the counts are checked here.
            if let Err(e) = read_moof(r, header, &mut runs) {
                tracing::debug!(error = %e, "an unreadable moof");
            }
        }
        Ok(true)
    });
    match walked_top {
        // A broken box after the moov: what the moov says is still worth reading.
        Err(e) if moov.is_some() && e.kind() == io::ErrorKind::InvalidData => {
            tracing::debug!(error = %e, "a broken top-level box after the moov");
        }
        other => other?,
    }
    let Some(moov) = moov else {
        return Ok(Container {
            truncated,
            impossible_run: first_impossible_run(&runs, &[], len),
            ..Container::default()
        });
    };
    let missing = moov.declared_end - moov.end;
    let moov_cut = (moov.overruns && missing <= MAX_MOOV_CUT && missing * 10 <= moov.declared_end - moov.payload)
        .then_some(moov.declared_end);
    let mut movie_timescale = None;
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    let walked = for_each_child(r, moov.payload, moov.end, MAX_CHILDREN, |r, child| {
        match &child.kind {
            b"mvhd" => movie_timescale = Some(read_u32_after_times(r, child)?),
            b"trak" => traks.push(read_trak(r, child)?),
            b"mvex" => read_trex(r, child, &mut trex)?,
            _ => {}
        }
        Ok(true)
    });
    match walked {
        // A moov cut short ends where the file does: what was read is kept, and the file
        // is truncated, not "not an MP4".
        Err(e) if moov.overruns && e.kind() == io::ErrorKind::UnexpectedEof => {}
        // A box inside the moov with an impossible size: the boxes before it are kept
        // (the readers decide whether the file is usable).
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::debug!(error = %e, "a broken box inside the moov");
        }
        other => other?,
    }
    let movie_timescale = movie_timescale.filter(|&t| t > 0);
    let tracks = traks.len();
    let max_sample_sizes = traks
        .iter()
        .filter_map(|t| Some((t.track_id?, t.max_sample_size)))
        .collect();
    let edits = traks
        .into_iter()
        .filter_map(|t| {
            let (segment_duration, media_time) = t.edit?;
            let edit = EditList {
                media_timescale: t.media_timescale.filter(|&m| m > 0)?,
                movie_timescale: movie_timescale?,
                media_time,
                segment_duration,
            };
            Some((t.track_id?, edit))
        })
        .collect();
    Ok(Container {
        edits,
        max_sample_sizes,
        truncated,
        moov_cut,
        impossible_run: first_impossible_run(&runs, &trex, len),
        tracks,
    })
}

/// The edit list of track `track_id`, if it has one.
#[cfg(test)]
fn read_edit_list<R: Read + Seek>(r: &mut R, track_id: u32) -> io::Result<Option<EditList>> {
    Ok(read_container(r)?
        .edits
        .into_iter()
        .find(|(id, _)| *id == track_id)
        .map(|(_, e)| e))
}

impl EditList {
    /// Samples to skip at the start, at `rate` samples per second.
    pub(crate) fn skip_frames(&self, rate: u32) -> u64 {
        scale(self.media_time, rate, self.media_timescale)
    }

    /// Samples to keep after the skip, at `rate`; `None` when the edit runs to the end.
    pub(crate) fn keep_frames(&self, rate: u32) -> Option<u64> {
        (self.segment_duration > 0).then(|| scale(self.segment_duration, rate, self.movie_timescale))
    }
}

/// `value * rate / timescale`, rounded, without overflow.
fn scale(value: u64, rate: u32, timescale: u32) -> u64 {
    let scaled = (u128::from(value) * u128::from(rate) + u128::from(timescale) / 2) / u128::from(timescale.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::tests::boxed;
    use std::io::Cursor;

    fn full(version: u8, rest: &[u8]) -> Vec<u8> {
        let mut out = vec![version, 0, 0, 0];
        out.extend_from_slice(rest);
        out
    }

    fn movie(elst_entries: &[(u32, i32)]) -> Vec<u8> {
        let mvhd = boxed(b"mvhd", &full(0, &[&[0u8; 8][..], &1000u32.to_be_bytes()].concat()));
        let tkhd = boxed(b"tkhd", &full(0, &[&[0u8; 8][..], &2u32.to_be_bytes()].concat()));
        let mdhd = boxed(b"mdhd", &full(0, &[&[0u8; 8][..], &44100u32.to_be_bytes()].concat()));
        let mut elst_body = (elst_entries.len() as u32).to_be_bytes().to_vec();
        for (d, t) in elst_entries {
            elst_body.extend_from_slice(&d.to_be_bytes());
            elst_body.extend_from_slice(&t.to_be_bytes());
            elst_body.extend_from_slice(&0x0001_0000u32.to_be_bytes());
        }
        let edts = boxed(b"edts", &boxed(b"elst", &full(0, &elst_body)));
        let mdia = boxed(b"mdia", &mdhd);
        let trak = boxed(b"trak", &[tkhd, edts, mdia].concat());
        let moov = boxed(b"moov", &[mvhd, trak].concat());
        // moov after a large mdat, as in a file that is not fast-start.
        [boxed(b"ftyp", b"isom"), boxed(b"mdat", &[0u8; 100]), moov].concat()
    }

    #[test]
    fn finds_the_first_non_empty_edit_of_the_track() {
        let file = movie(&[(500, -1), (2000, 1024)]);
        let edit = read_edit_list(&mut Cursor::new(file), 2).unwrap().unwrap();
        assert_eq!(edit.media_timescale, 44100);
        assert_eq!(edit.movie_timescale, 1000);
        assert_eq!(edit.media_time, 1024);
        assert_eq!(edit.skip_frames(44100), 1024);
        assert_eq!(edit.skip_frames(22050), 512);
        assert_eq!(edit.keep_frames(44100), Some(88200));
    }

    #[test]
    fn other_tracks_and_missing_moov_give_none() {
        let file = movie(&[(2000, 1024)]);
        assert_eq!(read_edit_list(&mut Cursor::new(file), 7).unwrap(), None);
        let no_moov = boxed(b"ftyp", b"isom");
        assert_eq!(read_edit_list(&mut Cursor::new(no_moov), 1).unwrap(), None);
    }

    #[test]
    fn hostile_sizes_do_not_loop_or_panic() {
        // A box claiming to be smaller than its header.
        let mut bad = boxed(b"ftyp", b"isom");
        bad[3] = 4;
        assert!(read_edit_list(&mut Cursor::new(bad), 1).is_err());
        // An elst claiming four billion entries in a few bytes.
        let mut file = movie(&[(2000, 1024)]);
        let pos = file.windows(4).position(|w| w == b"elst").unwrap() + 8;
        file[pos..pos + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let edit = read_edit_list(&mut Cursor::new(file), 2).unwrap().unwrap();
        assert_eq!(edit.media_time, 1024);
    }

    #[test]
    fn a_run_is_impossible_only_when_its_samples_cannot_fit() {
        let run = |samples, default_size, sized_entries| RunClaim {
            track_id: 1,
            samples,
            default_size,
            sized_entries,
        };
        // The tfhd's default size, else the trex's, else a byte each.
        assert_eq!(first_impossible_run(&[run(1000, Some(10), false)], &[], 10_000), None);
        assert_eq!(
            first_impossible_run(&[run(1001, Some(10), false)], &[], 10_000),
            Some((1001, 10))
        );
        assert_eq!(
            first_impossible_run(&[run(1001, None, false)], &[(1, 10)], 10_000),
            Some((1001, 10))
        );
        assert_eq!(
            first_impossible_run(&[run(1001, None, false)], &[(2, 10)], 10_000),
            None
        );
        assert_eq!(
            first_impossible_run(&[run(10_001, None, false)], &[], 10_000),
            Some((10_001, 1))
        );
        // Runs listing their sizes are bounded by their own box.
        assert_eq!(first_impossible_run(&[run(u32::MAX, None, true)], &[], 10), None);
    }
}
