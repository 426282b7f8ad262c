//! Twilio Programmable Messaging: free text, HTTP Basic auth with the Account SID and Auth
//! Token.
//!
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with a form (`To`, `From` or
//! `MessagingServiceSid`, `Body`) answers 201 with the message; errors come as a 4xx/5xx
//! with `{"code", "message", "more_info", "status"}`. Delivery failures (30xxx) arrive
//! later and are not seen here.

use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::content::free_text;
use super::{
    Answer, CallError, Check, Lookup, PhoneNumber, Provider, SmsFailure, SmsText, body_excerpt,
    call, quote, redact, refusal, status_failure,
};
use crate::config::{TwilioFrom, TwilioSms};
use crate::time::UnixMillis;

const LABEL: &str = "Twilio";

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: Option<i64>,
    #[serde(default)]
    message: String,
}

/// The message Twilio created.
#[derive(Debug, Deserialize)]
struct Created {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    error_message: Option<String>,
}

/// What an error `code` means: (permanent, hint). Codes from
/// <https://www.twilio.com/docs/api/errors>.
fn explain(code: i64) -> (bool, &'static str) {
    match code {
        20429 => (false, "too many concurrent requests: will retry"),
        20003 => (true, "check sms.account_sid and sms.auth_token"),
        20005 | 20403 => (true, "the Twilio account is suspended or closed"),
        21211 => (true, "the number is not a valid phone number"),
        21608 => (
            true,
            "a trial account sends only to verified numbers: verify it (Phone Numbers → Verified Caller IDs) or upgrade",
        ),
        21610 => (true, "the recipient unsubscribed (replied STOP)"),
        21612 => (true, "Twilio cannot route from sms.from to this number"),
        21614 => (true, "the number cannot receive SMS (not a mobile number)"),
        21212 | 21606 | 21659 => (
            true,
            "check sms.from (a number of this account that can send SMS)",
        ),
        21701..=21710 => (true, "check sms.from (the Messaging Service)"),
        21408 => (
            true,
            "sending to this country is not enabled (Messaging → Settings → Geo permissions)",
        ),
        21602 | 21617 | 21619 => (true, "the body was refused (empty or too long)"),
        _ => (true, ""),
    }
}

/// The outcome of a create call.
fn send_outcome(answer: &Answer) -> Result<(), SmsFailure> {
    if (200..300).contains(&answer.status) {
        // Created. A message refused at once says so in its own fields.
        if let Ok(created) = serde_json::from_slice::<Created>(&answer.body)
            && matches!(created.status.as_deref(), Some("failed" | "undelivered"))
        {
            let code = created
                .error_code
                .map_or_else(|| "failed".to_owned(), |c| c.to_string());
            let hint = created.error_code.map_or("", |c| explain(c).1);
            return Err(SmsFailure::Permanent(refusal(
                LABEL,
                "refused",
                &code,
                created.error_message.as_deref().unwrap_or_default(),
                hint,
            )));
        }
        return Ok(());
    }
    let error = serde_json::from_slice::<ApiError>(&answer.body).ok();
    let Some(ApiError {
        code: Some(code),
        message,
    }) = error
    else {
        return Err(status_failure(LABEL, answer.status, &answer.body));
    };
    let (permanent, hint) = explain(code);
    let code_text = code.to_string();
    if code == 20429 || answer.status == 429 {
        return Err(SmsFailure::Transient {
            reason: refusal(LABEL, "is throttling", &code_text, &message, hint),
            unreachable: true,
        });
    }
    if answer.status >= 500 {
        // A server error with Twilio's body: as the status says (busy, or unknown).
        return Err(match status_failure(LABEL, answer.status, &answer.body) {
            SmsFailure::Unknown(_) => SmsFailure::Unknown(refusal(
                LABEL,
                "failed",
                &code_text,
                &message,
                "an error inside Twilio: the text may have been sent",
            )),
            _ => SmsFailure::Transient {
                reason: refusal(LABEL, "is unavailable", &code_text, &message, "will retry"),
                unreachable: true,
            },
        });
    }
    Err(if permanent {
        SmsFailure::Permanent(refusal(LABEL, "refused", &code_text, &message, hint))
    } else {
        SmsFailure::Transient {
            reason: refusal(LABEL, "refused for now", &code_text, &message, hint),
            unreachable: false,
        }
    })
}

