//! Prometheus metrics: what was accepted, delivered and failed, how long delivery took, the
//! WeCom errors seen and how callbacks ended. Served at `GET /metrics` (see
//! `api::metrics`) when `server.metrics` is on; collected always (a few atomic adds per
//! message, nothing when nobody scrapes).
//!
//! One [`Metrics`] per process, cheap to clone (one `Arc`), handed to the HTTP state, the
//! scheduler and the WeCom client. Built on `prometheus-client`, which owns the registry
//! and the text encoding (OpenMetrics 1.0, or the classic Prometheus text format 0.0.4).
//!
//! Labels are small structs of `&'static str` (or a number): counting never allocates, and
//! every label's values are a fixed set — except WeCom's errcodes, which are capped at
//! [`MAX_ERRCODE_SERIES`] so that a misbehaving upstream cannot grow the output forever.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::ChannelName;
use crate::time::UnixMillis;

/// `Content-Type` of the OpenMetrics text format (what Prometheus asks for first).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the classic Prometheus text format (anyone else: curl, agents).
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the delivery latency buckets: 10 ms to an hour. A message
/// delivered at once lands in the first few; one that waited for a member limit, a retry
/// or an outage in the later ones.
const LATENCY_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// WeCom's day, for the daily recipient-send figure: China time (UTC+8), where the
/// corp-wide budget (seats × 200 a day) is counted.
const WECOM_DAY_UTC_OFFSET: i32 = 8 * 3600;

/// Distinct WeCom error series kept; errcodes beyond them count as `errcode="other"`.
pub const MAX_ERRCODE_SERIES: usize = 64;

/// Where a message came in: the native `/send` or a drop-in endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Endpoint {
    #[default]
    Native,
    ServerChan,
    Bark,
    Gotify,
    Ntfy,
    Alertmanager,
    Grafana,
    /// Verification mails the bot sends when a member binds an address.
    Chat,
}

impl Endpoint {
    pub const ALL: [Endpoint; 8] = [
        Self::Native,
        Self::ServerChan,
        Self::Bark,
        Self::Gotify,
        Self::Ntfy,
        Self::Alertmanager,
        Self::Grafana,
        Self::Chat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::ServerChan => "serverchan",
            Self::Bark => "bark",
            Self::Gotify => "gotify",
            Self::Ntfy => "ntfy",
            Self::Alertmanager => "alertmanager",
            Self::Grafana => "grafana",
            Self::Chat => "chat",
        }
    }
}

/// Where a push token was refused: a route that creates messages, or the status API
/// (`/messages`). The chat never takes a token, so it has no series here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenRoute {
    Send(Endpoint),
    Status,
    /// `/groups`: managing groups with a personal token.
    Groups,
}

impl TokenRoute {
    pub const ALL: [TokenRoute; 9] = [
        Self::Send(Endpoint::Native),
        Self::Send(Endpoint::ServerChan),
        Self::Send(Endpoint::Bark),
        Self::Send(Endpoint::Gotify),
        Self::Send(Endpoint::Ntfy),
        Self::Send(Endpoint::Alertmanager),
        Self::Send(Endpoint::Grafana),
        Self::Status,
        Self::Groups,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send(endpoint) => endpoint.as_str(),
            Self::Status => "messages",
            Self::Groups => "groups",
        }
    }
}

/// How one attempt on a channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Delivered,
    /// A transient failure: tried again later (or cut off by shutdown).
    Retry,
    /// The channel gave up on the message (a permanent error, or its retry window ran
    /// out): it goes on to its next channel, or ends failed.
    Failed,
    /// The channel may or may not have delivered it and cannot say (an SMS that timed
    /// out): not retried there; the message goes on as after `Failed`.
    Unconfirmed,
}

impl AttemptOutcome {
    const ALL: [AttemptOutcome; 4] = [
        Self::Delivered,
        Self::Retry,
        Self::Failed,
        Self::Unconfirmed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Failed => "failed",
            Self::Unconfirmed => "unconfirmed",
        }
    }
}

