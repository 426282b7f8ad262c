//! Tencent Cloud SMS (API 3.0, version 2021-01-11), signed with TC3-HMAC-SHA256.
//!
//! Every call is a `POST /` with a JSON body: `SendSms` to send,
//! `PullSmsSendStatusByPhoneNumber` to look a send up by our `SessionContext`,
//! `DescribeSmsTemplateList` to check the templates.
//!
//! Errors arrive inside the JSON: `Response.Error` for the request, or a per-number
//! `Response.SendStatusSet[i].Code != "Ok"` while the request as a whole succeeded.

use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::json;

use super::content::template_variables;
use super::{
    Answer, CLOCK_HINT, CallError, Check, Class, Lookup, PhoneNumber, Provider, SmsFailure,
    SmsText, body_excerpt, call, class_failure, hmac_sha256, host_header, now_secs, quote, redact,
    refusal, rfc3339, sha256_hex, status_failure,
};
use crate::config::TencentSms;
use crate::time::UnixMillis;

const LABEL: &str = "Tencent Cloud SMS";
const VERSION: &str = "2021-01-11";
const SERVICE: &str = "sms";
const ALGORITHM: &str = "TC3-HMAC-SHA256";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The result of signing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `content-type;host`
    pub signed_headers: String,
    /// hex(sha256(CanonicalRequest)).
    pub canonical_request_hash: String,
    pub signature: String,
    /// The whole `Authorization` header.
    pub authorization: String,
}

/// TC3-HMAC-SHA256 over one request, a pure function of the exact payload bytes.
/// `headers` are the headers to sign (at least `content-type` and `host`), names in any
/// case, values as sent. The credential scope's date is the UTC date of `timestamp`.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    secret_id: &str,
    secret_key: &str,
    service: &str,
    timestamp: i64,
    method: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Signed {
    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
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
    let canonical_request = format!(
        "{method}\n/\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(payload)
    );
    let canonical_request_hash = sha256_hex(canonical_request.as_bytes());
    let date = &rfc3339(timestamp, 0)[..10];
    let scope = format!("{date}/{service}/tc3_request");
    let string_to_sign = format!("{ALGORITHM}\n{timestamp}\n{scope}\n{canonical_request_hash}");
    let secret_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let secret_service = hmac_sha256(&secret_date, service.as_bytes());
    let secret_signing = hmac_sha256(&secret_service, b"tc3_request");
    let signature = hex::encode(hmac_sha256(&secret_signing, string_to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    Signed {
        signed_headers,
        canonical_request_hash,
        signature,
        authorization,
    }
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(rename = "Response")]
    response: Response<T>,
}

#[derive(Debug, Deserialize)]
struct Response<T> {
    #[serde(rename = "Error", default)]
    error: Option<ApiError>,
    #[serde(flatten)]
    data: T,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Debug, Deserialize, Default)]
struct SendData {
    #[serde(rename = "SendStatusSet", default)]
    statuses: Vec<SendStatus>,
}

