//! Aliyun SMS (dysmsapi, version 2017-05-25), signed with ACS3-HMAC-SHA256 ("V3").
//!
//! Every call is a `POST /` whose parameters are in the query string, with an empty body:
//! `SendSms` to send, `QuerySendDetails` to look a send up by our `OutId`,
//! `GetSmsTemplate` to check the templates (`QuerySmsTemplate` is marked 已下线, offline,
//! in Aliyun's documentation, with `GetSmsTemplate` as its replacement).
//!
//! Business errors arrive in an HTTP 200 with `Code != "OK"`; gateway errors
//! (`SignatureDoesNotMatch`, …) with a 4xx and the same `Code`/`Message` body. Both are read
//! the same way.

use std::time::Duration;

use futures_util::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::content::template_variables;
use super::{
    Answer, CLOCK_HINT, CallError, Check, Class, LOOKUP_AFTER, Lookup, PhoneNumber, Provider,
    SmsFailure, SmsText, body_excerpt, call, class_failure, hmac_sha256, host_header, nonce,
    now_secs, quote, redact, refusal, rfc3339, sha256_hex, status_failure,
};
use crate::config::AliyunSms;
use crate::time::UnixMillis;

const LABEL: &str = "Aliyun SMS";
const VERSION: &str = "2017-05-25";
const ALGORITHM: &str = "ACS3-HMAC-SHA256";
/// Records per `QuerySendDetails` page (its maximum).
const PAGE_SIZE: u32 = 50;
/// Pages read per day before giving up (a number that got 500 texts in a day).
const MAX_PAGES: u32 = 10;
/// Aliyun refuses a timestamp further than this from its clock, so a send is recorded
/// within this of our `sent_at`.
const CLOCK_WINDOW_SECS: i64 = 15 * 60;

/// RFC 3986 unreserved characters stay as they are; everything else is `%XY` (so a space
/// is `%20`, `*` is `%2A`, `~` stays `~`).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &str) -> String {
    utf8_percent_encode(text, RFC3986).to_string()
}

/// The result of signing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The query string, encoded and sorted: send exactly this.
    pub canonical_query: String,
    /// `host;x-acs-action;…`
    pub signed_headers: String,
    /// hex(sha256(CanonicalRequest)).
    pub canonical_request_hash: String,
    /// hex(HMAC-SHA256(secret, StringToSign)).
    pub signature: String,
}

/// ACS3-HMAC-SHA256 over one request, a pure function: `headers` are every header sent
/// (names in any case); those named `host`, `content-type` or `x-acs-*` are signed. The
/// caller sends `x-acs-content-sha256` = hex(sha256(body)).
pub fn sign(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: &[u8],
    secret: &str,
) -> Signed {
    let mut pairs: Vec<(String, String)> =
        query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    pairs.sort();
    let canonical_query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .filter(|(name, _)| name == "host" || name == "content-type" || name.starts_with("x-acs-"))
        .collect();
    signed.sort();
    let canonical_headers: String = signed
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = signed
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    // CanonicalHeaders ends with a line break and the template adds one: a blank line.
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(body)
    );
    let canonical_request_hash = sha256_hex(canonical_request.as_bytes());
    let string_to_sign = format!("{ALGORITHM}\n{canonical_request_hash}");
    let signature = hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()));
    Signed {
        canonical_query,
        signed_headers,
        canonical_request_hash,
        signature,
    }
}

/// `ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…` (no spaces after commas).
pub fn authorization(access_key_id: &str, signed: &Signed) -> String {
    format!(
        "{ALGORITHM} Credential={access_key_id},SignedHeaders={},Signature={}",
        signed.signed_headers, signed.signature
    )
}

/// How Aliyun wants a number: a mainland number as its 11 digits, any other as country
/// code and number without `+` (`852…`), for `SendSms` and `QuerySendDetails` alike.
pub fn aliyun_number(to: &PhoneNumber) -> String {
    if to.country_code() == "86" {
        to.national().to_owned()
    } else {
        format!("{}{}", to.country_code(), to.national())
    }
}

/// `Code` and `Message`, in every answer.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message", default)]
    message: String,
}

/// A failure for error `code` with the provider's `message`.
fn classify(code: &str, message: &str) -> SmsFailure {
    class_failure(LABEL, code, message, explain(code))
}

