//! The WeCom app's identifiers and callback secrets as typed values. Each is checked once,
//! when the configuration is read ("parse, don't validate"), so an invalid one cannot exist
//! and nothing downstream checks or decodes it again. Secrets redact themselves in `Debug`.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The Token and EncodingAESKey printed in WeCom's developer documentation. Anyone can sign
/// and encrypt callbacks with them, so a service using them must not be reachable.
pub const SAMPLE_CALLBACK_TOKEN: &str = "QDG6eK";
pub const SAMPLE_ENCODING_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

const ENCODING_AES_KEY_LEN: usize = 43;

/// EncodingAESKey is 43 base64 characters whose last one carries bits beyond the 32-byte key;
/// strict decoders reject that, WeCom's own libraries ignore it, so we do too.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// The company's CorpID (企业ID), e.g. `ww0123456789abcdef`. Also the callback ReceiveId.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CorpId(String);

impl CorpId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CorpId {
    type Error = InvalidCorpId;
    fn try_from(value: String) -> Result<Self, InvalidCorpId> {
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidCorpId);
        }
        Ok(Self(value.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be the CorpID from the WeCom console (我的企业 → 企业信息): letters and digits, e.g. ww0123456789abcdef"
)]
pub struct InvalidCorpId;

impl fmt::Debug for CorpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CorpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The app's AgentId (应用管理 → the app), a positive number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct AgentId(i64);

impl AgentId {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for AgentId {
    type Error = InvalidAgentId;
    fn try_from(value: i64) -> Result<Self, InvalidAgentId> {
        if value <= 0 {
            return Err(InvalidAgentId);
        }
        Ok(Self(value))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be the app's AgentId, a positive number")]
pub struct InvalidAgentId;

/// The app's Secret, used for `gettoken`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct CorpSecret(SecretString);

impl CorpSecret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl TryFrom<String> for CorpSecret {
    type Error = InvalidCorpSecret;
    fn try_from(value: String) -> Result<Self, InvalidCorpSecret> {
        let value = value.trim();
        if value.is_empty() {
            return Err(InvalidCorpSecret);
        }
        Ok(Self(SecretString::from(value.to_owned())))
    }
}

/// The error never echoes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be the app's Secret (应用管理 → the app → Secret)")]
pub struct InvalidCorpSecret;

/// The callback Token (接收消息 → 设置API接收): 1 to 32 letters or digits.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct CallbackToken(SecretString);

impl CallbackToken {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_public_sample(&self) -> bool {
        self.expose() == SAMPLE_CALLBACK_TOKEN
    }
}

impl TryFrom<String> for CallbackToken {
    type Error = InvalidCallbackToken;
    fn try_from(value: String) -> Result<Self, InvalidCallbackToken> {
        let ok =
            (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(InvalidCallbackToken);
        }
        Ok(Self(SecretString::from(value)))
    }
}

/// The error never echoes the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be the callback Token from the WeCom console: 1 to 32 letters or digits")]
pub struct InvalidCallbackToken;

/// The AES key decoded from the 43-character EncodingAESKey: `base64(EncodingAESKey + "=")`.
/// Two are equal when their keys are (the text's ignored bits aside).
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct EncodingAesKey {
    key: [u8; 32],
    /// As the console shows it (and a config file holds it).
    text: String,
}

impl PartialEq for EncodingAesKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for EncodingAesKey {}

impl EncodingAesKey {
    /// Parses the console's 43-character form. The error never echoes the input.
    pub fn parse(encoding_aes_key: &str) -> Result<Self, InvalidAesKey> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(InvalidAesKey);
        }
        let decoded = KEY_ENGINE
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| InvalidAesKey)?;
        let key = decoded.try_into().map_err(|_| InvalidAesKey)?;
        Ok(Self {
            key,
            text: encoding_aes_key.to_owned(),
        })
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn is_public_sample(&self) -> bool {
        Self::parse(SAMPLE_ENCODING_AES_KEY).is_ok_and(|sample| sample == *self)
    }
}

/// Hand-written so the key never reaches a log via `{:?}`.
impl fmt::Debug for EncodingAesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncodingAesKey(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be the 43-character EncodingAESKey from the WeCom console (接收消息 → 设置API接收 → EncodingAESKey)"
)]
pub struct InvalidAesKey;

impl TryFrom<String> for EncodingAesKey {
    type Error = InvalidAesKey;
    fn try_from(value: String) -> Result<Self, InvalidAesKey> {
        Self::parse(value.trim())
    }
}

/// Each as written in the config file, secrets with their real value: for writing a
/// config file (see `config::Settings`), never for a log.
mod serialize {
    use serde::{Serialize, Serializer};

    use super::*;

    impl Serialize for CorpId {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.as_str())
        }
    }

    impl Serialize for AgentId {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_i64(self.get())
        }
    }

    impl Serialize for CorpSecret {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.expose())
        }
    }

    impl Serialize for CallbackToken {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.expose())
        }
    }

    /// The 43 characters as they were given.
    impl Serialize for EncodingAesKey {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_key_decodes_the_sample_and_rejects_other_lengths() {
        let key = EncodingAesKey::parse(SAMPLE_ENCODING_AES_KEY).unwrap();
        assert!(key.is_public_sample());
        assert_eq!(key.bytes().len(), 32);
        assert_eq!(EncodingAesKey::parse("short"), Err(InvalidAesKey));
        let not_base64 = "!".repeat(43);
        assert_eq!(EncodingAesKey::parse(&not_base64), Err(InvalidAesKey));
        assert_eq!(format!("{key:?}"), "EncodingAesKey(<redacted>)");
    }

    #[test]
    fn shapes_are_checked_once() {
        assert!(CorpId::try_from(" ww12ab ".to_owned()).is_ok_and(|c| c.as_str() == "ww12ab"));
        assert_eq!(CorpId::try_from(String::new()), Err(InvalidCorpId));
        assert!(CorpId::try_from("ww 12".to_owned()).is_err());
        assert_eq!(AgentId::try_from(0), Err(InvalidAgentId));
        assert_eq!(AgentId::try_from(1000002).map(AgentId::get), Ok(1000002));
        assert!(CallbackToken::try_from("QDG6eK".to_owned()).is_ok_and(|t| t.is_public_sample()));
        assert!(CallbackToken::try_from("x".repeat(33)).is_err());
        assert!(CallbackToken::try_from("no-dashes".to_owned()).is_err());
        assert!(CorpSecret::try_from("  ".to_owned()).is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let token = CallbackToken::try_from("Sekr3t".to_owned()).unwrap();
        let secret = CorpSecret::try_from("corp-secret".to_owned()).unwrap();
        let shown = format!("{token:?} {secret:?}");
        assert!(
            !shown.contains("Sekr3t") && !shown.contains("corp-secret"),
            "{shown}"
        );
    }
}
