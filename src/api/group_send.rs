//! Sending with a group's token (issue 29): one request, one copy per member.
//!
//! Every route that sends ends in [`super::send::submit`]; once it finds the token is a
//! group's, [`submit_group`] takes over with the request as checked so far. Membership is
//! read once, at acceptance; each member's copy is built exactly as a personal message to
//! that member would be — their channel order and bound addresses, their look, their clock
//! for `at`, their quiet hours — and goes through their own lane, under their own limits
//! and fallback. The group message and all its copies are committed in one transaction
//! ([`crate::delivery::Outbox::accept_group`]) before the sender hears anything.

use super::AppState;
use super::attach::{self, Uploads};
use super::send::{due_for, due_time, fetch_all, files_title, request_digest, uploaded};
use super::when::When;
use crate::delivery::quiet::MemberHours;
use crate::delivery::{ChannelChoice, CopyState, GroupCopy, NewGroupMessage, NewMessage, Reach};
use crate::domain::{ChannelName, Format, Urgency};
use crate::error::ApiError;
use crate::metrics::Endpoint;
use crate::store::GroupRef;
use crate::time::UnixMillis;

/// A request to send, as checked before its token was known to be a group's.
pub(super) struct Prepared {
    pub title: Option<String>,
    pub content: Option<String>,
    pub url: Option<String>,
    pub choice: ChannelChoice,
    /// `(field, URL, image)`: fetched once the recipients are known to be reachable.
    pub to_fetch: Vec<(&'static str, String, bool)>,
    pub when: Option<When>,
    pub file_name: Option<String>,
    pub format: Format,
    pub urgency: Urgency,
    pub idempotency_key: Option<String>,
    pub endpoint: Endpoint,
    /// Each member's copy asks that member for an acknowledgement.
    pub ack: Option<crate::store::AckAsk>,
}

/// Longest a send to a stale WeCom-backed group waits for its members to be read again.
const STALE_REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Accepts a message for every member of `group` (see the module's documentation).
pub(super) async fn submit_group(
    state: &AppState,
    group: GroupRef,
    req: Prepared,
    uploads: &mut Uploads,
) -> Result<crate::delivery::Accepted, ApiError> {
    // A WeCom-backed group read longer than `groups.refresh` ago is read again first, but
    // the sender waits for WeCom at most this long: past it, the last known members get
    // the message (the refresh loop keeps trying; a chat group costs nothing here).
    if tokio::time::timeout(
        STALE_REFRESH_WAIT,
        state.wecom_groups.refresh_if_stale(&group.id),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            group = %group.name,
            "WeCom did not list the group's members within {} s: sending to the last known members",
            STALE_REFRESH_WAIT.as_secs()
        );
    }
    let members = state.store.group_recipients(&group.id).await?;
    if members.is_empty() {
        return Err(ApiError::Conflict(format!(
            "group {:?} has no members: nobody would receive this message",
            group.name
        )));
    }
    let userids: Vec<_> = members.iter().map(|(userid, _)| userid.clone()).collect();
    // One read for every member's preferences, not one per member.
    let mut prefs = state.store.members_prefs(&userids).await?;
    let now = UnixMillis::now();
    let mut planned = Vec::with_capacity(members.len());
    let mut unroutable: Option<String> = None;
    let mut reachable = false;
    for (userid, muted) in members {
        let member = prefs.remove(&userid).unwrap_or_default();
        let reach = Reach {
            userid: Some(userid.clone()),
            bound: member.bound(),
            own_order: member.channels.clone(),
        };
        let (route, deliver_all, state_now) = match state.outbox.route(&req.choice, &reach) {
            Ok((route, all)) => {
                reachable |= !muted;
                let copy = if muted {
                    CopyState::Muted
                } else {
                    CopyState::Send
                };
                (route, all, copy)
            }
            Err(why) => {
                let why = why.to_string();
                if !muted && unroutable.is_none() {
                    unroutable = Some(format!("{userid}: {why}"));
                }
                let copy = if muted {
                    CopyState::Muted
                } else {
                    CopyState::Unroutable(why)
                };
                (state.outbox.default_route().clone(), false, copy)
            }
        };
        // `at=10am` is each member's own clock; a time that cannot be is the sender's
        // mistake, refused with nothing stored.
        let deliver_at = due_for(state, req.when, now, member.utc_offset)?;
        planned.push((userid, member, route, deliver_all, deliver_at, state_now));
    }
    // Every member who has not muted the group is out of reach of the channels named: the
    // sender's choice cannot work for this group (as for a member's own token, a 400).
    if !reachable && let Some(why) = unroutable {
        return Err(ApiError::BadRequest(format!(
            "no member of group {:?} can be reached that way: {why}",
            group.name
        )));
    }
    fetch_all(state, req.to_fetch, req.file_name.as_deref(), uploads).await?;
    // Each copy's files as its own route needs them (WeCom's limits when WeCom is on it):
    // at most two ways, checked once each.
    let on_wecom = |route: &crate::domain::Route| route.channels().contains(&ChannelName::WeCom);
    let for_wecom = if planned.iter().any(|p| on_wecom(&p.2)) {
        attach::attachments(uploads.as_slice(), true)?
    } else {
        Vec::new()
    };
    let off_wecom = if planned.iter().any(|p| !on_wecom(&p.2)) {
        attach::attachments(uploads.as_slice(), false)?
    } else {
        Vec::new()
    };
    let title = files_title(req.title, req.content.as_deref(), uploads, req.urgency);
    let request_digest = req.idempotency_key.as_ref().map(|_| {
        request_digest(
            title.as_deref(),
            req.content.as_deref(),
            req.format,
            req.url.as_deref(),
            &req.choice,
            &uploaded(uploads),
            req.when,
        )
    });
    let urgent = req.urgency == Urgency::Urgent;
    let copies = planned
        .into_iter()
        .map(|(userid, member, route, deliver_all, deliver_at, copy)| {
            let quiet = MemberHours::of(
                member.quiet,
                member.utc_offset,
                state.quiet_hours,
                state.utc_offset,
            );
            let (deliver_at, held) = due_time(deliver_at, quiet, urgent, now);
            let attachments = if on_wecom(&route) {
                for_wecom.clone()
            } else {
                off_wecom.clone()
            };
            GroupCopy {
                message: NewMessage {
                    userid,
                    title: title.clone(),
                    content: req.content.clone(),
                    idempotency_key: None,
                    request_digest: None,
                    route,
                    deliver_all,
                    address_to: None,
                    format: req.format,
                    look: member.look,
                    url: req.url.clone(),
                    attachments,
                    deliver_at,
                    urgent,
                    held,
                    resent_from: None,
                    verify_token: None,
                    ack: req.ack,
                },
                state: copy,
            }
        })
        .collect();
    let accepted = state
        .outbox
        .accept_group(NewGroupMessage {
            group_id: group.id,
            group_name: group.name,
            idempotency_key: req.idempotency_key,
            request_digest,
            copies,
        })
        .await?;
    if !accepted.duplicate {
        state.metrics.accepted(req.endpoint);
        if let Some(summary) = accepted.group {
            let to_send = summary.recipients - summary.muted - summary.unroutable;
            state
                .metrics
                .group_copies(u64::try_from(to_send).unwrap_or(0));
            // Ended at acceptance, so the delivery's count of failed messages never sees them.
            if summary.unroutable > 0 {
                state.metrics.failed(
                    state.outbox.default_route().first(),
                    u64::try_from(summary.unroutable).unwrap_or(0),
                );
            }
        }
    }
    Ok(accepted)
}
