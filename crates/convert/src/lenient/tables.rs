//! The forgiving reader's sample tables: `stsz`, `stsc`, `stco`/`co64`, `stts` read from
//! the tree or scanned for, counts clamped to what their boxes hold, and fragments'
//! runs (`moof`) turned into chunks.

use super::*;

/// Most samples taken from fragments (their sizes are held in memory: 32 MiB).
pub(super) const MAX_FRAGMENT_SAMPLES: u64 = 8 << 20;

/// A place in `stts`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SttsAt {
    pub(super) index: usize,
    /// Samples of `stts[index]` already passed.
    pub(super) passed: u64,
}

/// The sample tables, clamped to what their boxes hold.
#[derive(Debug, Default)]
pub(super) struct Tables {
    /// `stsz`: the constant size, or every sample's.
    pub(super) constant_size: u32,
    pub(super) sizes: Vec<u32>,
    pub(super) samples: u64,
    /// `stsc`: (first chunk, 1-based; samples per chunk), cleaned up.
    pub(super) stsc: Vec<(u64, u64)>,
    /// `stco`/`co64`.
    pub(super) chunks: Vec<u64>,
    /// `stts`: (count, delta).
    pub(super) stts: Vec<(u64, u64)>,
    /// Delta used when `stts` runs out.
    pub(super) default_delta: u64,
}

impl Tables {
    pub(super) fn size(&self, sample: u64) -> u32 {
        if self.constant_size != 0 {
            self.constant_size
        } else {
            usize::try_from(sample)
                .ok()
                .and_then(|i| self.sizes.get(i))
                .copied()
                .unwrap_or(0)
        }
    }