#[derive(Debug, Deserialize)]
struct SendStatus {
    #[serde(rename = "Code", default)]
    code: String,
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
        "LimitExceeded.PhoneNumberThirtySecondLimit" => (
            Transient,
            "the number's 30-second limit (控制台 → 频率限制)",
        ),
        "LimitExceeded.PhoneNumberOneHourLimit" => {
            (Transient, "the number's hourly limit (控制台 → 频率限制)")
        }
        "LimitExceeded.DeliveryFrequencyLimit" => (Transient, "a frequency limit"),
        "FailedOperation.MarketingSendTimeConstraint" => (
            Transient,
            "marketing texts are sent only from 08:00 to 22:00",
        ),
        "LimitExceeded.PhoneNumberDailyLimit" => (
            Permanent,
            "the number's daily limit is reached (控制台 → 频率限制)",
        ),
        "LimitExceeded.PhoneNumberSameContentDailyLimit" => (
            Permanent,
            "the same text went to this number too often today",
        ),
        "LimitExceeded.AppDailyLimit"
        | "LimitExceeded.DailyLimit"
        | "LimitExceeded.AppGlobalDailyLimit"
        | "LimitExceeded.AppMainlandChinaDailyLimit"
        | "LimitExceeded.AppCountryOrRegionDailyLimit" => (
            TransientAll,
            "the application's daily quota is used up (控制台 → 频率限制)",
        ),
        "RequestLimitExceeded" | "RequestLimitExceeded.UinLimitExceeded" => {
            (TransientAll, "the API rate limit: will retry")
        }
        "AuthFailure.SignatureExpire" | "InternalError.RequestTimeException" => {
            (TransientAll, CLOCK_HINT)
        }
        "FailedOperation.InsufficientBalanceInSmsPackage" => (
            Permanent,
            "the SMS package is used up: buy one (短信套餐包)",
        ),
        "UnauthorizedOperation.SerivceSuspendDueToArrears"
        | "UnauthorizedOperation.ServiceSuspendDueToArrears" => (
            Permanent,
            "the service is suspended for arrears: settle the account",
        ),
        "InvalidParameterValue.IncorrectPhoneNumber" | "FailedOperation.PhoneNumberParseFail" => {
            (Permanent, "the number is not a valid mobile number")
        }
        "FailedOperation.PhoneNumberInBlacklist" => (
            Permanent,
            "the number unsubscribed or is blacklisted by the carrier",
        ),
        "FailedOperation.SignatureIncorrectOrUnapproved" => (
            Permanent,
            "check sms.sign_name (an approved signature of this application)",
        ),
        "FailedOperation.TemplateIncorrectOrUnapproved" | "FailedOperation.TemplateIdNotExist" => (
            Permanent,
            "check sms.template and sms.code_template (approved templates of this application)",
        ),
        "InvalidParameterValue.TemplateParameterFormatError" => (
            Permanent,
            "a verification template's variable must be 0 to 6 digits",
        ),
        "InvalidParameterValue.TemplateParameterLengthLimit" => (
            Permanent,
            "a variable is longer than allowed: lower sms.max_variable_chars (12 for individually verified accounts)",
        ),
        "InvalidParameterValue.ProhibitedUseUrlInTemplateParameter" => (
            Permanent,
            "Tencent Cloud refuses a link in a template variable",
        ),
        "InvalidParameterValue.ContentLengthLimit"
        | "InvalidParameterValue.DirtyWordFound"
        | "FailedOperation.ContainSensitiveWord" => (
            Permanent,
            "the text is too long or holds words Tencent Cloud refuses",
        ),
        "UnauthorizedOperation.SmsSdkAppIdVerifyFail"
        | "InvalidParameterValue.SdkAppIdNotExist" => (
            Permanent,
            "check sms.sdk_app_id (an application of this account)",
        ),
        "UnauthorizedOperation.RequestIpNotInWhitelist" => (
            Permanent,
            "this server's IP address is not in the application's IP whitelist",
        ),
        "AuthFailure.SignatureFailure" => (
            Permanent,
            "check sms.secret_key (it does not match sms.secret_id)",
        ),
        "AuthFailure.SecretIdNotFound" | "AuthFailure.InvalidSecretId" => {
            (Permanent, "check sms.secret_id (unknown or disabled)")
        }
        "AuthFailure.UnauthorizedOperation" | "UnauthorizedOperation.RequestPermissionDeny" => (
            Permanent,
            "the key of sms.secret_id lacks the permission (CAM: QcloudSMSFullAccess)",
        ),
        "UnsupportedOperation.UnsupportedRegion" | "InvalidParameterValue.InvalidRegion" => {
            (Permanent, "check sms.region (e.g. ap-guangzhou)")
        }
        "UnsupportedOperation.ContainDomesticAndInternationalPhoneNumber"
        | "LimitExceeded.PhoneNumberCountLimit" => {
            (Permanent, "the request was malformed (a pushbot bug)")
        }
        code if code.starts_with("InternalError") => (
            Unknown,
            "an error inside Tencent Cloud: the text may have been sent",
        ),
        code if code.starts_with("InvalidParameter")
            || code.starts_with("MissingParameter")
            || code.starts_with("UnknownParameter") =>
        {
            (Permanent, "the request was refused as malformed")
        }
        _ => (Permanent, ""),
    }
}

/// `SendSms`'s answer for one number.
fn send_outcome(answer: &Answer) -> Result<(), SmsFailure> {
    let Ok(envelope) = serde_json::from_slice::<Envelope<SendData>>(&answer.body) else {
        return Err(if (200..300).contains(&answer.status) {
            SmsFailure::Unknown(format!(
                "{LABEL} answered HTTP {} with {}, not its usual answer: the text may have been sent",
                answer.status,
                body_excerpt(&answer.body)
            ))
        } else {
            status_failure(LABEL, answer.status, &answer.body)
        });
    };
    if let Some(error) = envelope.response.error {
        return Err(classify(&error.code, &error.message));
    }
    match envelope.response.data.statuses.first() {
        Some(status) if status.code == "Ok" => Ok(()),
        Some(status) => Err(classify(&status.code, &status.message)),
        None => Err(SmsFailure::Unknown(format!(
            "{LABEL} answered without a status for the number: the text may have been sent"
        ))),
    }
}

