//! Images and files (issue #20): fetching a sender's URL safely, telling what a file is
//! from its bytes, and WeCom's limits.
//!
//! How the pieces fit, for a message with `image_url`:
//!
//! ```text
//! let fetched = fetcher.fetch(url).await?;            // FetchError: 400/413/502/504
//! let blob = store.put_blob(fetched.body, …).await?;  // streamed, capped, never whole in memory
//! let sniffed = media::sniff(&blob.head);             // the first bytes, not the sender's word
//! sniffed.require_image()?;                           // declared an image: 415 unless it is one
//! let kind = media::kind_for_wecom(&sniffed, blob.size)?; // image ≤ 10 MiB, file ≤ 20 MiB
//! ```
//!
//! Nothing here stores or sends: the store and the WeCom client do that.

pub mod address;
pub mod fetch;
pub mod filename;
pub mod sniff;

use std::fmt;

pub use address::{Reason, is_refused};
pub use fetch::{Body, FetchError, FetchLimits, Fetched, Fetcher};
pub use filename::sanitize_filename;
pub use sniff::{MediaError, SNIFF_LEN, Sniffed, kind_for_wecom, sniff};

/// What WeCom gets: an image message or a file message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// `type=image` / `msgtype=image`: JPEG or PNG, ≤ 10 MiB.
    Image,
    /// `type=file` / `msgtype=file`: anything of 6 bytes to 20 MiB.
    File,
}

impl MediaKind {
    /// WeCom's name, as in `media/upload?type=` and `msgtype`; also what is stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::File => "file",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "image" => Some(Self::Image),
            "file" => Some(Self::File),
            _ => None,
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `20 MiB` for whole mebibytes, else `123 bytes`: sizes in messages to senders.
fn describe_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in [MediaKind::Image, MediaKind::File] {
            assert_eq!(MediaKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(MediaKind::parse("voice"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(describe_size(20 * 1024 * 1024), "20 MiB");
        assert_eq!(describe_size(1024 * 1024 + 1), "1048577 bytes");
        assert_eq!(describe_size(0), "0 bytes");
    }
}