/// The class of an error `Code`, and what to do about it.
fn explain(code: &str) -> (Class, &'static str) {
    use Class::*;
    match code {
        "isv.BUSINESS_LIMIT_CONTROL" => (
            Transient,
            "the number's rate limit (by default 1 a minute, 5 an hour, 10 a day per signature; 控制台 → 国内消息设置 → 发送频率设置)",
        ),
        "isv.DAY_LIMIT_CONTROL" => (
            TransientAll,
            "the account's daily sending quota is used up (控制台 → 国内消息设置)",
        ),
        "SignatureNonceUsed" => (Transient, "will retry with a fresh nonce"),
        "Throttling" | "Throttling.User" | "Throttling.Api" | "ServiceUnavailable" => {
            (TransientAll, "Aliyun is throttling or busy: will retry")
        }
        "InvalidTimeStamp.Expired" | "InvalidTimeStamp.Format" => (TransientAll, CLOCK_HINT),
        "isp.SYSTEM_ERROR" | "InternalError" | "isp.GATEWAY_ERROR" => (
            Unknown,
            "an error inside Aliyun: the text may have been sent",
        ),
        "isv.SMS_TEMPLATE_ILLEGAL" | "isv.TEMPLATE_NOT_EXISTS" => (
            Permanent,
            "check sms.template and sms.code_template (approved templates of this account)",
        ),
        "isv.SMS_SIGNATURE_ILLEGAL" | "isv.SMS_SIGN_ILLEGAL" | "isv.SIGN_NAME_ILLEGAL" => (
            Permanent,
            "check sms.sign_name (an approved signature of this account)",
        ),
        "isv.SMS_SIGNATURE_SCENE_ILLEGAL" => (
            Permanent,
            "the signature (sms.sign_name) is not approved for this kind of template (sms.template, sms.code_template)",
        ),
        "isv.MOBILE_NUMBER_ILLEGAL" => (Permanent, "the number is not a valid mobile number"),
        "isv.MOBILE_COUNT_OVER_LIMIT" => (Permanent, "too many numbers in one request"),
        "isv.TEMPLATE_MISSING_PARAMETERS" => (
            Permanent,
            "the template's variables must be ${title}, ${content} and ${link} (sms.template) and ${code} (sms.code_template)",
        ),
        "isv.INVALID_JSON_PARAM" | "isv.INVALID_PARAMETERS" => {
            (Permanent, "the request was malformed (a pushbot bug)")
        }
        "isv.PARAM_LENGTH_LIMIT" => (
            Permanent,
            "a variable is longer than the template allows: lower sms.max_variable_chars",
        ),
        "isv.PARAM_NOT_SUPPORT_URL" | "isv.TEMPLATE_PARAMS_ILLEGAL" => (
            Permanent,
            "a variable holds a link or words Aliyun refuses (a link needs a link-type variable in the template)",
        ),
        "isv.BLACK_KEY_CONTROL_LIMIT" | "isv.SMS_CONTENT_ILLEGAL" => {
            (Permanent, "the text holds words Aliyun refuses")
        }
        "isv.AMOUNT_NOT_ENOUGH" | "isv.OUT_OF_SERVICE" => (
            Permanent,
            "the Aliyun account has no balance left: top it up",
        ),
        "isv.PRODUCT_UN_SUBSCRIPT" | "isv.PRODUCT_UNSUBSCRIBE" => (
            Permanent,
            "the account has not enabled the SMS service (短信服务)",
        ),
        "isv.ACCOUNT_NOT_EXISTS" | "isv.ACCOUNT_ABNORMAL" => {
            (Permanent, "check the Aliyun account and sms.access_key_id")
        }
        "isp.RAM_PERMISSION_DENY" | "Forbidden.RAM" | "NoPermission" | "Forbidden" => (
            Permanent,
            "the RAM user of sms.access_key_id lacks the permission (dysms:SendSms, e.g. AliyunDysmsFullAccess)",
        ),
        "isv.DENY_IP_RANGE" => (
            Permanent,
            "Aliyun refuses requests from this server's IP address (region)",
        ),
        "isv.DOMESTIC_NUMBER_NOT_SUPPORTED" => (
            Permanent,
            "an international template cannot send to a mainland number",
        ),
        "SignatureDoesNotMatch" | "IncompleteSignature" => (
            Permanent,
            "check sms.access_key_secret (it does not match sms.access_key_id)",
        ),
        "InvalidAccessKeyId.NotFound" | "InvalidAccessKeyId.Inactive" | "InvalidAccessKeyId" => {
            (Permanent, "check sms.access_key_id (unknown or disabled)")
        }
        "InvalidVersion" | "InvalidAction.NotFound" | "MissingParameter" => {
            (Permanent, "the request was malformed (a pushbot bug)")
        }
        _ => (Permanent, ""),
    }
}

/// `SendSms`'s answer: `Code == "OK"` is success, whatever the HTTP status.
fn send_outcome(answer: &Answer) -> Result<(), SmsFailure> {
    match serde_json::from_slice::<Status>(&answer.body) {
        Ok(Status {
            code: Some(code),
            message,
        }) => {
            if code == "OK" {
                Ok(())
            } else {
                Err(classify(&code, &message))
            }
        }
        // No `Code`: not Aliyun's answer (a proxy's page?).
        _ if (200..300).contains(&answer.status) => Err(SmsFailure::Unknown(format!(
            "{LABEL} answered HTTP {} with {}, not its usual answer: the text may have been sent",
            answer.status,
            body_excerpt(&answer.body)
        ))),
        _ => Err(status_failure(LABEL, answer.status, &answer.body)),
    }
}