#[derive(Debug, Deserialize, Default)]
struct ReceiptData {
    #[serde(rename = "PullSmsSendStatusSet", default)]
    receipts: Option<Vec<Receipt>>,
}

#[derive(Debug, Deserialize)]
struct Receipt {
    #[serde(rename = "SessionContext", default)]
    session_context: Option<String>,
}

/// Why `PullSmsSendStatusByPhoneNumber`'s answer says nothing about a send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ReceiptsError {
    /// Not the JSON expected: the HTTP status and an excerpt of the body.
    #[error(
        "{} answered PullSmsSendStatusByPhoneNumber with HTTP {status} and {excerpt}",
        LABEL
    )]
    Unreadable { status: u16, excerpt: String },
    /// Tencent Cloud's error `code`, with its `message`.
    #[error(
        "{}",
        refusal(LABEL, "refused PullSmsSendStatusByPhoneNumber", .code, .message, explain(.code).1)
    )]
    Refused { code: String, message: String },
}

/// Whether the delivery receipts hold one for `out_id`.
fn receipts_hold(answer: &Answer, out_id: &str) -> Result<bool, ReceiptsError> {
    let envelope: Envelope<ReceiptData> =
        serde_json::from_slice(&answer.body).map_err(|_| ReceiptsError::Unreadable {
            status: answer.status,
            excerpt: body_excerpt(&answer.body),
        })?;
    if let Some(error) = envelope.response.error {
        return Err(ReceiptsError::Refused {
            code: error.code,
            message: error.message,
        });
    }
    Ok(envelope
        .response
        .data
        .receipts
        .unwrap_or_default()
        .iter()
        .any(|r| r.session_context.as_deref() == Some(out_id)))
}

#[derive(Debug, Deserialize, Default)]
struct TemplateData {
    #[serde(rename = "DescribeTemplateStatusSet", default)]
    templates: Option<Vec<TemplateStatus>>,
}

#[derive(Debug, Deserialize)]
struct TemplateStatus {
    #[serde(rename = "TemplateId")]
    id: u64,
    /// 0 approved and in effect, 1 in review, 2 approved but not yet in effect, -1
    /// rejected. Only 0 sends.
    #[serde(rename = "StatusCode")]
    status: i64,
    #[serde(rename = "ReviewReply", default)]
    review_reply: Option<String>,
    #[serde(rename = "TemplateName", default)]
    name: Option<String>,
}

/// `DescribeSmsTemplateList`'s answer: each template found with its check, or the
/// request's failure.
fn template_statuses(answer: &Answer) -> Result<Vec<(u64, Check)>, Check> {
    let envelope: Envelope<TemplateData> = serde_json::from_slice(&answer.body).map_err(|_| {
        Check::CannotCheck(format!(
            "{LABEL} answered DescribeSmsTemplateList with HTTP {} and {}",
            answer.status,
            body_excerpt(&answer.body)
        ))
    })?;
    if let Some(error) = envelope.response.error {
        let (class, hint) = explain(&error.code);
        let text = refusal(
            LABEL,
            "refused DescribeSmsTemplateList",
            &error.code,
            &error.message,
            hint,
        );
        let permission = matches!(
            error.code.as_str(),
            "AuthFailure.UnauthorizedOperation" | "UnauthorizedOperation.RequestPermissionDeny"
        );
        return Err(
            if !permission && (class == Class::Permanent || hint == CLOCK_HINT) {
                Check::Failed(text)
            } else if permission {
                Check::CannotCheck(format!(
                    "{text} (reading templates needs sms:DescribeSmsTemplateList; sending may still work)"
                ))
            } else {
                Check::CannotCheck(text)
            },
        );
    }
    Ok(envelope
        .response
        .data
        .templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let name = t.name.unwrap_or_default();
            let check = match t.status {
                0 => Check::Ok(format!("{} ({name}) is approved", t.id)),
                1 => Check::Failed(format!("{} ({name}) is still in review (审核中)", t.id)),
                2 => Check::Failed(format!(
                    "{} ({name}) is approved but not in effect yet (审核通过待生效)",
                    t.id
                )),
                -1 => Check::Failed(format!(
                    "{} ({name}) was rejected (审核未通过): {}",
                    t.id,
                    quote(t.review_reply.as_deref().unwrap_or("no reason given"))
                )),
                other => {
                    Check::CannotCheck(format!("{} ({name}) has an unknown status {other}", t.id))
                }
            };
            (t.id, check)
        })
        .collect())
}