    /// Repairs what one damaged number does to the tables, from their redundancy: in a file
    /// whose chunks follow each other, a chunk's offset must be where the previous one
    /// ends and where the next one starts less its own size; and a chunk's samples must end
    /// before the next chunk (or the file) does, so one sample size that runs past it is
    /// given the room that is left.
    pub(super) fn repair(&mut self, len: u64, cut: bool, mdats: &[(u64, u64)]) {
        let n = self.chunks.len();
        // Samples in each chunk, by stsc, up to the sample count.
        let mut counts = Vec::with_capacity(n);
        let mut left = self.samples;
        let mut entry = 0;
        for chunk in 1..=n as u64 {
            while entry + 1 < self.stsc.len() && self.stsc[entry + 1].0 <= chunk {
                entry += 1;
            }
            let count = self.stsc.get(entry).map_or(0, |&(_, c)| c).min(left);
            left -= count;
            counts.push(count);
        }
        let mut first = 0u64;
        let mut bytes = Vec::with_capacity(n);
        for &count in &counts {
            // A constant size may come with billions of samples: multiplied, not summed.
            bytes.push(if self.constant_size != 0 {
                count.saturating_mul(u64::from(self.constant_size))
            } else {
                (first..first + count).map(|s| u64::from(self.size(s))).sum::<u64>()
            });
            first += count;
        }
        let end = |chunks: &[u64], i: usize| chunks[i].saturating_add(bytes[i]);
        // Each chunk is checked against its neighbours, so indices it is.
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            let fixed = if i + 1 < n {
                let Some(expected) = self.chunks[i + 1].checked_sub(bytes[i]) else {
                    continue;
                };
                let agrees = if i == 0 {
                    n > 2 && end(&self.chunks, 1) == self.chunks[2] && expected >= 8
                } else {
                    end(&self.chunks, i - 1) == expected
                };
                (self.chunks[i] != expected && agrees).then_some(expected)
            } else {
                let after_previous = i.checked_sub(1).map(|p| end(&self.chunks, p));
                after_previous
                    .filter(|&p| self.chunks[i] != p && end(&self.chunks, i) > len && p.saturating_add(bytes[i]) <= len)
            };
            if let Some(offset) = fixed {
                self.chunks[i] = offset;
            }
        }
        if self.constant_size != 0 {
            return;
        }
        let mut first = 0usize;
        for (i, &count) in counts.iter().enumerate() {
            let count = count as usize;
            let range = first..first + count;
            first += count;
            // The chunk must end before the next one starts, and inside its mdat.
            let start = self.chunks[i];
            let mdat_end = mdats
                .iter()
                .find(|(from, to)| (*from..*to).contains(&start))
                .map(|&(_, to)| to);
            let next = self.chunks.get(i + 1).copied().filter(|&next| next > start);
            let bound = next.into_iter().chain(mdat_end).min().unwrap_or(len);
            // Running past the end of a file cut short is the cut, not a wrong size.
            if end(&self.chunks, i) <= bound || count == 0 || (cut && next.is_none()) {
                continue;
            }
            let Some(samples) = self.sizes.get_mut(range) else {
                break;
            };
            // A size far above the chunk's usual ones is damaged. Alone, it gets the room
            // the others leave; else each is taken for a flipped high bit, cleared until
            // the size looks like its neighbours.
            let mut sorted = samples.to_vec();
            sorted.sort_unstable();
            let usual = sorted[sorted.len() / 2].saturating_mul(8).max(1024);
            let unusual: Vec<usize> = (0..samples.len()).filter(|&j| samples[j] > usual).collect();
            let others: u64 = samples.iter().filter(|&&s| s <= usual).map(|&s| u64::from(s)).sum();
            let room = bound
                .checked_sub(start.saturating_add(others))
                .filter(|&r| r > 0 && r <= u64::from(usual));
            match (unusual.as_slice(), room) {
                (&[only], Some(room)) => samples[only] = room as u32,
                _ => {
                    for &j in &unusual {
                        while samples[j] > usual {
                            samples[j] &= !(1 << (31 - samples[j].leading_zeros()));
                        }
                    }
                }
            }
        }
    }

    /// Appends the runs of track `track_id` in one `moof` (`moof` is its payload,
    /// `start` its offset in the file): each run becomes a chunk.
    pub(super) fn add_fragment(&mut self, moof: &[u8], start: u64, track_id: u32, trex_size: u32) {
        for (_, traf) in children(moof).filter(|(kind, _)| kind == b"traf") {
            let Some(tfhd) = child(traf, b"tfhd").and_then(boxes::tfhd) else {
                continue;
            };
            if tfhd.track_id != track_id {
                continue;
            }
            let base = tfhd.base_data_offset.unwrap_or(start);
            let default_duration = tfhd.default_duration.unwrap_or(0);
            let default_size = tfhd.default_size.unwrap_or(trex_size);
            let mut data = base;
            for (_, trun) in children(traf).filter(|(kind, _)| kind == b"trun") {
                data = self.add_run(trun, base, data, default_duration, default_size);
            }
        }
    }

    /// Appends one `trun` whose data starts at `base` + its data offset (or at `data`,
    /// where the previous run's ended); returns where this run's data ends.
    pub(super) fn add_run(
        &mut self,
        trun: &[u8],
        base: u64,
        data: u64,
        default_duration: u32,
        default_size: u32,
    ) -> u64 {
        let Some(run) = boxes::trun(trun) else { return data };
        let (at, entry_len) = (run.entries_at, run.entry_len);
        let offset = run
            .data_offset
            .map_or(data, |offset| base.saturating_add_signed(i64::from(offset)));
        // The count, clamped to the entries the box holds (or to the file's bytes).
        let fits = trun
            .len()
            .saturating_sub(at)
            .checked_div(entry_len)
            .map_or(u64::from(u32::MAX), |n| n as u64);
        let count = u64::from(run.sample_count)
            .min(fits)
            .min(MAX_FRAGMENT_SAMPLES.saturating_sub(self.samples));
        if count == 0 {
            return offset;
        }
        let mut end = offset;
        for i in 0..count as usize {
            let entry = trun.get(at + i * entry_len..).unwrap_or(&[]);
            let mut field_at = 0;
            let mut next = |bit: u32| {
                if !run.has(bit) {
                    return None;
                }
                let v = entry.get(field_at..field_at + 4).map(be32);
                field_at += 4;
                v
            };
            let duration = u64::from(next(Trun::DURATION).unwrap_or(default_duration));
            let size = next(Trun::SIZE).unwrap_or(default_size);
            self.sizes.push(size);
            end = end.saturating_add(u64::from(size));
            // An impossible duration is the last good one (as in stts, where such entries
            // are dropped), so the times stay in step with the samples.
            let last = self.stts.last().map_or(1024, |&(_, d)| d);
            let duration = if (1..1 << 24).contains(&duration) {
                duration
            } else {
                last
            };
            match self.stts.last_mut() {
                Some((n, d)) if *d == duration => *n += 1,
                _ => self.stts.push((1, duration)),
            }
        }
        self.chunks.push(offset);
        self.stsc.push((self.chunks.len() as u64, count));
        self.samples += count;
        end
    }

    pub(super) fn duration(&self) -> u64 {
        self.durations(&mut SttsAt::default(), self.samples)
    }

    /// The duration of the `n` samples from `at`, moving `at` past them an `stts` entry at
    /// a time: a damaged chunk may skip billions of samples (one at a time, a 52 KB file
    /// took 0.6 s in the CLI and 4 s in the fuzz target).
    pub(super) fn durations(&self, at: &mut SttsAt, mut n: u64) -> u64 {
        let mut total = 0u64;
        while n > 0 {
            let Some(&(count, delta)) = self.stts.get(at.index) else {
                return total.saturating_add(n.saturating_mul(self.default_delta));
            };
            let take = count.saturating_sub(at.passed).min(n);
            total = total.saturating_add(take.saturating_mul(delta));
            n -= take;
            if n == 0 {
                at.passed += take;
            } else {
                at.index += 1;
                at.passed = 0;
            }
        }
        total
    }
}

/// `kind` under `stbl` (walked), else scanned for in the whole `trak`.
pub(super) fn table<'a>(trak: &'a [u8], stbl: Option<&'a [u8]>, kind: &[u8; 4]) -> Option<&'a [u8]> {
    stbl.and_then(|s| child(s, kind)).or_else(|| scan(trak, kind))
}