/// One page of `QuerySendDetails`.
#[derive(Debug, Deserialize)]
struct Details {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message", default)]
    message: String,
    /// A string in the SDK's model, a number in some examples.
    #[serde(rename = "TotalCount", default)]
    total_count: serde_json::Value,
    #[serde(rename = "SmsSendDetailDTOs", default)]
    dtos: Option<DetailList>,
}

#[derive(Debug, Deserialize)]
struct DetailList {
    #[serde(rename = "SmsSendDetailDTO", default)]
    items: Vec<Detail>,
}

#[derive(Debug, Deserialize)]
struct Detail {
    #[serde(rename = "OutId", default)]
    out_id: Option<String>,
}

/// What one page says about `out_id`.
#[derive(Debug, PartialEq, Eq)]
enum Page {
    Found,
    /// Not on this page; `more`: further pages hold more records.
    Absent {
        more: bool,
    },
}

/// Why a page of `QuerySendDetails` says nothing about a send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum PageError {
    /// Not the JSON expected: the HTTP status and an excerpt of the body.
    #[error("QuerySendDetails answered HTTP {status} with {excerpt}")]
    Unreadable { status: u16, excerpt: String },
    /// Aliyun's error `code`, with its `message`.
    #[error("{}", refusal(LABEL, "refused QuerySendDetails", .code, .message, explain(.code).1))]
    Refused { code: String, message: String },
    #[error("QuerySendDetails answered HTTP {status} without a Code")]
    NoCode { status: u16 },
}

