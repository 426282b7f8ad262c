//! A large group message's copies, written after its acceptance (issue 29).
//!
//! Writing 1,000 copies in the transaction that accepts a group message took the one
//! writer 10–18 ms, and every member's `/send` that arrived meanwhile waited for it (p99 of
//! personal sends +2–4 ms with one group message every 2 s). So a group message with more
//! than [`CHUNK`] copies is accepted with its *plan* instead: the `group_sends` row keeps,
//! as one JSON text, what every copy is (the fields all copies share once, and per copy
//! what differs — its id, member, route, look, page key, and whether it goes or is muted).
//! The sender gets `200` once that row is committed: the recipient list is durable. The
//! writer then writes the copies [`CHUNK`] at a time, one chunk with each later batch (or
//! alone when nothing else waits), each chunk together with `group_sends.expanded` (how
//! many copies are written); the last one clears the plan.
//!
//! A copy is checked against the group's members as they are when its chunk commits, as
//! every copy is (a member who left by then gets it `left`). A process that stops halfway
//! leaves the plan and the count: whoever opens the database next (or, on PostgreSQL,
//! another instance's sweep) goes on from the count — a chunk reads the count under a row
//! lock and is dropped if it is not where it expected, so no copy is written twice.
//!
//! Only what can be written later the same way is planned: copies that are queued (or
//! muted, or refused at acceptance), with no images or files and nothing scheduled. Any
//! other group message is written whole at acceptance, as before.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Attachment, Message, MessageStatus, StoreError};
use crate::domain::{Format, Look, MessageId, Route, UserId};
use crate::time::UnixMillis;

/// Copies per chunk, and the size above which a group message is planned rather than
/// written whole. A chunk of 64 costs the writer well under a millisecond.
pub(super) const CHUNK: usize = 64;

/// The copies still to write of one group message, as the writer holds them.
#[derive(Debug)]
pub(super) struct Fanout {
    pub(super) send_id: MessageId,
    pub(super) group_id: String,
    /// Every copy, in the plan's order.
    pub(super) copies: Vec<Message>,
    /// How many are written (`group_sends.expanded`).
    pub(super) next: usize,
    /// After a chunk failed: not before then.
    pub(super) retry_at: Option<Instant>,
}