/// An audio track: its sample entry, tables, ID and media timescale (if readable).
pub(super) fn audio_track(trak: &[u8], index: usize) -> Option<(SampleEntry, Tables, u32, Option<u32>)> {
    let mdia = child(trak, b"mdia");
    let stbl = mdia
        .and_then(|m| child(m, b"minf"))
        .and_then(|m| child(m, b"stbl"))
        .or_else(|| scan(trak, b"stbl"));
    let sound = mdia
        .and_then(|m| child(m, b"hdlr"))
        .and_then(|h| h.get(8..12))
        .is_some_and(|h| h == b"soun");
    let entry = SampleEntry::parse(table(trak, stbl, b"stsd")?, sound)?;
    let id = child(trak, b"tkhd")
        .and_then(|tkhd| {
            let at = if tkhd.first() == Some(&1) { 20 } else { 12 };
            tkhd.get(at..at + 4).map(be32)
        })
        .filter(|&id| id != 0)
        .unwrap_or(index as u32 + 1);
    let mdhd_timescale = mdia
        .and_then(|m| child(m, b"mdhd"))
        .or_else(|| scan(trak, b"mdhd"))
        .and_then(|mdhd| {
            let at = if mdhd.first() == Some(&1) { 20 } else { 12 };
            mdhd.get(at..at + 4).map(be32)
        });
    let tables = read_tables(trak, stbl, &entry)?;
    Some((entry, tables, id, mdhd_timescale))
}

/// The entries of a full box with a 32-bit count after its version and flags: the count
/// clamped to what the box holds, with `offset` bytes before the count.
pub(super) fn entries(payload: &[u8], offset: usize, entry_len: usize) -> impl Iterator<Item = &[u8]> {
    let count = payload.get(offset..offset + 4).map_or(0, be32) as usize;
    let body = payload.get(offset + 4..).unwrap_or(&[]);
    body.chunks_exact(entry_len).take(count)
}

pub(super) fn read_tables(trak: &[u8], stbl: Option<&[u8]>, entry: &SampleEntry) -> Option<Tables> {
    let mut t = Tables::default();
    let stsz = table(trak, stbl, b"stsz")?;
    t.constant_size = stsz.get(4..8).map(be32)?;
    let declared = u64::from(stsz.get(8..12).map(be32)?);
    if t.constant_size == 0 {
        t.sizes = stsz
            .get(12..)?
            .chunks_exact(4)
            .take(declared as usize)
            .map(be32)
            .collect();
        t.samples = t.sizes.len() as u64;
    } else {
        t.samples = declared;
    }
    t.chunks = match table(trak, stbl, b"stco") {
        Some(stco) => entries(stco, 4, 4).map(|e| u64::from(be32(e))).collect(),
        None => entries(table(trak, stbl, b"co64")?, 4, 8).map(be64).collect(),
    };
    // Chunks numbered from 1 and increasing; an entry breaking that is damage, skipped.
    let mut last = 0u64;
    for e in table(trak, stbl, b"stsc")
        .map(|s| entries(s, 4, 12))
        .into_iter()
        .flatten()
    {
        let (first, per_chunk) = (u64::from(be32(&e[0..4])), u64::from(be32(&e[4..8])));
        if first > last && first <= t.chunks.len() as u64 && per_chunk > 0 {
            t.stsc.push((first, per_chunk));
            last = first;
        }
    }
    if t.stsc.first().is_none_or(|&(first, _)| first != 1) {
        // No usable first entry: spread the samples evenly over the chunks.
        let per_chunk = t.samples.div_ceil(t.chunks.len().max(1) as u64).max(1);
        t.stsc.insert(0, (1, per_chunk));
    }
    // A constant size only bounds the count by the file, checked when reading; the chunks
    // bound it too.
    let in_chunks = chunk_capacity(&t.stsc, t.chunks.len() as u64);
    t.samples = t.samples.min(in_chunks);
    t.stts = table(trak, stbl, b"stts")
        .map(|s| {
            entries(s, 4, 8)
                .map(|e| (u64::from(be32(&e[0..4])), u64::from(be32(&e[4..8]))))
                .collect()
        })
        .unwrap_or_default();
    t.stts
        .retain(|&(count, delta)| count > 0 && delta > 0 && delta < 1 << 24);
    t.default_delta = t.stts.last().map_or(entry.frames_per_packet(), |&(_, d)| d);
    Some(t)
}

/// Samples the chunks can hold by `stsc`.
pub(super) fn chunk_capacity(stsc: &[(u64, u64)], chunks: u64) -> u64 {
    let mut total = 0u64;
    for (i, &(first, per_chunk)) in stsc.iter().enumerate() {
        let next = stsc.get(i + 1).map_or(chunks + 1, |&(f, _)| f);
        total = total.saturating_add(next.saturating_sub(first).saturating_mul(per_chunk));
    }
    total
}
