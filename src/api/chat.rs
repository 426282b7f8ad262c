//! What each chat command does: the state change behind a bot reply. (The commands and
//! the reply texts are [`crate::bot`]'s, which stays pure.)

use std::time::Duration;

use super::AppState;
use crate::bot::{self, Command, StatusView};
use crate::delivery::{ChannelChoice, NewMessage, Reach};
use crate::domain::{ChannelName, EmailAddress, Format, Look, Route, UserId};
use crate::error::ApiError;
use crate::store::{CodeCheck, CodeRequest, now_ms};

/// `[email]` as the chat needs it.
#[derive(Debug, Clone, Copy)]
pub struct EmailPolicy {
    pub code_ttl: Duration,
    pub codes_per_hour: u32,
}

pub async fn run(state: &AppState, userid: &UserId, command: Command) -> Result<String, ApiError> {
    Ok(match command {
        Command::Token => {
            let token = state.store.token_for(userid).await?;
            bot::token_reply(token.expose(), &state.public_base)
        }
        Command::Rotate => {
            let token = state.store.rotate_token(userid).await?;
            tracing::info!(userid = %userid, "push token rotated");
            bot::rotated_reply(token.expose(), &state.public_base)
        }
        Command::Help => bot::help_reply(),
        Command::Welcome => bot::welcome_reply(),
        Command::Email(typed) => request_code(state, userid, &typed).await?,
        Command::Verify(typed) => verify(state, userid, &typed).await?,
        Command::VerifyUsage => bot::verify_usage_reply(),
        Command::EmailOff => {
            state.store.unbind_email(userid).await?;
            tracing::info!(userid = %userid, "e-mail address unbound");
            bot::email_unbound_reply()
        }
        Command::Status => status(state, userid).await?,
        Command::Fallback(typed) => fallback(state, userid, &typed).await?,
        Command::Format(typed) => format(state, userid, &typed).await?,
    })
}

fn ttl_minutes(policy: &EmailPolicy) -> u64 {
    policy.code_ttl.as_secs().div_ceil(60).max(1)
}

/// Mails a code to the address through the outbox — the same reliable path as any message,
/// to the address being bound, not the member's current one.
async fn request_code(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    let Some(policy) = state
        .email_policy
        .filter(|_| state.outbox.has_channel(ChannelName::Email))
    else {
        return Ok(bot::email_unavailable_reply());
    };
    let Some(address) = EmailAddress::parse(typed) else {
        return Ok(bot::email_invalid_reply(typed));
    };
    let ttl_ms = i64::try_from(policy.code_ttl.as_millis()).unwrap_or(i64::MAX);
    let request = state
        .store
        .request_email_code(userid, &address, now_ms(), ttl_ms, policy.codes_per_hour)
        .await?;
    let code = match request {
        CodeRequest::TooMany => return Ok(bot::email_too_many_reply()),
        CodeRequest::Created { code } => code,
    };
    let (title, content) = bot::verification_mail(&code, ttl_minutes(&policy));
    let route = Route::new(vec![ChannelName::Email])
        .ok_or_else(|| ApiError::Internal("an empty route".into()))?;
    state
        .outbox
        .accept(NewMessage {
            userid: userid.clone(),
            title: Some(title),
            content: Some(content),
            idempotency_key: None,
            request_digest: None,
            route,
            deliver_all: false,
            email_to: Some(address.as_str().to_owned()),
            format: Format::Text,
            look: None,
            url: None,
        })
        .await?;
    state.metrics.accepted(crate::metrics::Endpoint::Chat);
    tracing::info!(userid = %userid, address = %address.masked(), "verification code mailed");
    Ok(bot::email_code_sent_reply(
        address.as_str(),
        ttl_minutes(&policy),
    ))
}

/// Checks a code; only six digits reach the store, so a typo costs no attempt.
async fn verify(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    if !bot::is_code(typed) {
        return Ok(bot::verify_usage_reply());
    }
    Ok(
        match state
            .store
            .check_email_code(userid, typed, now_ms())
            .await?
        {
            CodeCheck::Bound(address) => {
                tracing::info!(userid = %userid, address = %address.masked(), "e-mail address bound");
                bot::email_bound_reply(&address.masked())
            }
            CodeCheck::Wrong { attempts_left } => bot::code_wrong_reply(attempts_left),
            CodeCheck::Expired => bot::code_expired_reply(),
            CodeCheck::Exhausted => bot::code_exhausted_reply(),
            CodeCheck::NoPending => bot::no_pending_code_reply(),
        },
    )
}