/// How a request to `/wecom/callback` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallbackOutcome {
    /// The URL check (GET) passed.
    UrlCheck,
    /// A member's message or event was processed and answered (the reply may be empty).
    Answered,
    /// A valid callback the bot has nothing to say to (other events, message types).
    Ignored,
    /// A retry of a callback already processed: answered with the first reply.
    Duplicate,
    /// `msg_signature` did not match (wrong `wecom.callback_token`, or forged).
    BadSignature,
    /// Signed correctly, but its timestamp is further than `wecom.callback_max_age` away.
    Stale,
    /// Signed correctly, but could not be decrypted (wrong `encoding_aes_key`, another
    /// corp's ReceiveId).
    DecryptError,
    /// Missing query parameters, not XML, too large.
    BadRequest,
    /// Processing failed on our side (storage); WeCom's retry will try again.
    Error,
}

impl CallbackOutcome {
    const ALL: [CallbackOutcome; 9] = [
        Self::UrlCheck,
        Self::Answered,
        Self::Ignored,
        Self::Duplicate,
        Self::BadSignature,
        Self::Stale,
        Self::DecryptError,
        Self::BadRequest,
        Self::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::UrlCheck => "url_check",
            Self::Answered => "answered",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::DecryptError => "decrypt_error",
            Self::BadRequest => "bad_request",
            Self::Error => "error",
        }
    }
}

/// The WeCom API call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeComApi {
    GetToken,
    MessageSend,
    MediaUpload,
}

impl WeComApi {
    fn as_str(self) -> &'static str {
        match self {
            Self::GetToken => "gettoken",
            Self::MessageSend => "message/send",
            Self::MediaUpload => "media/upload",
        }
    }
}

/// What a failed WeCom call answered, as the `errcode` label: WeCom's own errcode, or
/// what kept it from giving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeComErrcode {
    /// `errcode` in WeCom's JSON answer (non-zero).
    Code(i64),
    /// No answer: refused, reset, timed out, proxy trouble (`transport`).
    Transport,
    /// An HTTP status other than 2xx (`http_502`).
    Http(u16),
    /// An answer that is not WeCom's JSON (`decode`).
    Decode,
    /// `errcode` 0, but the member listed in `invaliduser`/`unlicenseduser`
    /// (`invaliduser`).
    InvalidUser,
    /// Any errcode once [`MAX_ERRCODE_SERIES`] series exist (`other`).
    Other,
}

