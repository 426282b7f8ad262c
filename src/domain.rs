//! The few values everything else passes around, each normalised or checked in one place.
//!
//! - [`UserId`]: WeCom userids are case-insensitive (WeCom lower-cases them in its answers,
//!   e.g. `invaliduser`), so they are lower-cased once, here, and compared as stored.
//! - [`PushToken`]: its `Debug` and `Display` redact it, so "never log a token" is a
//!   property of the type; [`PushToken::expose`] is the one way to the text.
//! - [`MessageId`]: UUIDv7 text (time-ordered).
//! - [`Outbound`]: what a channel renders — never the database row.

use std::fmt;

/// A WeCom member's userid, trimmed and lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn new(raw: &str) -> Self {
        Self(raw.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A personal push token (a bearer credential).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PushToken(String);

impl PushToken {
    /// Wraps a token as received or generated; shape checks are [`crate::token`]'s job.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The token itself, for the places that must show or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `ab…yz`: enough for the owner to recognise it, useless to anyone else.
    pub fn hint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 8 {
            return "…".to_owned();
        }
        let head: String = chars[..2].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}…{tail}")
    }
}

impl fmt::Debug for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PushToken({})", self.hint())
    }
}

impl fmt::Display for PushToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hint())
    }
}

/// A message id (UUIDv7 text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One message as a channel sends it: a single accepted message, or a digest of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub userid: UserId,
    pub title: Option<String>,
    pub content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userids_are_case_insensitive() {
        assert_eq!(UserId::new(" ZhangSan "), UserId::new("zhangsan"));
        assert_eq!(UserId::new("ZhangSan").as_str(), "zhangsan");
    }

    #[test]
    fn tokens_never_print_themselves() {
        let token = PushToken::new("abcdefghijklmnopqrstuvwxyz012345".to_owned());
        assert_eq!(format!("{token}"), "ab…45");
        assert_eq!(format!("{token:?}"), "PushToken(ab…45)");
        assert_eq!(token.expose(), "abcdefghijklmnopqrstuvwxyz012345");
        assert_eq!(PushToken::new("short".into()).hint(), "…");
    }
}
