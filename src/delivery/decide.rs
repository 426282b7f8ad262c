//! What a lane worker decides, apart from doing it: whether and how to try its lane's head
//! now ([`admit`], [`next_action`]), what goes out ([`outbound`], [`compose_digest`]) and
//! what a try's outcome means ([`settle_outcome`], [`give_up`], [`cut_off`]) — the record
//! to write, what the channel's health learns, what to count and what the lane does next.
//!
//! Pure: the clock is passed in (a [`UnixMillis`]), and so are the backoff's jitter and the ids a
//! digest is given, so that every rule is tested exactly, without a database, a channel or
//! sleeping. The scheduler keeps only the effects — reading, sending, recording, counting,
//! logging and waiting — and asks here in between. Interleaved with the awaits that carry
//! them out, the rules could be checked only end to end, through the integration suite
//! and its timing; here each is checked on its own.
//!
//! Why [`next_action`] *asks* for what it needs instead of being handed everything: each
//! answer costs something, and most heads need none of them. A channel without rate
//! windows needs no send history; the lane's waiting messages are read only for a member
//! the limits already hold back (to plan a digest); and the channel's health gate is asked
//! last, only when nothing else holds the head back, because asking it while the channel
//! is down reserves the channel's one probe — which must then be tried or handed back.

use std::time::Duration;

use super::health::Gate;
use super::limits::{self, Plan, RateWindow};
use super::next_step::{self, Failure, NextStep, Tried};
use super::quiet::MemberHours;
use super::{Attachments, ChannelError, INTERRUPTED, backoff, digest};
use crate::config::DeliverySettings;
use crate::domain::{ChannelName, Format, Look, MessageId, Outbound, OutboundAttachment, Part};
use crate::metrics::AttemptOutcome;
use crate::store::{AttemptUpdate, Digest, Message, Waiting};
use crate::time::UnixMillis;

/// Sends per claim before a worker lets its lane go to the back of the queue.
pub const LANE_BUDGET: usize = 64;
/// Time per claim before a worker lets its lane go to the back of the queue.
pub const LANE_TIME: Duration = Duration::from_secs(5);

// ---- the lane's head ------------------------------------------------------------------

/// A worker's claim and its lane's head, as [`admit`] needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneView {
    /// When the head is due: a head in backoff holds the whole lane back.
    pub due_at: UnixMillis,
    /// The channel the head is to be tried on (its route's first).
    pub channel: ChannelName,
    /// Sends made in this claim so far.
    pub sent: usize,
    /// How long the lane has been claimed.
    pub held: Duration,
    /// When the member's quiet hours hold the head: until then ([`quiet_hold`]).
    pub quiet_until: Option<UnixMillis>,
}

/// Whether the worker goes on with its head now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit<S> {
    /// Yes, on this channel (the `slot` given to [`admit`]).
    Go(S),
    /// Give the lane up until then.
    Release(UnixMillis),
    /// Hold the head for the member's quiet hours until then (it leaves the lane: the
    /// messages behind it go on).
    Hold(UnixMillis),
    /// The head's channel is not configured here: the head gives up on it (goes on to its
    /// next channel, or ends) without a try.
    GiveUp(String),
}

/// Whether to go on with the lane's head now. `slot` is the head's channel if this server
/// has it (whatever the caller works with; handed back in [`Admit::Go`]).
///
/// A head not yet due releases the lane until it is (later messages wait behind it: the
/// lane's order). A due head the member's quiet hours hold is held, never tried (the lane
/// goes on with the messages behind it). A worker that has made [`LANE_BUDGET`] sends or
/// held the lane for [`LANE_TIME`] lets it go to the back of the queue, so that a long lane
/// does not keep the others waiting.
pub fn admit<S>(view: &LaneView, slot: Option<S>, now: UnixMillis) -> Admit<S> {
    if view.due_at > now {
        return Admit::Release(view.due_at);
    }
    if let Some(until) = view.quiet_until {
        return Admit::Hold(until);
    }
    if view.sent >= LANE_BUDGET || view.held >= LANE_TIME {
        return Admit::Release(now);
    }
    match slot {
        Some(slot) => Admit::Go(slot),
        None => Admit::GiveUp(format!(
            "{} is not configured on this server",
            view.channel.label()
        )),
    }
}

/// What the worker knows about the head's channel so far, as [`next_action`] needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotView<'a> {
    /// The channel's per-recipient rate windows (`[]`: none).
    pub windows: &'a [RateWindow],
    /// `delivery.digest_after`, if the head may go in a digest on the channel
    /// ([`digestible`]); `None`: it goes alone.
    pub digest_after: Option<Duration>,
    /// The head waited for the member's quiet hours to end ([`quiet_burst`]): when others
    /// wait with it, they all go as one digest at once, not one by one.
    pub burst: bool,
    /// When messages were sent to the member on the channel (ascending), once read.
    pub history: Option<&'a [UnixMillis]>,
    /// When the lane's messages waiting for the channel were accepted (lane order, head
    /// first), once read.
    pub waiting: Option<&'a [UnixMillis]>,
    /// The channel's health gate, once asked.
    pub gate: Option<Gate>,
}

/// What the worker does next with an admitted head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneAction {
    /// Give the lane up until then: the member's limits, or the channel is down.
    Release(UnixMillis),
    /// Read the member's send history on the channel, then ask again.
    ReadHistory,
    /// Read the lane's waiting messages, then ask again.
    ReadWaiting,
    /// Ask the channel's health gate, then ask again.
    AskGate,
    /// Try the head alone; `probe`: as the one probe of a channel that is down.
    Send { probe: bool },
    /// Try one digest carrying the waiting messages (the head first).
    Digest { probe: bool },
}

/// Send, digest, wait, or first find out more. The order matters: the member's limits
/// first (a head that may not be sent must not take the channel's probe), the digest rule
/// when the limits would hold the lane back, the health gate last.
pub fn next_action(view: &SlotView<'_>, now: UnixMillis) -> LaneAction {
    // A channel without windows sends at once.
    let digest = if view.windows.is_empty() {
        false
    } else {
        let Some(history) = view.history else {
            return LaneAction::ReadHistory;
        };
        match by_limits(view, history, now) {
            Ok(digest) => digest,
            Err(action) => return action,
        }
    };
    let probe = match view.gate {
        None => return LaneAction::AskGate,
        Some(Gate::Closed(at)) => return LaneAction::Release(at),
        Some(Gate::Probe) => true,
        Some(Gate::Open) => false,
    };
    if digest {
        LaneAction::Digest { probe }
    } else {
        LaneAction::Send { probe }
    }
}

/// By the member's limits and the digest rule: send alone (`false`), send a digest
/// (`true`), or what comes first. The waiting messages are needed only when one more send
/// now would leave no room for the next.
fn by_limits(
    view: &SlotView<'_>,
    history: &[UnixMillis],
    now: UnixMillis,
) -> Result<bool, LaneAction> {
    let first = limits::next_slot(now, history, view.windows);
    if first > now {
        return Err(LaneAction::Release(first));
    }
    let Some(digest_after) = view.digest_after else {
        return Ok(false);
    };
    if view.burst {
        let Some(waiting) = view.waiting else {
            return Err(LaneAction::ReadWaiting);
        };
        if waiting.len() > 1 {
            return Ok(true);
        }
    }
    let mut after_one = history.to_vec();
    after_one.push(now);
    if limits::next_slot(now, &after_one, view.windows) <= now {
        return Ok(false);
    }
    let Some(waiting) = view.waiting else {
        return Err(LaneAction::ReadWaiting);
    };
    match limits::plan(now, history, view.windows, waiting, Some(digest_after)) {
        Plan::Digest => Ok(true),
        Plan::Send => Ok(false),
        Plan::WaitUntil(at) => Err(LaneAction::Release(at)),
    }
}

/// Whether a digest on `channel` (which `digests`, by its capabilities) may carry the
/// message: the same messages `Store::lane_waiting` reads — on their route's first
/// channel, neither for every channel nor to a fixed address, and without images or files
/// (a digest line has no room for them: such a message goes alone, part by part).
pub fn digestible(message: &Message, channel: ChannelName, digests: bool) -> bool {
    digests
        && message.route.first() == channel
        && !message.deliver_all
        && message.address_to.is_none()
        && message.media_count == 0
}

/// Until when the member's quiet hours hold the lane's head if it were tried `now`: the
/// end of their window, for a message the window holds (all but urgent ones; all when
/// `strict`). A backlog that reaches the window, or a window set after the message was
/// accepted, is held here rather than sent. A verification code the member just asked
/// for in the chat (`address_to`) is never held, nor is the rest of a message whose first
/// parts were delivered (its text arrived: its images and files follow it).
pub fn quiet_hold(head: &Message, quiet: &MemberHours, now: UnixMillis) -> Option<UnixMillis> {
    if head.address_to.is_some() || head.parts_done > 0 {
        return None;
    }
    quiet.hold_until(now, head.urgent)
}

