//! What a file is, from its first bytes (never from what the sender says), and how it
//! may go to WeCom.

use axum::http::StatusCode;

use super::{MediaKind, describe_size};

/// How many leading bytes [`sniff`] needs at most: every signature it knows fits.
pub const SNIFF_LEN: usize = 8 * 1024;

/// WeCom refuses files of 5 bytes or fewer (`media/upload`: "所有文件size必须大于5个字节").
pub const WECOM_MIN_BYTES: u64 = 6;
/// WeCom's cap for `type=image` (JPG/PNG only).
pub const WECOM_IMAGE_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// WeCom's cap for `type=file`.
pub const WECOM_FILE_MAX_BYTES: u64 = 20 * 1024 * 1024;

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    /// `image/png`, …; `application/octet-stream` when nothing matched.
    pub mime: &'static str,
    /// Without the dot: `png`, …; `bin` when nothing matched.
    pub extension: &'static str,
    /// A JPEG, PNG, GIF or WebP image: what an e-mail client and the message page show
    /// inline. Other image formats (SVG, which can carry script, among them) are files.
    pub image: bool,
}

impl Sniffed {
    const UNKNOWN: Self = Self {
        mime: "application/octet-stream",
        extension: "bin",
        image: false,
    };

    /// A JPEG or PNG: the formats WeCom's `image` messages take.
    pub fn is_wecom_image(&self) -> bool {
        matches!(self.mime, "image/jpeg" | "image/png")
    }

    /// For what the sender declared an image (`image_url`, Bark `image`, gotify
    /// `bigImageUrl`): `Err(NotAnImage)` (a 415) unless it [is one](Self::image).
    pub fn require_image(&self) -> Result<(), MediaError> {
        if self.image {
            Ok(())
        } else {
            Err(MediaError::NotAnImage { found: self.mime })
        }
    }
}

/// Sniffs the content type from the first bytes (pass up to [`SNIFF_LEN`] of them; fewer
/// is fine for a short file).
pub fn sniff(head: &[u8]) -> Sniffed {
    if let Some((mime, extension)) = image_signature(head) {
        return Sniffed {
            mime,
            extension,
            image: true,
        };
    }
    match infer::get(head) {
        // infer's matchers for these four are looser than image_signature's: what they
        // accept and it does not is no image.
        Some(kind) if !is_inline_image(kind.mime_type()) => Sniffed {
            mime: kind.mime_type(),
            extension: kind.extension(),
            image: false,
        },
        _ => Sniffed::UNKNOWN,
    }
}

fn is_inline_image(mime: &str) -> bool {
    matches!(
        mime,
        "image/jpeg" | "image/png" | "image/gif" | "image/webp"
    )
}

/// The images shown inline and sent to WeCom as images, by their whole signatures.
/// infer checks less (four bytes of PNG, "GIF" alone, "WEBP" without "RIFF"), so a text
/// starting "GIF is…" would pass as an image.
fn image_signature(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "png"))
    } else if head.starts_with(b"\xff\xd8\xff") {
        Some(("image/jpeg", "jpg"))
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(("image/gif", "gif"))
    } else if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WEBP".as_slice()) {
        Some(("image/webp", "webp"))
    } else {
        None
    }
}

/// How a file of `size` bytes that sniffed as `sniffed` goes to WeCom: JPEG/PNG up to
/// 10 MiB as an image, anything else (other images, larger JPEG/PNG) up to 20 MiB as a
/// file. Checked before upload so the sender gets the answer at `/send`, not a late
/// delivery failure.
pub fn kind_for_wecom(sniffed: &Sniffed, size: u64) -> Result<MediaKind, MediaError> {
    if size < WECOM_MIN_BYTES {
        Err(MediaError::TooSmall { size })
    } else if sniffed.is_wecom_image() && size <= WECOM_IMAGE_MAX_BYTES {
        Ok(MediaKind::Image)
    } else if size <= WECOM_FILE_MAX_BYTES {
        Ok(MediaKind::File)
    } else {
        Err(MediaError::TooLarge {
            size,
            limit: WECOM_FILE_MAX_BYTES,
        })
    }
}

