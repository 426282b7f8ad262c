//! A real (if small) SMTP server for the e-mail channel's tests: it speaks plain SMTP on
//! 127.0.0.1 to whatever client the gateway uses, records every message it accepts, and
//! lets a test script refusals, go down (connections refused, open sessions cut) and come
//! back on the same port.
//!
//! Only the far end is simulated; the gateway's own mail code runs unchanged.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mailparse::{MailHeaderMap, ParsedMail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One message the sink accepted (answered 250 at the end of DATA).
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`), without the angle brackets.
    pub from: String,
    /// The envelope recipients (`RCPT TO`), without the angle brackets.
    pub to: Vec<String>,
    /// The message as received, dot-stuffing undone, without the final `.` line.
    pub data: Vec<u8>,
    pub received_at: Instant,
}

impl Mail {
    pub fn parsed(&self) -> ParsedMail<'_> {
        mailparse::parse_mail(&self.data).unwrap_or_else(|e| {
            panic!(
                "the mail does not parse ({e}):\n{}",
                String::from_utf8_lossy(&self.data)
            )
        })
    }

    /// The first header called `name` (case-insensitive), decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.parsed().headers.get_first_value(name)
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    pub fn message_id(&self) -> String {
        self.header("Message-ID").unwrap_or_default()
    }

    /// The decoded body of the first part of this MIME type (`text/plain`, `text/html`).
    pub fn part(&self, mimetype: &str) -> Option<String> {
        let parsed = self.parsed();
        parsed
            .parts()
            .find(|p| p.ctype.mimetype.eq_ignore_ascii_case(mimetype))
            .map(|p| {
                p.get_body()
                    .unwrap_or_else(|e| panic!("the {mimetype} part does not decode: {e}"))
            })
    }

    pub fn text(&self) -> Option<String> {
        self.part("text/plain")
    }

    pub fn html(&self) -> Option<String> {
        self.part("text/html")
    }

    /// The raw message, for failure messages.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The first standalone run of exactly six digits in the text/plain body (`\b\d{6}\b`).
    pub fn code(&self) -> Option<String> {
        six_digits(&self.text().unwrap_or_default())
    }
}

/// The first standalone run of exactly six ASCII digits in `s`, as `\b\d{6}\b` finds it.
pub fn six_digits(s: &str) -> Option<String> {
    let chars: Vec<char> = s.chars().collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() && (i == 0 || !word(chars[i - 1])) {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 && (i == chars.len() || !word(chars[i])) {
                return Some(chars[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// A transaction the sink refused as scripted.
#[derive(Debug, Clone)]
pub struct Refused {
    pub from: String,
    pub to: Vec<String>,
    /// The reply line it was refused with.
    pub reply: String,
    /// Where: "RCPT" or "DATA".
    pub at: &'static str,
    /// The message, when refused at the end of DATA.
    pub data: Vec<u8>,
    pub received_at: Instant,
}

#[derive(Default)]
struct State {
    mails: Vec<Mail>,
    refused: Vec<Refused>,
    /// Reply lines for the end of DATA of the next transactions.
    fail_data: VecDeque<String>,
    /// Reply lines for the RCPT of the next transactions (each answers one transaction's
    /// first RCPT).
    fail_rcpt: VecDeque<String>,
    connections: u64,
    /// Every command line received, for failure messages.
    log: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    /// `true` while down: the listener is closed and open sessions are cut.
    down: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Handle to a running sink; dropping it stops it.
pub struct SmtpSink {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shared.down.send_replace(true);
        if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let port = listener.local_addr().expect("sink address").port();
        let (changed, _) = watch::channel(0);
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed,
            down,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            port,
            shared,
            accept: Mutex::new(Some(task)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    // ---- scripting ----

    /// Refuses the next `n` transactions at the end of DATA with `reply` (a full reply
    /// line such as `"451 4.3.0 try later"` or `"550 5.1.1 no such user"`).
    pub fn fail_next(&self, n: usize, reply: &str) {
        let mut s = self.shared.lock();
        s.fail_data.extend(std::iter::repeat_n(reply.to_owned(), n));
    }

    /// Refuses the first RCPT of the next `n` transactions with `reply`.
    pub fn fail_next_rcpt(&self, n: usize, reply: &str) {
        let mut s = self.shared.lock();
        s.fail_rcpt.extend(std::iter::repeat_n(reply.to_owned(), n));
    }

    /// `true`: the listener is closed (connections are refused) and every open session is
    /// cut. `false`: listening again on the same port.
    pub async fn set_down(&self, down: bool) {
        if down {
            self.shared.down.send_replace(true);
            let task = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task {
                // The loop ends (dropping the listener) as soon as it sees `down`.
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
        } else {
            if self
                .accept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match TcpListener::bind(self.addr()).await {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("the SMTP sink cannot listen on {} again: {e}", self.addr()),
                }
            };
            self.shared.down.send_replace(false);
            let task = tokio::spawn(accept_loop(listener, Arc::clone(&self.shared)));
            let mut slot = self.accept.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(task);
        }
    }

    // ---- observation ----

    /// Every message accepted so far, in arrival order.
    pub fn mails(&self) -> Vec<Mail> {
        self.shared.lock().mails.clone()
    }

    pub fn mail_count(&self) -> usize {
        self.shared.lock().mails.len()
    }

    /// Accepted messages to `address` (envelope recipient, case-insensitive).
    pub fn mails_to(&self, address: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Accepted messages whose Message-ID header mentions `id` (a message id).
    pub fn mails_for(&self, id: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.message_id().contains(id))
            .collect()
    }

    /// Transactions refused as scripted, in order.
    pub fn refused(&self) -> Vec<Refused> {
        self.shared.lock().refused.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Waits until at least `n` messages were accepted; returns all accepted so far.
    pub async fn wait_for_mails(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        if self.wait_until(timeout, |s| s.mails.len() >= n).await {
            return self.mails();
        }
        self.panic_with_state(&format!("expected {n} mails within {timeout:?}"))
    }

    /// Waits until at least `n` messages to `address` were accepted; returns them.
    pub async fn wait_for_mails_to(&self, address: &str, n: usize, timeout: Duration) -> Vec<Mail> {
        let address = address.to_owned();
        let ok = self
            .wait_until(timeout, |s| {
                s.mails
                    .iter()
                    .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(&address)))
                    .count()
                    >= n
            })
            .await;
        if ok {
            return self.mails_to(&address);
        }
        self.panic_with_state(&format!(
            "expected {n} mails to {address} within {timeout:?}"
        ))
    }

    /// Waits until a message whose Message-ID mentions `id` was accepted; returns it.
    pub async fn wait_for_mail_for(&self, id: &str, timeout: Duration) -> Mail {
        let ok = self
            .wait_until(timeout, |s| {
                s.mails.iter().any(|m| {
                    mailparse::parse_mail(&m.data)
                        .ok()
                        .and_then(|p| p.headers.get_first_value("Message-ID"))
                        .is_some_and(|v| v.contains(id))
                })
            })
            .await;
        if ok {
            return self.mails_for(id).remove(0);
        }
        self.panic_with_state(&format!(
            "expected a mail with Message-ID mentioning {id} within {timeout:?}"
        ))
    }

    /// Waits until at least `n` transactions were refused as scripted.
    pub async fn wait_for_refused(&self, n: usize, timeout: Duration) -> Vec<Refused> {
        if self.wait_until(timeout, |s| s.refused.len() >= n).await {
            return self.refused();
        }
        self.panic_with_state(&format!(
            "expected {n} refused transactions within {timeout:?}"
        ))
    }

    fn panic_with_state(&self, what: &str) -> ! {
        let s = self.shared.lock();
        let mails: Vec<String> = s
            .mails
            .iter()
            .map(|m| format!("to {:?}:\n{}", m.to, String::from_utf8_lossy(&m.data)))
            .collect();
        panic!(
            "{what}; got {} mails, {} refused, {} connections\nmails: {mails:#?}\ncommands: {:#?}",
            s.mails.len(),
            s.refused.len(),
            s.connections,
            s.log
        );
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn(&State) -> bool) -> bool {
        crate::helpers::wait_until_changed(
            &self.shared.changed,
            timeout,
            || self.shared.lock(),
            |s| cond(s),
        )
        .await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut down = shared.down.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                shared.lock().connections += 1;
                shared.bump();
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let mut down = shared.down.subscribe();
                    tokio::select! {
                        _ = session(stream, Arc::clone(&shared)) => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
            _ = down.wait_for(|d| *d) => return,
        }
    }
}

/// Strips `FROM:`/`TO:` and the angle brackets from a MAIL/RCPT argument.
fn path_of(arg: &str) -> String {
    let arg = arg.trim();
    let after = arg
        .split_once(':')
        .map(|(_, rest)| rest)
        .unwrap_or(arg)
        .trim();
    let addr = after.split_whitespace().next().unwrap_or("");
    addr.trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

/// One SMTP session. Returns when the client quits or goes away.
async fn session(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    macro_rules! reply {
        ($text:expr) => {
            if write.write_all($text.as_bytes()).await.is_err() {
                return;
            }
        };
    }
    reply!("220 localhost ESMTP pushbot test sink\r\n");
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        shared.lock().log.push(text.clone());
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_owned()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                from = None;
                to.clear();
                reply!("250-localhost\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
            }
            "HELO" => {
                from = None;
                to.clear();
                reply!("250 localhost\r\n");
            }
            "MAIL" => {
                if !arg.to_ascii_uppercase().starts_with("FROM:") {
                    reply!("501 5.5.4 syntax: MAIL FROM:<address>\r\n");
                    continue;
                }
                from = Some(path_of(&arg));
                to.clear();
                reply!("250 2.1.0 OK\r\n");
            }
            "RCPT" => {
                let Some(sender) = from.clone() else {
                    reply!("503 5.5.1 MAIL first\r\n");
                    continue;
                };
                if !arg.to_ascii_uppercase().starts_with("TO:") {
                    reply!("501 5.5.4 syntax: RCPT TO:<address>\r\n");
                    continue;
                }
                let rcpt = path_of(&arg);
                let scripted = if to.is_empty() {
                    shared.lock().fail_rcpt.pop_front()
                } else {
                    None
                };
                if let Some(refusal) = scripted {
                    {
                        let mut s = shared.lock();
                        s.refused.push(Refused {
                            from: sender,
                            to: vec![rcpt],
                            reply: refusal.clone(),
                            at: "RCPT",
                            data: Vec::new(),
                            received_at: Instant::now(),
                        });
                    }
                    shared.bump();
                    reply!(format!("{refusal}\r\n"));
                    continue;
                }
                to.push(rcpt);
                reply!("250 2.1.5 OK\r\n");
            }
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    reply!("503 5.5.1 RCPT first\r\n");
                    continue;
                }
                reply!("354 End data with <CR><LF>.<CR><LF>\r\n");
                let mut data = Vec::new();
                loop {
                    line.clear();
                    match read.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let unstuffed = if line.first() == Some(&b'.') {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    data.extend_from_slice(unstuffed);
                }
                let sender = from.take().unwrap_or_default();
                let rcpts = std::mem::take(&mut to);
                let received_at = Instant::now();
                let scripted = shared.lock().fail_data.pop_front();
                match scripted {
                    Some(refusal) => {
                        shared.lock().refused.push(Refused {
                            from: sender,
                            to: rcpts,
                            reply: refusal.clone(),
                            at: "DATA",
                            data,
                            received_at,
                        });
                        shared.bump();
                        reply!(format!("{refusal}\r\n"));
                    }
                    None => {
                        let n = {
                            let mut s = shared.lock();
                            s.mails.push(Mail {
                                from: sender,
                                to: rcpts,
                                data,
                                received_at,
                            });
                            s.mails.len()
                        };
                        // Recorded before the 250 goes out: once the client has its 250,
                        // the test sees the mail.
                        shared.bump();
                        reply!(format!("250 2.0.0 OK queued as {n}\r\n"));
                    }
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                reply!("250 2.0.0 OK\r\n");
            }
            "NOOP" => {
                reply!("250 2.0.0 OK\r\n");
            }
            "QUIT" => {
                let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                let _ = write.shutdown().await;
                return;
            }
            _ => {
                reply!("502 5.5.2 command not implemented\r\n");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// the sink itself, against the SMTP client the gateway uses
// ------------------------------------------------------------------------------------------

#[cfg(test)]
mod self_test {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    use super::*;

    fn transport(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(port)
            .timeout(Some(Duration::from_secs(2)))
            .build()
    }

    fn message(subject: &str, text: &str, html: &str, id: &str) -> Message {
        Message::builder()
            .from(
                "pushbot <bot@example.com>"
                    .parse::<Mailbox>()
                    .expect("from"),
            )
            .to("alice@example.com".parse::<Mailbox>().expect("to"))
            .subject(subject)
            .message_id(Some(format!("<{id}@pushbot>")))
            .multipart(MultiPart::alternative_plain_html(
                text.to_owned(),
                html.to_owned(),
            ))
            .expect("a message")
    }

    #[tokio::test]
    async fn the_sink_speaks_smtp_to_lettre() {
        let sink = SmtpSink::start().await;
        let smtp = transport(sink.port);

        let text = "line one\n.starts with a dot\n中文 content";
        smtp.send(message("Hello 你好", text, "<p>x &amp; y</p>", "m1"))
            .await
            .expect("the sink accepts a mail");
        let mails = sink.wait_for_mails(1, Duration::from_secs(5)).await;
        let mail = &mails[0];
        assert_eq!(mail.from, "bot@example.com");
        assert_eq!(mail.to, vec!["alice@example.com".to_owned()]);
        assert_eq!(mail.subject(), "Hello 你好");
        assert_eq!(mail.message_id(), "<m1@pushbot>");
        assert_eq!(mail.parsed().ctype.mimetype, "multipart/alternative");
        assert_eq!(
            mail.text()
                .expect("text/plain")
                .replace("\r\n", "\n")
                .trim_end(),
            text
        );
        assert_eq!(
            mail.html().expect("text/html").trim_end(),
            "<p>x &amp; y</p>"
        );
        assert_eq!(sink.mails_for("m1").len(), 1);
        assert!(mail.received_at <= Instant::now());

        // Scripted refusals, transient and permanent, at DATA and at RCPT.
        sink.fail_next(1, "451 4.3.0 try later");
        let err = smtp
            .send(message("s", "t", "h", "m2"))
            .await
            .expect_err("refused with 451");
        assert!(err.is_transient(), "{err}");
        sink.fail_next(1, "550 5.1.1 no such user");
        let err = smtp
            .send(message("s", "t", "h", "m3"))
            .await
            .expect_err("refused with 550");
        assert!(err.is_permanent(), "{err}");
        sink.fail_next_rcpt(1, "450 4.2.1 mailbox busy");
        let err = smtp
            .send(message("s", "t", "h", "m4"))
            .await
            .expect_err("refused at RCPT");
        assert!(err.is_transient(), "{err}");
        let refused = sink.wait_for_refused(3, Duration::from_secs(5)).await;
        assert_eq!(
            refused
                .iter()
                .map(|r| (r.at, r.reply.as_str(), r.from.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("DATA", "451 4.3.0 try later", "bot@example.com"),
                ("DATA", "550 5.1.1 no such user", "bot@example.com"),
                ("RCPT", "450 4.2.1 mailbox busy", "bot@example.com"),
            ]
        );
        assert!(refused[0].received_at <= refused[1].received_at);
        assert!(String::from_utf8_lossy(&refused[0].data).contains("<m2@pushbot>"));
        smtp.send(message("s", "t", "h", "m5"))
            .await
            .expect("accepted again once the script is used up");

        // Down: refused, including on a pooled connection; back on the same port.
        sink.set_down(true).await;
        smtp.send(message("s", "t", "h", "m6"))
            .await
            .expect_err("nothing listens while down");
        assert!(
            tokio::net::TcpStream::connect(sink.addr()).await.is_err(),
            "connections are refused while down"
        );
        let before = sink.connections();
        sink.set_down(false).await;
        smtp.send(message("s", "t", "h", "m7"))
            .await
            .expect("accepted once back up");
        assert!(sink.connections() > before);
        assert_eq!(
            sink.mails()
                .iter()
                .map(|m| m.message_id())
                .collect::<Vec<_>>(),
            vec!["<m1@pushbot>", "<m5@pushbot>", "<m7@pushbot>"]
        );
        assert_eq!(
            super::six_digits("code: 123456."),
            Some("123456".to_owned())
        );
        assert_eq!(
            super::six_digits("1234567 a123456 123456"),
            Some("123456".to_owned())
        );
        assert_eq!(super::six_digits("12345"), None);
    }
}