/// `delivery.digest_after` (`setting`) for the lane's head on `channel`, if it may go in a
/// digest ([`digestible`]) — but never while the member's quiet window is on: a head that
/// goes then is one the window lets through (urgent), and a digest would carry with it the
/// messages behind it that the window holds.
pub fn digest_after(
    setting: Option<Duration>,
    head: &Message,
    channel: ChannelName,
    digests: bool,
    quiet: &MemberHours,
    now: UnixMillis,
) -> Option<Duration> {
    setting.filter(|_| digestible(head, channel, digests) && !quiet.is_quiet(now))
}

/// Whether the head waited for its member's quiet hours to end (it was held for them and
/// released): what waited with it goes as one digest, if it may go in one at all
/// (`digest_after` is `Some`).
pub fn quiet_burst(head: &Message, digest_after: Option<Duration>) -> bool {
    digest_after.is_some() && head.held == Some(crate::store::Held::Quiet)
}

/// Whether a worker whose lane ran empty waits a moment for the member's next message
/// (each give-up and re-claim costs database round trips): only while a slot is free for
/// another member's lane, and while its claim has time left.
pub fn lingers(held: Duration, slot_free: bool) -> bool {
    slot_free && held < LANE_TIME
}

// ---- what goes out --------------------------------------------------------------------

/// The head as its channel is given it. `address`: where it goes on a channel that needs
/// one.
pub fn outbound(head: &Message, address: Option<String>) -> Outbound {
    Outbound {
        id: head.id.clone(),
        userid: head.userid.clone(),
        title: head.title.clone(),
        content: head.content.clone(),
        address,
        format: head.format,
        look: head.look,
        url: head.url.clone(),
        page_key: head.page_key.clone(),
        verification: head.address_to.is_some(),
        attachments: Vec::new(),
        part: Part::Whole,
        group_send: head.group_send.clone(),
    }
}

// ---- images and files -----------------------------------------------------------------

/// The parts of a message with `attachments` on a channel that carries them `how`: the
/// label of each, its text first (`text`, `image chart.png`, `file report.pdf`). `None`
/// when the message goes whole: it has no attachments, or the channel bundles or links
/// them.
pub fn parts(how: Attachments, attachments: &[OutboundAttachment]) -> Option<Vec<String>> {
    if how != Attachments::Separate || attachments.is_empty() {
        return None;
    }
    let mut labels = vec!["text".to_owned()];
    labels.extend(attachments.iter().map(OutboundAttachment::label));
    Some(labels)
}

/// Which part of a message sent part by part is next, `parts_done` having been delivered:
/// its text first, then each attachment. A count past the last (never written) sends the
/// last again rather than nothing: at least once.
pub fn next_part(parts_done: i64, attachments: usize) -> Part {
    match usize::try_from(parts_done) {
        Ok(0) | Err(_) => Part::Text,
        Ok(done) => Part::Attachment((done - 1).min(attachments.saturating_sub(1))),
    }
}

/// The part's place among the message's parts (0: the text).
pub fn part_index(part: Part) -> usize {
    match part {
        Part::Whole | Part::Text => 0,
        Part::Attachment(i) => i + 1,
    }
}

/// `out` (the head as [`outbound`] made it) with its attachments, as the channel carries
/// them `how`: the next part of it where they are sent separately (`parts_done` delivered
/// already); all of them with the text where they are bundled; where they are linked, a
/// line naming them with the address of the message's page (`page_url`) at the end of the
/// content — the content cut (with "…") where the whole would not fit in
/// `max_text_bytes` with room to spare, so that the line is not what a channel cuts off.
pub fn with_attachments(
    mut out: Outbound,
    attachments: Vec<OutboundAttachment>,
    how: Attachments,
    parts_done: i64,
    page_url: Option<&str>,
    max_text_bytes: usize,
) -> Outbound {
    if attachments.is_empty() {
        return out;
    }
    match how {
        Attachments::Separate => out.part = next_part(parts_done, attachments.len()),
        Attachments::Bundled => out.part = Part::Whole,
        Attachments::Linked => {
            let line = attachment_line(&attachments, page_url, out.format == Format::Markdown);
            out.content = Some(match out.content.take().filter(|c| !c.trim().is_empty()) {
                None => line,
                Some(content) => {
                    let title = out.title.as_deref().map_or(0, str::len);
                    let room = max_text_bytes
                        .saturating_sub(title + line.len() + LINKED_SLACK)
                        .max(LINKED_MIN_CONTENT);
                    let content = content.trim_end();
                    if content.len() <= room {
                        format!("{content}\n\n{line}")
                    } else {
                        let cut = crate::render::cut::excerpt(content, room);
                        format!("{cut}\n\n{line}")
                    }
                }
            });
        }
    }
    out.attachments = attachments;
    out
}

/// Bytes a linked channel's text keeps free besides the title, the content and the
/// attachment line: blank lines, a sender's link, markers.
const LINKED_SLACK: usize = 320;
/// The content is never cut shorter than this for the attachment line.
const LINKED_MIN_CONTENT: usize = 64;

/// `📎 2 个附件 files: chart.png, report.pdf → https://…/m/{id}?k=…`: how a channel that
/// cannot carry files names them. In markdown, the names' markup characters are escaped
/// (a file called `a_b_c.txt` is not italics).
pub fn attachment_line(
    attachments: &[OutboundAttachment],
    page_url: Option<&str>,
    markdown: bool,
) -> String {
    let names: Vec<String> = attachments
        .iter()
        .map(|a| {
            if markdown {
                escape_markdown(&a.filename)
            } else {
                a.filename.clone()
            }
        })
        .collect();
    let n = attachments.len();
    let noun = if n == 1 { "file" } else { "files" };
    let mut line = format!("📎 {n} 个附件 {noun}: {}", names.join(", "));
    if let Some(page) = page_url {
        line.push_str(&format!(" → {page}"));
    }
    line
}

/// Markdown's markup characters backslash-escaped.
fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '#' | '<' | '>' | '!' | '|' | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A digest's own page: its id and key, drawn by the caller (they are random), and the
/// page's address.
#[derive(Debug, Clone)]
pub struct DigestPage {
    pub id: MessageId,
    pub key: String,
    pub url: String,
}

/// A digest ready to go.
#[derive(Debug, Clone)]
pub struct ComposedDigest {
    /// What the channel is given.
    pub outbound: Outbound,
    /// What is recorded once it is delivered.
    pub record: Digest,
    /// When each carried message was accepted (its delivery latency is counted from then).
    pub carried_at: Vec<UnixMillis>,
}

/// One digest carrying every message of `waiting` (the head first) for the head's member,
/// its text at most `max_text_bytes` (times shown at `utc_offset` seconds from UTC).
pub fn compose_digest(
    head: &Message,
    waiting: Vec<Waiting>,
    address: Option<String>,
    page: DigestPage,
    max_text_bytes: usize,
    utc_offset: i32,
) -> ComposedDigest {
    // Markdown shows as readable text in a digest line, not as `**`/`##`.
    let excerpts: Vec<Option<String>> = waiting
        .iter()
        .map(|w| match (&w.excerpt, w.markdown) {
            (Some(e), true) => Some(crate::render::markdown::to_plain_text(e)),
            (e, _) => e.clone(),
        })
        .collect();
    let items: Vec<digest::Item<'_>> = waiting
        .iter()
        .zip(&excerpts)
        .map(|(w, excerpt)| digest::Item {
            created_at: w.created_at,
            title: w.title.as_deref(),
            content: excerpt.as_deref(),
            partial: w.partial,
        })
        .collect();
    // The digest carries every waiting message; those its text has no room for (or shows
    // cut short) are in full on its page.
    let body = digest::compose(&items, max_text_bytes, utc_offset, &page.url).text;
    let carried_at: Vec<UnixMillis> = waiting.iter().map(|w| w.created_at).collect();
    let carried: Vec<MessageId> = waiting.into_iter().map(|w| w.id).collect();
    ComposedDigest {
        outbound: Outbound {
            id: page.id.clone(),
            userid: head.userid.clone(),
            title: None,
            content: Some(body.clone()),
            address,
            format: Format::Text,
            look: Look::Text,
            url: None,
            page_key: None,
            verification: false,
            attachments: Vec::new(),
            part: Part::Whole,
            group_send: None,
        },
        record: Digest {
            id: page.id.to_string(),
            userid: head.userid.clone(),
            body,
            carried,
            page_key: page.key,
        },
        carried_at,
    }
}

// ---- what an outcome means ------------------------------------------------------------

/// What an attempt leaves the lane to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Go on with the next message.
    Next,
    /// The head stays queued on its next channel: read the lane again.
    Reread,
    /// Give the lane up until then (backoff, shutdown, an unrecorded outcome).
    Release(UnixMillis),
}

