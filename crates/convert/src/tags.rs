//! MP4 metadata (read by symphonia from `ilst`) → ID3v2 tags.

use id3::frame::{Comment, Picture, PictureType};
use id3::{Tag, TagLike};
use symphonia::core::meta::{MetadataRevision, StandardTag, StandardVisualKey, Tag as MetaTag};

/// The ID3 tag for a file's metadata; empty when the MP4 had none worth keeping.
pub(crate) fn id3_from_metadata(revision: Option<&MetadataRevision>) -> Tag {
    let mut tag = Tag::new();
    let Some(revision) = revision else {
        return tag;
    };
    for MetaTag { std, .. } in &revision.media.tags {
        match std {
            Some(StandardTag::TrackTitle(v)) => tag.set_title(v.as_str()),
            Some(StandardTag::Artist(v)) => tag.set_artist(v.as_str()),
            Some(StandardTag::Album(v)) => tag.set_album(v.as_str()),
            Some(StandardTag::AlbumArtist(v)) => tag.set_album_artist(v.as_str()),
            Some(StandardTag::Genre(v)) => tag.set_genre(v.as_str()),
            Some(StandardTag::Comment(v)) => {
                tag.add_frame(Comment {
                    lang: "eng".into(),
                    description: String::new(),
                    text: v.to_string(),
                });
            }
            Some(StandardTag::TrackNumber(n)) => tag.set_track(clamp_u32(*n)),
            Some(StandardTag::TrackTotal(n)) => tag.set_total_tracks(clamp_u32(*n)),
            Some(StandardTag::DiscNumber(n)) => tag.set_disc(clamp_u32(*n)),
            Some(StandardTag::ReleaseDate(v) | StandardTag::RecordingDate(v)) => {
                if let Some(year) = leading_year(v) {
                    tag.set_year(year);
                }
            }
            Some(StandardTag::ReleaseYear(y) | StandardTag::RecordingYear(y)) => tag.set_year(i32::from(*y)),
            _ => {}
        }
    }
    if let Some(visual) = revision
        .media
        .visuals
        .iter()
        .find(|v| v.usage == Some(StandardVisualKey::FrontCover))
        .or_else(|| revision.media.visuals.first())
        .filter(|v| intact_picture(&v.data))
    {
        tag.add_frame(Picture {
            mime_type: visual
                .media_type
                .clone()
                .unwrap_or_else(|| sniff_image_type(&visual.data).to_string()),
            picture_type: PictureType::CoverFront,
            description: String::new(),
            data: visual.data.to_vec(),
        });
    }
    tag
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The year at the start of an ISO-ish date ("2019", "2019-05-01T...").
fn leading_year(date: &str) -> Option<i32> {
    let digits: String = date.trim().chars().take_while(char::is_ascii_digit).take(4).collect();
    (digits.len() == 4).then(|| digits.parse().ok()).flatten()
}

/// Whether a cover picture is whole: a PNG whose every chunk's CRC holds, up to `IEND`; a
/// JPEG whose marker segments lead from its start to the scan and which ends with its end
/// marker; a BMP as long as its header says. A picture damaged with the file is left out
/// rather than copied into the MP3 broken (players show garbage, or nothing).
fn intact_picture(data: &[u8]) -> bool {
    if let Some(chunks) = data.strip_prefix(b"\x89PNG\r\n\x1a\n") {
        png_intact(chunks)
    } else if data.starts_with(&[0xFF, 0xD8]) {
        jpeg_intact(data)
    } else if data.starts_with(b"BM") && data.len() >= 6 {
        u32::from_le_bytes([data[2], data[3], data[4], data[5]]) as usize == data.len()
    } else {
        false
    }
}

fn png_intact(mut chunks: &[u8]) -> bool {
    while chunks.len() >= 12 {
        let len = u32::from_be_bytes([chunks[0], chunks[1], chunks[2], chunks[3]]) as usize;
        let Some(typed) = chunks.get(4..8 + len) else {
            return false;
        };
        let Some(crc) = chunks.get(8 + len..12 + len) else {
            return false;
        };
        if crc32fast::hash(typed).to_be_bytes() != crc {
            return false;
        }
        if &typed[..4] == b"IEND" {
            return true;
        }
        chunks = &chunks[12 + len..];
    }
    false
}

fn jpeg_intact(data: &[u8]) -> bool {
    let mut pos = 2;
    loop {
        // A marker: 0xFF (fill bytes allowed), then its code.
        if data.get(pos) != Some(&0xFF) {
            return false;
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else { return false };
        pos += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = data
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        if len < 2 || pos + len > data.len() {
            return false;
        }
        pos += len;
        if marker == 0xDA {
            // The entropy-coded scan runs to the end marker (padding after it is allowed).
            let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            return end >= pos + 2 && data[end - 2..end] == [0xFF, 0xD9];
        }
    }
}

fn sniff_image_type(data: &[u8]) -> &'static str {
    if data.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_come_from_the_start_of_dates() {
        assert_eq!(leading_year("2019-05-01T00:00:00Z"), Some(2019));
        assert_eq!(leading_year("1999"), Some(1999));
        assert_eq!(leading_year("99"), None);
        assert_eq!(leading_year("soon"), None);
    }

    #[test]
    fn damaged_pictures_are_told_from_whole_ones() {
        // A 1x1 PNG (IHDR, IDAT, IEND), then the same with one bit flipped in its data.
        let png: Vec<u8> = [
            &b"\x89PNG\r\n\x1a\n"[..],
            &[0, 0, 0, 13],
            b"IHDR",
            &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0],
            &crc32fast::hash(&[&b"IHDR"[..], &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]].concat()).to_be_bytes(),
            &[0, 0, 0, 2],
            b"IDAT",
            &[0x78, 0x9c],
            &crc32fast::hash(b"IDAT\x78\x9c").to_be_bytes(),
            &[0, 0, 0, 0],
            b"IEND",
            &crc32fast::hash(b"IEND").to_be_bytes(),
        ]
        .concat();
        assert!(intact_picture(&png));
        let mut flipped = png.clone();
        flipped[20] ^= 0x10;
        assert!(!intact_picture(&flipped));
        assert!(!intact_picture(&png[..png.len() - 4]), "cut before IEND's CRC");
        // A JPEG: SOI, one segment, SOS, scan bytes, EOI (and padding); then cut.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xDA, 0, 2, 9, 9, 0xFF, 0xD9, 0, 0,
        ];
        assert!(intact_picture(&jpeg));
        assert!(!intact_picture(&jpeg[..13]));
        assert!(
            !intact_picture(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 200, 1]),
            "a segment past the end"
        );
        assert!(!intact_picture(b"neither"));
    }

    #[test]
    fn no_metadata_gives_an_empty_tag() {
        assert_eq!(id3_from_metadata(None).frames().count(), 0);
    }
}