/// Tencent Cloud SMS with its settings and an HTTP client.
pub struct Tencent {
    config: TencentSms,
    http: reqwest::Client,
    timeout: Duration,
}

impl Tencent {
    pub fn new(config: TencentSms, http: reqwest::Client, timeout: Duration) -> Self {
        Self {
            config,
            http,
            timeout,
        }
    }

    /// One signed API call.
    async fn api(&self, action: &str, body: &serde_json::Value) -> Result<Answer, CallError> {
        let payload = body.to_string().into_bytes();
        let base = self.config.api_base.url();
        let host = host_header(base);
        let timestamp = now_secs();
        let signed = sign(
            &self.config.secret_id,
            self.config.secret_key.expose_secret(),
            SERVICE,
            timestamp,
            "POST",
            "",
            &[("content-type", CONTENT_TYPE), ("host", &host)],
            &payload,
        );
        let mut url = base.clone();
        url.set_path(&format!("{}/", base.path().trim_end_matches('/')));
        url.set_query(None);
        // `Host` is signed as the client sends it (host_header), not set by hand.
        let request = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, signed.authorization)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("X-TC-Action", action)
            .header("X-TC-Version", VERSION)
            .header("X-TC-Timestamp", timestamp.to_string())
            .header("X-TC-Region", &self.config.region)
            .body(payload);
        call(request, self.timeout).await
    }

    fn redact(&self, text: String) -> String {
        redact(text, self.config.secret_key.expose_secret())
    }

    /// The templates among `ids` that `DescribeSmsTemplateList` knows, mainland
    /// (`international` 0) or international (1).
    async fn describe(&self, ids: &[u64], international: u8) -> Result<Vec<(u64, Check)>, Check> {
        let body = json!({ "TemplateIdSet": ids, "International": international });
        match self.api("DescribeSmsTemplateList", &body).await {
            Ok(answer) => template_statuses(&answer),
            Err(e) => Err(Check::CannotCheck(format!(
                "{LABEL} did not answer: {}",
                e.text()
            ))),
        }
    }
}

