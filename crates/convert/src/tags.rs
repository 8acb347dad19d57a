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
    fn no_metadata_gives_an_empty_tag() {
        assert_eq!(id3_from_metadata(None).frames().count(), 0);
    }
}
