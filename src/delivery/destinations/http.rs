//! The one HTTP call of a send, and what to make of an answer that is not the service's.

use std::time::Duration;

use super::{DestError, quote};

/// The most of an answer that is read: the services answer a few hundred bytes; a
/// webhook's server could answer anything.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A service's answer to one call.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, when the answer has one.
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call got no answer.
#[derive(Debug)]
pub(super) enum CallError {
    /// Nothing reached the service: no connection (refused, DNS, TLS handshake).
    NotSent(String),
    /// The request may have reached the service: a timeout or a failure after it was
    /// written (or while reading the answer).
    MaybeSent(String),
}

impl CallError {
    /// As a send's failure: transient either way — robots are sent at least once, so a
    /// message that may have arrived is sent again (a duplicate, never a loss).
    pub fn into_error(self, label: &str) -> DestError {
        match self {
            Self::NotSent(why) => DestError::transient(
                format!("{label} is unreachable, nothing was sent: {why}"),
                true,
                None,
            ),
            Self::MaybeSent(why) => DestError::transient(
                format!(
                    "no answer from {label} after the request was sent ({why}): it may have arrived; it will be sent again"
                ),
                true,
                None,
            ),
        }
    }
}

/// Sends `request` with its own `timeout` and reads the answer (at most
/// [`MAX_ANSWER_BYTES`]). Errors never show the URL: it holds the key.
pub(super) async fn call(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Answer, CallError> {
    let describe = |e: reqwest::Error| crate::wecom::client::describe(e.without_url());
    let mut response = request.timeout(timeout).send().await.map_err(|e| {
        if e.is_connect() || e.is_builder() {
            CallError::NotSent(describe(e))
        } else {
            CallError::MaybeSent(describe(e))
        }
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| CallError::MaybeSent(format!("reading the answer: {}", describe(e))))?
    {
        let room = MAX_ANSWER_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

/// The beginning of a body that is not the JSON expected, for a reason.
pub(super) fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let excerpt = quote(&text);
    if excerpt.is_empty() {
        "an empty body".to_owned()
    } else {
        format!("{excerpt:?}")
    }
}

/// An answer without the service's own error: by its HTTP status. `hint` follows a
/// refusal (a 4xx) that is likely a wrong base or address.
pub(super) fn status_error(label: &str, answer: &Answer, hint: &str) -> DestError {
    let status = answer.status;
    let seen = format!("HTTP {status} with {}", body_excerpt(&answer.body));
    match status {
        429 => DestError::transient(
            format!("{label} is throttling ({seen}): will retry"),
            true,
            answer.retry_after,
        ),
        408 => DestError::transient(
            format!("{label} timed out reading the request ({seen}): will retry"),
            false,
            answer.retry_after,
        ),
        500..=599 => DestError::transient(
            format!("{label} is unavailable ({seen}): will retry"),
            true,
            answer.retry_after,
        ),
        200..=299 => DestError::transient(
            format!("{label} answered {seen}, not its usual answer: will retry"),
            true,
            None,
        ),
        300..=399 => DestError::permanent(format!(
            "{label} answered with a redirect ({seen}), which is not followed: configure the address it redirects to"
        )),
        _ if hint.is_empty() => {
            DestError::permanent(format!("{label} refused the request: {seen}"))
        }
        _ => DestError::permanent(format!("{label} refused the request: {seen}: {hint}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: Some(Duration::from_secs(7)),
        }
    }

    #[test]
    fn statuses_without_the_services_error() {
        let e = status_error("X", &answer(429, ""), "");
        assert!(matches!(
            e,
            DestError::Transient {
                unreachable: true,
                ..
            }
        ));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(status_error("X", &answer(503, "busy"), "").is_transient());
        assert!(status_error("X", &answer(408, ""), "").is_transient());
        assert!(status_error("X", &answer(200, "<html>"), "").is_transient());
        let e = status_error("X", &answer(404, "<html>no</html>"), "check the base");
        assert!(!e.is_transient());
        assert!(e.reason().contains("HTTP 404"), "{}", e.reason());
        assert!(e.reason().ends_with("check the base"), "{}", e.reason());
        assert!(!status_error("X", &answer(302, ""), "").is_transient());
    }

    #[test]
    fn call_errors_are_transient_either_way() {
        let e = CallError::NotSent("refused".into()).into_error("X");
        assert!(matches!(
            e,
            DestError::Transient {
                unreachable: true,
                ..
            }
        ));
        let e = CallError::MaybeSent("timed out".into()).into_error("X");
        assert!(e.is_transient());
        assert!(e.reason().contains("may have arrived"));
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_as_maybe_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                held.push(socket);
            }
        });
        let http = crate::delivery::destinations::tests::client();
        let outcome = call(
            http.post(format!("http://{addr}/x?key=SECRETKEY")),
            Duration::from_millis(200),
        )
        .await;
        match outcome {
            Err(CallError::MaybeSent(why)) => assert!(!why.contains("SECRETKEY"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Nothing listening: nothing sent.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let outcome = call(
            http.post(format!("http://{addr}/x?key=SECRETKEY")),
            Duration::from_secs(2),
        )
        .await;
        match outcome {
            Err(CallError::NotSent(why)) => assert!(!why.contains("SECRETKEY"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