impl After {
    /// What the lane does instead when the outcome could not be recorded. The message is
    /// still queued as it was, so it is tried again (at least once, never lost): the lane
    /// is given up at once — or when it was being given up until later anyway (a retry
    /// keeps its time).
    pub fn unrecorded(self, now: UnixMillis) -> After {
        match self {
            Self::Release(at) => Self::Release(at),
            Self::Next | Self::Reread => Self::Release(now),
        }
    }
}

/// What the channel's health learns from an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learnt {
    /// Nothing: nothing was tried, or the channel's answer says nothing either way.
    Nothing,
    /// The channel answered.
    Reachable,
    /// The channel did not answer the try (which started at the attempt's `sent_at`).
    Unreachable { reason: String },
}

/// What is counted once the outcome is recorded (on the attempt's channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub outcome: AttemptOutcome,
    /// When each message it delivered was accepted.
    pub delivered: Vec<UnixMillis>,
    /// The message ended failed.
    pub failed: bool,
}

/// Everything an outcome means. The scheduler applies it in this order: the health, the
/// history, the record; the counts and `after` only once the record is committed (see
/// [`After::unrecorded`]).
#[derive(Debug, Clone)]
pub struct Settlement {
    pub update: AttemptUpdate,
    pub learnt: Learnt,
    /// A send at this time counts against the member's limits on the channel (the
    /// worker's copy of the send history gets it).
    pub sent: Option<UnixMillis>,
    pub count: Count,
    pub after: After,
}

/// One try, as what its outcome means depends on it.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The head as read before the try.
    pub head: &'a Message,
    pub channel: ChannelName,
    /// When the try started.
    pub sent_at: UnixMillis,
    /// The digest it went as, with when each carried message was accepted; `None`: alone.
    pub digest: Option<(Digest, Vec<UnixMillis>)>,
    /// The part it was, of a message sent part by part ([`parts`]); `None`: whole.
    pub part: Option<PartOf<'a>>,
}

/// One part of a message sent part by part.
#[derive(Debug, Clone, Copy)]
pub struct PartOf<'a> {
    /// Its place (0: the text).
    pub index: usize,
    /// Every part's label, the text first ([`parts`]).
    pub labels: &'a [String],
}

impl PartOf<'_> {
    fn is_last(&self) -> bool {
        self.index + 1 >= self.labels.len()
    }

    /// `part 2 of 3 (image chart.png)`.
    fn note(&self) -> String {
        format!(
            "part {} of {} ({})",
            self.index + 1,
            self.labels.len(),
            self.labels.get(self.index).map_or("?", String::as_str)
        )
    }

    /// What an error of this part says first, when earlier parts were delivered:
    /// `text delivered; image chart.png: `.
    fn context(&self) -> Option<String> {
        let delivered = self.labels.get(..self.index).filter(|d| !d.is_empty())?;
        Some(format!(
            "{} delivered; {}: ",
            delivered.join(", "),
            self.labels.get(self.index).map_or("?", String::as_str)
        ))
    }
}

/// What the outcome of `attempt` means, `now` being when it came back. `jitter` is a
/// uniform sample from `[0, 1)` for the backoff of a transient failure.
///
/// - Delivered: the message is done, or (a `deliver_all` message) goes on to the rest of
///   its route; a digest delivers everything it carried.
/// - Permanent: the channel answered; the message goes on to its next channel, or ends
///   ([`next_step`]). Of a digest, only the head gives up: the others are tried on their
///   own next, and fall back on their own if they fail too.
/// - Transient: tried again at the backoff time, but at the end of the retry window at the
///   latest; given up only when a try that started there failed. `unreachable` marks the
///   channel down.
/// - Unconfirmed: not sent again on this channel (it may be billed and shown twice): it is
///   recorded as unconfirmed and goes on as after a permanent failure. The channel
///   answered this try (the look-up that could not tell was an answer), so it counts as
///   reachable: a probe that ends unconfirmed must not leave a down channel waiting for a
///   probe outcome that never comes.
/// - A part of a message sent part by part ([`PartOf`]) that is not its last, delivered:
///   recorded as such (`part 1 of 3 (text)`), counted as a send, and the message stays
///   queued and due now, for its next part. Any part failing is taken as the message
///   failing above, but only that part is tried again; when earlier parts were delivered,
///   its error says so (`text delivered; image chart.png: …`). Its last part delivered
///   delivers the message.
pub fn settle_outcome(
    attempt: Attempt<'_>,
    outcome: &Result<(), ChannelError>,
    now: UnixMillis,
    jitter: f64,
    settings: &DeliverySettings,
) -> Settlement {
    if let Some(part) = attempt.part {
        if outcome.is_ok() && !part.is_last() {
            return part_delivered(&attempt, part, now + settings.retry_window);
        }
        // A failed part after delivered ones: its error says what went out and what did not.
        if outcome.is_err()
            && let Some(context) = part.context()
        {
            let mut settlement = settle_whole(attempt, outcome, now, jitter, settings);
            prefix_error(&mut settlement.update, &context);
            return settlement;
        }
    }
    settle_whole(attempt, outcome, now, jitter, settings)
}

/// A part that was not the last went out: recorded and counted as a send, and the message
/// stays the lane's head, due now, for its next part (which gets a retry window of its own,
/// ending at `deadline_at`).
fn part_delivered(attempt: &Attempt<'_>, part: PartOf<'_>, deadline_at: UnixMillis) -> Settlement {
    let head = attempt.head;
    Settlement {
        update: AttemptUpdate::PartDelivered {
            id: head.id.clone(),
            attempts: head.attempts + 1,
            channel: attempt.channel,
            parts_before: head.parts_done,
            note: part.note(),
            deadline_at,
        },
        learnt: Learnt::Reachable,
        sent: Some(attempt.sent_at),
        count: Count {
            outcome: AttemptOutcome::Delivered,
            delivered: Vec::new(),
            failed: false,
        },
        after: After::Reread,
    }
}

/// `context` put before the error the update records.
fn prefix_error(update: &mut AttemptUpdate, context: &str) {
    match update {
        AttemptUpdate::Retry { error, .. } | AttemptUpdate::Failed { error, .. } => {
            *error = format!("{context}{error}");
        }
        AttemptUpdate::NextChannel {
            error: Some(error), ..
        } => *error = format!("{context}{error}"),
        AttemptUpdate::NextChannel { error: None, .. }
        | AttemptUpdate::Delivered { .. }
        | AttemptUpdate::DigestDelivered { .. }
        | AttemptUpdate::PartDelivered { .. } => {}
    }
}

/// [`settle_outcome`] of a message sent whole, of its last part, or of a part that failed.
fn settle_whole(
    attempt: Attempt<'_>,
    outcome: &Result<(), ChannelError>,
    now: UnixMillis,
    jitter: f64,
    settings: &DeliverySettings,
) -> Settlement {
    let Attempt {
        head,
        channel,
        sent_at,
        digest,
        part: _,
    } = attempt;
    let attempts = head.attempts + 1;
    let deadline_at = now + settings.retry_window;
    match outcome {
        Ok(()) => delivered(head, channel, attempts, sent_at, digest, deadline_at),
        Err(ChannelError::Unconfirmed { reason }) => {
            let step = next_step::after_failure(tried(head), now, Failure::Permanent);
            let (update, count, after) = record_step(
                head,
                channel,
                attempts,
                step,
                reason.clone(),
                true,
                deadline_at,
            );
            Settlement {
                update,
                learnt: Learnt::Reachable,
                sent: None,
                count,
                after,
            }
        }
        Err(ChannelError::Permanent { reason }) => Settlement {
            learnt: Learnt::Reachable,
            ..give_up(head, channel, attempts, reason.clone(), now, settings)
        },
        Err(err @ (ChannelError::Transient { .. } | ChannelError::Wait { .. })) => {
            let (reason, unreachable, at_least) = err.retry_parts();
            // A service that said how long to wait (Telegram's `retry_after`, a robot
            // blocked for minutes) is not asked again sooner.
            let delay = backoff::delay(
                u32::try_from(attempts).unwrap_or(u32::MAX),
                settings.backoff_initial,
                settings.backoff_max,
                jitter,
            )
            .max(at_least);
            let step = next_step::after_failure(
                tried(head),
                sent_at,
                Failure::Transient {
                    retry_at: now + delay,
                },
            );
            let error = if step.moves_on() {
                let why = if unreachable {
                    format!("{} unreachable: {reason}", channel.label())
                } else {
                    reason.clone()
                };
                format!(
                    "gave up after {attempts} attempt(s): the retry window ({}) had run out \
                     when the last one failed: {why}",
                    humantime::format_duration(settings.retry_window),
                )
            } else {
                reason.clone()
            };
            let (update, count, after) =
                record_step(head, channel, attempts, step, error, false, deadline_at);
            Settlement {
                update,
                learnt: if unreachable {
                    Learnt::Unreachable {
                        reason: reason.clone(),
                    }
                } else {
                    Learnt::Reachable
                },
                sent: None,
                count,
                after,
            }
        }
    }
}