fn read_page(answer: &Answer, out_id: &str, page: u32) -> Result<Page, PageError> {
    let details: Details =
        serde_json::from_slice(&answer.body).map_err(|_| PageError::Unreadable {
            status: answer.status,
            excerpt: body_excerpt(&answer.body),
        })?;
    match details.code.as_deref() {
        Some("OK") => {}
        Some(code) => {
            return Err(PageError::Refused {
                code: code.to_owned(),
                message: details.message,
            });
        }
        None => {
            return Err(PageError::NoCode {
                status: answer.status,
            });
        }
    }
    let items = details.dtos.map(|d| d.items).unwrap_or_default();
    if items.iter().any(|d| d.out_id.as_deref() == Some(out_id)) {
        return Ok(Page::Found);
    }
    let total = match &details.total_count {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    let more = match total {
        Some(total) => u64::from(page) * u64::from(PAGE_SIZE) < total,
        // Unknown total: a full page may have a next one.
        None => items.len() >= PAGE_SIZE as usize,
    };
    Ok(Page::Absent { more })
}

/// `GetSmsTemplate`'s answer.
#[derive(Debug, Deserialize)]
struct Template {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message", default)]
    message: String,
    /// "0" in review, "1" approved, "2" rejected, "10" cancelled (a string in
    /// GetSmsTemplate, a number in the older QuerySmsTemplate).
    #[serde(rename = "TemplateStatus", default)]
    status: serde_json::Value,
    #[serde(rename = "TemplateName", default)]
    name: Option<String>,
    #[serde(rename = "AuditInfo", default)]
    audit: Option<AuditInfo>,
}

#[derive(Debug, Deserialize)]
struct AuditInfo {
    #[serde(rename = "RejectInfo", default)]
    reject_info: Option<String>,
}

/// One template's check: `Ok(description)` when approved.
fn template_check(answer: &Answer, key: &str, id: &str) -> Check {
    let Ok(template) = serde_json::from_slice::<Template>(&answer.body) else {
        return Check::CannotCheck(format!(
            "{LABEL} answered GetSmsTemplate with HTTP {} and {}",
            answer.status,
            body_excerpt(&answer.body)
        ));
    };
    match template.code.as_deref() {
        Some("OK") => {}
        Some(code) => {
            let (class, hint) = explain(code);
            let permission = matches!(
                code,
                "isp.RAM_PERMISSION_DENY" | "Forbidden.RAM" | "NoPermission" | "Forbidden"
            );
            let text = refusal(
                LABEL,
                "refused GetSmsTemplate",
                code,
                &template.message,
                hint,
            );
            return if permission {
                Check::CannotCheck(format!(
                    "{text} (reading templates needs dysms:GetSmsTemplate; sending may still work)"
                ))
            } else if matches!(class, Class::Permanent)
                || matches!(code, "InvalidTimeStamp.Expired" | "InvalidTimeStamp.Format")
            {
                Check::Failed(format!("sms.{key} {id}: {text}"))
            } else {
                Check::CannotCheck(text)
            };
        }
        None => {
            return Check::CannotCheck(format!(
                "{LABEL} answered GetSmsTemplate with HTTP {} and no Code",
                answer.status
            ));
        }
    }
    let status = match &template.status {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let name = template.name.as_deref().unwrap_or_default();
    match status.as_str() {
        "1" => Check::Ok(format!("sms.{key} {id} ({name}) is approved")),
        "0" => Check::Failed(format!(
            "sms.{key} {id} ({name}) is still in review (审核中): it cannot send yet"
        )),
        "2" => Check::Failed(format!(
            "sms.{key} {id} ({name}) was rejected (未通过审核): {}",
            quote(
                template
                    .audit
                    .and_then(|a| a.reject_info)
                    .as_deref()
                    .unwrap_or("no reason given")
            )
        )),
        "10" => Check::Failed(format!(
            "sms.{key} {id} ({name}) had its review cancelled (取消审核)"
        )),
        other => Check::CannotCheck(format!("sms.{key} {id}: unknown template status {other:?}")),
    }
}

/// Aliyun SMS with its settings and an HTTP client.
pub struct Aliyun {
    config: AliyunSms,
    http: reqwest::Client,
    timeout: Duration,
    /// How long after a send its absence from `QuerySendDetails` is trusted
    /// (`sms.lookup_after`).
    settle: Duration,
}

impl Aliyun {
    pub fn new(config: AliyunSms, http: reqwest::Client, timeout: Duration) -> Self {
        Self {
            config,
            http,
            timeout,
            settle: LOOKUP_AFTER,
        }
    }

    /// Trusts an absence from the send records only this long after the send.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// One signed RPC call.
    async fn rpc(&self, action: &str, params: &[(&str, &str)]) -> Result<Answer, CallError> {
        let base = self.config.api_base.url();
        let path = format!("{}/", base.path().trim_end_matches('/'));
        let host = host_header(base);
        let date = rfc3339(now_secs(), 0);
        let nonce = nonce();
        let body_hash = sha256_hex(b"");
        let headers = [
            ("host", host.as_str()),
            ("x-acs-action", action),
            ("x-acs-version", VERSION),
            ("x-acs-date", date.as_str()),
            ("x-acs-signature-nonce", nonce.as_str()),
            ("x-acs-content-sha256", body_hash.as_str()),
        ];
        let secret = self.config.access_key_secret.expose_secret();
        let signed = sign("POST", &path, params, &headers, b"", secret);
        let mut url = base.clone();
        url.set_path(&path);
        url.set_query(
            Some(&signed.canonical_query)
                .filter(|q| !q.is_empty())
                .map(|q| q.as_str()),
        );
        // `host` is signed as the client sends it (host_header), not set by hand.
        let mut request = self
            .http
            .post(url)
            .header(
                reqwest::header::AUTHORIZATION,
                authorization(&self.config.access_key_id, &signed),
            )
            .header(reqwest::header::ACCEPT, "application/json");
        for (name, value) in &headers[1..] {
            request = request.header(*name, *value);
        }
        call(request, self.timeout).await
    }

    fn redact(&self, text: String) -> String {
        redact(text, self.config.access_key_secret.expose_secret())
    }

    async fn check_template(&self, key: &str, id: &str) -> Check {
        match self.rpc("GetSmsTemplate", &[("TemplateCode", id)]).await {
            Ok(answer) => template_check(&answer, key, id),
            Err(e) => Check::CannotCheck(format!("{LABEL} did not answer: {}", e.text())),
        }
    }
}

impl Provider for Aliyun {
    fn name(&self) -> &'static str {
        "aliyun"
    }

    fn label(&self) -> &'static str {
        LABEL
    }

    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a SmsText,
        out_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsFailure>> {
        Box::pin(async move {
            let variables = template_variables(text, self.config.max_variable_chars);
            let template = if variables.is_code {
                &self.config.code_template
            } else {
                &self.config.template
            };
            let number = aliyun_number(to);
            let param = variables.to_json_object();
            let params = [
                ("PhoneNumbers", number.as_str()),
                ("SignName", self.config.sign_name.as_str()),
                ("TemplateCode", template.as_str()),
                ("TemplateParam", param.as_str()),
                ("OutId", out_id),
            ];
            let outcome = match self.rpc("SendSms", &params).await {
                Ok(answer) => send_outcome(&answer),
                Err(e) => Err(e.into_failure(LABEL)),
            };
            outcome.map_err(|failure| failure.map_reason(|r| self.redact(r)))
        })
    }

    fn lookup<'a>(
        &'a self,
        to: &'a PhoneNumber,
        out_id: &'a str,
        sent_at_ms: UnixMillis,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(async move {
            let sent_at = sent_at_ms.as_secs();
            if UnixMillis::now() < sent_at_ms + self.settle {
                return Lookup::CannotTell(format!(
                    "too early to tell: {LABEL}'s send records take a while; asked again {} after the send (sms.lookup_after)",
                    humantime::format_duration(self.settle)
                ));
            }
            // The record is dated by Aliyun's clock in China (UTC+8), within the clock
            // window of ours: both dates if the window spans midnight.
            let mut dates: Vec<String> = [-CLOCK_WINDOW_SECS, CLOCK_WINDOW_SECS]
                .iter()
                .map(|shift| {
                    rfc3339(sent_at.saturating_add(*shift), 8 * 3600)[..10].replace('-', "")
                })
                .collect();
            dates.dedup();
            let number = aliyun_number(to);
            for date in &dates {
                let mut page = 1;
                loop {
                    let page_text = page.to_string();
                    let size = PAGE_SIZE.to_string();
                    let params = [
                        ("PhoneNumber", number.as_str()),
                        ("SendDate", date.as_str()),
                        ("PageSize", size.as_str()),
                        ("CurrentPage", page_text.as_str()),
                    ];
                    let answer = match self.rpc("QuerySendDetails", &params).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            return Lookup::CannotTell(format!(
                                "{LABEL} did not answer QuerySendDetails: {}",
                                e.text()
                            ));
                        }
                    };
                    match read_page(&answer, out_id, page) {
                        Ok(Page::Found) => return Lookup::Sent,
                        Ok(Page::Absent { more: false }) => break,
                        Ok(Page::Absent { more: true }) if page < MAX_PAGES => page += 1,
                        Ok(Page::Absent { more: true }) => {
                            return Lookup::CannotTell(format!(
                                "{} has more than {} texts on {date}; not all were searched",
                                to.masked(),
                                MAX_PAGES * PAGE_SIZE
                            ));
                        }
                        Err(why) => return Lookup::CannotTell(self.redact(why.to_string())),
                    }
                }
            }
            Lookup::NotSent
        })
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Check> {
        Box::pin(async move {
            let mut approved = Vec::new();
            for (key, id) in [
                ("template", &self.config.template),
                ("code_template", &self.config.code_template),
            ] {
                match self.check_template(key, id).await {
                    Check::Ok(text) => approved.push(text),
                    Check::Failed(text) => return Check::Failed(self.redact(text)),
                    Check::CannotCheck(text) => return Check::CannotCheck(self.redact(text)),
                }
            }
            Check::Ok(format!(
                "{LABEL}: credentials work; {} (the signature {:?} is not checked)",
                approved.join("; "),
                self.config.sign_name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::tests::{Mock, client, mock};
    use super::*;
    use crate::config::HttpUrl;

    /// The official example of Aliyun's V3 signature document (an ECS RunInstances call;
    /// the algorithm is the same for every product).
    #[test]
    fn the_official_v3_vector() {
        let headers = [
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            (
                "x-acs-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ];
        let signed = sign(
            "POST",
            "/",
            &[
                ("RegionId", "cn-shanghai"),
                (
                    "ImageId",
                    "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
                ),
            ],
            &headers,
            b"",
            "YourAccessKeySecret",
        );
        assert_eq!(
            signed.canonical_query,
            "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
        );
        assert_eq!(
            signed.canonical_request_hash,
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            signed.signature,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        assert_eq!(
            authorization("YourAccessKeyId", &signed),
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        // Header names in any case, unsigned headers ignored.
        let mut mixed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (if *n == "host" { "Host" } else { *n }, *v))
            .collect();
        mixed.push(("Accept", "application/json"));
        let again = sign(
            "POST",
            "/",
            &[
                (
                    "ImageId",
                    "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
                ),
                ("RegionId", "cn-shanghai"),
            ],
            &mixed,
            b"",
            "YourAccessKeySecret",
        );
        assert_eq!(again, signed);
    }

    #[test]
    fn query_values_are_rfc3986_encoded() {
        let signed = sign(
            "POST",
            "/",
            &[
                (
                    "TemplateParam",
                    r#"{"title":"磁盘 满","content":"a*b~c+d"}"#,
                ),
                ("PhoneNumbers", "13800138000"),
                ("SignName", "阿里云短信测试"),
            ],
            &[("host", "dysmsapi.aliyuncs.com")],
            b"",
            "s",
        );
        assert_eq!(
            signed.canonical_query,
            "PhoneNumbers=13800138000&SignName=%E9%98%BF%E9%87%8C%E4%BA%91%E7%9F%AD%E4%BF%A1%E6%B5%8B%E8%AF%95\
             &TemplateParam=%7B%22title%22%3A%22%E7%A3%81%E7%9B%98%20%E6%BB%A1%22%2C%22content%22%3A%22a%2Ab~c%2Bd%22%7D"
        );
    }

    #[test]
    fn numbers_as_aliyun_wants_them() {
        let n = |s: &str| aliyun_number(&PhoneNumber::parse(s).unwrap());
        assert_eq!(n("+8613800138000"), "13800138000");
        assert_eq!(n("+85251234567"), "85251234567");
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn send_answers_are_classified() {
        assert_eq!(
            send_outcome(&answer(
                200,
                r#"{"Code":"OK","Message":"OK","BizId":"9006197469364984^0","RequestId":"F655A8D5-B967-440B-8683-DAD6FF8DE990"}"#
            )),
            Ok(())
        );
        let failure = send_outcome(&answer(
            200,
            r#"{"Code":"isv.SMS_TEMPLATE_ILLEGAL","Message":"模板不合法(不存在或被拉黑)","RequestId":"x"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            failure,
            SmsFailure::Permanent(
                "Aliyun SMS refused: isv.SMS_TEMPLATE_ILLEGAL (模板不合法(不存在或被拉黑)): check sms.template and sms.code_template (approved templates of this account)".into()
            )
        );
        let table: &[(&str, &str)] = &[
            ("isv.BUSINESS_LIMIT_CONTROL", "transient"),
            ("SignatureNonceUsed", "transient"),
            ("isv.DAY_LIMIT_CONTROL", "all"),
            ("Throttling.User", "all"),
            ("ServiceUnavailable", "all"),
            ("InvalidTimeStamp.Expired", "all"),
            ("isp.SYSTEM_ERROR", "unknown"),
            ("isv.SMS_SIGNATURE_ILLEGAL", "permanent"),
            ("isv.MOBILE_NUMBER_ILLEGAL", "permanent"),
            ("isv.AMOUNT_NOT_ENOUGH", "permanent"),
            ("isv.OUT_OF_SERVICE", "permanent"),
            ("isp.RAM_PERMISSION_DENY", "permanent"),
            ("SignatureDoesNotMatch", "permanent"),
            ("InvalidAccessKeyId.NotFound", "permanent"),
            ("isv.PARAM_LENGTH_LIMIT", "permanent"),
            ("isv.SOMETHING_NEW", "permanent"),
        ];
        for (code, class) in table {
            let body = format!(r#"{{"Code":"{code}","Message":"m"}}"#);
            let failure = send_outcome(&answer(200, &body)).unwrap_err();
            let got = match &failure {
                SmsFailure::Permanent(_) => "permanent",
                SmsFailure::Transient {
                    unreachable: false, ..
                } => "transient",
                SmsFailure::Transient {
                    unreachable: true, ..
                } => "all",
                SmsFailure::Unknown(_) => "unknown",
            };
            assert_eq!(got, *class, "{code}: {failure:?}");
            assert!(failure.reason().contains(code), "{failure:?}");
        }
        // A clock error says so.
        let failure = send_outcome(&answer(
            400,
            r#"{"Code":"InvalidTimeStamp.Expired","Message":"Specified time stamp or date value is expired."}"#,
        ))
        .unwrap_err();
        assert!(failure.reason().contains("clock") && failure.reason().contains("NTP"));
        // Gateway errors come with a 4xx and the same body.
        let failure = send_outcome(&answer(
            400,
            r#"{"RequestId":"x","HostId":"dysmsapi.aliyuncs.com","Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation."}"#,
        ))
        .unwrap_err();
        assert!(
            failure.reason().contains("sms.access_key_secret"),
            "{failure:?}"
        );
        // Not Aliyun's answer.
        assert!(matches!(
            send_outcome(&answer(200, "<html>portal</html>")),
            Err(SmsFailure::Unknown(_))
        ));
        assert!(matches!(
            send_outcome(&answer(503, "busy")),
            Err(SmsFailure::Transient {
                unreachable: true,
                ..
            })
        ));
        assert!(matches!(
            send_outcome(&answer(404, "")),
            Err(SmsFailure::Permanent(_))
        ));
    }

    #[test]
    fn send_details_are_searched_by_out_id() {
        let page = |total: &str, ids: &[&str]| {
            let items: Vec<String> = ids
                .iter()
                .map(|id| {
                    format!(
                        r#"{{"PhoneNum":"13800138000","SendStatus":3,"ErrCode":"DELIVERED","TemplateCode":"SMS_1","Content":"x","SendDate":"2024-01-01 10:00:00","ReceiveDate":"2024-01-01 10:00:05","OutId":"{id}"}}"#
                    )
                })
                .collect();
            answer(
                200,
                &format!(
                    r#"{{"Code":"OK","Message":"OK","RequestId":"r","TotalCount":{total},"SmsSendDetailDTOs":{{"SmsSendDetailDTO":[{}]}}}}"#,
                    items.join(",")
                ),
            )
        };
        assert_eq!(
            read_page(&page("2", &["m1", "m2"]), "m2", 1),
            Ok(Page::Found)
        );
        assert_eq!(
            read_page(&page("\"2\"", &["m1", "m3"]), "m2", 1),
            Ok(Page::Absent { more: false })
        );
        assert_eq!(
            read_page(&page("120", &["m1"]), "m2", 1),
            Ok(Page::Absent { more: true })
        );
        assert_eq!(
            read_page(&page("120", &["m1"]), "m2", 3),
            Ok(Page::Absent { more: false })
        );
        // An empty day, as Aliyun answers it.
        assert_eq!(
            read_page(
                &answer(
                    200,
                    r#"{"TotalCount":0,"Message":"OK","RequestId":"r","Code":"OK","SmsSendDetailDTOs":{"SmsSendDetailDTO":[]}}"#
                ),
                "m2",
                1
            ),
            Ok(Page::Absent { more: false })
        );
        let err = read_page(
            &answer(200, r#"{"Code":"isp.RAM_PERMISSION_DENY","Message":"no"}"#),
            "m2",
            1,
        )
        .unwrap_err();
        assert!(
            matches!(&err, PageError::Refused { code, .. } if code == "isp.RAM_PERMISSION_DENY"),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("Aliyun SMS refused QuerySendDetails: isp.RAM_PERMISSION_DENY (no)"),
            "{err}"
        );
        assert_eq!(
            read_page(&answer(502, "bad gateway"), "m2", 1)
                .unwrap_err()
                .to_string(),
            "QuerySendDetails answered HTTP 502 with \"bad gateway\""
        );
    }

    #[test]
    fn template_checks() {
        let body = |status: &str| {
            answer(
                200,
                &format!(
                    r#"{{"Code":"OK","Message":"OK","RequestId":"r","TemplateCode":"SMS_1","TemplateName":"告警","TemplateStatus":{status},"AuditInfo":{{"RejectInfo":"模板内容中包含错别字。","AuditDate":"2024-06-03 11:20:34"}}}}"#
                ),
            )
        };
        assert!(matches!(
            template_check(&body("\"1\""), "template", "SMS_1"),
            Check::Ok(_)
        ));
        assert!(matches!(
            template_check(&body("1"), "template", "SMS_1"),
            Check::Ok(_)
        ));
        let Check::Failed(text) = template_check(&body("\"2\""), "template", "SMS_1") else {
            panic!()
        };
        assert!(
            text.contains("sms.template SMS_1") && text.contains("错别字"),
            "{text}"
        );
        assert!(matches!(
            template_check(&body("\"0\""), "code_template", "SMS_1"),
            Check::Failed(_)
        ));
        assert!(matches!(
            template_check(&body("\"10\""), "template", "SMS_1"),
            Check::Failed(_)
        ));
        let refused = |code: &str| {
            template_check(
                &answer(200, &format!(r#"{{"Code":"{code}","Message":"m"}}"#)),
                "template",
                "SMS_1",
            )
        };
        assert!(matches!(
            refused("isv.SMS_TEMPLATE_ILLEGAL"),
            Check::Failed(_)
        ));
        assert!(matches!(
            refused("InvalidAccessKeyId.NotFound"),
            Check::Failed(_)
        ));
        assert!(matches!(
            refused("InvalidTimeStamp.Expired"),
            Check::Failed(_)
        ));
        assert!(matches!(
            refused("isp.RAM_PERMISSION_DENY"),
            Check::CannotCheck(_)
        ));
        assert!(matches!(refused("Throttling.User"), Check::CannotCheck(_)));
    }

    fn provider(mock: &Mock) -> Aliyun {
        Aliyun::new(
            AliyunSms {
                api_base: HttpUrl::try_from(mock.base.clone()).unwrap(),
                access_key_id: "LTAI5tTestKeyId".into(),
                access_key_secret: "s3cr3t-access-key".into(),
                sign_name: "阿里云短信测试".into(),
                template: "SMS_154950909".into(),
                code_template: "SMS_154950910".into(),
                max_variable_chars: 35,
            },
            client(),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn send_signs_what_it_sends() {
        let mock = mock(|_| {
            (
                200,
                r#"{"Code":"OK","Message":"OK","BizId":"1^0","RequestId":"r"}"#.into(),
            )
        })
        .await;
        let aliyun = provider(&mock);
        let to = PhoneNumber::parse("+86 138 0013 8000").unwrap();
        let text = SmsText::Message {
            title: Some("Disk full".into()),
            excerpt: Some("db-1: /var 98%".into()),
            link: Some("https://push.example.com/m/1".into()),
        };
        aliyun.send(&to, &text, "msg-42").await.unwrap();
        let requests = mock.requests.lock().unwrap();
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/");
        assert!(request.body.is_empty());
        let query: Vec<(String, String)> = url::form_urlencoded::parse(request.query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PhoneNumbers"), Some("13800138000"));
        assert_eq!(get("SignName"), Some("阿里云短信测试"));
        assert_eq!(get("TemplateCode"), Some("SMS_154950909"));
        assert_eq!(get("OutId"), Some("msg-42"));
        let param: serde_json::Value = serde_json::from_str(get("TemplateParam").unwrap()).unwrap();
        assert_eq!(param["title"], "Disk full");
        assert_eq!(param["link"], "https://push.example.com/m/1");
        assert_eq!(request.header("x-acs-action"), Some("SendSms"));
        assert_eq!(request.header("x-acs-version"), Some("2017-05-25"));
        assert_eq!(request.header("host"), Some(mock.host.as_str()));
        // What the server received verifies against the secret.
        let names = [
            "host",
            "x-acs-action",
            "x-acs-content-sha256",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-version",
        ];
        let headers: Vec<(&str, &str)> = names
            .iter()
            .map(|n| (*n, request.header(n).unwrap_or_default()))
            .collect();
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let signed = sign("POST", "/", &pairs, &headers, b"", "s3cr3t-access-key");
        assert_eq!(signed.canonical_query, request.query);
        assert_eq!(
            request.header("authorization"),
            Some(authorization("LTAI5tTestKeyId", &signed).as_str())
        );
        let debug = format!("{:?}", aliyun.config);
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[tokio::test]
    async fn codes_use_the_code_template_and_refusals_are_explained() {
        let mock = mock(|_| {
            (
                200,
                r#"{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发小时级流控Permits:5","RequestId":"r"}"#.into(),
            )
        })
        .await;
        let aliyun = provider(&mock);
        let to = PhoneNumber::parse("13800138000").unwrap();
        let failure = aliyun
            .send(&to, &SmsText::Code("482913".into()), "code-1")
            .await
            .unwrap_err();
        assert!(
            matches!(&failure, SmsFailure::Transient { unreachable: false, reason } if reason.contains("isv.BUSINESS_LIMIT_CONTROL")),
            "{failure:?}"
        );
        let requests = mock.requests.lock().unwrap();
        assert!(requests[0].query.contains("TemplateCode=SMS_154950910"));
        assert!(
            requests[0]
                .query
                .contains("TemplateParam=%7B%22code%22%3A%22482913%22%7D")
        );
    }

    #[tokio::test]
    async fn lookup_finds_the_send_or_proves_its_absence() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let pages = seen.clone();
        let mock = mock(move |request| {
            let query: Vec<(String, String)> =
                url::form_urlencoded::parse(request.query.as_bytes()).into_owned().collect();
            let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
            pages.lock().unwrap().push((get("SendDate"), get("CurrentPage")));
            let out_id = if get("CurrentPage") == "2" { "msg-7" } else { "other" };
            (
                200,
                format!(
                    r#"{{"Code":"OK","Message":"OK","TotalCount":"60","SmsSendDetailDTOs":{{"SmsSendDetailDTO":[{{"OutId":"{out_id}","SendStatus":1}}]}}}}"#
                ),
            )
        })
        .await;
        let aliyun = provider(&mock);
        let to = PhoneNumber::parse("13800138000").unwrap();
        // 2024-01-01 12:00 China time: one date to search.
        let sent_at_ms = UnixMillis::from_millis(1_704_081_600_000);
        assert_eq!(aliyun.lookup(&to, "msg-7", sent_at_ms).await, Lookup::Sent);
        assert_eq!(
            aliyun.lookup(&to, "msg-8", sent_at_ms).await,
            Lookup::NotSent
        );
        let pages = seen.lock().unwrap().clone();
        assert_eq!(
            pages,
            [
                ("20240101".to_owned(), "1".to_owned()),
                ("20240101".to_owned(), "2".to_owned()),
                ("20240101".to_owned(), "1".to_owned()),
                ("20240101".to_owned(), "2".to_owned()),
            ]
        );
        assert_eq!(
            mock.requests.lock().unwrap()[0].header("x-acs-action"),
            Some("QuerySendDetails")
        );
        // Just after midnight in China: the day before is searched too.
        seen.lock().unwrap().clear();
        let after_midnight = UnixMillis::from_millis(1_704_038_400_000 + 5 * 60 * 1000);
        assert_eq!(
            aliyun.lookup(&to, "msg-8", after_midnight).await,
            Lookup::NotSent
        );
        let dates: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(d, _)| d.clone())
            .collect();
        assert!(dates.contains(&"20231231".to_owned()) && dates.contains(&"20240101".to_owned()));
        // Too early to trust an absence.
        let just_now = UnixMillis::now();
        assert!(matches!(
            aliyun.lookup(&to, "msg-8", just_now).await,
            Lookup::CannotTell(_)
        ));
    }

    #[tokio::test]
    async fn check_reads_both_templates() {
        let mock = mock(|request| {
            let status = if request.query.contains("SMS_154950910") {
                "\"0\""
            } else {
                "\"1\""
            };
            (
                200,
                format!(
                    r#"{{"Code":"OK","Message":"OK","TemplateName":"t","TemplateStatus":{status}}}"#
                ),
            )
        })
        .await;
        let aliyun = provider(&mock);
        let Check::Failed(text) = aliyun.check().await else {
            panic!()
        };
        assert!(text.contains("sms.code_template SMS_154950910"), "{text}");
        assert_eq!(mock.requests.lock().unwrap().len(), 2);
        assert_eq!(
            mock.requests.lock().unwrap()[0].header("x-acs-action"),
            Some("GetSmsTemplate")
        );
    }

    #[tokio::test]
    async fn transport_failures_say_whether_anything_was_sent() {
        let to = PhoneNumber::parse("13800138000").unwrap();
        let text = SmsText::Code("1".into());
        // Nothing listens: nothing was sent.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let closed = Mock::at(format!("http://127.0.0.1:{port}"));
        let failure = provider(&closed).send(&to, &text, "x").await.unwrap_err();
        assert!(
            matches!(
                &failure,
                SmsFailure::Transient {
                    unreachable: true,
                    ..
                }
            ),
            "{failure:?}"
        );
        assert!(!failure.reason().contains("PhoneNumbers"), "{failure:?}");
        // A server that takes the request and never answers: unknown.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_mock = Mock::at(format!("http://{}", silent.local_addr().unwrap()));
        let mut aliyun = provider(&silent_mock);
        aliyun.timeout = Duration::from_millis(300);
        let failure = aliyun.send(&to, &text, "x").await.unwrap_err();
        assert!(matches!(&failure, SmsFailure::Unknown(_)), "{failure:?}");
        assert!(!failure.reason().contains("13800138000"), "{failure:?}");
        drop(silent);
    }
}