impl Provider for Tencent {
    fn name(&self) -> &'static str {
        "tencent"
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
            let body = json!({
                "PhoneNumberSet": [to.as_str()],
                "SmsSdkAppId": self.config.sdk_app_id,
                "SignName": self.config.sign_name,
                "TemplateId": template,
                "TemplateParamSet": variables.positional(),
                "SessionContext": out_id,
            });
            let outcome = match self.api("SendSms", &body).await {
                Ok(answer) => send_outcome(&answer),
                Err(e) => Err(e.into_failure(LABEL)),
            };
            outcome.map_err(|failure| failure.map_reason(|r| self.redact(r)))
        })
    }

    /// A delivery receipt carrying our `SessionContext` proves the send. Its absence
    /// proves nothing: receipts come when the carrier reports (late, or never), and they
    /// carry `SessionContext` only once Tencent Cloud enabled it for the account (默认为空,
    /// 如需开通请联系腾讯云短信小助手). So this answers [`Lookup::Sent`] or
    /// [`Lookup::CannotTell`], never [`Lookup::NotSent`].
    fn lookup<'a>(
        &'a self,
        to: &'a PhoneNumber,
        out_id: &'a str,
        sent_at_ms: UnixMillis,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(async move {
            let sent_at = sent_at_ms.as_secs();
            // Receipts go back 7 days at most; our clock and theirs within 5 minutes.
            let body = json!({
                "BeginTime": sent_at.saturating_sub(5 * 60).max(0),
                "EndTime": now_secs().max(sent_at).saturating_add(5 * 60),
                "Offset": 0,
                "Limit": 100,
                "PhoneNumber": to.as_str(),
                "SmsSdkAppId": self.config.sdk_app_id,
            });
            let answer = match self.api("PullSmsSendStatusByPhoneNumber", &body).await {
                Ok(answer) => answer,
                Err(e) => {
                    return Lookup::CannotTell(format!("{LABEL} did not answer: {}", e.text()));
                }
            };
            match receipts_hold(&answer, out_id) {
                Ok(true) => Lookup::Sent,
                Ok(false) => Lookup::CannotTell(format!(
                    "no delivery receipt for this send to {} (yet): {LABEL}'s receipts come late and carry our id only if enabled, so their absence proves nothing",
                    to.masked()
                )),
                Err(why) => Lookup::CannotTell(self.redact(why.to_string())),
            }
        })
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Check> {
        Box::pin(async move {
            let mut wanted: Vec<(&str, u64)> = Vec::new();
            for (key, id) in [
                ("template", &self.config.template),
                ("code_template", &self.config.code_template),
            ] {
                let Ok(id) = id.parse::<u64>() else {
                    return Check::Failed(format!(
                        "sms.{key} {id:?} is not a Tencent Cloud template ID"
                    ));
                };
                wanted.push((key, id));
            }
            let mut ids: Vec<u64> = wanted.iter().map(|(_, id)| *id).collect();
            ids.dedup();
            let mut found = match self.describe(&ids, 0).await {
                Ok(found) => found,
                Err(check) => return check,
            };
            let missing: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| !found.iter().any(|(f, _)| f == id))
                .collect();
            if !missing.is_empty() {
                match self.describe(&missing, 1).await {
                    Ok(more) => found.extend(more),
                    Err(check) => return check,
                }
            }
            let mut approved = Vec::new();
            for (key, id) in wanted {
                match found.iter().find(|(f, _)| *f == id).map(|(_, c)| c.clone()) {
                    Some(Check::Ok(text)) => approved.push(format!("sms.{key} {text}")),
                    Some(Check::Failed(text)) => {
                        return Check::Failed(self.redact(format!("sms.{key} {text}")));
                    }
                    Some(Check::CannotCheck(text)) => {
                        return Check::CannotCheck(self.redact(format!("sms.{key} {text}")));
                    }
                    None => {
                        return Check::Failed(format!(
                            "sms.{key} {id} is not a template of this account (mainland or international)"
                        ));
                    }
                }
            }
            Check::Ok(format!(
                "{LABEL}: credentials work; {} (the signature {:?} and sms.sdk_app_id {} are not checked)",
                approved.join("; "),
                self.config.sign_name,
                self.config.sdk_app_id
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Mock, client, mock};
    use super::*;
    use crate::config::HttpUrl;

    /// The CVM DescribeInstances example of Tencent Cloud's signature v3 document; the
    /// payload's exact bytes (Chinese as `\u` escapes) matter.
    const PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
    const HEADERS: [(&str, &str); 2] = [
        ("content-type", "application/json; charset=utf-8"),
        ("host", "cvm.tencentcloudapi.com"),
    ];

    #[test]
    fn official_vector_a() {
        let signed = sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            "cvm",
            1_551_113_065,
            "POST",
            "",
            &HEADERS,
            PAYLOAD.as_bytes(),
        );
        assert_eq!(
            sha256_hex(PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        assert_eq!(
            signed.canonical_request_hash,
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(
            signed.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            signed.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
    }

    /// The current Chinese document masks its keys with literal asterisks, and its
    /// signature was computed with them.
    #[test]
    fn official_vector_b() {
        let signed = sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            "cvm",
            1_551_113_065,
            "POST",
            "",
            &[
                ("Host", "cvm.tencentcloudapi.com"),
                ("Content-Type", "application/json; charset=utf-8"),
            ],
            PAYLOAD.as_bytes(),
        );
        assert_eq!(
            signed.signature,
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
        assert_eq!(signed.signed_headers, "content-type;host");
    }

    /// A self-computed SendSms-shaped vector with `x-tc-action` signed too (no vendor
    /// publishes one): a regression check, not proof.
    #[test]
    fn sms_shaped_vector_with_the_action_signed() {
        let payload = r#"{"PhoneNumberSet":["+8613800000000"],"SmsSdkAppId":"1400006666","SignName":"腾讯云","TemplateId":"1110","TemplateParamSet":["4370"]}"#;
        assert_eq!(
            sha256_hex(payload.as_bytes()),
            "0a9983fba553479a82f97f0521d99ba81258f3f517395ea5e2398bf93575543e"
        );
        let signed = sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            "sms",
            1_551_113_065,
            "POST",
            "",
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("host", "sms.tencentcloudapi.com"),
                ("x-tc-action", "sendsms"),
            ],
            payload.as_bytes(),
        );
        assert_eq!(
            signed.canonical_request_hash,
            "f9a04392f13f58c2a5f6018727c0587239dd8ab3753a5d5acdb8c55a158b605a"
        );
        assert_eq!(
            signed.signature,
            "db2cefa59e3c22dcc8dc6cd529c8f092745bc3eb61ab2252e58e7284079db6ed"
        );
        assert_eq!(signed.signed_headers, "content-type;host;x-tc-action");
    }

    #[test]
    fn the_scope_date_is_utc() {
        // 2019-02-25 23:30 UTC is the 26th in Beijing; the scope says the 25th.
        let signed = sign(
            "id",
            "key",
            "sms",
            1_551_137_400,
            "POST",
            "",
            &HEADERS,
            b"{}",
        );
        assert!(signed.authorization.contains("/2019-02-25/sms/tc3_request"));
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
                r#"{"Response":{"SendStatusSet":[{"SerialNo":"5000:1045710669157053657849499619","PhoneNumber":"+8618501234444","Fee":1,"SessionContext":"m1","Code":"Ok","Message":"send success","IsoCode":"CN"}],"RequestId":"a0aabda6-cf91-4f3e-a81f-9198114a2279"}}"#
            )),
            Ok(())
        );
        // Per number, inside a successful request.
        let failure = send_outcome(&answer(
            200,
            r#"{"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"+8615296376320","Fee":0,"Code":"LimitExceeded.PhoneNumberDailyLimit","Message":"the number of sms messages sent from a single mobile number every day exceeds the upper limit","IsoCode":"CN"}],"RequestId":"r"}}"#,
        ))
        .unwrap_err();
        assert!(matches!(failure, SmsFailure::Permanent(_)), "{failure:?}");
        assert!(failure.reason().starts_with(
            "Tencent Cloud SMS refused: LimitExceeded.PhoneNumberDailyLimit (the number of sms"
        ));
        // For the request.
        let failure = send_outcome(&answer(
            200,
            r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated. Please check your signature is correct."},"RequestId":"ed93f3cb-f35e-473f-b9f3-0d451b8b79c6"}}"#,
        ))
        .unwrap_err();
        assert!(
            failure.reason().contains("check sms.secret_key"),
            "{failure:?}"
        );
        let table: &[(&str, &str)] = &[
            ("LimitExceeded.PhoneNumberThirtySecondLimit", "transient"),
            ("LimitExceeded.PhoneNumberOneHourLimit", "transient"),
            ("LimitExceeded.DeliveryFrequencyLimit", "transient"),
            (
                "LimitExceeded.PhoneNumberSameContentDailyLimit",
                "permanent",
            ),
            ("LimitExceeded.AppDailyLimit", "all"),
            ("RequestLimitExceeded", "all"),
            ("AuthFailure.SignatureExpire", "all"),
            ("InternalError.RequestTimeException", "all"),
            ("InternalError.Timeout", "unknown"),
            ("InternalError.SendAndRecvFail", "unknown"),
            ("InternalError", "unknown"),
            (
                "FailedOperation.InsufficientBalanceInSmsPackage",
                "permanent",
            ),
            (
                "UnauthorizedOperation.SerivceSuspendDueToArrears",
                "permanent",
            ),
            ("FailedOperation.PhoneNumberInBlacklist", "permanent"),
            (
                "FailedOperation.SignatureIncorrectOrUnapproved",
                "permanent",
            ),
            ("FailedOperation.TemplateIncorrectOrUnapproved", "permanent"),
            (
                "InvalidParameterValue.TemplateParameterLengthLimit",
                "permanent",
            ),
            ("UnauthorizedOperation.SmsSdkAppIdVerifyFail", "permanent"),
            ("AuthFailure.SecretIdNotFound", "permanent"),
            ("Something.New", "permanent"),
        ];
        for (code, class) in table {
            let body = format!(
                r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}},"RequestId":"r"}}}}"#
            );
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
            assert!(failure.reason().contains(code));
        }
        for code in [
            "AuthFailure.SignatureExpire",
            "InternalError.RequestTimeException",
        ] {
            let body = format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}}}}}}"#);
            let reason = send_outcome(&answer(200, &body))
                .unwrap_err()
                .reason()
                .to_owned();
            assert!(
                reason.contains("clock") && reason.contains("NTP"),
                "{reason}"
            );
        }
        assert!(matches!(
            send_outcome(&answer(
                200,
                r#"{"Response":{"SendStatusSet":[],"RequestId":"r"}}"#
            )),
            Err(SmsFailure::Unknown(_))
        ));
        assert!(matches!(
            send_outcome(&answer(200, "not json")),
            Err(SmsFailure::Unknown(_))
        ));
        assert!(matches!(
            send_outcome(&answer(502, "<html>")),
            Err(SmsFailure::Transient {
                unreachable: true,
                ..
            })
        ));
    }

    #[test]
    fn receipts_are_matched_by_session_context() {
        let receipts = answer(
            200,
            r#"{"Response":{"PullSmsSendStatusSet":[{"UserReceiveTime":1620734188,"CountryCode":"86","SubscriberNumber":"18501234444","PhoneNumber":"+8618501234444","SerialNo":"5000:1","ReportStatus":"SUCCESS","Description":"DELIVRD","SessionContext":"m1"},{"UserReceiveTime":1620734189,"CountryCode":"86","SubscriberNumber":"18501234444","PhoneNumber":"+8618501234444","SerialNo":"5000:2","ReportStatus":"FAIL","Description":"UNDELIV","SessionContext":null}],"RequestId":"r"}}"#,
        );
        assert_eq!(receipts_hold(&receipts, "m1"), Ok(true));
        assert_eq!(receipts_hold(&receipts, "m2"), Ok(false));
        assert_eq!(
            receipts_hold(
                &answer(
                    200,
                    r#"{"Response":{"PullSmsSendStatusSet":null,"RequestId":"r"}}"#
                ),
                "m1"
            ),
            Ok(false)
        );
        let err = receipts_hold(
            &answer(
                200,
                r#"{"Response":{"Error":{"Code":"AuthFailure.SecretIdNotFound","Message":"m"}}}"#,
            ),
            "m1",
        )
        .unwrap_err();
        assert!(
            matches!(&err, ReceiptsError::Refused { code, .. } if code == "AuthFailure.SecretIdNotFound"),
            "{err:?}"
        );
        assert!(err.to_string().contains("AuthFailure.SecretIdNotFound"));
    }

    #[test]
    fn template_statuses_are_read() {
        let found = template_statuses(&answer(
            200,
            r#"{"Response":{"DescribeTemplateStatusSet":[{"TemplateName":"告警","TemplateId":1110,"International":0,"ReviewReply":"","CreateTime":1617379200,"TemplateContent":"{1}{2}{3}","StatusCode":0},{"TemplateName":"验证码","TemplateId":1111,"International":0,"ReviewReply":"变量不规范","CreateTime":1617379200,"StatusCode":-1}],"RequestId":"r"}}"#,
        ))
        .unwrap();
        assert!(matches!(&found[0], (1110, Check::Ok(_))));
        let (1111, Check::Failed(text)) = &found[1] else {
            panic!("{found:?}")
        };
        assert!(text.contains("变量不规范"), "{text}");
        for (code, check) in [
            ("AuthFailure.SignatureFailure", "failed"),
            ("AuthFailure.SignatureExpire", "failed"),
            ("AuthFailure.UnauthorizedOperation", "cannot"),
            ("RequestLimitExceeded", "cannot"),
        ] {
            let body = format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}}}}}}"#);
            let got = match template_statuses(&answer(200, &body)).unwrap_err() {
                Check::Failed(_) => "failed",
                Check::CannotCheck(_) => "cannot",
                Check::Ok(_) => "ok",
            };
            assert_eq!(got, check, "{code}");
        }
    }

    fn provider(mock: &Mock) -> Tencent {
        Tencent::new(
            TencentSms {
                api_base: HttpUrl::try_from(mock.base.clone()).unwrap(),
                secret_id: "AKIDtestsecretid".into(),
                secret_key: "t3ncent-s3cret-key".into(),
                sdk_app_id: "1400006666".into(),
                region: "ap-guangzhou".into(),
                sign_name: "腾讯云".into(),
                template: "1110".into(),
                code_template: "1111".into(),
                max_variable_chars: 12,
            },
            client(),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn send_signs_the_bytes_it_sends() {
        let mock = mock(|_| {
            (
                200,
                r#"{"Response":{"SendStatusSet":[{"Code":"Ok","Message":"send success"}],"RequestId":"r"}}"#.into(),
            )
        })
        .await;
        let tencent = provider(&mock);
        let to = PhoneNumber::parse("13800138000").unwrap();
        let text = SmsText::Message {
            title: Some("磁盘空间不足请尽快处理谢谢".into()),
            excerpt: Some("db-1 的 /var 已用 98%，请清理 WAL 日志".into()),
            link: Some("https://push.example.com/m/1".into()),
        };
        tencent.send(&to, &text, "msg-42").await.unwrap();
        let requests = mock.requests.lock().unwrap();
        let request = &requests[0];
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/")
        );
        assert_eq!(request.header("x-tc-action"), Some("SendSms"));
        assert_eq!(request.header("x-tc-version"), Some("2021-01-11"));
        assert_eq!(request.header("x-tc-region"), Some("ap-guangzhou"));
        assert_eq!(request.header("content-type"), Some(CONTENT_TYPE));
        assert_eq!(request.header("host"), Some(mock.host.as_str()));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["PhoneNumberSet"], json!(["+8613800138000"]));
        assert_eq!(body["SmsSdkAppId"], "1400006666");
        assert_eq!(body["SignName"], "腾讯云");
        assert_eq!(body["TemplateId"], "1110");
        assert_eq!(body["SessionContext"], "msg-42");
        assert_eq!(
            body["TemplateParamSet"],
            json!([
                "磁盘空间不足请尽快处理…",
                "db-1 的 /var…",
                "https://push.example.com/m/1"
            ])
        );
        // The server can verify what it received.
        let timestamp: i64 = request.header("x-tc-timestamp").unwrap().parse().unwrap();
        let signed = sign(
            "AKIDtestsecretid",
            "t3ncent-s3cret-key",
            "sms",
            timestamp,
            "POST",
            "",
            &[
                ("content-type", request.header("content-type").unwrap()),
                ("host", request.header("host").unwrap()),
            ],
            &request.body,
        );
        assert_eq!(
            request.header("authorization"),
            Some(signed.authorization.as_str())
        );
        assert!(!format!("{:?}", tencent.config).contains("s3cret"));
    }

    #[tokio::test]
    async fn codes_use_the_code_template() {
        let mock = mock(|_| {
            (
                200,
                r#"{"Response":{"Error":{"Code":"FailedOperation.TemplateIncorrectOrUnapproved","Message":"template is not approved or request content does not match the approved template content"},"RequestId":"r"}}"#.into(),
            )
        })
        .await;
        let tencent = provider(&mock);
        let to = PhoneNumber::parse("+8613800138000").unwrap();
        let failure = tencent
            .send(&to, &SmsText::Code("482913".into()), "c1")
            .await
            .unwrap_err();
        assert!(failure.reason().contains("sms.template"), "{failure:?}");
        let body: serde_json::Value =
            serde_json::from_slice(&mock.requests.lock().unwrap()[0].body).unwrap();
        assert_eq!(body["TemplateId"], "1111");
        assert_eq!(body["TemplateParamSet"], json!(["482913"]));
    }

    #[tokio::test]
    async fn lookup_and_check() {
        let mock = mock(|request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            match request.header("x-tc-action") {
                Some("PullSmsSendStatusByPhoneNumber") => (
                    200,
                    r#"{"Response":{"PullSmsSendStatusSet":[{"SessionContext":"msg-1","ReportStatus":"SUCCESS"}],"RequestId":"r"}}"#.into(),
                ),
                Some("DescribeSmsTemplateList") if body["International"] == 0 => (
                    200,
                    r#"{"Response":{"DescribeTemplateStatusSet":[{"TemplateId":1110,"StatusCode":0,"TemplateName":"a"}],"RequestId":"r"}}"#.into(),
                ),
                Some("DescribeSmsTemplateList") => (
                    200,
                    r#"{"Response":{"DescribeTemplateStatusSet":[{"TemplateId":1111,"StatusCode":0,"TemplateName":"b"}],"RequestId":"r"}}"#.into(),
                ),
                _ => (400, "{}".into()),
            }
        })
        .await;
        let tencent = provider(&mock);
        let to = PhoneNumber::parse("13800138000").unwrap();
        let sent_at_ms = UnixMillis::from_millis(now_secs() * 1000);
        assert_eq!(tencent.lookup(&to, "msg-1", sent_at_ms).await, Lookup::Sent);
        assert!(matches!(
            tencent.lookup(&to, "msg-2", sent_at_ms).await,
            Lookup::CannotTell(_)
        ));
        let body: serde_json::Value =
            serde_json::from_slice(&mock.requests.lock().unwrap()[0].body).unwrap();
        assert_eq!(body["PhoneNumber"], "+8613800138000");
        assert_eq!(body["SmsSdkAppId"], "1400006666");
        assert!(body["BeginTime"].as_i64().unwrap() <= sent_at_ms.as_secs());
        let check = tencent.check().await;
        assert!(
            matches!(&check, Check::Ok(text) if text.contains("1110") && text.contains("1111")),
            "{check:?}"
        );
        let requests = mock.requests.lock().unwrap();
        let first: serde_json::Value = serde_json::from_slice(&requests[2].body).unwrap();
        assert_eq!(first["TemplateIdSet"], json!([1110, 1111]));
        let second: serde_json::Value = serde_json::from_slice(&requests[3].body).unwrap();
        assert_eq!(second["TemplateIdSet"], json!([1111]));
    }
}
