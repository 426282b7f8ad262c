//! WXBizMsgCrypt: WeCom's callback signature and encryption scheme, reimplemented from its
//! specification ("加解密方案说明") and checked against Tencent's published sample vectors.
//!
//! - signature = hex(SHA1(concat(sort([token, timestamp, nonce, ciphertext]))))
//! - ciphertext = base64(AES-256-CBC(key, iv = key[..16], pkcs7_32(random16 | be_u32(len) | msg | receive_id)))
//!
//! Pure: no I/O; the only side effect is drawing random bytes in [`WeComCrypto::encrypt`].

use std::fmt;

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cbc::cipher::{Block, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::checks::{self, MAX_ECHO_BYTES};
use super::credentials::{CallbackToken, CorpId, EncodingAesKey};
use super::xml;

type Encryptor = cbc::Encryptor<Aes256>;
type Decryptor = cbc::Decryptor<Aes256>;

/// WeCom pads to multiples of 32 bytes (the AES-256 key size), not the 16-byte AES block size,
/// so pad values range over 1..=32 and a stock PKCS#7 unpadder would reject valid messages.
const PAD_BLOCK: usize = 32;
const AES_BLOCK: usize = 16;
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;

/// Why a callback could not be authenticated or decrypted. Messages never include key material
/// or message content, so they are safe to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 base64 characters that decode to a 32-byte key")]
    InvalidAesKey,
    #[error("message signature does not match")]
    BadSignature,
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("ciphertext has an invalid length or padding")]
    Decrypt,
    #[error("decrypted message is malformed")]
    Malformed,
    #[error("message is addressed to a different receive id")]
    ReceiveIdMismatch,
    /// Decrypted, but not what WeCom sends as a URL-check echo (see
    /// [`checks::is_url_echo`]): a captured message or reply, never to be answered.
    #[error(
        "decrypted echostr is not a URL-check echo (1 to {MAX_ECHO_BYTES} letters, digits, - or _)"
    )]
    NotAnEcho,
}

/// One application's callback credentials: the Token, the AES key decoded from EncodingAESKey,
/// and the ReceiveId (the corp id for internal apps) that every plaintext must end with.
#[derive(Clone)]
pub struct WeComCrypto {
    token: String,
    key: [u8; 32],
    receive_id: String,
}

