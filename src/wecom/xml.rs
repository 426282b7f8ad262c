//! WeCom callback XML: parsing the POST envelope and the decrypted message, and building the
//! plaintext passive reply plus its encrypted envelope.
//!
//! The parser is a small event loop over `quick_xml::Reader` instead of serde: WeCom documents
//! are flat (`<xml>` with one level of text children), we want to look only at direct children
//! of the root, skip unknown subtrees, and refuse anything DTD-shaped outright. Pure: no I/O.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::escape::{escape, resolve_xml_entity};
use quick_xml::events::{BytesRef, Event};

/// Upper bound on a callback body or decrypted message. WeCom messages are a few KiB; the bound
/// keeps a hostile sender from making us buffer or scan megabytes.
pub const MAX_XML_BYTES: usize = 64 * 1024;

/// Why a callback document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("XML document exceeds {MAX_XML_BYTES} bytes")]
    TooLarge,
    #[error("XML document is not valid UTF-8")]
    NotUtf8,
    /// DTDs are the vehicle for entity-expansion (billion laughs) and XXE attacks, and WeCom
    /// never sends one, so any DTD or entity declaration is refused rather than ignored.
    #[error("XML document contains a DOCTYPE or entity declaration")]
    Doctype,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("required XML element <{0}> is missing")]
    MissingField(&'static str),
}

/// Outer POST envelope: `<xml><ToUserName>..</ToUserName><AgentID>..</AgentID><Encrypt>..</Encrypt></xml>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub to_user_name: Option<String>,
    pub agent_id: Option<String>,
    pub encrypt: String,
}

/// Parses the encrypted POST body. Only `Encrypt` is required: `ToUserName`/`AgentID` are
/// informational (and unauthenticated — the signature covers only `Encrypt`).
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, XmlError> {
    if body.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let [to_user_name, agent_id, encrypt] =
        parse_fields(text, ["ToUserName", "AgentID", "Encrypt"])?;
    Ok(Envelope {
        to_user_name,
        agent_id,
        encrypt: encrypt.ok_or(XmlError::MissingField("Encrypt"))?,
    })
}

/// Decrypted inner message (text message or event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub to_user_name: String,
    pub from_user_name: String,
    pub create_time: i64,
    pub msg_type: String,
    pub content: Option<String>,
    pub msg_id: Option<String>,
    pub agent_id: Option<String>,
    pub event: Option<String>,
    pub event_key: Option<String>,
}

/// Parses the decrypted message. `ToUserName`, `FromUserName`, `CreateTime` and `MsgType` are
/// present in every WeCom message and event, so their absence means the document is not one.
pub fn parse_inbound(xml: &str) -> Result<Inbound, XmlError> {
    if xml.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let [
        to_user_name,
        from_user_name,
        create_time,
        msg_type,
        content,
        msg_id,
        agent_id,
        event,
        event_key,
    ] = parse_fields(
        xml,
        [
            "ToUserName",
            "FromUserName",
            "CreateTime",
            "MsgType",
            "Content",
            "MsgId",
            "AgentID",
            "Event",
            "EventKey",
        ],
    )?;
    let create_time = create_time.ok_or(XmlError::MissingField("CreateTime"))?;
    let create_time = create_time
        .trim()
        .parse::<i64>()
        .map_err(|_| XmlError::Malformed("CreateTime is not an integer".to_owned()))?;
    Ok(Inbound {
        to_user_name: to_user_name.ok_or(XmlError::MissingField("ToUserName"))?,
        from_user_name: from_user_name.ok_or(XmlError::MissingField("FromUserName"))?,
        create_time,
        msg_type: msg_type.ok_or(XmlError::MissingField("MsgType"))?,
        content,
        msg_id,
        agent_id,
        event,
        event_key,
    })
}