/// A file that cannot go where it was sent. The message is a sentence for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the file has {size} bytes; WeCom takes only files of more than 5 bytes")]
    TooSmall { size: u64 },
    #[error(
        "the file is {} but WeCom takes files of at most {}",
        describe_size(*size),
        describe_size(*limit)
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "an image was expected, but the content is not a JPEG, PNG, GIF or WebP image (it looks like {found})"
    )]
    NotAnImage { found: &'static str },
}

impl MediaError {
    /// The HTTP status to answer with: 400, 413 or 415.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooSmall { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotAnImage { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
    const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0";
    const GIF: &[u8] = b"GIF89a\x01\0\x01\0\x80\0\0";
    const WEBP: &[u8] = b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0";
    const PDF: &[u8] = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";
    const BMP: &[u8] = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0";
    const SVG: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";

    #[test]
    fn sniffs_by_content() {
        let cases: [(&[u8], &str, &str, bool); 8] = [
            (PNG, "image/png", "png", true),
            (JPEG, "image/jpeg", "jpg", true),
            (GIF, "image/gif", "gif", true),
            (WEBP, "image/webp", "webp", true),
            (PDF, "application/pdf", "pdf", false),
            (BMP, "image/bmp", "bmp", false),
            (SVG, "application/octet-stream", "bin", false),
            (b"", "application/octet-stream", "bin", false),
        ];
        for (head, mime, extension, image) in cases {
            assert_eq!(
                sniff(head),
                Sniffed {
                    mime,
                    extension,
                    image
                },
                "{mime}"
            );
        }
        // The name or a declared type plays no part: a PNG is a PNG whatever it is called.
        assert!(sniff(PNG).is_wecom_image() && sniff(JPEG).is_wecom_image());
        assert!(!sniff(GIF).is_wecom_image() && !sniff(WEBP).is_wecom_image());
    }

    #[test]
    fn declared_images_must_be_images() {
        assert_eq!(sniff(PNG).require_image(), Ok(()));
        assert_eq!(sniff(WEBP).require_image(), Ok(()));
        let err = sniff(PDF).require_image().unwrap_err();
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(err.to_string().contains("application/pdf"), "{err}");
        for head in [SVG, BMP, b"just text".as_slice()] {
            assert!(sniff(head).require_image().is_err());
        }
        // What passes infer's short checks for these formats but is not one of them.
        for head in [
            b"GIF is a format".as_slice(),
            b"\x89PNG but then text",
            b"12345678WEBPVP8 ",
            b"RIFF\0\0\0\0WAVEfmt ",
        ] {
            let sniffed = sniff(head);
            assert!(!sniffed.image && !sniffed.is_wecom_image(), "{sniffed:?}");
            assert!(sniffed.require_image().is_err());
        }
    }

    #[test]
    fn wecom_kinds_and_limits() {
        let png = sniff(PNG);
        let gif = sniff(GIF);
        let pdf = sniff(PDF);
        assert_eq!(kind_for_wecom(&png, 6), Ok(MediaKind::Image));
        assert_eq!(
            kind_for_wecom(&png, WECOM_IMAGE_MAX_BYTES),
            Ok(MediaKind::Image)
        );
        assert_eq!(
            kind_for_wecom(&png, WECOM_IMAGE_MAX_BYTES + 1),
            Ok(MediaKind::File),
            "a PNG over WeCom's image cap still goes, as a file"
        );
        assert_eq!(kind_for_wecom(&gif, 1000), Ok(MediaKind::File));
        assert_eq!(
            kind_for_wecom(&pdf, WECOM_FILE_MAX_BYTES),
            Ok(MediaKind::File)
        );

        let too_large = kind_for_wecom(&pdf, WECOM_FILE_MAX_BYTES + 1).unwrap_err();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            too_large.to_string(),
            "the file is 20971521 bytes but WeCom takes files of at most 20 MiB"
        );
        let too_large_png = kind_for_wecom(&png, WECOM_FILE_MAX_BYTES + 1).unwrap_err();
        assert_eq!(too_large_png.status(), StatusCode::PAYLOAD_TOO_LARGE);

        for size in [0, 5] {
            let too_small = kind_for_wecom(&pdf, size).unwrap_err();
            assert_eq!(too_small, MediaError::TooSmall { size });
            assert_eq!(too_small.status(), StatusCode::BAD_REQUEST);
        }
        assert!(kind_for_wecom(&png, 5).is_err());
    }
}