/// Hand-written so the token and key never reach logs via `{:?}`.
impl fmt::Debug for WeComCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeComCrypto")
            .field("token", &"<redacted>")
            .field("key", &"<redacted>")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl WeComCrypto {
    /// `encoding_aes_key` is the 43-character EncodingAESKey from the WeCom admin console; the
    /// AES key is `base64_decode(encoding_aes_key + "=")`.
    pub fn new(token: &str, encoding_aes_key: &str, receive_id: &str) -> Result<Self, CryptoError> {
        let key =
            EncodingAesKey::parse(encoding_aes_key).map_err(|_| CryptoError::InvalidAesKey)?;
        Ok(Self {
            token: token.to_owned(),
            key: *key.bytes(),
            receive_id: receive_id.to_owned(),
        })
    }

    /// From the already-checked configuration values (cannot fail).
    pub fn from_config(token: &CallbackToken, key: &EncodingAesKey, corp_id: &CorpId) -> Self {
        Self {
            token: token.expose().to_owned(),
            key: *key.bytes(),
            receive_id: corp_id.as_str().to_owned(),
        }
    }

    /// Lower-case hex SHA1 over the four strings sorted bytewise and concatenated — sorting is
    /// what WeCom does, so the order of the arguments does not matter to the result.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypted: &str) -> String {
        let mut parts = [self.token.as_str(), timestamp, nonce, encrypted];
        parts.sort_unstable();
        let mut hasher = Sha1::new();
        for part in parts {
            hasher.update(part.as_bytes());
        }
        hex::encode(hasher.finalize())
    }

    /// Checks `msg_signature` in constant time (so response timing does not leak how much of a
    /// forged signature was right); upper-case hex is accepted.
    pub fn verify_signature(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<(), CryptoError> {
        let expected = self.signature(timestamp, nonce, encrypted);
        let given = msg_signature.trim().to_ascii_lowercase();
        if bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Decrypts a base64 `Encrypt` value (or URL-check `echostr`, already percent-decoded) and
    /// returns the message. Verify the signature first: CBC has no integrity of its own.
    pub fn decrypt(&self, encrypted_b64: &str) -> Result<String, CryptoError> {
        let mut buf = STANDARD
            .decode(encrypted_b64.trim())
            .map_err(|_| CryptoError::Base64)?;
        // At least one 32-byte padding block, and whole AES blocks.
        if buf.len() < PAD_BLOCK || buf.len() % AES_BLOCK != 0 {
            return Err(CryptoError::Decrypt);
        }
        let (blocks, _) = Block::<Decryptor>::slice_as_chunks_mut(&mut buf);
        Decryptor::new(&self.key.into(), &self.iv().into()).decrypt_blocks(blocks);

        let plain = strip_pkcs7_32(&buf)?;
        let body = plain.get(HEADER_LEN..).ok_or(CryptoError::Malformed)?;
        let len_field = plain
            .get(RANDOM_LEN..HEADER_LEN)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .ok_or(CryptoError::Malformed)?;
        let msg_len =
            usize::try_from(u32::from_be_bytes(len_field)).map_err(|_| CryptoError::Malformed)?;
        if msg_len > body.len() {
            return Err(CryptoError::Malformed);
        }
        let (msg, receive_id) = body.split_at(msg_len);
        // Binds the message to this corp/app: another tenant's ciphertext under a shared key
        // (or a key collision) is refused. Not secret, so no constant-time compare.
        if receive_id != self.receive_id.as_bytes() {
            return Err(CryptoError::ReceiveIdMismatch);
        }
        String::from_utf8(msg.to_vec()).map_err(|_| CryptoError::Malformed)
    }

    /// Encrypts `msg` with fresh random bytes, as needed for every passive reply.
    pub fn encrypt(&self, msg: &str) -> String {
        let mut random = [0u8; RANDOM_LEN];
        rand::fill(&mut random[..]);
        self.encrypt_with_random(msg, random)
    }

    /// Deterministic encryption for tests and interoperability checks; production code should
    /// call [`Self::encrypt`].
    pub fn encrypt_with_random(&self, msg: &str, random: [u8; 16]) -> String {
        // A message over 4 GiB cannot be represented; saturate rather than panic (such a message
        // could never be sent anyway).
        let msg_len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        let mut plain =
            Vec::with_capacity(HEADER_LEN + msg.len() + self.receive_id.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&msg_len.to_be_bytes());
        plain.extend_from_slice(msg.as_bytes());
        plain.extend_from_slice(self.receive_id.as_bytes());
        self.encrypt_raw(plain)
    }

    /// Pads with PKCS#7 to 32-byte blocks, encrypts, base64-encodes.
    fn encrypt_raw(&self, mut plain: Vec<u8>) -> String {
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        // `pad` is in 1..=32, so the cast is lossless.
        plain.resize(plain.len() + pad, pad as u8);
        let (blocks, _) = Block::<Encryptor>::slice_as_chunks_mut(&mut plain);
        Encryptor::new(&self.key.into(), &self.iv().into()).encrypt_blocks(blocks);
        STANDARD.encode(&plain)
    }

    /// URL verification (GET): checks the signature over `echostr`, then returns the decrypted
    /// echostr, which must be sent back verbatim as the whole response body. See
    /// [`Self::decrypt_echo`].
    pub fn verify_url(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<String, CryptoError> {
        self.verify_signature(msg_signature, timestamp, nonce, echostr)?;
        self.decrypt_echo(echostr)
    }

    /// Decrypts a URL-check `echostr` (verify its signature first) and returns it only if it
    /// is shaped like an echo. Our passive replies and WeCom's messages are signed and
    /// encrypted exactly like an echostr, so answering any plaintext would decrypt them for
    /// whoever captured one.
    pub fn decrypt_echo(&self, echostr: &str) -> Result<String, CryptoError> {
        let plain = self.decrypt(echostr)?;
        if checks::is_url_echo(&plain) {
            Ok(plain)
        } else {
            Err(CryptoError::NotAnEcho)
        }
    }

    /// Builds the signed encrypted passive reply envelope
    /// (`<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`) around `reply_xml`.
    pub fn encrypt_reply(&self, reply_xml: &str, timestamp: &str, nonce: &str) -> String {
        let encrypted = self.encrypt(reply_xml);
        let signature = self.signature(timestamp, nonce, &encrypted);
        xml::encrypted_reply_xml(&encrypted, &signature, timestamp, nonce)
    }

    fn iv(&self) -> [u8; AES_BLOCK] {
        let mut iv = [0u8; AES_BLOCK];
        iv.copy_from_slice(&self.key[..AES_BLOCK]);
        iv
    }
}

/// Validates and strips PKCS#7 padding with WeCom's 32-byte block size: the last byte `n` must be
/// 1..=32 and the last `n` bytes must all equal `n`. Timing is not a concern because callers
/// verify the signature (keyed by the Token) before decrypting, so there is no padding oracle.
fn strip_pkcs7_32(plain: &[u8]) -> Result<&[u8], CryptoError> {
    let &pad = plain.last().ok_or(CryptoError::Decrypt)?;
    let pad = usize::from(pad);
    if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
        return Err(CryptoError::Decrypt);
    }
    let (data, padding) = plain.split_at(plain.len() - pad);
    if padding.iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::Decrypt);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vectors published by Tencent in the WXBizMsgCrypt sample code for WeCom
    // (sbzhu/weworkapi_php callback/Sample.php; identical in sbzhu/weworkapi_golang sample.go
    // and the C# Sample.cs). Data only.
    const TOKEN: &str = "QDG6eK";
    const ENCODING_AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const CORP_ID: &str = "wx5823bf96d3bd56c7";

    const URL_SIGNATURE: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
    const URL_TIMESTAMP: &str = "1409659589";
    const URL_NONCE: &str = "263014780";
    const URL_ECHOSTR: &str =
        "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";

    const POST_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
    const POST_TIMESTAMP: &str = "1409659813";
    const POST_NONCE: &str = "1372623149";
    const POST_BODY: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";
    /// Expected plaintext, as given in the comment after DecryptMsg in Sample.php.
    const POST_PLAINTEXT: &str = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n<FromUserName><![CDATA[mycreate]]></FromUserName>\n<CreateTime>1409659813</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[hello]]></Content>\n<MsgId>4561255354251345929</MsgId>\n<AgentID>218</AgentID>\n</xml>";

    fn official() -> WeComCrypto {
        WeComCrypto::new(TOKEN, ENCODING_AES_KEY, CORP_ID).unwrap()
    }

    fn post_encrypt() -> String {
        xml::parse_envelope(POST_BODY.as_bytes()).unwrap().encrypt
    }

    #[test]
    fn official_verify_url_vector() {
        let c = official();
        assert_eq!(
            c.signature(URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR),
            URL_SIGNATURE
        );
        let echo = c
            .verify_url(URL_SIGNATURE, URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR)
            .unwrap();
        assert_eq!(echo, "1616140317555161061");
    }

    #[test]
    fn official_decrypt_msg_vector() {
        let c = official();
        let envelope = xml::parse_envelope(POST_BODY.as_bytes()).unwrap();
        assert_eq!(envelope.to_user_name.as_deref(), Some(CORP_ID));
        assert_eq!(envelope.agent_id.as_deref(), Some("218"));
        c.verify_signature(
            POST_SIGNATURE,
            POST_TIMESTAMP,
            POST_NONCE,
            &envelope.encrypt,
        )
        .unwrap();
        let plain = c.decrypt(&envelope.encrypt).unwrap();
        assert_eq!(plain, POST_PLAINTEXT);

        let inbound = xml::parse_inbound(&plain).unwrap();
        assert_eq!(inbound.from_user_name, "mycreate");
        assert_eq!(inbound.content.as_deref(), Some("hello"));
        assert_eq!(inbound.dedup_key(), "msg:4561255354251345929");
    }

    /// The official vector uses a pad value above 16: exactly the case a stock 16-byte PKCS#7
    /// unpadder gets wrong.
    #[test]
    fn official_vector_needs_32_byte_padding() {
        use cbc::cipher::block_padding::Pkcs7;
        let c = official();
        let mut raw = STANDARD.decode(post_encrypt()).unwrap();
        let stock = Decryptor::new(&c.key.into(), &c.iv().into()).decrypt_padded::<Pkcs7>(&mut raw);
        let mut raw = STANDARD.decode(post_encrypt()).unwrap();
        let (blocks, _) = Block::<Decryptor>::slice_as_chunks_mut(&mut raw);
        Decryptor::new(&c.key.into(), &c.iv().into()).decrypt_blocks(blocks);
        let pad = *raw.last().unwrap();
        assert!(pad > 16, "pad value {pad}");
        assert!(
            stock.is_err(),
            "a 16-byte PKCS#7 unpadder rejects a valid WeCom message"
        );
        assert!(c.decrypt(&post_encrypt()).is_ok());
    }

    /// No encrypted sample output is published for WeCom's EncryptMsg (it is randomised), so
    /// re-encrypt the official plaintext with the random prefix it was sent with: the result must
    /// reproduce Tencent's ciphertext byte for byte.
    #[test]
    fn encrypt_reproduces_official_ciphertexts() {
        let c = official();
        for ciphertext in [post_encrypt(), URL_ECHOSTR.to_owned()] {
            let mut raw = STANDARD.decode(&ciphertext).unwrap();
            let (blocks, _) = Block::<Decryptor>::slice_as_chunks_mut(&mut raw);
            Decryptor::new(&c.key.into(), &c.iv().into()).decrypt_blocks(blocks);
            let random: [u8; 16] = raw[..16].try_into().unwrap();
            let msg = c.decrypt(&ciphertext).unwrap();
            assert_eq!(c.encrypt_with_random(&msg, random), ciphertext);
        }
    }

    /// Deterministic EncryptMsg vector from Tencent's WeChat Official Account crypto demo
    /// (cryptoDemo.zip, Java WXBizMsgCryptTest.java; copied in
    /// chanjarster/weixin-java-tools weixin-java-common/src/test/java/me/chanjar/weixin/common/util/crypto/WxCryptUtilTest.java).
    /// Same WXBizMsgCrypt algorithm, with the app id as receive id and random "aaaabbbbccccdddd".
    #[test]
    fn official_encrypt_vectors_with_fixed_random() {
        let c = WeComCrypto::new(
            "pamtest",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            "wxb11529c136998cb6",
        )
        .unwrap();
        let random = *b"aaaabbbbccccdddd";
        let vectors = [
            (
                "我是中文abcd123",
                "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==",
            ),
            (
                "<xml><ToUserName><![CDATA[oia2Tj我是中文jewbmiOUlr6X-1crbLOvLw]]></ToUserName><FromUserName><![CDATA[gh_7f083739789a]]></FromUserName><CreateTime>1407743423</CreateTime><MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0]]></MediaId><Title><![CDATA[testCallBackReplyVideo]]></Title><Description><![CDATA[testCallBackReplyVideo]]></Description></Video></xml>",
                "jn1L23DB+6ELqJ+6bruv23M2GmYfkv0xBh2h+XTBOKVKcgDFHle6gqcZ1cZrk3e1qjPQ1F4RsLWzQRG9udbKWesxlkupqcEcW7ZQweImX9+wLMa0GaUzpkycA8+IamDBxn5loLgZpnS7fVAbExOkK5DYHBmv5tptA9tklE/fTIILHR8HLXa5nQvFb3tYPKAlHF3rtTeayNf0QuM+UW/wM9enGIDIJHF7CLHiDNAYxr+r+OrJCmPQyTy8cVWlu9iSvOHPT/77bZqJucQHQ04sq7KZI27OcqpQNSto2OdHCoTccjggX5Z9Mma0nMJBU+jLKJ38YB1fBIz+vBzsYjrTmFQ44YfeEuZ+xRTQwr92vhA9OxchWVINGC50qE/6lmkwWTwGX9wtQpsJKhP+oS7rvTY8+VdzETdfakjkwQ5/Xka042OlUb1/slTwo4RscuQ+RdxSGvDahxAJ6+EAjLt9d8igHngxIbf6YyqqROxuxqIeIch3CssH/LqRs+iAcILvApYZckqmA7FNERspKA5f8GoJ9sv8xmGvZ9Yrf57cExWtnX8aCMMaBropU/1k+hKP5LVdzbWCG0hGwx/dQudYR/eXp3P0XxjlFiy+9DMlaFExWUZQDajPkdPrEeOwofJb",
            ),
        ];
        for (msg, expected) in vectors {
            assert_eq!(c.encrypt_with_random(msg, random), expected);
            assert_eq!(c.decrypt(expected).unwrap(), msg);
        }
    }

    /// Second WeCom vector set, from Tencent's Python sample (sbzhu/weworkapi_python
    /// callback/Sample.py). Its decrypted POST message is the same sample's `sRespData`; the
    /// echostr plaintext is not published, but a correct decryption must end with the corp id.
    #[test]
    fn official_python_sample_vectors() {
        let c = WeComCrypto::new(
            "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo",
            "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
            "ww1436e0e65a779aee",
        )
        .unwrap();
        let echo = c
            .verify_url(
                "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb",
                "1476416373",
                "47744683",
                "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==",
            )
            .unwrap();
        assert!(
            !echo.is_empty() && echo.bytes().all(|b| b.is_ascii_digit()),
            "{echo:?}"
        );

        let body = "<xml><ToUserName><![CDATA[ww1436e0e65a779aee]]></ToUserName>\n<Encrypt><![CDATA[Kl7kjoSf6DMD1zh7rtrHjFaDapSCkaOnwu3bqLc5tAybhhMl9pFeK8NslNPVdMwmBQTNoW4mY7AIjeLvEl3NyeTkAgGzBhzTtRLNshw2AEew+kkYcD+Fq72Kt00fT0WnN87hGrW8SqGc+NcT3mu87Ha3dz1pSDi6GaUA6A0sqfde0VJPQbZ9U+3JWcoD4Z5jaU0y9GSh010wsHF8KZD24YhmZH4ch4Ka7ilEbjbfvhKkNL65HHL0J6EYJIZUC2pFrdkJ7MhmEbU2qARR4iQHE7wy24qy0cRX3Mfp6iELcDNfSsPGjUQVDGxQDCWjayJOpcwocugux082f49HKYg84EpHSGXAyh+/oxwaWbvL6aSDPOYuPDGOCI8jmnKiypE+]]></Encrypt>\n<AgentID><![CDATA[1000002]]></AgentID>\n</xml>";
        let envelope = xml::parse_envelope(body.as_bytes()).unwrap();
        c.verify_signature(
            "0c3914025cb4b4d68103f6bfc8db550f79dcf48e",
            "1476422779",
            "1597212914",
            &envelope.encrypt,
        )
        .unwrap();
        let plain = c.decrypt(&envelope.encrypt).unwrap();
        assert_eq!(
            plain,
            "<xml><ToUserName>ww1436e0e65a779aee</ToUserName><FromUserName>ChenJiaShun</FromUserName><CreateTime>1476422779</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>1456453720</MsgId><AgentID>1000002</AgentID></xml>"
        );
        let inbound = xml::parse_inbound(&plain).unwrap();
        assert_eq!(inbound.to_user_name, "ww1436e0e65a779aee");
        assert_eq!(inbound.content.as_deref(), Some("你好"));
    }

    #[test]
    fn strict_base64_rejects_the_official_key_but_ours_accepts_it() {
        assert!(STANDARD.decode(format!("{ENCODING_AES_KEY}=")).is_err());
        assert!(WeComCrypto::new(TOKEN, ENCODING_AES_KEY, CORP_ID).is_ok());
    }

    #[test]
    fn invalid_keys_are_rejected() {
        for key in [
            "",
            "short",
            &ENCODING_AES_KEY[..42],
            &format!("{ENCODING_AES_KEY}A"),
            &format!("{ENCODING_AES_KEY}="),
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2!",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2中",
        ] {
            assert_eq!(
                WeComCrypto::new(TOKEN, key, CORP_ID).unwrap_err(),
                CryptoError::InvalidAesKey,
                "{key:?}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", official());
        assert!(!shown.contains(TOKEN));
        assert!(!shown.contains(&ENCODING_AES_KEY[..8]));
        assert!(shown.contains(CORP_ID));
        let key_bytes = format!("{:?}", official().key);
        assert!(!shown.contains(&key_bytes));
    }

    #[test]
    fn signature_is_order_independent_and_case_insensitive() {
        let c = official();
        let sig = c.signature(POST_TIMESTAMP, POST_NONCE, &post_encrypt());
        assert_eq!(sig, POST_SIGNATURE);
        // Sorting means swapping timestamp and nonce does not change the signature.
        assert_eq!(
            c.signature(POST_NONCE, POST_TIMESTAMP, &post_encrypt()),
            sig
        );
        c.verify_signature(
            &POST_SIGNATURE.to_ascii_uppercase(),
            POST_TIMESTAMP,
            POST_NONCE,
            &post_encrypt(),
        )
        .unwrap();
    }

    #[test]
    fn tampered_signatures_are_rejected() {
        let c = official();
        let enc = post_encrypt();
        let mut flipped = POST_SIGNATURE.to_owned();
        flipped.replace_range(0..1, "5");
        for (sig, ts, nonce, e) in [
            (flipped.as_str(), POST_TIMESTAMP, POST_NONCE, enc.as_str()),
            (&POST_SIGNATURE[..39], POST_TIMESTAMP, POST_NONCE, &enc),
            ("", POST_TIMESTAMP, POST_NONCE, &enc),
            (POST_SIGNATURE, "1409659814", POST_NONCE, &enc),
            (POST_SIGNATURE, POST_TIMESTAMP, "1372623148", &enc),
            (POST_SIGNATURE, POST_TIMESTAMP, POST_NONCE, &enc[1..]),
            (POST_SIGNATURE, "", "", ""),
        ] {
            assert_eq!(
                c.verify_signature(sig, ts, nonce, e),
                Err(CryptoError::BadSignature)
            );
        }
        let other_token = WeComCrypto::new("QDG6eL", ENCODING_AES_KEY, CORP_ID).unwrap();
        assert_eq!(
            other_token.verify_signature(POST_SIGNATURE, POST_TIMESTAMP, POST_NONCE, &enc),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            c.verify_url(&flipped, URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR),
            Err(CryptoError::BadSignature)
        );
    }

    /// A message or a passive reply is signed and encrypted exactly like an echostr: the URL
    /// check verifies and decrypts it, and must still not hand out its plaintext.
    #[test]
    fn verify_url_answers_only_echoes() {
        let c = official();
        assert_eq!(
            c.verify_url(POST_SIGNATURE, POST_TIMESTAMP, POST_NONCE, &post_encrypt()),
            Err(CryptoError::NotAnEcho),
            "Tencent's sample message"
        );
        let reply = xml::text_reply_xml("mycreate", CORP_ID, 1, "token\nsecret-push-token");
        let envelope = c.encrypt_reply(&reply, POST_TIMESTAMP, POST_NONCE);
        let encrypt = xml::parse_envelope(envelope.as_bytes()).unwrap().encrypt;
        let sig = c.signature(POST_TIMESTAMP, POST_NONCE, &encrypt);
        assert!(envelope.contains(&sig), "the reply carries this signature");
        assert_eq!(
            c.verify_url(&sig, POST_TIMESTAMP, POST_NONCE, &encrypt),
            Err(CryptoError::NotAnEcho),
            "our own passive reply"
        );
        let message = c.encrypt("1616140317555161061\n");
        assert_eq!(c.decrypt_echo(&message), Err(CryptoError::NotAnEcho));
        let err = c.decrypt_echo(&encrypt).unwrap_err().to_string();
        assert!(
            !err.contains("secret") && !err.contains("mycreate"),
            "{err}"
        );
        // A real echo still decrypts.
        assert_eq!(
            c.decrypt_echo(URL_ECHOSTR).as_deref(),
            Ok("1616140317555161061")
        );
    }

    #[test]
    fn wrong_receive_id_is_rejected() {
        let other = WeComCrypto::new(TOKEN, ENCODING_AES_KEY, "wx5823bf96d3bd56c8").unwrap();
        assert_eq!(
            other.decrypt(&post_encrypt()),
            Err(CryptoError::ReceiveIdMismatch)
        );
        let empty = WeComCrypto::new(TOKEN, ENCODING_AES_KEY, "").unwrap();
        assert_eq!(
            empty.decrypt(&post_encrypt()),
            Err(CryptoError::ReceiveIdMismatch)
        );
        let c = official();
        assert_eq!(
            c.decrypt(&other.encrypt("hi")),
            Err(CryptoError::ReceiveIdMismatch)
        );
    }

    #[test]
    fn round_trips() {
        let c = official();
        for msg in ["", "a", "中文消息 with <xml> & ]]>", &"x".repeat(5000)] {
            let enc = c.encrypt(msg);
            assert_eq!(STANDARD.decode(&enc).unwrap().len() % PAD_BLOCK, 0);
            assert_eq!(c.decrypt(&enc).unwrap(), msg);
        }
        // Two encryptions of the same message differ (fresh random prefix).
        assert_ne!(c.encrypt("same"), c.encrypt("same"));
    }

    /// Every plaintext length modulo 32 exercises a different pad value, including 32 (a whole
    /// padding block) and the 17..=31 range a 16-byte unpadder mishandles.
    #[test]
    fn padding_covers_every_pad_value() {
        use cbc::cipher::block_padding::Pkcs7;
        let c = official();
        let fixed = HEADER_LEN + CORP_ID.len();
        let mut seen = [false; PAD_BLOCK + 1];
        for extra in 0..PAD_BLOCK {
            let msg = "m".repeat(extra);
            let enc = c.encrypt_with_random(&msg, [7; 16]);
            let pad = PAD_BLOCK - (fixed + extra) % PAD_BLOCK;
            seen[pad] = true;
            assert_eq!(c.decrypt(&enc).unwrap(), msg);
            let mut raw = STANDARD.decode(&enc).unwrap();
            let stock =
                Decryptor::new(&c.key.into(), &c.iv().into()).decrypt_padded::<Pkcs7>(&mut raw);
            if pad > AES_BLOCK {
                assert!(stock.is_err(), "16-byte unpadder accepted pad {pad}");
            } else {
                // Where it does accept, it leaves our padding bytes behind.
                assert_eq!(stock.unwrap().len() + pad, fixed + extra + pad);
            }
        }
        assert!(seen[1..].iter().all(|&s| s));
    }

    #[test]
    fn bad_ciphertexts_are_rejected() {
        let c = official();
        assert_eq!(c.decrypt(""), Err(CryptoError::Decrypt));
        assert_eq!(c.decrypt("not base64!"), Err(CryptoError::Base64));
        assert_eq!(c.decrypt("中文"), Err(CryptoError::Base64));
        // A space where '+' was (form-decoding a query string) is not base64.
        assert_eq!(
            c.decrypt(&URL_ECHOSTR.replace('+', " ")),
            Err(CryptoError::Base64)
        );
        assert_eq!(
            c.decrypt(&STANDARD.encode([0u8; 16])),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            c.decrypt(&STANDARD.encode([0u8; 33])),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            c.decrypt(&STANDARD.encode([0u8; 40])),
            Err(CryptoError::Decrypt)
        );
        // Truncating the official ciphertext by one AES block breaks the padding.
        let mut raw = STANDARD.decode(post_encrypt()).unwrap();
        raw.truncate(raw.len() - 16);
        assert_eq!(c.decrypt(&STANDARD.encode(&raw)), Err(CryptoError::Decrypt));
    }

    #[test]
    fn malformed_plaintexts_are_rejected() {
        let c = official();
        let rid = CORP_ID.as_bytes();
        let build = |len_field: u32, msg: &[u8], tail: &[u8]| {
            let mut p = vec![1u8; 16];
            p.extend_from_slice(&len_field.to_be_bytes());
            p.extend_from_slice(msg);
            p.extend_from_slice(tail);
            c.encrypt_raw(p)
        };
        // Length field larger than the remaining bytes.
        assert_eq!(
            c.decrypt(&build(1000, b"hello", rid)),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            c.decrypt(&build(u32::MAX, b"hello", rid)),
            Err(CryptoError::Malformed)
        );
        // Length field one past the end.
        let n = u32::try_from(5 + rid.len() + 1).unwrap();
        assert_eq!(
            c.decrypt(&build(n, b"hello", rid)),
            Err(CryptoError::Malformed)
        );
        // Length field covering everything: receive id becomes empty.
        let n = u32::try_from(5 + rid.len()).unwrap();
        assert_eq!(
            c.decrypt(&build(n, b"hello", rid)),
            Err(CryptoError::ReceiveIdMismatch)
        );
        // Invalid UTF-8 message.
        assert_eq!(
            c.decrypt(&build(2, b"\xff\xfe", rid)),
            Err(CryptoError::Malformed)
        );
        // Plaintext shorter than the 20-byte header.
        assert_eq!(c.encrypt_raw(vec![0u8; 10]).len(), 44);
        assert_eq!(
            c.decrypt(&c.encrypt_raw(vec![0u8; 10])),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            c.decrypt(&c.encrypt_raw(Vec::new())),
            Err(CryptoError::Malformed)
        );
        // Sanity: the builder produces a valid message when fields are right.
        assert_eq!(c.decrypt(&build(5, b"hello", rid)).unwrap(), "hello");
    }

    #[test]
    fn invalid_padding_bytes_are_rejected() {
        let c = official();
        let enc = |plain: Vec<u8>| {
            let mut plain = plain;
            let (blocks, _) = Block::<Encryptor>::slice_as_chunks_mut(&mut plain);
            Encryptor::new(&c.key.into(), &c.iv().into()).encrypt_blocks(blocks);
            STANDARD.encode(&plain)
        };
        let mut zero_pad = vec![b'a'; 64];
        zero_pad[63] = 0;
        assert_eq!(c.decrypt(&enc(zero_pad)), Err(CryptoError::Decrypt));
        let mut too_big = vec![b'a'; 64];
        too_big[63] = 33;
        assert_eq!(c.decrypt(&enc(too_big)), Err(CryptoError::Decrypt));
        let mut inconsistent = vec![b'a'; 64];
        inconsistent[60..].copy_from_slice(&[4, 3, 4, 4]);
        assert_eq!(c.decrypt(&enc(inconsistent)), Err(CryptoError::Decrypt));
    }

    #[test]
    fn encrypt_reply_builds_verifiable_envelope() {
        let c = official();
        let reply = xml::text_reply_xml("mycreate", CORP_ID, 1348831860, "this is a test 中文");
        let envelope = c.encrypt_reply(&reply, POST_TIMESTAMP, POST_NONCE);
        assert!(envelope.starts_with("<xml><Encrypt><![CDATA["));
        assert!(envelope.contains(
            "<TimeStamp>1409659813</TimeStamp><Nonce><![CDATA[1372623149]]></Nonce></xml>"
        ));
        let parsed = xml::parse_envelope(envelope.as_bytes()).unwrap();
        let sig_start =
            envelope.find("<MsgSignature><![CDATA[").unwrap() + "<MsgSignature><![CDATA[".len();
        let sig = &envelope[sig_start..sig_start + 40];
        c.verify_signature(sig, POST_TIMESTAMP, POST_NONCE, &parsed.encrypt)
            .unwrap();
        assert_eq!(c.decrypt(&parsed.encrypt).unwrap(), reply);
    }

    /// Fuzz-ish: random garbage and random corruptions of a valid ciphertext must produce
    /// errors (or, rarely, a valid decryption), never a panic.
    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, RngExt};
        let c = official();
        let mut rng = rand::rng();
        for _ in 0..5000 {
            let len = if rng.random_bool(0.5) {
                16 * rng.random_range(0..12)
            } else {
                rng.random_range(0..200)
            };
            let mut bytes = vec![0u8; len];
            rng.fill_bytes(&mut bytes);
            let _ = c.decrypt(&STANDARD.encode(&bytes));
            let text: String = bytes.iter().map(|&b| char::from(b)).collect();
            let _ = c.decrypt(&text);
            let _ = c.verify_url(&text, &text, "", &text);
        }
        let valid = STANDARD.decode(post_encrypt()).unwrap();
        for _ in 0..5000 {
            let mut bytes = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= rng.random_range(1..=255u8);
            }
            let cut = rng.random_range(0..=bytes.len());
            if rng.random_bool(0.2) {
                bytes.truncate(cut);
            }
            let _ = c.decrypt(&STANDARD.encode(&bytes));
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::{CORP_ID, ENCODING_AES_KEY, TOKEN, official};

        /// An app's credentials: any 32-byte key (in its 43-character console form) and a
        /// receive id.
        fn any_app() -> impl Strategy<Value = WeComCrypto> {
            (any::<[u8; 32]>(), "[a-zA-Z0-9_-]{1,40}").prop_map(|(key, receive_id)| {
                let console = STANDARD.encode(key);
                let console = console.trim_end_matches('=');
                WeComCrypto::new("token", console, &receive_id)
                    .unwrap_or_else(|e| panic!("{e}: a 32-byte key in console form"))
            })
        }

        proptest! {
            /// Any message, any key, any random prefix: decrypting gives the message back.
            #[test]
            fn encrypt_then_decrypt_is_the_message(
                app in any_app(),
                msg in prop_oneof![any::<String>(), "[<>a-z\u{4e00}-\u{4e0f}]{0,200}"],
                random in any::<[u8; 16]>(),
            ) {
                prop_assert_eq!(app.decrypt(&app.encrypt_with_random(&msg, random)), Ok(msg.clone()));
                prop_assert_eq!(app.decrypt(&app.encrypt(&msg)), Ok(msg));
            }

            /// A ciphertext for another receive id (another corp) is refused.
            #[test]
            fn another_receive_id_is_refused(
                msg in any::<String>(),
                other in "[a-zA-Z0-9_-]{1,40}",
            ) {
                prop_assume!(other != CORP_ID);
                let theirs = WeComCrypto::new(TOKEN, ENCODING_AES_KEY, &other)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    official().decrypt(&theirs.encrypt(&msg)),
                    Err(CryptoError::ReceiveIdMismatch)
                );
            }

            /// Arbitrary text as `Encrypt`/`echostr`: an error, never a panic.
            #[test]
            fn any_text_is_refused(text in any::<String>()) {
                prop_assert!(official().decrypt(&text).is_err());
                prop_assert!(official().decrypt_echo(&text).is_err());
            }

            /// Arbitrary bytes, validly base64-encoded (whole blocks half the time): an
            /// error, never a panic. (A forgery would need valid padding and the receive id
            /// at the right place: odds of 2^-150.)
            #[test]
            fn any_ciphertext_is_refused(
                bytes in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..300),
                    (1usize..16).prop_flat_map(|blocks| {
                        prop::collection::vec(any::<u8>(), blocks * 16)
                    }),
                ]
            ) {
                prop_assert!(official().decrypt(&STANDARD.encode(&bytes)).is_err());
            }

            /// A changed ciphertext never passes the signature (CBC itself has no
            /// integrity), and decrypting it anyway does not panic.
            #[test]
            fn a_tampered_ciphertext_fails_its_signature(
                msg in any::<String>(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
                cut in any::<prop::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let app = official();
                let good = app.encrypt(&msg);
                let signature = app.signature("1409659813", "1372623149", &good);
                let mut bytes = STANDARD.decode(&good).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (at, flip) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] ^= flip;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                let bad = STANDARD.encode(&bytes);
                prop_assume!(bad != good);
                prop_assert_eq!(
                    app.verify_signature(&signature, "1409659813", "1372623149", &bad),
                    Err(CryptoError::BadSignature)
                );
                let _ = app.decrypt(&bad);
            }
        }
    }
}