impl Inbound {
    /// Stable key for deduplicating WeCom's callback retries (it re-POSTs the same message when
    /// we are slower than 5 s): `msg:<MsgId>` when a MsgId is present, else — events carry no
    /// MsgId — `evt:<from>:<create_time>:<event>:<event_key>`, which WeCom documents as the
    /// identity of an event.
    pub fn dedup_key(&self) -> String {
        match self.msg_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => format!("msg:{id}"),
            _ => format!(
                "evt:{}:{}:{}:{}",
                self.from_user_name,
                self.create_time,
                self.event.as_deref().unwrap_or(""),
                self.event_key.as_deref().unwrap_or(""),
            ),
        }
    }
}

/// Passive text reply (plaintext XML, to be encrypted with `WeComCrypto::encrypt_reply`):
/// `<xml><ToUserName>to</ToUserName><FromUserName>from</FromUserName><CreateTime>t</CreateTime>
/// <MsgType>text</MsgType><Content>..</Content></xml>`.
pub fn text_reply_xml(to_user: &str, from_user: &str, create_time: i64, content: &str) -> String {
    let mut out = String::with_capacity(160 + to_user.len() + from_user.len() + content.len());
    out.push_str("<xml><ToUserName>");
    push_cdata(&mut out, to_user);
    out.push_str("</ToUserName><FromUserName>");
    push_cdata(&mut out, from_user);
    out.push_str("</FromUserName><CreateTime>");
    out.push_str(&create_time.to_string());
    out.push_str("</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>");
    push_cdata(&mut out, content);
    out.push_str("</Content></xml>");
    out
}

/// The encrypted reply envelope WeCom expects as the HTTP response body, in the element order of
/// Tencent's sample code.
pub fn encrypted_reply_xml(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    let mut out = String::with_capacity(160 + encrypt.len());
    out.push_str("<xml><Encrypt>");
    push_cdata(&mut out, encrypt);
    out.push_str("</Encrypt><MsgSignature>");
    push_cdata(&mut out, msg_signature);
    out.push_str("</MsgSignature><TimeStamp>");
    push_text(&mut out, timestamp);
    out.push_str("</TimeStamp><Nonce>");
    push_cdata(&mut out, nonce);
    out.push_str("</Nonce></xml>");
    out
}

/// XML 1.0 `Char` production. Characters outside it (most C0 controls, U+FFFE, U+FFFF) cannot
/// appear in a well-formed document in any form — not even escaped — so builders drop them.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

fn xml_chars_only(s: &str) -> Cow<'_, str> {
    if s.chars().all(is_xml_char) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().filter(|&c| is_xml_char(c)).collect())
    }
}

/// Writes `s` as CDATA (the form WeCom itself uses). A CDATA section cannot contain `]]>`, so
/// each occurrence is split across two sections: `]]` ends the first, `>` starts the next.
fn push_cdata(out: &mut String, s: &str) {
    let s = xml_chars_only(s);
    out.push_str("<![CDATA[");
    out.push_str(&s.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

fn push_text(out: &mut String, s: &str) {
    out.push_str(&escape(xml_chars_only(s)));
}

/// True if `rest` starts with a DTD markup declaration (`<!ENTITY`, `<!ELEMENT`, …). quick-xml
/// reports those outside a DOCTYPE as a generic syntax error; we classify them as what they are.
fn is_dtd_markup(rest: &str) -> bool {
    let Some(decl) = rest.strip_prefix("<!") else {
        return false;
    };
    ["ENTITY", "ELEMENT", "ATTLIST", "NOTATION"]
        .iter()
        .any(|kw| {
            decl.get(..kw.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(kw))
        })
}

/// Resolves a character or predefined-entity reference. Anything else is an undeclared entity:
/// quick-xml reports it instead of expanding it, and we refuse it rather than keep `&name;`
/// literally (silently keeping it would hide XXE attempts and corrupt content).
fn resolve_reference(r: &BytesRef<'_>) -> Result<String, XmlError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => Ok(c.to_string()),
            _ => Err(XmlError::Malformed(format!(
                "invalid character reference &{};",
                &**r
            ))),
        };
    }
    resolve_xml_entity(r)
        .map(str::to_owned)
        .ok_or_else(|| XmlError::Malformed(format!("undefined entity reference &{};", &**r)))
}