/// `channel` cannot deliver the head (a permanent failure, or nothing to try it with: no
/// address, a channel not configured — then `attempts` is the head's own, no try was
/// made): it goes on to the next channel of its route, or ends when none is left.
pub fn give_up(
    head: &Message,
    channel: ChannelName,
    attempts: i64,
    error: String,
    now: UnixMillis,
    settings: &DeliverySettings,
) -> Settlement {
    let step = next_step::after_failure(tried(head), now, Failure::Permanent);
    let deadline_at = now + settings.retry_window;
    let (update, count, after) =
        record_step(head, channel, attempts, step, error, false, deadline_at);
    Settlement {
        update,
        learnt: Learnt::Nothing,
        sent: None,
        count,
        after,
    }
}

/// The try was cut off at the end of the shutdown grace: the channel may or may not have
/// processed it, so it is sent again next time (at least once), due at once.
pub fn cut_off(head: &Message, channel: ChannelName, now: UnixMillis) -> Settlement {
    Settlement {
        update: AttemptUpdate::Retry {
            id: head.id.clone(),
            attempts: head.attempts + 1,
            channel,
            error: INTERRUPTED.to_owned(),
            next_attempt_at: now,
        },
        learnt: Learnt::Nothing,
        sent: None,
        count: Count {
            outcome: AttemptOutcome::Retry,
            delivered: Vec::new(),
            failed: false,
        },
        after: After::Release(now),
    }
}

/// `channel` delivered the head (or the digest it led).
fn delivered(
    head: &Message,
    channel: ChannelName,
    attempts: i64,
    sent_at: UnixMillis,
    digest: Option<(Digest, Vec<UnixMillis>)>,
    deadline_at: UnixMillis,
) -> Settlement {
    let (update, delivered, after) = if let Some((digest, carried_at)) = digest {
        (
            AttemptUpdate::DigestDelivered {
                digest,
                channel,
                sent_at,
            },
            carried_at,
            After::Next,
        )
    } else if head.deliver_all
        && let Some(route) = head.route.rest()
    {
        (
            AttemptUpdate::NextChannel {
                id: head.id.clone(),
                attempts,
                channel,
                delivered: true,
                error: None,
                route,
                deadline_at,
                unconfirmed: false,
            },
            vec![head.created_at],
            After::Reread,
        )
    } else {
        (
            AttemptUpdate::Delivered {
                id: head.id.clone(),
                attempts,
                channel,
                earlier: head.channel.clone().filter(|_| head.deliver_all),
                log: head.deliver_all.then_some(channel),
            },
            vec![head.created_at],
            After::Next,
        )
    };
    Settlement {
        update,
        learnt: Learnt::Reachable,
        sent: Some(sent_at),
        count: Count {
            outcome: AttemptOutcome::Delivered,
            delivered,
            failed: false,
        },
        after,
    }
}

/// The record, counts and lane move of the head's next step after a failure on `channel`:
/// a retry there, the next channel of its route (its window starting afresh, to end at
/// `deadline_at`), or its end — failed, unless an earlier channel delivered it (a
/// `deliver_all` message). `unconfirmed`: the channel may have delivered it and cannot say.
fn record_step(
    head: &Message,
    channel: ChannelName,
    attempts: i64,
    step: NextStep,
    error: String,
    unconfirmed: bool,
    deadline_at: UnixMillis,
) -> (AttemptUpdate, Count, After) {
    let count = |outcome, failed| Count {
        outcome,
        delivered: Vec::new(),
        failed,
    };
    let gave_up = if unconfirmed {
        AttemptOutcome::Unconfirmed
    } else {
        AttemptOutcome::Failed
    };
    match step {
        NextStep::Retry { at } => (
            AttemptUpdate::Retry {
                id: head.id.clone(),
                attempts,
                channel,
                error,
                next_attempt_at: at,
            },
            count(AttemptOutcome::Retry, false),
            After::Release(at),
        ),
        NextStep::Fallback { route } => (
            AttemptUpdate::NextChannel {
                id: head.id.clone(),
                attempts,
                channel,
                delivered: false,
                error: Some(error),
                route,
                deadline_at,
                unconfirmed,
            },
            count(gave_up, false),
            After::Reread,
        ),
        NextStep::End { failed } => (
            AttemptUpdate::Failed {
                id: head.id.clone(),
                attempts,
                channel,
                error,
                unconfirmed,
            },
            count(gave_up, failed),
            After::Next,
        ),
    }
}

