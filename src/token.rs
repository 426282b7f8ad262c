//! Personal push tokens: 192 bits from the OS-seeded CSPRNG, URL-safe base64 (32 chars).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::PushToken;

/// Bytes of randomness in a token (≥ 128 bits required; 24 gives 32 characters, no padding).
const TOKEN_BYTES: usize = 24;

pub fn generate() -> PushToken {
    let mut bytes = [0u8; TOKEN_BYTES];
    // rand's thread RNG is a CSPRNG (ChaCha) seeded and reseeded from the OS.
    rand::fill(&mut bytes);
    PushToken::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// A message page's key: 128 bits from the same CSPRNG, URL-safe base64 (22 chars).
pub fn page_key() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Cheap shape check so garbage never reaches the database.
pub fn looks_valid(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_url_safe_long_and_distinct() {
        let tokens: HashSet<String> = (0..1000).map(|_| generate().expose().to_owned()).collect();
        assert_eq!(tokens.len(), 1000);
        for t in &tokens {
            assert_eq!(t.len(), 32);
            assert!(looks_valid(t), "{t}");
        }
    }

    #[test]
    fn shape_check_rejects_junk() {
        assert!(!looks_valid(""));
        assert!(!looks_valid("short"));
        assert!(!looks_valid("has space has space has space!!"));
        assert!(!looks_valid(&"a".repeat(129)));
    }
}