/// Collects the text of the direct children of `<xml>` named in `names` (CDATA, escaped text and
/// references are concatenated). Unknown children — including their subtrees — are skipped, so a
/// `<Content>` nested inside e.g. `<SendPicsInfo>` is never mistaken for the message content.
/// A wanted field appearing twice, or containing child elements, is refused as ambiguous.
fn parse_fields<const N: usize>(
    xml: &str,
    names: [&'static str; N],
) -> Result<[Option<String>; N], XmlError> {
    let mut values: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut reader = Reader::from_str(xml);
    // Defaults already reject mismatched end tags and bare `&`; set them explicitly since the
    // parser's safety depends on them.
    reader.config_mut().check_end_names = true;
    reader.config_mut().allow_dangling_amp = false;
    reader.config_mut().allow_unmatched_ends = false;

    // Element depth: 1 inside the root, 2 inside a direct child.
    let mut depth = 0usize;
    let mut root_done = false;
    // Index in `names` and text collected so far for the direct child being read.
    let mut current: Option<(usize, String)> = None;

    let field_index = |name: &str| names.iter().position(|n| *n == name);
    let begin_field = |values: &[Option<String>; N], name: &str| match field_index(name) {
        Some(i) if values[i].is_some() => {
            Err(XmlError::Malformed(format!("duplicate <{}>", names[i])))
        }
        other => Ok(other),
    };

    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => {
                let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                return Err(if is_dtd_markup(xml.get(at..).unwrap_or("")) {
                    XmlError::Doctype
                } else {
                    XmlError::Malformed(format!("{e} (at byte {at})"))
                });
            }
        };
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) => {
                if root_done {
                    return Err(XmlError::Malformed(
                        "content after the root element".to_owned(),
                    ));
                }
                depth += 1;
                let name = start.name();
                match depth {
                    1 if name.as_ref() != "xml" => {
                        return Err(XmlError::Malformed("root element must be <xml>".to_owned()));
                    }
                    2 => {
                        current = begin_field(&values, name.as_ref())?.map(|i| (i, String::new()));
                    }
                    3 if current.is_some() => {
                        let field = current.as_ref().map_or("", |(i, _)| names[*i]);
                        return Err(XmlError::Malformed(format!(
                            "unexpected element inside <{field}>"
                        )));
                    }
                    _ => {}
                }
            }
            Event::Empty(empty) => {
                if root_done {
                    return Err(XmlError::Malformed(
                        "content after the root element".to_owned(),
                    ));
                }
                let name = empty.name();
                match depth {
                    0 if name.as_ref() == "xml" => root_done = true,
                    0 => return Err(XmlError::Malformed("root element must be <xml>".to_owned())),
                    1 => {
                        if let Some(i) = begin_field(&values, name.as_ref())? {
                            values[i] = Some(String::new());
                        }
                    }
                    2 if current.is_some() => {
                        let field = current.as_ref().map_or("", |(i, _)| names[*i]);
                        return Err(XmlError::Malformed(format!(
                            "unexpected element inside <{field}>"
                        )));
                    }
                    _ => {}
                }
            }
            Event::End(_) => {
                if depth == 2
                    && let Some((i, text)) = current.take()
                {
                    values[i] = Some(text);
                }
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| XmlError::Malformed("unmatched end tag".to_owned()))?;
                if depth == 0 {
                    root_done = true;
                }
            }
            Event::Text(text) => {
                if depth == 0 {
                    if !text.trim().is_empty() {
                        return Err(XmlError::Malformed(
                            "text outside the root element".to_owned(),
                        ));
                    }
                } else if depth == 2
                    && let Some((_, buf)) = current.as_mut()
                {
                    buf.push_str(&text.xml10_content());
                }
            }
            Event::CData(cdata) => {
                if depth == 0 {
                    return Err(XmlError::Malformed(
                        "CDATA outside the root element".to_owned(),
                    ));
                }
                if depth == 2
                    && let Some((_, buf)) = current.as_mut()
                {
                    buf.push_str(&cdata.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                // Resolved (and thus validated) everywhere, also inside skipped subtrees.
                let resolved = resolve_reference(&reference)?;
                if depth == 0 {
                    return Err(XmlError::Malformed(
                        "reference outside the root element".to_owned(),
                    ));
                }
                if depth == 2
                    && let Some((_, buf)) = current.as_mut()
                {
                    buf.push_str(&resolved);
                }
            }
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    if !root_done {
        return Err(XmlError::Malformed("unexpected end of document".to_owned()));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text message sample from WeCom's "接收普通消息" documentation.
    const DOC_TEXT_MESSAGE: &str = "<xml>
   <ToUserName><![CDATA[toUser]]></ToUserName>
   <FromUserName><![CDATA[fromUser]]></FromUserName>
   <CreateTime>1348831860</CreateTime>
   <MsgType><![CDATA[text]]></MsgType>
   <Content><![CDATA[this is a test]]></Content>
   <MsgId>1234567890123456</MsgId>
   <AgentID>1</AgentID>
</xml>";

    #[test]
    fn parses_doc_text_message() {
        let m = parse_inbound(DOC_TEXT_MESSAGE).unwrap();
        assert_eq!(
            m,
            Inbound {
                to_user_name: "toUser".into(),
                from_user_name: "fromUser".into(),
                create_time: 1_348_831_860,
                msg_type: "text".into(),
                content: Some("this is a test".into()),
                msg_id: Some("1234567890123456".into()),
                agent_id: Some("1".into()),
                event: None,
                event_key: None,
            }
        );
        assert_eq!(m.dedup_key(), "msg:1234567890123456");
    }

    #[test]
    fn parses_subscribe_event() {
        let xml = "<xml>
\t<ToUserName><![CDATA[toUser]]></ToUserName>
\t<FromUserName><![CDATA[UserID]]></FromUserName>
\t<CreateTime>1348831860</CreateTime>
\t<MsgType><![CDATA[event]]></MsgType>
\t<Event><![CDATA[subscribe]]></Event>
\t<AgentID>1</AgentID>
</xml>";
        let m = parse_inbound(xml).unwrap();
        assert_eq!(m.msg_type, "event");
        assert_eq!(m.event.as_deref(), Some("subscribe"));
        assert_eq!(m.event_key, None);
        assert_eq!(m.content, None);
        assert_eq!(m.msg_id, None);
        assert_eq!(m.dedup_key(), "evt:UserID:1348831860:subscribe:");
    }

    #[test]
    fn parses_click_event_with_event_key() {
        let xml = "<xml><ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[FromUser]]></FromUserName>
<CreateTime>123456789</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[click]]></Event>
<EventKey><![CDATA[EVENTKEY]]></EventKey>
<AgentID>1</AgentID>
</xml>";
        let m = parse_inbound(xml).unwrap();
        assert_eq!(m.event.as_deref(), Some("click"));
        assert_eq!(m.event_key.as_deref(), Some("EVENTKEY"));
        assert_eq!(m.agent_id.as_deref(), Some("1"));
        assert_eq!(m.dedup_key(), "evt:FromUser:123456789:click:EVENTKEY");
    }

    #[test]
    fn empty_msg_id_falls_back_to_event_key() {
        let xml = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName>\
                   <CreateTime>5</CreateTime><MsgType>event</MsgType><MsgId/>\
                   <Event>enter_agent</Event></xml>";
        let m = parse_inbound(xml).unwrap();
        assert_eq!(m.msg_id.as_deref(), Some(""));
        assert_eq!(m.dedup_key(), "evt:f:5:enter_agent:");
    }

    #[test]
    fn escaped_text_is_accepted_like_cdata() {
        let xml = "<xml><ToUserName>to&amp;me</ToUserName><FromUserName>a&#x4e2d;&#25991;</FromUserName>\
                   <CreateTime> 42 </CreateTime><MsgType>text</MsgType>\
                   <Content>1 &lt; 2 &gt; 0 &quot;q&quot; &apos;a&apos; <![CDATA[<raw>]]> end</Content></xml>";
        let m = parse_inbound(xml).unwrap();
        assert_eq!(m.to_user_name, "to&me");
        assert_eq!(m.from_user_name, "a中文");
        assert_eq!(m.create_time, 42);
        assert_eq!(m.content.as_deref(), Some("1 < 2 > 0 \"q\" 'a' <raw> end"));
    }

    #[test]
    fn nested_unknown_elements_are_skipped() {
        let xml = "<xml><ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[FromUser]]></FromUserName>
<CreateTime>1408090502</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[pic_sysphoto]]></Event>
<EventKey><![CDATA[6]]></EventKey>
<SendPicsInfo><Count>1</Count>
<PicList><item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum>
<Content>not the message content</Content><MsgId>nested</MsgId><Empty/>
</item>
</PicList>
</SendPicsInfo>
<AgentID>1</AgentID>
</xml>";
        let m = parse_inbound(xml).unwrap();
        assert_eq!(m.event.as_deref(), Some("pic_sysphoto"));
        assert_eq!(m.event_key.as_deref(), Some("6"));
        assert_eq!(m.agent_id.as_deref(), Some("1"));
        assert_eq!(m.content, None);
        assert_eq!(m.msg_id, None);
    }

    #[test]
    fn parses_envelope() {
        let body = b"<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\
                     <Encrypt><![CDATA[abc+/=]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";
        assert_eq!(
            parse_envelope(body).unwrap(),
            Envelope {
                to_user_name: Some("wx5823bf96d3bd56c7".into()),
                agent_id: Some("218".into()),
                encrypt: "abc+/=".into(),
            }
        );
        let minimal =
            parse_envelope(b"<?xml version=\"1.0\"?><!-- c --><xml><Encrypt>e</Encrypt></xml>\n")
                .unwrap();
        assert_eq!(minimal.encrypt, "e");
        assert_eq!(minimal.to_user_name, None);
        assert_eq!(minimal.agent_id, None);
    }

    #[test]
    fn missing_fields_are_reported() {
        assert_eq!(
            parse_envelope(b"<xml><ToUserName>x</ToUserName></xml>"),
            Err(XmlError::MissingField("Encrypt"))
        );
        let no_from = "<xml><ToUserName>t</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>";
        assert_eq!(
            parse_inbound(no_from),
            Err(XmlError::MissingField("FromUserName"))
        );
        let no_time = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><MsgType>text</MsgType></xml>";
        assert_eq!(
            parse_inbound(no_time),
            Err(XmlError::MissingField("CreateTime"))
        );
        let no_type = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>1</CreateTime></xml>";
        assert_eq!(
            parse_inbound(no_type),
            Err(XmlError::MissingField("MsgType"))
        );
        let bad_time = "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName>\
                        <CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>";
        assert!(matches!(
            parse_inbound(bad_time),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn billion_laughs_is_rejected() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol3;</Content></xml>"#;
        assert_eq!(parse_inbound(xml), Err(XmlError::Doctype));
        assert_eq!(parse_envelope(xml.as_bytes()), Err(XmlError::Doctype));
    }

    #[test]
    fn xxe_is_rejected() {
        let xml = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Encrypt>&xxe;</Encrypt></xml>"#;
        assert_eq!(parse_envelope(xml.as_bytes()), Err(XmlError::Doctype));
        let lower =
            r#"<!doctype xml SYSTEM "http://evil.example/x.dtd"><xml><Encrypt>e</Encrypt></xml>"#;
        assert_eq!(parse_envelope(lower.as_bytes()), Err(XmlError::Doctype));
        // Without a DTD the reference is undefined: an error, never kept verbatim or expanded.
        let bare = "<xml><Encrypt>a&xxe;b</Encrypt></xml>";
        assert!(matches!(
            parse_envelope(bare.as_bytes()),
            Err(XmlError::Malformed(_))
        ));
        let hidden = "<xml><Encrypt>e</Encrypt><Other><Deep>&xxe;</Deep></Other></xml>";
        assert!(matches!(
            parse_envelope(hidden.as_bytes()),
            Err(XmlError::Malformed(_))
        ));
        // A stray entity declaration outside a DOCTYPE is not XML either.
        let stray = r#"<!ENTITY xxe SYSTEM "file:///etc/passwd"><xml><Encrypt>e</Encrypt></xml>"#;
        assert_eq!(parse_envelope(stray.as_bytes()), Err(XmlError::Doctype));
        let inside = r#"<xml><!ENTITY xxe "x"><Encrypt>e</Encrypt></xml>"#;
        assert_eq!(parse_envelope(inside.as_bytes()), Err(XmlError::Doctype));
        let after = "<xml><Encrypt>e</Encrypt></xml><!DOCTYPE x>";
        assert_eq!(parse_envelope(after.as_bytes()), Err(XmlError::Doctype));
    }

    #[test]
    fn doctype_text_inside_cdata_is_just_content() {
        let xml = text_reply_xml("u", "c", 1, "<!DOCTYPE html><!ENTITY x 'y'>&x;");
        let m = parse_inbound(&xml).unwrap();
        assert_eq!(
            m.content.as_deref(),
            Some("<!DOCTYPE html><!ENTITY x 'y'>&x;")
        );
    }

    #[test]
    fn oversize_is_rejected() {
        let filler = "a".repeat(MAX_XML_BYTES);
        let xml = format!("<xml><Encrypt>{filler}</Encrypt></xml>");
        assert_eq!(parse_envelope(xml.as_bytes()), Err(XmlError::TooLarge));
        assert_eq!(parse_inbound(&xml), Err(XmlError::TooLarge));
        // Exactly at the limit is still parsed.
        let pad = MAX_XML_BYTES - "<xml><Encrypt></Encrypt></xml>".len();
        let at_limit = format!("<xml><Encrypt>{}</Encrypt></xml>", "b".repeat(pad));
        assert_eq!(at_limit.len(), MAX_XML_BYTES);
        assert_eq!(
            parse_envelope(at_limit.as_bytes()).unwrap().encrypt.len(),
            pad
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let body = b"<xml><Encrypt>\xff\xfe</Encrypt></xml>";
        assert_eq!(parse_envelope(body), Err(XmlError::NotUtf8));
    }

    #[test]
    fn truncated_and_garbage_are_rejected() {
        let full = DOC_TEXT_MESSAGE;
        for cut in [0, 1, 5, 20, 60, full.len() - 10, full.len() - 1] {
            let r = parse_inbound(&full[..cut]);
            assert!(
                matches!(r, Err(XmlError::Malformed(_))),
                "cut at {cut}: {r:?}"
            );
        }
        for bad in [
            "",
            "   ",
            "not xml at all",
            "<xml>",
            "<xml><Encrypt>e</Encrypt>",
            "<xml><Encrypt>e</Other></xml>",
            "<xml><Encrypt>e</Encrypt></xml></xml>",
            "<xml><Encrypt>e</Encrypt></xml><xml/>",
            "<xml><Encrypt>e</Encrypt></xml>trailing",
            "<root><Encrypt>e</Encrypt></root>",
            "<xml><Encrypt>a & b</Encrypt></xml>",
            "<xml><Encrypt>&#0;</Encrypt></xml>",
            "<xml><Encrypt>e</Encrypt><Encrypt>f</Encrypt></xml>",
            "<xml><Encrypt><b>e</b></Encrypt></xml>",
            "<xml><Encrypt><![CDATA[e</Encrypt></xml>",
        ] {
            let r = parse_envelope(bad.as_bytes());
            assert!(matches!(r, Err(XmlError::Malformed(_))), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn text_reply_matches_wecom_layout() {
        assert_eq!(
            text_reply_xml(
                "mycreate",
                "wx5823bf96d3bd56c7",
                1348831860,
                "this is a test"
            ),
            "<xml><ToUserName><![CDATA[mycreate]]></ToUserName>\
             <FromUserName><![CDATA[wx5823bf96d3bd56c7]]></FromUserName>\
             <CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[this is a test]]></Content></xml>"
        );
    }

    #[test]
    fn text_reply_round_trips_awkward_content() {
        for content in [
            "a < b && c > d",
            "]]>",
            "x]]>y]]]]>z]]",
            "<![CDATA[inner]]>",
            "中文内容，包含标点。😀",
            "&amp; &lt; &#x41; &xxe;",
            "line1\nline2\ttab",
            "",
        ] {
            let xml = text_reply_xml("to]]>user", "corp&id", -7, content);
            let m = parse_inbound(&xml).unwrap_or_else(|e| panic!("{content:?}: {e} in {xml}"));
            assert_eq!(m.content.as_deref(), Some(content));
            assert_eq!(m.to_user_name, "to]]>user");
            assert_eq!(m.from_user_name, "corp&id");
            assert_eq!(m.create_time, -7);
            assert_eq!(m.msg_type, "text");
        }
    }

    #[test]
    fn builders_drop_characters_xml_cannot_carry() {
        let xml = text_reply_xml("u", "c", 1, "a\u{0}b\u{1b}c\u{FFFF}d");
        assert!(!xml.contains('\u{0}') && !xml.contains('\u{1b}'));
        assert_eq!(
            parse_inbound(&xml).unwrap().content.as_deref(),
            Some("abcd")
        );
    }

    #[test]
    fn encrypted_reply_round_trips() {
        let xml = encrypted_reply_xml("ENC+/==", "sig", "1409659813", "13726<23149&");
        assert_eq!(
            xml,
            "<xml><Encrypt><![CDATA[ENC+/==]]></Encrypt><MsgSignature><![CDATA[sig]]></MsgSignature>\
             <TimeStamp>1409659813</TimeStamp><Nonce><![CDATA[13726<23149&]]></Nonce></xml>"
        );
        assert_eq!(parse_envelope(xml.as_bytes()).unwrap().encrypt, "ENC+/==");
        let odd = encrypted_reply_xml("e", "s", "<1&2>", "n");
        assert!(odd.contains("<TimeStamp>&lt;1&amp;2&gt;</TimeStamp>"));
        assert_eq!(parse_envelope(odd.as_bytes()).unwrap().encrypt, "e");
    }

    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, RngExt};
        let mut rng = rand::rng();
        let alphabet: &[u8] = b"<>/![]&;#x CDATA-?=\"'xmlEncryptContent\n\xe4\xb8\xad";
        for _ in 0..3000 {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = if rng.random_bool(0.5) {
                let mut b = vec![0u8; len];
                rng.fill_bytes(&mut b);
                b
            } else {
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            };
            let _ = parse_envelope(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_inbound(s);
            }
        }
        // Mutations of a valid document.
        let base = DOC_TEXT_MESSAGE.as_bytes();
        for _ in 0..3000 {
            let mut b = base.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            let _ = parse_envelope(&b);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::DOC_TEXT_MESSAGE;

        /// Pieces of XML and of what hostile bodies carry, so that random documents get
        /// past the first byte.
        fn xmlish() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "<xml>",
                "</xml>",
                "<xml/>",
                "<Encrypt>",
                "</Encrypt>",
                "<Content>",
                "</Content>",
                "<ToUserName>",
                "</ToUserName>",
                "<FromUserName>",
                "</FromUserName>",
                "<CreateTime>",
                "</CreateTime>",
                "<MsgType>",
                "</MsgType>",
                "<MsgId/>",
                "<Other>",
                "</Other>",
                "<![CDATA[",
                "]]>",
                "<!DOCTYPE x>",
                "<!ENTITY e \"x\">",
                "&amp;",
                "&lt;",
                "&#65;",
                "&#x0;",
                "&e;",
                "&",
                "<",
                ">",
                "<?xml version=\"1.0\"?>",
                "<!-- c -->",
                " ",
                "\n",
                "\r\n",
                "1",
                "-",
                "text",
                "中文",
                "😀",
                "\u{0}",
                "\u{FFFF}",
            ]);
            prop_oneof![
                prop::collection::vec(piece, 0..24).prop_map(|v| v.concat()),
                any::<String>(),
            ]
        }

        /// What XML 1.0 makes of `s` once written by our builders and read back: characters
        /// XML cannot carry dropped, line ends normalised to `\n`.
        fn as_read_back(s: &str) -> String {
            s.chars()
                .filter(|&c| is_xml_char(c))
                .collect::<String>()
                .replace("\r\n", "\n")
                .replace('\r', "\n")
        }

        proptest! {
            /// Any body: a parsed envelope or a typed error, never a panic; an envelope
            /// only from UTF-8 within the size bound.
            #[test]
            fn any_body_is_an_envelope_or_an_error(
                bytes in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..256),
                    xmlish().prop_map(String::into_bytes),
                ]
            ) {
                if parse_envelope(&bytes).is_ok() {
                    prop_assert!(std::str::from_utf8(&bytes).is_ok());
                    prop_assert!(bytes.len() <= MAX_XML_BYTES);
                }
            }

            /// Any decrypted text: an inbound message or a typed error, never a panic.
            #[test]
            fn any_inner_document_is_a_message_or_an_error(text in xmlish()) {
                if let Ok(m) = parse_inbound(&text) {
                    prop_assert!(text.contains("<xml>"));
                    let _ = m.dedup_key();
                }
            }

            /// Random byte changes to a real WeCom message: never a panic.
            #[test]
            fn corrupted_messages_never_panic(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            ) {
                let mut bytes = DOC_TEXT_MESSAGE.as_bytes().to_vec();
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                let _ = parse_envelope(&bytes);
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = parse_inbound(text);
                }
            }

            /// Whatever we put in a reply is what WeCom reads out of it.
            #[test]
            fn text_replies_round_trip(
                to in any::<String>(),
                from in any::<String>(),
                time in any::<i64>(),
                content in prop_oneof![xmlish(), any::<String>()],
            ) {
                let xml = text_reply_xml(&to, &from, time, &content);
                let m = parse_inbound(&xml)
                    .map_err(|e| TestCaseError::fail(format!("{e} from {xml}")))?;
                prop_assert_eq!(m.content, Some(as_read_back(&content)));
                prop_assert_eq!(m.to_user_name, as_read_back(&to));
                prop_assert_eq!(m.from_user_name, as_read_back(&from));
                prop_assert_eq!(m.create_time, time);
                prop_assert_eq!(m.msg_type, "text");
            }

            /// The encrypted envelope carries its `Encrypt` through, whatever the other
            /// fields hold.
            #[test]
            fn encrypted_envelopes_round_trip(
                encrypt in any::<String>(),
                signature in any::<String>(),
                timestamp in any::<String>(),
                nonce in any::<String>(),
            ) {
                let xml = encrypted_reply_xml(&encrypt, &signature, &timestamp, &nonce);
                let envelope = parse_envelope(xml.as_bytes())
                    .map_err(|e| TestCaseError::fail(format!("{e} from {xml}")))?;
                prop_assert_eq!(envelope.encrypt, as_read_back(&encrypt));
            }
        }
    }
}