/// The head, as what follows a failed try depends on it.
fn tried(head: &Message) -> Tried<'_> {
    Tried {
        route: &head.route,
        delivered_before: head.channel.is_some(),
        deadline_at: head.deadline_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Route, UserId};

    const NOW: UnixMillis = UnixMillis::from_millis(1_000_000_000);
    const MIN: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The time `n` milliseconds after the epoch.
    fn t(n: i64) -> UnixMillis {
        UnixMillis::from_millis(n)
    }

    // ---- the lane's head ----

    fn lane(due_at: UnixMillis, sent: usize, held_ms: u64) -> LaneView {
        LaneView {
            due_at,
            channel: ChannelName::Email,
            sent,
            held: Duration::from_millis(held_ms),
            quiet_until: None,
        }
    }

    #[test]
    fn a_due_head_the_quiet_hours_hold_is_held_before_anything_else() {
        let held = |due_at, sent| LaneView {
            quiet_until: Some(NOW + MIN),
            ..lane(due_at, sent, 0)
        };
        assert_eq!(admit(&held(NOW, 0), Some(()), NOW), Admit::Hold(NOW + MIN));
        // Even with the claim's budget spent, or no channel for it: it is not tried.
        assert_eq!(
            admit(&held(NOW, LANE_BUDGET), Some(()), NOW),
            Admit::Hold(NOW + MIN)
        );
        assert_eq!(
            admit::<()>(&held(NOW, 0), None, NOW),
            Admit::Hold(NOW + MIN)
        );
        // A head in backoff is looked at when it is due.
        assert_eq!(
            admit(&held(NOW + ms(5), 0), Some(()), NOW),
            Admit::Release(NOW + ms(5))
        );
    }

    #[test]
    fn a_head_not_yet_due_holds_the_lane_back_until_it_is() {
        assert_eq!(
            admit(&lane(NOW + ms(5_000), 0, 0), Some("email"), NOW),
            Admit::Release(NOW + ms(5_000))
        );
        // Before the budget is looked at: the lane comes back when the head is due.
        assert_eq!(
            admit(&lane(NOW + ms(1), LANE_BUDGET, 0), Some("email"), NOW),
            Admit::Release(NOW + ms(1))
        );
        assert_eq!(
            admit(&lane(NOW, 0, 0), Some("email"), NOW),
            Admit::Go("email")
        );
    }

    #[test]
    fn a_claim_ends_after_its_budget_of_sends_or_of_time() {
        let time = u64::try_from(LANE_TIME.as_millis()).unwrap();
        assert_eq!(
            admit(
                &lane(NOW - ms(10), LANE_BUDGET - 1, time - 1),
                Some(()),
                NOW
            ),
            Admit::Go(())
        );
        assert_eq!(
            admit(&lane(NOW - ms(10), LANE_BUDGET, 0), Some(()), NOW),
            Admit::Release(NOW)
        );
        assert_eq!(
            admit(&lane(NOW - ms(10), 0, time), Some(()), NOW),
            Admit::Release(NOW)
        );
    }

    #[test]
    fn a_head_whose_channel_is_not_configured_gives_up_on_it() {
        assert_eq!(
            admit::<()>(&lane(NOW, 0, 0), None, NOW),
            Admit::GiveUp("E-mail is not configured on this server".to_owned())
        );
        // Only once it is its turn.
        assert_eq!(
            admit::<()>(&lane(NOW + ms(1), 0, 0), None, NOW),
            Admit::Release(NOW + ms(1))
        );
    }

    fn per_minute(count: u32) -> Vec<RateWindow> {
        vec![RateWindow {
            count,
            per: Duration::from_secs(60),
        }]
    }

    fn slot<'a>(windows: &'a [RateWindow]) -> SlotView<'a> {
        SlotView {
            windows,
            digest_after: None,
            burst: false,
            history: None,
            waiting: None,
            gate: None,
        }
    }

    #[test]
    fn what_waited_for_quiet_hours_goes_as_one_digest_though_the_limits_have_room() {
        let windows = per_minute(30);
        let mut view = slot(&windows);
        view.digest_after = Some(Duration::from_secs(600));
        view.gate = Some(Gate::Open);
        let history: Vec<UnixMillis> = Vec::new();
        view.history = Some(&history);
        // Room for many: alone, as ever.
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
        // Released from quiet hours: how many waited with it decides.
        view.burst = true;
        assert_eq!(next_action(&view, NOW), LaneAction::ReadWaiting);
        let one = [NOW - ms(5_000)];
        view.waiting = Some(&one);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
        let three = [NOW - ms(5_000), NOW - ms(4_000), NOW - ms(3_000)];
        view.waiting = Some(&three);
        assert_eq!(next_action(&view, NOW), LaneAction::Digest { probe: false });
        // The limits still come first: a digest is a send too.
        let full: Vec<UnixMillis> = (0..30).map(|i| NOW - ms(1_000 + i)).collect();
        view.history = Some(&full);
        assert!(matches!(next_action(&view, NOW), LaneAction::Release(_)));
        // Digests turned off: never one.
        view.history = Some(&history);
        view.digest_after = None;
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
    }

    #[test]
    fn a_channel_without_windows_asks_only_the_gate() {
        let mut view = slot(&[]);
        assert_eq!(next_action(&view, NOW), LaneAction::AskGate);
        view.gate = Some(Gate::Open);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
        view.gate = Some(Gate::Probe);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: true });
        view.gate = Some(Gate::Closed(NOW + ms(2_000)));
        assert_eq!(
            next_action(&view, NOW),
            LaneAction::Release(NOW + ms(2_000))
        );
    }

    #[test]
    fn rate_windows_need_the_history_and_hold_the_lane_back_before_the_gate_is_asked() {
        let windows = per_minute(3);
        let mut view = slot(&windows);
        assert_eq!(next_action(&view, NOW), LaneAction::ReadHistory);
        // Three sends in the last minute: the next one when the first is a window old.
        let history = [NOW - ms(30_000), NOW - ms(20_000), NOW - ms(10_000)];
        view.history = Some(&history);
        let free_at = NOW - ms(30_000) + windows[0].enforced();
        assert_eq!(next_action(&view, NOW), LaneAction::Release(free_at));
        // Not asked even when its answer would be known: a closed gate is not the reason.
        view.gate = Some(Gate::Probe);
        assert_eq!(next_action(&view, NOW), LaneAction::Release(free_at));
        // Room for one: the gate decides.
        let history = [NOW - ms(20_000), NOW - ms(10_000)];
        view.history = Some(&history);
        view.gate = None;
        assert_eq!(next_action(&view, NOW), LaneAction::AskGate);
        view.gate = Some(Gate::Open);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
    }

    #[test]
    fn waiting_messages_are_read_only_when_the_limits_would_hold_the_lane_back() {
        let windows = per_minute(3);
        let mut view = slot(&windows);
        view.digest_after = Some(Duration::from_secs(30));
        view.gate = Some(Gate::Open);
        // Room for two more: one by one.
        let history = [NOW - ms(10_000)];
        view.history = Some(&history);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
        // Room for one only: the waiting messages decide.
        let history = [NOW - ms(20_000), NOW - ms(10_000)];
        view.history = Some(&history);
        assert_eq!(next_action(&view, NOW), LaneAction::ReadWaiting);
        // No digest for this head (or digests off): it goes alone, nothing read.
        view.digest_after = None;
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
    }

    #[test]
    fn a_lane_that_would_wait_too_long_goes_as_a_digest() {
        let windows = per_minute(3);
        let history = [NOW - ms(20_000), NOW - ms(10_000)];
        let mut view = slot(&windows);
        view.digest_after = Some(Duration::from_secs(30));
        view.history = Some(&history);
        // Five messages accepted a minute ago: the later ones would wait minutes more.
        let old = [NOW - MIN; 5];
        view.waiting = Some(&old);
        assert_eq!(next_action(&view, NOW), LaneAction::AskGate);
        view.gate = Some(Gate::Open);
        assert_eq!(next_action(&view, NOW), LaneAction::Digest { probe: false });
        view.gate = Some(Gate::Probe);
        assert_eq!(next_action(&view, NOW), LaneAction::Digest { probe: true });
        view.gate = Some(Gate::Closed(NOW + ms(700)));
        assert_eq!(next_action(&view, NOW), LaneAction::Release(NOW + ms(700)));
        // The head alone, just accepted: sent as it is.
        let one = [NOW];
        view.waiting = Some(&one);
        view.gate = Some(Gate::Open);
        assert_eq!(next_action(&view, NOW), LaneAction::Send { probe: false });
    }

    fn message(route: &str) -> Message {
        let mut m = Message::new_queued(
            MessageId::from_stored("m1".into()),
            UserId::new("u"),
            Some("title".into()),
            Some("content".into()),
            NOW - ms(5_000),
            NOW + 10 * MIN,
        );
        m.route = Route::parse(route).unwrap();
        m
    }

    #[test]
    fn a_digest_carries_only_plain_messages_on_their_first_channel() {
        let m = message("wecom,email");
        assert!(digestible(&m, ChannelName::WeCom, true));
        assert!(!digestible(&m, ChannelName::WeCom, false), "no digests");
        assert!(!digestible(&m, ChannelName::Email, true), "not its channel");
        let mut all = m.clone();
        all.deliver_all = true;
        assert!(!digestible(&all, ChannelName::WeCom, true));
        let mut code = m.clone();
        code.address_to = Some("a@b.c".into());
        assert!(!digestible(&code, ChannelName::WeCom, true));
        let mut files = m;
        files.media_count = 1;
        assert!(
            !digestible(&files, ChannelName::WeCom, true),
            "a message with attachments goes alone, part by part"
        );
    }

    /// 2026-03-02T17:00:00Z: 01:00 at +08:00, inside 23:00-07:00, which ends at 23:00Z.
    const ONE_AM: UnixMillis = UnixMillis::from_millis(1_772_470_800_000);
    const SEVEN_AM: UnixMillis = UnixMillis::from_millis(1_772_492_400_000);

    fn night(strict: bool) -> MemberHours {
        use crate::delivery::quiet::QuietHours;
        MemberHours {
            hours: Some(QuietHours {
                window: "23:00-07:00".parse().unwrap(),
                strict,
            }),
            utc_offset: 8 * 3600,
        }
    }

    #[test]
    fn in_the_window_a_head_waits_for_its_end_unless_urgent_or_a_code() {
        let normal = message("wecom");
        let mut urgent = message("wecom");
        urgent.urgent = true;
        let mut code = message("email");
        code.address_to = Some("a@b.c".into());
        code.urgent = true;
        assert_eq!(quiet_hold(&normal, &night(false), ONE_AM), Some(SEVEN_AM));
        assert_eq!(quiet_hold(&urgent, &night(false), ONE_AM), None);
        assert_eq!(quiet_hold(&urgent, &night(true), ONE_AM), Some(SEVEN_AM));
        assert_eq!(
            quiet_hold(&code, &night(true), ONE_AM),
            None,
            "a code the member waits for"
        );
        let mut begun = message("wecom");
        begun.media_count = 2;
        begun.parts_done = 1;
        assert_eq!(
            quiet_hold(&begun, &night(true), ONE_AM),
            None,
            "its text arrived"
        );
        begun.parts_done = 0;
        assert_eq!(quiet_hold(&begun, &night(true), ONE_AM), Some(SEVEN_AM));
        // The last millisecond of the window holds; its end does not.
        let last = SEVEN_AM - ms(1);
        assert_eq!(quiet_hold(&normal, &night(true), last), Some(SEVEN_AM));
        assert_eq!(quiet_hold(&normal, &night(true), SEVEN_AM), None);
        let none = MemberHours {
            hours: None,
            utc_offset: 0,
        };
        assert_eq!(quiet_hold(&normal, &none, ONE_AM), None);
    }

    #[test]
    fn no_digest_while_the_window_is_on() {
        let head = message("wecom");
        let after = Some(MIN);
        let dig = |quiet: &MemberHours, now| {
            digest_after(after, &head, ChannelName::WeCom, true, quiet, now)
        };
        assert_eq!(
            dig(&night(false), ONE_AM),
            None,
            "an urgent head goes alone"
        );
        assert_eq!(
            dig(&night(false), SEVEN_AM),
            after,
            "after the window, as ever"
        );
        assert_eq!(
            digest_after(
                None,
                &head,
                ChannelName::WeCom,
                true,
                &night(false),
                SEVEN_AM
            ),
            None
        );
        assert_eq!(
            digest_after(
                after,
                &head,
                ChannelName::Email,
                true,
                &night(false),
                SEVEN_AM
            ),
            None,
            "not digestible"
        );
    }

    #[test]
    fn an_empty_lane_lingers_only_with_a_free_slot_and_time_left() {
        assert!(lingers(Duration::from_secs(1), true));
        assert!(!lingers(Duration::from_secs(1), false));
        assert!(!lingers(LANE_TIME, true));
    }

    // ---- what goes out ----

    #[test]
    fn the_head_goes_out_as_it_was_accepted() {
        let mut m = message("email");
        m.url = Some("https://example.com".into());
        m.look = Look::Card;
        let out = outbound(&m, Some("a@b.c".into()));
        assert_eq!(out.id, m.id);
        assert_eq!(out.title.as_deref(), Some("title"));
        assert_eq!(out.content.as_deref(), Some("content"));
        assert_eq!(out.address.as_deref(), Some("a@b.c"));
        assert_eq!(out.look, Look::Card);
        assert_eq!(out.url, m.url);
        assert!(!out.verification);
        m.address_to = Some("new@b.c".into());
        assert!(
            outbound(&m, None).verification,
            "a code to the address being bound"
        );
    }

    fn waiting(id: &str, created_at: UnixMillis, excerpt: &str, markdown: bool) -> Waiting {
        Waiting {
            id: MessageId::from_stored(id.into()),
            created_at,
            title: Some(format!("title {id}")),
            excerpt: Some(excerpt.into()),
            partial: false,
            markdown,
        }
    }

    #[test]
    fn a_digest_carries_every_waiting_message_as_plain_text() {
        let head = message("wecom");
        let page = DigestPage {
            id: MessageId::from_stored("d1".into()),
            key: "k".into(),
            url: "https://push.example/m/d1?k=k".into(),
        };
        let d = compose_digest(
            &head,
            vec![
                waiting("m1", t(100), "**bold**", true),
                waiting("m2", t(200), "**as typed**", false),
            ],
            None,
            page,
            2048,
            0,
        );
        assert_eq!(d.carried_at, vec![t(100), t(200)]);
        assert_eq!(d.record.id, "d1");
        assert_eq!(d.record.page_key, "k");
        let carried: Vec<&str> = d.record.carried.iter().map(MessageId::as_str).collect();
        assert_eq!(carried, ["m1", "m2"]);
        assert_eq!(d.outbound.id.as_str(), "d1");
        assert_eq!(d.outbound.content.as_deref(), Some(d.record.body.as_str()));
        assert_eq!(
            (d.outbound.format, d.outbound.look),
            (Format::Text, Look::Text)
        );
        assert!(d.outbound.url.is_none() && d.outbound.page_key.is_none());
        let body = &d.record.body;
        assert!(
            body.contains("title m1") && body.contains("title m2"),
            "{body}"
        );
        assert!(
            body.contains("bold") && !body.contains("**bold**"),
            "{body}"
        );
        assert!(body.contains("**as typed**"), "{body}");
    }

    // ---- what an outcome means ----

    fn settings() -> DeliverySettings {
        DeliverySettings {
            retry_window: Duration::from_secs(15 * 60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            ..DeliverySettings::default()
        }
    }

    fn window() -> Duration {
        settings().retry_window
    }

    fn on(head: &Message, channel: ChannelName, sent_at: UnixMillis) -> Attempt<'_> {
        Attempt {
            head,
            channel,
            sent_at,
            digest: None,
            part: None,
        }
    }

    fn settle(attempt: Attempt<'_>, outcome: Result<(), ChannelError>) -> Settlement {
        settle_outcome(attempt, &outcome, NOW, 0.0, &settings())
    }

    fn transient(reason: &str, unreachable: bool) -> Result<(), ChannelError> {
        Err(ChannelError::Transient {
            reason: reason.into(),
            unreachable,
        })
    }

    fn permanent(reason: &str) -> Result<(), ChannelError> {
        Err(ChannelError::Permanent {
            reason: reason.into(),
        })
    }

    #[test]
    fn delivered_alone_the_message_is_done() {
        let mut head = message("wecom,email");
        head.attempts = 2;
        let s = settle(on(&head, ChannelName::WeCom, NOW - ms(300)), Ok(()));
        match &s.update {
            AttemptUpdate::Delivered {
                id,
                attempts,
                channel,
                earlier,
                log,
            } => {
                assert_eq!(id, &head.id);
                assert_eq!(*attempts, 3);
                assert_eq!(*channel, ChannelName::WeCom);
                assert_eq!(*earlier, None);
                assert_eq!(*log, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.learnt, Learnt::Reachable);
        assert_eq!(
            s.sent,
            Some(NOW - ms(300)),
            "counts against the member's limits"
        );
        assert_eq!(
            s.count,
            Count {
                outcome: AttemptOutcome::Delivered,
                delivered: vec![head.created_at],
                failed: false
            }
        );
        assert_eq!(s.after, After::Next);
    }

    #[test]
    fn delivered_for_every_channel_it_goes_on_with_the_rest_of_the_route() {
        let mut head = message("wecom,email");
        head.deliver_all = true;
        let s = settle(on(&head, ChannelName::WeCom, NOW), Ok(()));
        match &s.update {
            AttemptUpdate::NextChannel {
                attempts,
                channel,
                delivered,
                error,
                route,
                deadline_at,
                unconfirmed,
                ..
            } => {
                assert_eq!(*attempts, 1);
                assert_eq!(*channel, ChannelName::WeCom);
                assert!(*delivered);
                assert_eq!(*error, None);
                assert_eq!(route.to_stored(), "email");
                assert_eq!(*deadline_at, NOW + window(), "a window of its own");
                assert!(!*unconfirmed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.count.delivered, vec![head.created_at]);
        assert_eq!(s.after, After::Reread);
        // On its last channel it ends delivered on both, its history getting this one.
        let mut last = message("email");
        last.deliver_all = true;
        last.channel = Some("wecom".into());
        let s = settle(on(&last, ChannelName::Email, NOW), Ok(()));
        match &s.update {
            AttemptUpdate::Delivered {
                channel,
                earlier,
                log,
                ..
            } => {
                assert_eq!(*channel, ChannelName::Email);
                assert_eq!(earlier.as_deref(), Some("wecom"));
                assert_eq!(*log, Some(ChannelName::Email));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.after, After::Next);
    }

    #[test]
    fn a_delivered_digest_delivers_everything_it_carried() {
        let head = message("wecom");
        let digest = Digest {
            id: "d1".into(),
            userid: head.userid.clone(),
            body: "two messages".into(),
            carried: vec![head.id.clone(), MessageId::from_stored("m2".into())],
            page_key: "k".into(),
        };
        let attempt = Attempt {
            digest: Some((digest, vec![t(10), t(20)])),
            ..on(&head, ChannelName::WeCom, NOW - ms(50))
        };
        let s = settle(attempt, Ok(()));
        match &s.update {
            AttemptUpdate::DigestDelivered {
                digest,
                channel,
                sent_at,
            } => {
                assert_eq!(digest.id, "d1");
                assert_eq!(*channel, ChannelName::WeCom);
                assert_eq!(*sent_at, NOW - ms(50));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.sent, Some(NOW - ms(50)), "one send, whatever it carried");
        assert_eq!(
            s.count,
            Count {
                outcome: AttemptOutcome::Delivered,
                delivered: vec![t(10), t(20)],
                failed: false
            }
        );
        assert_eq!(s.after, After::Next);
    }

    #[test]
    fn a_permanent_failure_goes_on_to_the_next_channel_at_once() {
        let head = message("wecom,email");
        let s = settle(
            on(&head, ChannelName::WeCom, NOW),
            permanent("not in range"),
        );
        match &s.update {
            AttemptUpdate::NextChannel {
                attempts,
                delivered,
                error,
                route,
                deadline_at,
                unconfirmed,
                ..
            } => {
                assert_eq!(*attempts, 1);
                assert!(!*delivered);
                assert_eq!(error.as_deref(), Some("not in range"));
                assert_eq!(route.to_stored(), "email");
                assert_eq!(*deadline_at, NOW + window());
                assert!(!*unconfirmed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.learnt, Learnt::Reachable, "the channel answered");
        assert_eq!(s.sent, None);
        assert_eq!(
            s.count,
            Count {
                outcome: AttemptOutcome::Failed,
                delivered: vec![],
                failed: false
            }
        );
        assert_eq!(s.after, After::Reread);
    }

    #[test]
    fn a_permanent_failure_on_the_last_channel_ends_failed_unless_delivered_before() {
        let head = message("email");
        let s = settle(on(&head, ChannelName::Email, NOW), permanent("bad address"));
        match &s.update {
            AttemptUpdate::Failed {
                attempts,
                channel,
                error,
                unconfirmed,
                ..
            } => {
                assert_eq!(*attempts, 1);
                assert_eq!(*channel, ChannelName::Email);
                assert_eq!(error, "bad address");
                assert!(!*unconfirmed);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.count.failed);
        assert_eq!(s.after, After::Next);
        // A deliver_all message WeCom delivered: the record ends it (delivered), not counted
        // as a failed message.
        let mut before = message("email");
        before.deliver_all = true;
        before.channel = Some("wecom".into());
        let s = settle(
            on(&before, ChannelName::Email, NOW),
            permanent("bad address"),
        );
        assert!(matches!(s.update, AttemptUpdate::Failed { .. }));
        assert!(!s.count.failed);
        assert_eq!(s.count.outcome, AttemptOutcome::Failed);
    }

    #[test]
    fn a_failed_digest_gives_up_for_its_head_alone() {
        let head = message("wecom,email");
        let digest = Digest {
            id: "d1".into(),
            userid: head.userid.clone(),
            body: "b".into(),
            carried: vec![head.id.clone(), MessageId::from_stored("m2".into())],
            page_key: "k".into(),
        };
        let attempt = Attempt {
            digest: Some((digest, vec![t(10), t(20)])),
            ..on(&head, ChannelName::WeCom, NOW)
        };
        let s = settle(attempt, permanent("no"));
        match &s.update {
            AttemptUpdate::NextChannel { id, .. } => assert_eq!(id, &head.id),
            other => panic!("{other:?}"),
        }
        assert!(s.count.delivered.is_empty());
    }

    #[test]
    fn a_transient_failure_within_the_window_is_retried_at_the_backoff_time() {
        let mut head = message("wecom,email");
        head.attempts = 2;
        // The third try: a base of 4 s, jittered between 2 and 4 s.
        for (jitter, delay) in [(0.0, 2_000), (0.5, 3_000)] {
            let s = settle_outcome(
                on(&head, ChannelName::WeCom, NOW - ms(100)),
                &transient("HTTP 502", false),
                NOW,
                jitter,
                &settings(),
            );
            match &s.update {
                AttemptUpdate::Retry {
                    attempts,
                    channel,
                    error,
                    next_attempt_at,
                    ..
                } => {
                    assert_eq!(*attempts, 3);
                    assert_eq!(*channel, ChannelName::WeCom);
                    assert_eq!(error, "HTTP 502");
                    assert_eq!(*next_attempt_at, NOW + ms(delay));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(s.learnt, Learnt::Reachable, "it answered, if with an error");
            assert_eq!(s.count.outcome, AttemptOutcome::Retry);
            assert_eq!(s.after, After::Release(NOW + ms(delay)));
        }
    }

    #[test]
    fn a_service_that_says_how_long_to_wait_is_not_asked_sooner() {
        let mut head = message("ops,wecom");
        head.attempts = 2;
        let wait = |secs| {
            Err(ChannelError::Wait {
                reason: "Too Many Requests: retry after".into(),
                retry_after: Duration::from_secs(secs),
            })
        };
        // Longer than the backoff (2–4 s here): the service's wait.
        let s = settle(on(&head, ChannelName::WeCom, NOW), wait(7));
        match &s.update {
            AttemptUpdate::Retry {
                next_attempt_at, ..
            } => assert_eq!(*next_attempt_at, NOW + ms(7_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.learnt, Learnt::Reachable);
        assert_eq!(s.count.outcome, AttemptOutcome::Retry);
        // Shorter: the backoff.
        let s = settle(on(&head, ChannelName::WeCom, NOW), wait(1));
        match &s.update {
            AttemptUpdate::Retry {
                next_attempt_at, ..
            } => assert_eq!(*next_attempt_at, NOW + ms(2_000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_backoff_past_the_windows_end_retries_at_its_end() {
        let mut head = message("wecom");
        head.attempts = 20;
        head.deadline_at = NOW + ms(1_000);
        let s = settle(on(&head, ChannelName::WeCom, NOW), transient("busy", false));
        match &s.update {
            AttemptUpdate::Retry {
                next_attempt_at, ..
            } => assert_eq!(*next_attempt_at, NOW + ms(1_000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.after, After::Release(NOW + ms(1_000)));
    }

    #[test]
    fn a_transient_failure_of_the_last_try_in_the_window_moves_on_saying_why() {
        let mut head = message("wecom,email");
        head.attempts = 2;
        head.deadline_at = NOW - ms(500);
        // The try started at the window's end.
        let s = settle(
            on(&head, ChannelName::WeCom, NOW - ms(500)),
            transient("connection refused", true),
        );
        match &s.update {
            AttemptUpdate::NextChannel { error, route, .. } => {
                assert_eq!(
                    error.as_deref(),
                    Some(
                        "gave up after 3 attempt(s): the retry window (15m) had run out when \
                         the last one failed: WeCom unreachable: connection refused"
                    )
                );
                assert_eq!(route.to_stored(), "email");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.count.outcome, AttemptOutcome::Failed);
        assert_eq!(s.after, After::Reread);
        // On the last channel it ends failed; an answering channel is not called unreachable.
        let mut last = message("wecom");
        last.deadline_at = NOW - ms(500);
        let s = settle(on(&last, ChannelName::WeCom, NOW), transient("busy", false));
        match &s.update {
            AttemptUpdate::Failed { error, .. } => assert_eq!(
                error,
                "gave up after 1 attempt(s): the retry window (15m) had run out when the last \
                 one failed: busy"
            ),
            other => panic!("{other:?}"),
        }
        assert!(s.count.failed);
        assert_eq!(s.after, After::Next);
    }

    #[test]
    fn an_unreachable_channel_is_marked_down_whatever_becomes_of_the_message() {
        let head = message("wecom");
        let s = settle(
            on(&head, ChannelName::WeCom, NOW),
            transient("timed out", true),
        );
        assert_eq!(
            s.learnt,
            Learnt::Unreachable {
                reason: "timed out".into()
            }
        );
        match &s.update {
            AttemptUpdate::Retry { error, .. } => assert_eq!(error, "timed out"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.sent, None);
    }

    #[test]
    fn an_unconfirmed_send_is_not_repeated_there_and_moves_on() {
        let head = message("sms,email");
        let unconfirmed = || {
            Err(ChannelError::Unconfirmed {
                reason: "timed out; cannot look it up".into(),
            })
        };
        let s = settle(on(&head, ChannelName::Sms, NOW), unconfirmed());
        match &s.update {
            AttemptUpdate::NextChannel {
                delivered,
                error,
                route,
                unconfirmed,
                ..
            } => {
                assert!(!*delivered);
                assert_eq!(error.as_deref(), Some("timed out; cannot look it up"));
                assert_eq!(route.to_stored(), "email");
                assert!(*unconfirmed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.learnt,
            Learnt::Reachable,
            "the channel answered: a probe ending so closes"
        );
        assert_eq!(s.sent, None);
        assert_eq!(s.count.outcome, AttemptOutcome::Unconfirmed);
        assert_eq!(s.after, After::Reread);
        let last = message("sms");
        let s = settle(on(&last, ChannelName::Sms, NOW), unconfirmed());
        match &s.update {
            AttemptUpdate::Failed { unconfirmed, .. } => assert!(*unconfirmed),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.count,
            Count {
                outcome: AttemptOutcome::Unconfirmed,
                delivered: vec![],
                failed: true
            }
        );
    }

    #[test]
    fn giving_up_without_a_try_keeps_the_attempts_and_the_health() {
        let mut head = message("email,wecom");
        head.attempts = 4;
        let s = give_up(
            &head,
            ChannelName::Email,
            head.attempts,
            "no e-mail address is bound".into(),
            NOW,
            &settings(),
        );
        match &s.update {
            AttemptUpdate::NextChannel {
                attempts,
                route,
                deadline_at,
                ..
            } => {
                assert_eq!(*attempts, 4);
                assert_eq!(route.to_stored(), "wecom");
                assert_eq!(*deadline_at, NOW + window());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.learnt, Learnt::Nothing);
        assert_eq!(s.after, After::Reread);
    }

    #[test]
    fn a_try_cut_off_by_shutdown_is_handed_back_due_at_once() {
        let mut head = message("wecom");
        head.attempts = 1;
        let s = cut_off(&head, ChannelName::WeCom, NOW);
        match &s.update {
            AttemptUpdate::Retry {
                attempts,
                error,
                next_attempt_at,
                ..
            } => {
                assert_eq!(*attempts, 2);
                assert_eq!(error, INTERRUPTED);
                assert_eq!(*next_attempt_at, NOW);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.count.outcome, AttemptOutcome::Retry);
        assert_eq!(s.after, After::Release(NOW));
    }

    // ---- images and files ----

    fn file(name: &str, kind: crate::media::MediaKind) -> OutboundAttachment {
        OutboundAttachment {
            filename: name.into(),
            kind,
            mime: "application/octet-stream".into(),
            size: 10,
            sha256: format!("sha-{name}"),
            blob_id: crate::store::BlobId::from_stored(format!("blob-{name}")),
        }
    }

    fn two_files() -> Vec<OutboundAttachment> {
        use crate::media::MediaKind;
        vec![
            file("chart.png", MediaKind::Image),
            file("report.pdf", MediaKind::File),
        ]
    }

    #[test]
    fn only_a_channel_that_sends_attachments_separately_sends_parts() {
        let files = two_files();
        assert_eq!(
            parts(Attachments::Separate, &files).unwrap(),
            ["text", "image chart.png", "file report.pdf"]
        );
        assert_eq!(parts(Attachments::Bundled, &files), None);
        assert_eq!(parts(Attachments::Linked, &files), None);
        assert_eq!(parts(Attachments::Separate, &[]), None, "a plain message");
    }

    #[test]
    fn the_next_part_follows_what_was_delivered_text_first() {
        assert_eq!(next_part(0, 2), Part::Text);
        assert_eq!(next_part(1, 2), Part::Attachment(0));
        assert_eq!(next_part(2, 2), Part::Attachment(1));
        // Never past the last (a count no writer makes): the last again, not nothing.
        assert_eq!(next_part(7, 2), Part::Attachment(1));
        assert_eq!(next_part(-1, 2), Part::Text);
        for done in 0..3 {
            assert_eq!(
                part_index(next_part(done, 2)),
                usize::try_from(done).unwrap()
            );
        }
        assert_eq!(part_index(Part::Whole), 0);
    }

    #[test]
    fn attachments_go_as_the_channel_carries_them() {
        let page = "https://push.example/m/m1?k=K";
        let mut head = message("wecom");
        head.parts_done = 1;
        let separate = with_attachments(
            outbound(&head, None),
            two_files(),
            Attachments::Separate,
            head.parts_done,
            Some(page),
            2048,
        );
        assert_eq!(separate.part, Part::Attachment(0));
        assert_eq!(separate.attachments.len(), 2);
        assert_eq!(
            separate.content.as_deref(),
            Some("content"),
            "text as it is"
        );
        let bundled = with_attachments(
            outbound(&head, None),
            two_files(),
            Attachments::Bundled,
            0,
            Some(page),
            2048,
        );
        assert_eq!((bundled.part, bundled.attachments.len()), (Part::Whole, 2));
        assert_eq!(bundled.content.as_deref(), Some("content"));
        let linked = with_attachments(
            outbound(&head, None),
            two_files(),
            Attachments::Linked,
            0,
            Some(page),
            2048,
        );
        assert_eq!(linked.part, Part::Whole);
        assert_eq!(
            linked.content.as_deref(),
            Some(
                "content\n\n📎 2 个附件 files: chart.png, report.pdf → \
                 https://push.example/m/m1?k=K"
            )
        );
        // Without content, the line is the content.
        let mut bare = message("wecom");
        bare.content = None;
        let linked = with_attachments(
            outbound(&bare, None),
            vec![file("a_b.txt", crate::media::MediaKind::File)],
            Attachments::Linked,
            0,
            None,
            2048,
        );
        assert_eq!(linked.content.as_deref(), Some("📎 1 个附件 file: a_b.txt"));
        // A plain message is left alone.
        let plain = with_attachments(
            outbound(&head, None),
            Vec::new(),
            Attachments::Separate,
            0,
            Some(page),
            2048,
        );
        assert_eq!(plain, outbound(&head, None));
    }

    #[test]
    fn a_long_text_is_cut_so_that_the_attachment_line_survives() {
        let page = "https://push.example/m/m1?k=K";
        let mut head = message("ops");
        head.content = Some("磁盘使用率超过阈值。".repeat(200));
        let linked = with_attachments(
            outbound(&head, None),
            two_files(),
            Attachments::Linked,
            0,
            Some(page),
            2048,
        );
        let content = linked.content.unwrap();
        assert!(content.len() < 2048 - 200, "{}", content.len());
        assert!(content.starts_with("磁盘使用率"));
        assert!(
            content.ends_with(
                "…\n\n📎 2 个附件 files: chart.png, report.pdf → https://push.example/m/m1?k=K"
            ),
            "{content}"
        );
    }

    #[test]
    fn in_markdown_the_names_are_escaped() {
        let line = attachment_line(
            &[file("a_b*[c].txt", crate::media::MediaKind::File)],
            None,
            true,
        );
        assert_eq!(line, "📎 1 个附件 file: a\\_b\\*\\[c\\].txt");
    }

    fn part_of<'a>(
        head: &'a Message,
        index: usize,
        labels: &'a [String],
        sent_at: UnixMillis,
    ) -> Attempt<'a> {
        Attempt {
            part: Some(PartOf { index, labels }),
            ..on(head, ChannelName::WeCom, sent_at)
        }
    }

    fn labels() -> Vec<String> {
        parts(Attachments::Separate, &two_files()).unwrap()
    }

    #[test]
    fn a_part_that_is_not_the_last_is_recorded_counted_and_the_head_goes_on() {
        let labels = labels();
        let mut head = message("wecom,email");
        head.media_count = 2;
        head.attempts = 1;
        let s = settle(part_of(&head, 0, &labels, NOW - ms(40)), Ok(()));
        match &s.update {
            AttemptUpdate::PartDelivered {
                id,
                attempts,
                channel,
                parts_before,
                note,
                deadline_at,
            } => {
                assert_eq!(id, &head.id);
                assert_eq!(*attempts, 2);
                assert_eq!(*channel, ChannelName::WeCom);
                assert_eq!(*parts_before, 0);
                assert_eq!(note, "part 1 of 3 (text)");
                assert_eq!(*deadline_at, NOW + window(), "the next part's own window");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.learnt, Learnt::Reachable);
        assert_eq!(
            s.sent,
            Some(NOW - ms(40)),
            "counts against the member's limits"
        );
        assert_eq!(
            s.count,
            Count {
                outcome: AttemptOutcome::Delivered,
                delivered: vec![],
                failed: false
            },
            "the message is not delivered yet"
        );
        assert_eq!(
            s.after,
            After::Reread,
            "the same head, read again, for its next part"
        );
        // The second part.
        head.parts_done = 1;
        let s = settle(part_of(&head, 1, &labels, NOW), Ok(()));
        match &s.update {
            AttemptUpdate::PartDelivered {
                parts_before, note, ..
            } => {
                assert_eq!(*parts_before, 1);
                assert_eq!(note, "part 2 of 3 (image chart.png)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_last_part_delivers_the_message() {
        let labels = labels();
        let mut head = message("wecom,email");
        head.media_count = 2;
        head.parts_done = 2;
        let s = settle(part_of(&head, 2, &labels, NOW), Ok(()));
        assert!(
            matches!(s.update, AttemptUpdate::Delivered { .. }),
            "{:?}",
            s.update
        );
        assert_eq!(s.count.delivered, vec![head.created_at]);
        assert_eq!(s.after, After::Next);
    }

    #[test]
    fn a_failed_part_says_what_was_delivered_and_is_retried_alone() {
        let labels = labels();
        let mut head = message("wecom,email");
        head.media_count = 2;
        head.parts_done = 1;
        head.attempts = 1;
        let s = settle(
            part_of(&head, 1, &labels, NOW),
            transient("WeCom API answered HTTP 502", true),
        );
        match &s.update {
            AttemptUpdate::Retry {
                error, attempts, ..
            } => {
                assert_eq!(
                    error,
                    "text delivered; image chart.png: WeCom API answered HTTP 502"
                );
                assert_eq!(*attempts, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.learnt,
            Learnt::Unreachable {
                reason: "WeCom API answered HTTP 502".into()
            },
            "the health learns the reason alone"
        );
        assert_eq!(s.sent, None);
        // Permanent: on to e-mail, saying so.
        head.parts_done = 2;
        let s = settle(part_of(&head, 2, &labels, NOW), permanent("too big"));
        match &s.update {
            AttemptUpdate::NextChannel { error, route, .. } => {
                assert_eq!(
                    error.as_deref(),
                    Some("text, image chart.png delivered; file report.pdf: too big")
                );
                assert_eq!(route.to_stored(), "email");
            }
            other => panic!("{other:?}"),
        }
        // On its last channel it ends failed, saying so.
        let mut last = message("wecom");
        last.parts_done = 1;
        let s = settle(part_of(&last, 1, &labels, NOW), permanent("refused"));
        match &s.update {
            AttemptUpdate::Failed { error, .. } => {
                assert_eq!(error, "text delivered; image chart.png: refused");
            }
            other => panic!("{other:?}"),
        }
        // The text failing: nothing was delivered, the reason is as it was.
        let fresh = message("wecom");
        let s = settle(part_of(&fresh, 0, &labels, NOW), permanent("refused"));
        match &s.update {
            AttemptUpdate::Failed { error, .. } => assert_eq!(error, "refused"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unrecorded_outcome_gives_the_lane_up_at_once_unless_it_was_given_up_anyway() {
        assert_eq!(After::Next.unrecorded(NOW), After::Release(NOW));
        assert_eq!(After::Reread.unrecorded(NOW), After::Release(NOW));
        assert_eq!(
            After::Release(NOW + ms(9_000)).unrecorded(NOW),
            After::Release(NOW + ms(9_000))
        );
    }
}