impl EncodeLabelValue for WeComErrcode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Code(code) => write!(encoder, "{code}"),
            Self::Transport => encoder.write_str("transport"),
            Self::Http(status) => write!(encoder, "http_{status}"),
            Self::Decode => encoder.write_str("decode"),
            Self::InvalidUser => encoder.write_str("invaliduser"),
            Self::Other => encoder.write_str("other"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabel {
    step: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChannelLabel {
    channel: ChannelName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    channel: ChannelName,
    outcome: &'static str,
}

/// A channel's label value is its stored name (`wecom`, a destination's name).
impl EncodeLabelValue for ChannelName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WeComErrorLabels {
    api: &'static str,
    errcode: WeComErrcode,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

struct Families {
    registry: Registry,
    accepted: Family<EndpointLabel, Counter>,
    delivered: Family<ChannelLabel, Counter>,
    failed: Family<ChannelLabel, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    latency: Histogram,
    queue_depth: Gauge,
    scheduled: Gauge,
    cancelled: Counter,
    group_copies: Counter,
    acknowledged: Family<ViaLabel, Counter>,
    time_to_ack: Histogram,
    escalations: Family<StepLabel, Counter>,
    scheduler_pass_age: Gauge<f64, AtomicU64>,
    oldest_due: Family<ChannelLabel, Gauge<f64, AtomicU64>>,
    wecom_errors: Family<WeComErrorLabels, Counter>,
    wecom_send_calls: Counter,
    wecom_recipient_sends: Counter,
    wecom_recipient_sends_today: Gauge,
    /// The China-time day `wecom_recipient_sends_today` counts, and its count so far.
    wecom_day: Mutex<(UnixMillis, i64)>,
    /// Series of `wecom_errors` created so far (for the cap).
    errcode_series: AtomicUsize,
    callbacks: Family<OutcomeLabel, Counter>,
    auth_refused: Family<EndpointLabel, Counter>,
}

/// The process's metrics; cheap to clone (all clones count into the same registry).
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let accepted: Family<EndpointLabel, Counter> = Family::default();
        let delivered: Family<ChannelLabel, Counter> = Family::default();
        let failed: Family<ChannelLabel, Counter> = Family::default();
        let attempts: Family<AttemptLabels, Counter> = Family::default();
        let latency = Histogram::new(LATENCY_BUCKETS);
        let queue_depth: Gauge = Gauge::default();
        let scheduled: Gauge = Gauge::default();
        let cancelled: Counter = Counter::default();
        let group_copies: Counter = Counter::default();
        let acknowledged: Family<ViaLabel, Counter> = Family::default();
        let time_to_ack = Histogram::new(LATENCY_BUCKETS);
        let escalations: Family<StepLabel, Counter> = Family::default();
        let scheduler_pass_age: Gauge<f64, AtomicU64> = Gauge::default();
        let oldest_due: Family<ChannelLabel, Gauge<f64, AtomicU64>> = Family::default();
        let wecom_errors: Family<WeComErrorLabels, Counter> = Family::default();
        let wecom_send_calls: Counter = Counter::default();
        let wecom_recipient_sends: Counter = Counter::default();
        let wecom_recipient_sends_today: Gauge = Gauge::default();
        let callbacks: Family<OutcomeLabel, Counter> = Family::default();
        let auth_refused: Family<EndpointLabel, Counter> = Family::default();
        // Every series of a fixed label set exists from the start (at 0), so that rate()
        // and alerts see the first increase.
        for endpoint in Endpoint::ALL {
            drop(accepted.get_or_create(&EndpointLabel {
                endpoint: endpoint.as_str(),
            }));
        }
        for channel in ChannelName::ALL {
            let label = ChannelLabel { channel };
            drop(delivered.get_or_create(&label));
            drop(oldest_due.get_or_create(&label));
            drop(failed.get_or_create(&label));
            for outcome in AttemptOutcome::ALL {
                drop(attempts.get_or_create(&AttemptLabels {
                    channel,
                    outcome: outcome.as_str(),
                }));
            }
        }
        for outcome in CallbackOutcome::ALL {
            drop(callbacks.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            }));
        }
        for route in TokenRoute::ALL {
            drop(auth_refused.get_or_create(&EndpointLabel {
                endpoint: route.as_str(),
            }));
        }

        let mut registry = Registry::with_prefix("pushbot");
        registry.register(
            "build",
            "The running pushbot's version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register(
            "messages_accepted",
            "Messages accepted (stored for delivery), by the endpoint they came in on; repeats of an Idempotency-Key are not counted",
            accepted.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages delivered, by channel (a channel=all message counts on each channel that delivered it; a digest counts every message it carried)",
            delivered.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages that ended failed, by the last channel tried",
            failed.clone(),
        );
        registry.register(
            "channel_attempts",
            "Delivery attempts by channel and outcome: delivered, retry (transient failure), failed (the channel gave up: the message goes on to its next channel or fails)",
            attempts.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from acceptance to delivery, per delivered message (all channels together)",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages queued for delivery (in the database, all instances), counted at scrape time",
            queue_depth.clone(),
        );
        registry.register(
            "queue_scheduled",
            "Messages scheduled for later (the sender's delay or at, or held by quiet hours), in the database (all instances), counted at scrape time",
            scheduled.clone(),
        );
        registry.register(
            "messages_cancelled",
            "Messages cancelled by their sender before they went out (DELETE /messages/{id})",
            cancelled.clone(),
        );
        registry.register(
            "acknowledgements",
            "Messages acknowledged (issue 30), by how: api, chat, page or card",
            acknowledged.clone(),
        );
        registry.register_with_unit(
            "time_to_acknowledge",
            "From a message's acceptance to its acknowledgement",
            Unit::Seconds,
            time_to_ack.clone(),
        );
        registry.register(
            "escalations",
            "Escalation steps taken for messages nobody acknowledged in time, by step (1: sent again on the member's next channels)",
            escalations.clone(),
        );
        registry.register(
            "group_recipients",
            "Recipient-sends of group messages: each group message accepted adds one per member it goes to (muted members not counted); increase(…[1d]) is the day's figure. WeCom's corp-wide daily budget (seats × 200) counts every recipient of every app message: compare it with pushbot_wecom_recipient_sends_today",
            group_copies.clone(),
        );
        registry.register_with_unit(
            "scheduler_last_pass_age",
            "Time since the delivery scheduler last began a pass (at least one a second while it runs; /healthz answers 503 beyond delivery.stall_after), at scrape time",
            Unit::Seconds,
            scheduler_pass_age.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_due_age",
            "How long the oldest message that could be sent now (its member's limits, backoff and channel allow it) has waited, by its next channel, at scrape time; 0 when none waits",
            Unit::Seconds,
            oldest_due.clone(),
        );
        registry.register(
            "wecom_errors",
            "Failed WeCom API calls by API and errcode (transport: no answer; http_NNN: HTTP status; decode: not WeCom's JSON; invaliduser: errcode 0 but a member was not reached, counted once per such member)",
            wecom_errors.clone(),
        );
        registry.register(
            "wecom_send_calls",
            "message/send calls made to WeCom (each may name several members, touser=a|b|c: copies of one group message with the same body are sent together); wecom_recipient_sends_total / wecom_send_calls_total is the batching ratio",
            wecom_send_calls.clone(),
        );
        registry.register(
            "wecom_recipient_sends",
            "Recipients WeCom accepted app messages for (one per member reached, whether the call named one member or several; members WeCom named in invaliduser are not counted): what WeCom's corp-wide daily budget (seats × 200) counts",
            wecom_recipient_sends.clone(),
        );
        registry.register(
            "wecom_recipient_sends_today",
            "Recipients WeCom accepted app messages for since 00:00 China time (UTC+8, where WeCom's daily budget of seats × 200 is counted), by this instance only (several instances: sum them); 0 again at the day boundary",
            wecom_recipient_sends_today.clone(),
        );
        registry.register(
            "callbacks",
            "Requests to /wecom/callback by outcome",
            callbacks.clone(),
        );
        registry.register(
            "auth_refused",
            "Requests refused for a missing or invalid push token, by endpoint (messages: the status API); the log sums them up per client address once a minute",
            auth_refused.clone(),
        );
        Self(Arc::new(Families {
            registry,
            accepted,
            delivered,
            failed,
            attempts,
            latency,
            queue_depth,
            scheduled,
            cancelled,
            group_copies,
            acknowledged,
            time_to_ack,
            escalations,
            scheduler_pass_age,
            oldest_due,
            wecom_errors,
            wecom_send_calls,
            wecom_recipient_sends,
            wecom_recipient_sends_today,
            wecom_day: Mutex::new((UnixMillis::now().start_of_day(WECOM_DAY_UTC_OFFSET), 0)),
            errcode_series: AtomicUsize::new(0),
            callbacks,
            auth_refused,
        }))
    }

    /// A message was stored for delivery (not a repeat of an idempotency key).
    pub fn accepted(&self, endpoint: Endpoint) {
        self.0
            .accepted
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.as_str(),
            })
            .inc();
    }

    /// `n` attempts on `channel` ended this way.
    pub fn attempts(&self, channel: ChannelName, outcome: AttemptOutcome, n: u64) {
        self.0
            .attempts
            .get_or_create(&AttemptLabels {
                channel,
                outcome: outcome.as_str(),
            })
            .inc_by(n);
    }

    /// `channel` delivered a message accepted at `accepted_at`.
    pub fn delivered(&self, channel: ChannelName, accepted_at: UnixMillis) {
        self.0
            .delivered
            .get_or_create(&ChannelLabel { channel })
            .inc();
        let latency = UnixMillis::now().since(accepted_at);
        self.0.latency.observe(latency.as_secs_f64());
    }

    /// `n` messages ended failed, `channel` the last one tried.
    pub fn failed(&self, channel: ChannelName, n: u64) {
        self.0
            .failed
            .get_or_create(&ChannelLabel { channel })
            .inc_by(n);
    }

    /// A WeCom API call failed.
    pub fn wecom_error(&self, api: WeComApi, errcode: WeComErrcode) {
        let family = &self.0.wecom_errors;
        let mut labels = WeComErrorLabels {
            api: api.as_str(),
            errcode,
        };
        if let Some(counter) = family.get(&labels) {
            counter.inc();
            return;
        }
        // A new series (two racing callers may both count one: the cap is then reached
        // a little early, never exceeded).
        if self.0.errcode_series.fetch_add(1, Ordering::Relaxed) >= MAX_ERRCODE_SERIES {
            labels.errcode = WeComErrcode::Other;
        }
        family.get_or_create(&labels).inc();
    }

    /// One `message/send` call is being made to WeCom (however many members it names).
    pub fn wecom_send_call(&self) {
        self.0.wecom_send_calls.inc();
    }

    /// WeCom accepted an app message for `n` recipients.
    pub fn wecom_recipient_sends(&self, n: u64) {
        self.wecom_recipient_sends_at(n, UnixMillis::now());
    }

    fn wecom_recipient_sends_at(&self, n: u64, now: UnixMillis) {
        self.0.wecom_recipient_sends.inc_by(n);
        self.roll_wecom_day(now, i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Adds `n` to today's recipient-sends, starting again from 0 when `now` is in a later
    /// China-time day than the count so far, and shows the result.
    fn roll_wecom_day(&self, now: UnixMillis, n: i64) {
        let today = now.start_of_day(WECOM_DAY_UTC_OFFSET);
        let mut day = self
            .0
            .wecom_day
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if day.0 != today {
            *day = (today, 0);
        }
        day.1 = day.1.saturating_add(n);
        self.0.wecom_recipient_sends_today.set(day.1);
    }

    /// A request on `route` was refused for its push token (missing or invalid).
    pub fn auth_refused(&self, route: TokenRoute) {
        self.0
            .auth_refused
            .get_or_create(&EndpointLabel {
                endpoint: route.as_str(),
            })
            .inc();
    }

    pub fn callback(&self, outcome: CallbackOutcome) {
        self.0
            .callbacks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Sets the queue depth (counted by the caller at scrape time).
    pub fn set_queue_depth(&self, queued: i64) {
        self.0.queue_depth.set(queued);
    }

    /// Sets how many messages are scheduled (counted by the caller at scrape time).
    pub fn set_scheduled(&self, scheduled: i64) {
        self.0.scheduled.set(scheduled);
    }

    /// A sender cancelled a message.
    pub fn cancelled(&self) {
        self.0.cancelled.inc();
    }

    /// A message was acknowledged `via` a way, `after` its acceptance.
    pub fn acknowledged(&self, via: &'static str, after: std::time::Duration) {
        self.0.acknowledged.get_or_create(&ViaLabel { via }).inc();
        self.0.time_to_ack.observe(after.as_secs_f64());
    }

    /// An escalation step was taken.
    pub fn escalated(&self, step: u8) {
        self.0.escalations.get_or_create(&StepLabel { step }).inc();
    }

    /// A group message was accepted with `n` copies to send (issue 29).
    pub fn group_copies(&self, n: u64) {
        self.0.group_copies.inc_by(n);
    }

    /// Sets the delivery figures `/healthz` reports (read by the caller at scrape time):
    /// the scheduler's last pass age, and the oldest due message's wait per channel
    /// (channels missing from `oldest` have none waiting).
    /// When the database could not say (`oldest` is `None`), those gauges keep their last
    /// values rather than failing the scrape.
    pub fn set_delivery(
        &self,
        pass_age: std::time::Duration,
        oldest: Option<&[(ChannelName, f64)]>,
    ) {
        self.0.scheduler_pass_age.set(pass_age.as_secs_f64());
        let Some(oldest) = oldest else {
            return;
        };
        for channel in ChannelName::ALL {
            let age = oldest
                .iter()
                .find(|(c, _)| *c == channel)
                .map_or(0.0, |(_, a)| *a);
            self.0
                .oldest_due
                .get_or_create(&ChannelLabel { channel })
                .set(age);
        }
    }

    /// Everything, in OpenMetrics text (`openmetrics`) or the Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        // A quiet night must not show yesterday's figure as today's.
        self.roll_wecom_day(UnixMillis::now(), 0);
        let mut out = String::with_capacity(8 * 1024);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.0.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.0.registry)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn counts_show_up_under_their_names_and_labels() {
        let m = Metrics::new();
        m.accepted(Endpoint::Bark);
        m.accepted(Endpoint::Bark);
        m.attempts(ChannelName::WeCom, AttemptOutcome::Retry, 3);
        m.delivered(
            ChannelName::WeCom,
            UnixMillis::now() - std::time::Duration::from_millis(1500),
        );
        m.failed(ChannelName::Email, 1);
        m.wecom_error(WeComApi::MessageSend, WeComErrcode::Code(81013));
        m.wecom_error(WeComApi::GetToken, WeComErrcode::Transport);
        m.wecom_error(WeComApi::MessageSend, WeComErrcode::Http(502));
        m.callback(CallbackOutcome::Duplicate);
        m.auth_refused(TokenRoute::Send(Endpoint::Gotify));
        m.auth_refused(TokenRoute::Status);
        m.auth_refused(TokenRoute::Status);
        m.set_queue_depth(7);
        m.set_scheduled(3);
        m.cancelled();
        for openmetrics in [true, false] {
            let text = m.encode(openmetrics).unwrap();
            let v = |series: &str| {
                value(&text, series).unwrap_or_else(|| panic!("{series} in:\n{text}"))
            };
            assert_eq!(
                v(r#"pushbot_messages_accepted_total{endpoint="bark"}"#),
                2.0
            );
            assert_eq!(
                v(r#"pushbot_messages_accepted_total{endpoint="native"}"#),
                0.0
            );
            assert_eq!(
                v(r#"pushbot_channel_attempts_total{channel="wecom",outcome="retry"}"#),
                3.0
            );
            assert_eq!(
                v(r#"pushbot_messages_delivered_total{channel="wecom"}"#),
                1.0
            );
            assert_eq!(v(r#"pushbot_messages_failed_total{channel="email"}"#), 1.0);
            assert_eq!(v("pushbot_delivery_latency_seconds_count"), 1.0);
            // OpenMetrics writes bounds as floats ("1.0"), the 0.0.4 text format as Go does ("1").
            let one = if openmetrics { "1.0" } else { "1" };
            assert_eq!(
                v(&format!(
                    r#"pushbot_delivery_latency_seconds_bucket{{le="{one}"}}"#
                )),
                0.0
            );
            assert_eq!(
                v(r#"pushbot_delivery_latency_seconds_bucket{le="2.5"}"#),
                1.0
            );
            assert!(v("pushbot_delivery_latency_seconds_sum") >= 1.5);
            assert_eq!(
                v(r#"pushbot_wecom_errors_total{api="message/send",errcode="81013"}"#),
                1.0
            );
            assert_eq!(
                v(r#"pushbot_wecom_errors_total{api="gettoken",errcode="transport"}"#),
                1.0
            );
            assert_eq!(
                v(r#"pushbot_wecom_errors_total{api="message/send",errcode="http_502"}"#),
                1.0
            );
            assert_eq!(v(r#"pushbot_callbacks_total{outcome="duplicate"}"#), 1.0);
            assert_eq!(v(r#"pushbot_callbacks_total{outcome="url_check"}"#), 0.0);
            assert_eq!(v(r#"pushbot_auth_refused_total{endpoint="gotify"}"#), 1.0);
            assert_eq!(v(r#"pushbot_auth_refused_total{endpoint="messages"}"#), 2.0);
            assert_eq!(v(r#"pushbot_auth_refused_total{endpoint="native"}"#), 0.0);
            assert_eq!(
                value(&text, r#"pushbot_auth_refused_total{endpoint="chat"}"#),
                None
            );
            assert_eq!(v("pushbot_queue_depth"), 7.0);
            assert_eq!(v("pushbot_queue_scheduled"), 3.0);
            assert_eq!(v("pushbot_messages_cancelled_total"), 1.0);
            assert_eq!(
                v(&format!(
                    r#"pushbot_build_info{{version="{}"}}"#,
                    env!("CARGO_PKG_VERSION")
                )),
                1.0
            );
            assert!(text.contains("# TYPE pushbot_delivery_latency_seconds histogram"));
            assert_eq!(text.ends_with("# EOF\n"), openmetrics, "{text}");
        }
    }

    #[test]
    fn recipient_sends_count_per_china_day_and_start_again_at_its_midnight() {
        let m = Metrics::new();
        // 2026-12-07 15:59:59.999 UTC is 23:59:59.999 in China; a millisecond later the
        // next day begins there.
        let before = UnixMillis::from_millis(1_796_659_199_999);
        let after = UnixMillis::from_millis(1_796_659_200_000);
        assert_eq!(after.start_of_day(WECOM_DAY_UTC_OFFSET), after);
        m.wecom_send_call();
        m.wecom_send_call();
        m.wecom_recipient_sends_at(3, before);
        m.wecom_recipient_sends_at(2, before);
        let today = |m: &Metrics| m.0.wecom_recipient_sends_today.get();
        assert_eq!(today(&m), 5);
        m.wecom_recipient_sends_at(1, after);
        assert_eq!(today(&m), 1, "the new day starts from 0");
        // A scrape in a later day with nothing sent shows 0, not the day before's count.
        m.roll_wecom_day(after + std::time::Duration::from_secs(86_400), 0);
        assert_eq!(today(&m), 0);
        let text = m.encode(false).unwrap();
        assert_eq!(
            value(&text, "pushbot_wecom_recipient_sends_total"),
            Some(6.0)
        );
        assert_eq!(value(&text, "pushbot_wecom_send_calls_total"), Some(2.0));
        assert!(
            text.contains("# TYPE pushbot_wecom_recipient_sends_today gauge"),
            "{text}"
        );
    }

    #[test]
    fn errcodes_beyond_the_cap_count_as_other() {
        let m = Metrics::new();
        for code in 0..(MAX_ERRCODE_SERIES as i64 + 10) {
            m.wecom_error(WeComApi::MessageSend, WeComErrcode::Code(90_000 + code));
        }
        // A code already seen keeps its own series.
        m.wecom_error(WeComApi::MessageSend, WeComErrcode::Code(90_000));
        let text = m.encode(false).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("pushbot_wecom_errors_total{"))
            .count();
        assert_eq!(series, MAX_ERRCODE_SERIES + 1, "{text}");
        assert_eq!(
            value(
                &text,
                r#"pushbot_wecom_errors_total{api="message/send",errcode="other"}"#
            ),
            Some(10.0)
        );
        assert_eq!(
            value(
                &text,
                r#"pushbot_wecom_errors_total{api="message/send",errcode="90000"}"#
            ),
            Some(2.0)
        );
    }
}