impl Fanout {
    pub(super) fn new(
        send_id: MessageId,
        group_id: String,
        copies: Vec<Message>,
        next: usize,
    ) -> Self {
        Self {
            send_id,
            group_id,
            copies,
            next,
            retry_at: None,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.next >= self.copies.len()
    }
}

/// What every copy shares.
#[derive(Debug, Serialize, Deserialize)]
struct Shared {
    title: Option<String>,
    content: Option<String>,
    created_at: i64,
    updated_at: i64,
    deadline_at: i64,
    format: String,
    url: Option<String>,
    urgent: bool,
}

/// What differs from copy to copy.
#[derive(Debug, Serialize, Deserialize)]
struct Copy {
    id: String,
    userid: String,
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    next_attempt_at: i64,
    route: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deliver_all: bool,
    look: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    shared: Shared,
    copies: Vec<Copy>,
}

fn shared_of(m: &Message) -> Shared {
    Shared {
        title: m.title.clone(),
        content: m.content.clone(),
        created_at: m.created_at.as_millis(),
        updated_at: m.updated_at.as_millis(),
        deadline_at: m.deadline_at.as_millis(),
        format: m.format.as_str().to_owned(),
        url: m.url.clone(),
        urgent: m.urgent,
    }
}

/// Whether `m` is a copy that [`decode`] gives back exactly from `shared` and its own
/// [`Copy`]. Every field is named (a field added to [`Message`] fails to compile here
/// until it is decided whether a plan can carry it).
fn plannable(m: &Message, first: &Message) -> bool {
    let Message {
        id: _,
        userid: _,
        title,
        content,
        status,
        attempts,
        last_error: _,
        channel,
        created_at,
        updated_at,
        next_attempt_at: _,
        deadline_at,
        delivered_at,
        seq,
        via,
        idempotency_key,
        idempotency_digest,
        route: _,
        deliver_all: _,
        address_to,
        format,
        look: _,
        url,
        page_key: _,
        media_count,
        parts_done,
        deliver_at,
        urgent,
        held,
        resent_from,
        group_send,
        ack,
    } = m;
    matches!(
        status,
        MessageStatus::Queued | MessageStatus::Muted | MessageStatus::Failed
    ) && *attempts == 0
        && channel.is_none()
        && delivered_at.is_none()
        && *seq == 0
        && via.is_none()
        && idempotency_key.is_none()
        && idempotency_digest.is_none()
        && address_to.is_none()
        && *media_count == 0
        && *parts_done == 0
        && deliver_at.is_none()
        && held.is_none()
        && resent_from.is_none()
        && ack.is_none()
        && *group_send == first.group_send
        && *title == first.title
        && *content == first.content
        && *created_at == first.created_at
        && *updated_at == first.updated_at
        && *deadline_at == first.deadline_at
        && *format == first.format
        && *url == first.url
        && *urgent == first.urgent
}

/// The plan of a group message's copies, or `None` when they are to be written whole at
/// acceptance: [`CHUNK`] or fewer, or any that a plan cannot carry (see the module's
/// documentation).
pub(super) fn encode(copies: &[(Message, Vec<Attachment>)]) -> Option<String> {
    let (first, _) = copies.first()?;
    if copies.len() <= CHUNK
        || copies
            .iter()
            .any(|(m, files)| !files.is_empty() || !plannable(m, first))
    {
        return None;
    }
    let plan = Plan {
        shared: shared_of(first),
        copies: copies
            .iter()
            .map(|(m, _)| Copy {
                id: m.id.as_str().to_owned(),
                userid: m.userid.as_str().to_owned(),
                status: m.status.as_str().to_owned(),
                last_error: m.last_error.clone(),
                next_attempt_at: m.next_attempt_at.as_millis(),
                route: m.route.to_stored(),
                deliver_all: m.deliver_all,
                look: m.look.as_str().to_owned(),
                page_key: m.page_key.clone(),
            })
            .collect(),
    };
    serde_json::to_string(&plan).ok()
}

/// The copies a plan describes, in its order, as they are to be inserted (`seq` 0: the
/// writer numbers them).
pub(super) fn decode(send_id: &MessageId, plan: &str) -> Result<Vec<Message>, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("group message {send_id}: {what}"));
    let plan: Plan =
        serde_json::from_str(plan).map_err(|e| corrupt(format!("unreadable plan ({e})")))?;
    let shared = plan.shared;
    plan.copies
        .into_iter()
        .map(|c| {
            let mut m = Message::new_queued(
                MessageId::from_stored(c.id),
                UserId::new(&c.userid),
                shared.title.clone(),
                shared.content.clone(),
                UnixMillis::from_millis(shared.created_at),
                UnixMillis::from_millis(shared.deadline_at),
            );
            m.status = c.status.parse()?;
            m.last_error = c.last_error;
            m.updated_at = UnixMillis::from_millis(shared.updated_at);
            m.next_attempt_at = UnixMillis::from_millis(c.next_attempt_at);
            m.route = Route::parse(&c.route).map_err(|e| corrupt(e.to_string()))?;
            m.deliver_all = c.deliver_all;
            m.format = Format::from_stored(&shared.format);
            m.look = Look::from_stored(&c.look).unwrap_or_default();
            m.url = shared.url.clone();
            m.page_key = c.page_key;
            m.urgent = shared.urgent;
            m.group_send = Some(send_id.clone());
            Ok(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::ChannelName;

    fn copies(n: usize) -> (MessageId, Vec<(Message, Vec<Attachment>)>) {
        let send = MessageId::generate();
        let now = UnixMillis::now();
        let copies = (0..n)
            .map(|i| {
                let mut m = Message::new_queued(
                    MessageId::generate(),
                    UserId::new(&format!("u{i}")),
                    Some("disk full".into()),
                    Some("on **the-only-body**".into()),
                    now,
                    now + Duration::from_secs(3600),
                );
                m.group_send = Some(send.clone());
                m.format = Format::Markdown;
                m.url = Some("https://example.com/x".into());
                m.urgent = true;
                m.page_key = Some(format!("key{i}"));
                if i % 3 == 1 {
                    m.route = Route::new(vec![ChannelName::Email, ChannelName::WeCom]).unwrap();
                    m.deliver_all = true;
                    m.look = Look::from_stored("card").unwrap_or_default();
                }
                if i % 5 == 2 {
                    m.status = MessageStatus::Muted;
                    m.last_error = Some("the member muted this group".into());
                }
                (m, Vec::new())
            })
            .collect();
        (send, copies)
    }

    /// Every column a copy is inserted with, as text.
    fn columns(m: &Message) -> String {
        format!(
            "{:?}",
            (
                (
                    m.id.as_str(),
                    m.userid.as_str(),
                    &m.title,
                    &m.content,
                    m.status.as_str()
                ),
                (
                    m.attempts,
                    &m.last_error,
                    &m.channel,
                    m.created_at,
                    m.updated_at
                ),
                (
                    m.next_attempt_at,
                    m.deadline_at,
                    m.delivered_at,
                    m.seq,
                    &m.via
                ),
                (
                    &m.idempotency_key,
                    &m.idempotency_digest,
                    m.route.to_stored(),
                    m.deliver_all
                ),
                (
                    &m.address_to,
                    m.format.as_str(),
                    m.look.as_str(),
                    &m.url,
                    &m.page_key
                ),
                (
                    m.media_count,
                    m.parts_done,
                    m.deliver_at,
                    m.urgent,
                    m.held.map(|h| h.as_str())
                ),
                (&m.resent_from, &m.group_send),
            )
        )
    }

    #[test]
    fn a_plan_gives_back_every_copy_exactly() {
        let (send, copies) = copies(200);
        let plan = encode(&copies).expect("plannable");
        let back = decode(&send, &plan).unwrap();
        assert_eq!(back.len(), copies.len());
        for ((m, _), b) in copies.iter().zip(&back) {
            assert_eq!(columns(m), columns(b));
        }
        // The content once, not once per copy.
        assert_eq!(plan.matches("the-only-body").count(), 1);
    }

    #[test]
    fn small_groups_and_what_a_plan_cannot_carry_are_written_whole() {
        assert!(encode(&copies(CHUNK).1).is_none(), "a chunk or less");
        assert!(encode(&copies(CHUNK + 1).1).is_some());
        let (_, mut with_file) = copies(100);
        with_file[7].1.push(Attachment {
            blob_id: crate::store::BlobId::from_stored("b".into()),
            filename: None,
            kind: crate::store::MediaKind::File,
        });
        assert!(encode(&with_file).is_none(), "images and files");
        let (_, mut scheduled) = copies(100);
        scheduled[9].0.status = MessageStatus::Scheduled;
        scheduled[9].0.deliver_at = Some(UnixMillis::now());
        assert!(encode(&scheduled).is_none(), "scheduled copies");
        let (_, mut other_title) = copies(100);
        other_title[50].0.title = Some("another".into());
        assert!(encode(&other_title).is_none(), "a copy unlike the others");
    }

    #[test]
    fn an_unreadable_plan_is_an_error_not_a_panic() {
        let send = MessageId::generate();
        assert!(decode(&send, "{").is_err());
        assert!(decode(&send, r#"{"shared":{},"copies":[]}"#).is_err());
    }
}