/// The effective order: the member's own, else the server's default.
fn order(state: &AppState, own: Option<&Route>) -> (Route, bool) {
    match own {
        Some(route) => (route.clone(), true),
        None => (state.outbox.default_route().clone(), false),
    }
}

/// `format text|markdown|card|default`: how the member's messages look in WeCom.
async fn format(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    let typed = typed.trim();
    if typed.is_empty() {
        let prefs = state.store.member_prefs(userid).await?;
        let (look, own) = look(state, prefs.look);
        return Ok(bot::format_invalid_reply(&format!(
            "format: {}{}",
            look.as_str(),
            bot::default_mark(own)
        )));
    }
    if bot::is_reset(typed) {
        state.store.set_look(userid, None).await?;
        return Ok(bot::format_set_reply(
            state.outbox.default_look().as_str(),
            false,
        ));
    }
    match typed.parse::<Look>() {
        Ok(look) => {
            state.store.set_look(userid, Some(look)).await?;
            Ok(bot::format_set_reply(look.as_str(), true))
        }
        Err(problem) => Ok(bot::format_invalid_reply(&problem)),
    }
}

/// The effective look: the member's own, else the server's default.
fn look(state: &AppState, own: Option<Look>) -> (Look, bool) {
    match own {
        Some(look) => (look, true),
        None => (state.outbox.default_look(), false),
    }
}

async fn status(state: &AppState, userid: &UserId) -> Result<String, ApiError> {
    let prefs = state.store.member_prefs(userid).await?;
    let token = state.store.existing_token(userid).await?;
    let (route, own_order) = order(state, prefs.channels.as_ref());
    let unusable = route
        .channels()
        .iter()
        .filter(|c| {
            !state.outbox.has_channel(**c) || (**c == ChannelName::Email && prefs.email.is_none())
        })
        .map(|c| c.as_str().to_owned())
        .collect();
    // "Today" in the time zone the server shows times in.
    let offset = i64::from(state.utc_offset) * 1000;
    let day = 24 * 3600 * 1000;
    let now = now_ms();
    let day_start = (now + offset).div_euclid(day) * day - offset;
    let today = state
        .store
        .channel_counts_since(userid, day_start)
        .await?
        .into_iter()
        .map(|(channel, c)| (channel, c.delivered, c.failed))
        .collect();
    let (look, own_look) = look(state, prefs.look);
    Ok(bot::status_reply(&StatusView {
        look: look.as_str().to_owned(),
        own_look,
        token_hint: token.map(|t| t.hint()),
        email: prefs.email.map(|e| e.masked()),
        order: route.to_display(),
        own_order,
        unusable,
        today,
    }))
}

async fn fallback(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    let typed = typed.trim();
    if typed.is_empty() {
        let prefs = state.store.member_prefs(userid).await?;
        let (route, own) = order(state, prefs.channels.as_ref());
        return Ok(bot::fallback_invalid_reply(&format!(
            "order: {}{}",
            route.to_display(),
            bot::default_mark(own)
        )));
    }
    if bot::is_reset(typed) {
        state.store.set_channels(userid, None).await?;
        return Ok(bot::fallback_set_reply(
            &state.outbox.default_route().to_display(),
            false,
        ));
    }
    let route = match ChannelChoice::parse(typed) {
        Ok(ChannelChoice::Order(route)) => route,
        Ok(_) => {
            return Ok(bot::fallback_invalid_reply(
                "a channel order lists channels: wecom, email",
            ));
        }
        Err(problem) => return Ok(bot::fallback_invalid_reply(&problem)),
    };
    // Checked like a sender's choice, so the member hears now what would not work.
    let prefs = state.store.member_prefs(userid).await?;
    let reach = Reach {
        email_bound: prefs.email.is_some(),
        own_order: None,
    };
    let mut reply_note = String::new();
    if let Err(why) = state
        .outbox
        .route(&ChannelChoice::Order(route.clone()), &reach)
    {
        reply_note = format!("\n注意 Note: {why}");
    }
    state.store.set_channels(userid, Some(&route)).await?;
    tracing::info!(userid = %userid, order = %route.to_stored(), "channel order set");
    Ok(format!(
        "{}{reply_note}",
        bot::fallback_set_reply(&route.to_display(), true)
    ))
}