/// The account's state from `GET /2010-04-01/Accounts/{sid}.json`.
fn account_check(answer: &Answer) -> Check {
    #[derive(Deserialize)]
    struct Account {
        status: Option<String>,
        friendly_name: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    if answer.status == 401 || answer.status == 403 || answer.status == 404 {
        let error = serde_json::from_slice::<ApiError>(&answer.body).ok();
        let (code, message) = error
            .map(|e| (e.code.unwrap_or(20003), e.message))
            .unwrap_or((20003, String::new()));
        return Check::Failed(refusal(
            LABEL,
            "refused",
            &code.to_string(),
            &message,
            "check sms.account_sid and sms.auth_token",
        ));
    }
    if !(200..300).contains(&answer.status) {
        return Check::CannotCheck(format!(
            "{LABEL} answered HTTP {} with {}",
            answer.status,
            body_excerpt(&answer.body)
        ));
    }
    let Ok(account) = serde_json::from_slice::<Account>(&answer.body) else {
        return Check::CannotCheck(format!(
            "{LABEL} answered with {}",
            body_excerpt(&answer.body)
        ));
    };
    let name = quote(account.friendly_name.as_deref().unwrap_or_default());
    let kind = account.kind.unwrap_or_default();
    match account.status.as_deref() {
        Some("active") if kind.eq_ignore_ascii_case("trial") => Check::Ok(format!(
            "{LABEL}: account {name:?} is active (a trial account: it sends only to verified numbers; sms.from is not checked)"
        )),
        Some("active") => Check::Ok(format!(
            "{LABEL}: account {name:?} is active (sms.from is not checked)"
        )),
        Some(status) => Check::Failed(format!("{LABEL}: account {name:?} is {status}, not active")),
        None => Check::CannotCheck(format!("{LABEL}: the account has no status")),
    }
}

/// Twilio with its settings and an HTTP client.
pub struct Twilio {
    config: TwilioSms,
    http: reqwest::Client,
    timeout: Duration,
}

impl Twilio {
    pub fn new(config: TwilioSms, http: reqwest::Client, timeout: Duration) -> Self {
        Self {
            config,
            http,
            timeout,
        }
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}{rest}",
            self.config.api_base.base(),
            self.config.account_sid
        )
    }

    fn authenticated(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.basic_auth(
            &self.config.account_sid,
            Some(self.config.auth_token.expose_secret()),
        )
    }

    fn redact(&self, text: String) -> String {
        redact(text, self.config.auth_token.expose_secret())
    }
}

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn label(&self) -> &'static str {
        LABEL
    }

    /// `out_id` is not sent: Twilio has no field for it (see [`Twilio::lookup`]).
    fn send<'a>(
        &'a self,
        to: &'a PhoneNumber,
        text: &'a SmsText,
        _out_id: &'a str,
    ) -> BoxFuture<'a, Result<(), SmsFailure>> {
        Box::pin(async move {
            let body = free_text(text, self.config.max_segments as usize);
            let (sender_field, sender) = match &self.config.from {
                TwilioFrom::Number(from) | TwilioFrom::Alphanumeric(from) => ("From", from),
                TwilioFrom::MessagingService(sid) => ("MessagingServiceSid", sid),
            };
            let form = [
                ("To", to.as_str()),
                (sender_field, sender.as_str()),
                ("Body", body.as_str()),
            ];
            let request = self
                .authenticated(self.http.post(self.url("/Messages.json")))
                .form(&form);
            let outcome = match call(request, self.timeout).await {
                Ok(answer) => send_outcome(&answer),
                Err(e) => Err(e.into_failure(LABEL)),
            };
            outcome.map_err(|failure| failure.map_reason(|r| self.redact(r)))
        })
    }

    /// Always [`Lookup::CannotTell`], without a call: a Twilio message carries nothing of
    /// ours to find it by (`GET Messages.json?To=…&DateSent>=…` lists the number's
    /// messages of the day, but a repeat of the same text is indistinguishable from the
    /// send in question, and the lookup is not given the text).
    fn lookup<'a>(
        &'a self,
        to: &'a PhoneNumber,
        _out_id: &'a str,
        _sent_at_ms: UnixMillis,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(async move {
            Lookup::CannotTell(format!(
                "{LABEL} cannot be searched for a given send: check the Messaging logs in the Twilio console for {}",
                to.masked()
            ))
        })
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Check> {
        Box::pin(async move {
            let request = self.authenticated(self.http.get(self.url(".json")));
            match call(request, self.timeout).await {
                Ok(answer) => match account_check(&answer) {
                    Check::Ok(text) => Check::Ok(self.redact(text)),
                    Check::Failed(text) => Check::Failed(self.redact(text)),
                    Check::CannotCheck(text) => Check::CannotCheck(self.redact(text)),
                },
                Err(CallError::NotSent(why) | CallError::MaybeSent(why)) => {
                    Check::CannotCheck(format!("{LABEL} did not answer: {why}"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Mock, client, mock};
    use super::*;
    use crate::config::HttpUrl;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn create_answers_are_classified() {
        assert_eq!(
            send_outcome(&answer(
                201,
                r#"{"sid":"SM1f0e8ae6ade43cb3c0ce4525424e404f","status":"queued","error_code":null,"error_message":null,"to":"+8613800138000"}"#
            )),
            Ok(())
        );
        assert_eq!(send_outcome(&answer(200, "{}")), Ok(()));
        let failure = send_outcome(&answer(
            400,
            r#"{"code": 21211, "message": "The 'To' number 5551234567 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
        ))
        .unwrap_err();
        assert_eq!(
            failure,
            SmsFailure::Permanent(
                "Twilio refused: 21211 (The 'To' number 5551234567 is not a valid phone number.): the number is not a valid phone number".into()
            )
        );
        let failure = send_outcome(&answer(
            401,
            r#"{"status":401,"message":"Authenticate","code":20003,"more_info":"http://www.twilio.com/docs/errors/20003"}"#,
        ))
        .unwrap_err();
        assert!(matches!(&failure, SmsFailure::Permanent(r) if r.contains("sms.auth_token")));
        for (status, code, class) in [
            (429, 20429, "all"),
            (429, 14107, "all"),
            (400, 21608, "permanent"),
            (400, 21610, "permanent"),
            (400, 21408, "permanent"),
            (400, 21606, "permanent"),
            (403, 20403, "permanent"),
            (400, 99999, "permanent"),
            (503, 20500, "all"),
            (500, 20500, "unknown"),
            (504, 20504, "unknown"),
        ] {
            let body = format!(r#"{{"code":{code},"message":"m","status":{status}}}"#);
            let failure = send_outcome(&answer(status, &body)).unwrap_err();
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
            assert_eq!(got, class, "{status} {code}: {failure:?}");
            assert!(failure.reason().contains(&code.to_string()));
        }
        assert!(matches!(
            send_outcome(&answer(502, "<html>Bad Gateway</html>")),
            Err(SmsFailure::Transient {
                unreachable: true,
                ..
            })
        ));
        assert!(matches!(
            send_outcome(&answer(201, r#"{"status":"failed","error_code":21610,"error_message":"unsubscribed"}"#)),
            Err(SmsFailure::Permanent(r)) if r.contains("21610")
        ));
    }

    #[test]
    fn account_checks() {
        let ok = account_check(&answer(
            200,
            r#"{"sid":"AC0123","friendly_name":"My first Twilio account","status":"active","type":"Trial"}"#,
        ));
        assert!(matches!(&ok, Check::Ok(t) if t.contains("trial")), "{ok:?}");
        assert!(matches!(
            account_check(&answer(200, r#"{"status":"active","type":"Full"}"#)),
            Check::Ok(_)
        ));
        assert!(matches!(
            account_check(&answer(200, r#"{"status":"suspended"}"#)),
            Check::Failed(_)
        ));
        assert!(matches!(
            account_check(&answer(401, r#"{"code":20003,"message":"Authenticate","status":401}"#)),
            Check::Failed(t) if t.contains("sms.auth_token")
        ));
        assert!(matches!(
            account_check(&answer(503, "")),
            Check::CannotCheck(_)
        ));
    }

    fn provider(mock: &Mock, from: TwilioFrom) -> Twilio {
        Twilio::new(
            TwilioSms {
                api_base: HttpUrl::try_from(mock.base.clone()).unwrap(),
                account_sid: "AC0123456789abcdef0123456789abcdef".into(),
                auth_token: "tw1l10-auth-t0ken".into(),
                from,
                max_segments: 1,
            },
            client(),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn send_posts_the_form_with_basic_auth() {
        let mock = mock(|request| {
            if request.method == "GET" {
                (
                    200,
                    r#"{"status":"active","type":"Full","friendly_name":"ops"}"#.into(),
                )
            } else {
                (201, r#"{"sid":"SM1","status":"queued"}"#.into())
            }
        })
        .await;
        let to = PhoneNumber::parse("+44 7911 123456").unwrap();
        let text = SmsText::Message {
            title: Some("Disk full".into()),
            excerpt: Some("x".repeat(300)),
            link: Some("https://push.example.com/m/1".into()),
        };
        let twilio = provider(&mock, TwilioFrom::Number("+15005550006".into()));
        twilio.send(&to, &text, "m1").await.unwrap();
        let service = provider(
            &mock,
            TwilioFrom::MessagingService("MG0123456789abcdef0123456789abcdef".into()),
        );
        service
            .send(&to, &SmsText::Code("482913".into()), "c1")
            .await
            .unwrap();
        assert!(matches!(twilio.check().await, Check::Ok(_)));
        let requests = mock.requests.lock().unwrap();
        assert_eq!(
            requests[0].path,
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        );
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD
            .encode("AC0123456789abcdef0123456789abcdef:tw1l10-auth-t0ken");
        assert_eq!(
            requests[0].header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&requests[0].body)
            .into_owned()
            .collect();
        let get = |form: &[(String, String)], k: &str| {
            form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&form, "To").as_deref(), Some("+447911123456"));
        assert_eq!(get(&form, "From").as_deref(), Some("+15005550006"));
        let body = get(&form, "Body").unwrap();
        assert!(
            body.starts_with("Disk full\nxxx")
                && body.ends_with("...\nhttps://push.example.com/m/1")
        );
        assert_eq!(super::super::content::segments(&body), 1);
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&requests[1].body)
            .into_owned()
            .collect();
        assert_eq!(
            get(&form, "MessagingServiceSid").as_deref(),
            Some("MG0123456789abcdef0123456789abcdef")
        );
        assert_eq!(get(&form, "From"), None);
        assert_eq!(
            get(&form, "Body").as_deref(),
            Some("482913 is your pushbot verification code")
        );
        assert_eq!(requests[2].method, "GET");
        assert_eq!(
            requests[2].path,
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef.json"
        );
        assert!(matches!(
            futures_util::FutureExt::now_or_never(twilio.lookup(
                &to,
                "m1",
                UnixMillis::from_millis(0)
            )),
            Some(Lookup::CannotTell(_))
        ));
    }
}
