//! What each chat command does: the state change behind a bot reply. (The commands and
//! the reply texts are [`crate::bot`]'s, which stays pure.)

use super::AppState;
use crate::bot::{self, Command, StatusView};
use crate::delivery::Channel as _;
use crate::delivery::quiet::{self, QuietHours, QuietSetting};
use crate::delivery::{ChannelChoice, NewMessage, Reach};
use crate::domain::{
    ChannelName, DestName, Format, Look, MessageId, Outbound, Route, UnknownChannel, UserId,
};
use crate::error::ApiError;
use crate::store::{CodeCheck, CodeRequest};
use crate::time::UnixMillis;

pub async fn run(state: &AppState, userid: &UserId, command: Command) -> Result<String, ApiError> {
    Ok(match command {
        Command::Token => {
            let token = state.store.token_for(userid).await?;
            bot::token_reply(token.expose(), &state.public_base)
        }
        Command::Rotate => {
            // Ends the member's console sessions too, in the same transaction.
            let token = state.store.rotate_token(userid).await?;
            tracing::info!(userid = %userid, "push token rotated; console sessions ended");
            bot::rotated_reply(token.expose(), &state.public_base)
        }
        Command::Help => bot::help_reply(),
        Command::Welcome => bot::welcome_reply(),
        Command::Bind { channel, typed } => request_code(state, userid, channel, &typed).await?,
        Command::Verify(typed) => verify(state, userid, &typed).await?,
        Command::VerifyUsage => bot::verify_usage_reply(),
        Command::Unbind(channel) => match state.outbox.binding(channel) {
            None => bot::channel_unavailable_reply(channel),
            Some(binding) => {
                state.store.unbind(userid, channel).await?;
                tracing::info!(userid = %userid, channel = %channel, "address unbound");
                bot::unbound_reply(binding, channel)
            }
        },
        Command::Status => status(state, userid).await?,
        Command::Ack => match state.store.latest_unacked(userid).await? {
            None => bot::ack_reply(None),
            Some(id) => {
                // The member's own message that asks (found just now): an error here is the
                // database's, answered as any other.
                let (message, _) =
                    super::messages::acknowledge(state, userid, id.as_str(), "chat").await?;
                bot::ack_reply(Some((id.as_str(), message.title.as_deref())))
            }
        },
        Command::Fallback(typed) => fallback(state, userid, &typed).await?,
        Command::Format(typed) => format(state, userid, &typed).await?,
        Command::Quiet(typed) => quiet(state, userid, &typed).await?,
        Command::Timezone(typed) => timezone(state, userid, &typed).await?,
        Command::AddRobot {
            name,
            telegram,
            address,
            secret,
        } => add_robot(state, userid, &name, telegram, &address, secret.as_deref()).await?,
        Command::RemoveRobot(name) => match DestName::parse(&name) {
            Err(problem) => bot::robot_usage_reply(Some(&problem.to_string())),
            Ok(name) => {
                let existed = state
                    .store
                    .remove_member_destination(userid, ChannelName::Dest(name))
                    .await?;
                if existed {
                    tracing::info!(userid = %userid, destination = %name.as_str(), "destination removed");
                }
                bot::robot_removed_reply(name.as_str(), existed)
            }
        },
        Command::Robots => robots(state, userid).await?,
        Command::RobotUsage => bot::robot_usage_reply(None),
        Command::Login => {
            let ttl = state.console.login_ttl;
            let token = state
                .store
                .create_console_login(userid, UnixMillis::now(), ttl)
                .await?;
            tracing::info!(userid = %userid, "console login link sent");
            let link = format!("{}/login?t={token}", state.console.public_base);
            bot::login_reply(&link, ttl.as_secs().div_ceil(60).max(1))
        }
        Command::Logout => {
            let ended = state.store.end_console_sessions(userid).await?;
            tracing::info!(userid = %userid, ended, "console sessions ended by the member");
            bot::logout_reply(ended)
        }
        Command::GroupUsage => bot::group_usage_reply(),
        other => group_command(state, userid, other).await?,
    })
}

/// The group commands: the same operations as `/groups` (`crate::api::groups`), answered in
/// the chat's words.
async fn group_command(
    state: &AppState,
    userid: &UserId,
    command: Command,
) -> Result<String, ApiError> {
    use super::groups as g;
    let valid = crate::groups::show_duration(state.groups.invite_ttl);
    let done = match command {
        Command::GroupNew(name) => g::create_group(state, userid, &name).await?.map(|new| {
            bot::group_created_reply(
                &new.group.name,
                new.token.expose(),
                &crate::groups::show_invite(&new.invite),
                &valid,
                &state.public_base,
            )
        }),
        Command::GroupJoin(code) => g::join_group(state, userid, &code)
            .await?
            .map(|group| bot::group_joined_reply(&group.name)),
        Command::GroupLeave(name) => {
            g::leave_group(state, userid, &name)
                .await?
                .map(|(group, new_owner, deleted)| {
                    bot::group_left_reply(
                        &group.name,
                        new_owner.as_ref().map(UserId::as_str),
                        deleted,
                    )
                })
        }
        Command::Groups => Ok(groups_list(state, userid).await?),
        Command::GroupRotate(name) => {
            g::rotate_group(state, userid, &name)
                .await?
                .map(|(group, token)| {
                    bot::group_rotated_reply(&group.name, token.expose(), &state.public_base)
                })
        }
        Command::GroupInvite(name) => {
            g::renew_invite(state, userid, &name)
                .await?
                .map(|(group, code, _)| {
                    bot::group_invite_reply(&group.name, &crate::groups::show_invite(&code), &valid)
                })
        }
        Command::GroupKick { group, member } => g::kick_member(state, userid, &group, &member)
            .await?
            .map(|(group, member)| bot::group_kicked_reply(&group.name, member.as_str())),
        Command::GroupDelete(name) => g::delete_group(state, userid, &name)
            .await?
            .map(|group| bot::group_deleted_reply(&group.name)),
        Command::GroupMute { group, muted } => g::mute_group(state, userid, &group, muted)
            .await?
            .map(|group| bot::group_muted_reply(&group.name, muted)),
        _ => Ok(bot::help_reply()),
    };
    Ok(done.unwrap_or_else(|refusal| bot::group_refused_reply(&refusal)))
}

/// `groups`: the member's groups; the owner's with token and invite (this chat is theirs
/// alone), the invite's last day in the server's time zone.
async fn groups_list(state: &AppState, userid: &UserId) -> Result<String, ApiError> {
    let day = |at: UnixMillis| {
        let shifted = UnixMillis::from_millis(
            at.as_millis()
                .saturating_add(i64::from(state.utc_offset) * 1000),
        );
        humantime::format_rfc3339_seconds(shifted.to_system_time())
            .to_string()
            .chars()
            .take(10)
            .collect::<String>()
    };
    let lines: Vec<bot::GroupLine> = super::groups::groups_of(state, userid)
        .await?
        .into_iter()
        .map(|g| bot::GroupLine {
            name: g.group.name,
            owner: g.owner,
            muted: g.muted,
            members: g.members,
            wecom: g.source == "wecom",
            token: g.token.map(|t| t.expose().to_owned()),
            invite: g.invite.map(|code| {
                (
                    crate::groups::show_invite(&code),
                    g.invite_expires_at.map(day).unwrap_or_default(),
                )
            }),
        })
        .collect();
    Ok(bot::groups_reply(&lines))
}

/// Sends a code to the address over its channel through the outbox — the same reliable
/// path as any message, to the address being bound, not the member's current one.
async fn request_code(
    state: &AppState,
    userid: &UserId,
    channel: ChannelName,
    typed: &str,
) -> Result<String, ApiError> {
    let Some(binding) = state.outbox.binding(channel) else {
        return Ok(bot::channel_unavailable_reply(channel));
    };
    let Ok(address) = (binding.parse)(typed) else {
        return Ok(bot::address_invalid_reply(binding, typed));
    };
    let request = state
        .store
        .request_code(
            userid,
            channel,
            &address,
            UnixMillis::now(),
            binding.code_ttl,
            binding.codes_per_hour,
        )
        .await?;
    let code = match request {
        CodeRequest::TooMany => return Ok(bot::code_too_many_reply()),
        CodeRequest::Created { code } => code,
    };
    let minutes = binding.code_ttl.as_secs().div_ceil(60).max(1);
    let (title, content) = (binding.code_message)(&code, minutes);
    let route =
        Route::new(vec![channel]).ok_or_else(|| ApiError::Internal("an empty route".into()))?;
    state
        .outbox
        .accept(NewMessage {
            userid: userid.clone(),
            title,
            content: Some(content),
            idempotency_key: None,
            request_digest: None,
            route,
            deliver_all: false,
            address_to: Some(address.clone()),
            format: Format::Text,
            look: None,
            url: None,
            attachments: Vec::new(),
            deliver_at: None,
            // The member is waiting for it right now, in the chat.
            urgent: true,
            held: None,
            resent_from: None,
            verify_token: None,
            ack: None,
        })
        .await?;
    state.metrics.accepted(crate::metrics::Endpoint::Chat);
    tracing::info!(userid = %userid, channel = %channel, address = %(binding.mask)(&address), "verification code sent");
    Ok(bot::code_sent_reply(&address, minutes))
}

/// How long a new destination's test message may take: the chat's answer waits for it,
/// and WeCom gives a callback 5 s.
const ROBOT_TEST_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(3_500);

/// `robot NAME ADDRESS [SECRET]`: checks the address against the configured bases, sends a
/// test message there, and keeps the destination only if that arrived.
async fn add_robot(
    state: &AppState,
    userid: &UserId,
    name: &str,
    telegram: bool,
    address: &str,
    secret: Option<&str>,
) -> Result<String, ApiError> {
    let name = match DestName::parse(name) {
        Ok(name) => ChannelName::Dest(name),
        Err(problem) => return Ok(bot::robot_usage_reply(Some(&problem.to_string()))),
    };
    if state.outbox.channel(name).is_some() {
        return Ok(bot::robot_usage_reply(Some(&format!(
            "「{0}」是服务器共享的目的地名。\n\"{0}\" is the name of a shared destination: choose another.",
            name.as_str()
        ))));
    }
    let kind = telegram.then_some(crate::delivery::destinations::Kind::Telegram);
    let channel = match state
        .outbox
        .destinations()
        .from_chat(name, kind, address, secret)
    {
        Ok(channel) => channel,
        Err(problem) => return Ok(bot::robot_usage_reply(Some(&problem.to_string()))),
    };
    let (title, content) = bot::robot_test_message(name.as_str());
    let test = Outbound {
        id: MessageId::generate(),
        userid: userid.clone(),
        title: Some(title),
        content: Some(content),
        address: None,
        format: Format::Text,
        look: Look::Text,
        url: None,
        page_key: None,
        verification: false,
        attachments: Vec::new(),
        part: crate::domain::Part::Whole,
        group_send: None,
    };
    let masked = channel.masked();
    match tokio::time::timeout(ROBOT_TEST_TIMEOUT, channel.deliver(&test)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Ok(bot::robot_refused_reply(name.as_str(), err.reason())),
        Err(_) => {
            return Ok(bot::robot_refused_reply(
                name.as_str(),
                "no answer in time (超时): try again",
            ));
        }
    }
    let stored = crate::delivery::destinations::Factory::to_stored(&channel);
    if !state.store.add_member_destination(userid, &stored).await? {
        return Ok(bot::robot_usage_reply(Some(&format!(
            "最多 {0} 个目的地。\nAt most {0} destinations: remove one first (robot NAME off).",
            crate::store::MAX_MEMBER_DESTINATIONS
        ))));
    }
    tracing::info!(userid = %userid, destination = %name, address = %masked, "destination added");
    Ok(bot::robot_added_reply(name.as_str(), &masked))
}

/// `robots`: the member's own destinations (masked) and the shared ones they may use.
async fn robots(state: &AppState, userid: &UserId) -> Result<String, ApiError> {
    let own = own_destinations(state, userid).await?;
    Ok(bot::robots_reply(&own, &shared_destinations(state, userid)))
}

/// The member's own destinations as `robots` and the console list them: `(name, kind,
/// masked address)`, by name.
pub(crate) async fn own_destinations(
    state: &AppState,
    userid: &UserId,
) -> Result<Vec<(String, String, String)>, ApiError> {
    let factory = state.outbox.destinations();
    Ok(state
        .store
        .member_destinations(userid)
        .await?
        .iter()
        .map(|stored| match factory.from_stored(stored) {
            Ok(channel) => (
                stored.name.as_str().to_owned(),
                stored.kind.clone(),
                channel.masked(),
            ),
            Err(_) => (
                stored.name.as_str().to_owned(),
                stored.kind.clone(),
                "(不可用 unusable)".to_owned(),
            ),
        })
        .collect())
}

/// The names of the shared destinations (from the config) the member may use.
pub(crate) fn shared_destinations(state: &AppState, userid: &UserId) -> Vec<String> {
    state
        .outbox
        .channels()
        .iter()
        .filter(|c| matches!(c, ChannelName::Dest(_)))
        .filter(|c| state.outbox.reaches(**c, Some(userid), &[]))
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// Checks a code; only six digits reach the store, so a typo costs no attempt.
async fn verify(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    if !bot::is_code(typed) {
        return Ok(bot::verify_usage_reply());
    }
    Ok(
        match state
            .store
            .check_code(userid, typed, UnixMillis::now())
            .await?
        {
            CodeCheck::Bound { channel, address } => match state.outbox.binding(channel) {
                // Bound, though the channel is gone from the config since the code was sent.
                None => bot::channel_unavailable_reply(channel),
                Some(binding) => {
                    let masked = (binding.mask)(&address);
                    tracing::info!(userid = %userid, channel = %channel, address = %masked, "address bound");
                    let prefs = state.store.member_prefs(userid).await?;
                    let (route, _) = order(state, prefs.channels.as_ref());
                    let in_order = route.channels().contains(&channel);
                    bot::bound_reply(binding, channel, &masked, in_order)
                }
            },
            CodeCheck::Wrong { attempts_left } => bot::code_wrong_reply(attempts_left),
            CodeCheck::Expired => bot::code_expired_reply(),
            CodeCheck::Exhausted => bot::code_exhausted_reply(),
            CodeCheck::NoPending => bot::no_pending_code_reply(),
        },
    )
}

/// The effective order: the member's own, else the server's default.
pub(crate) fn order(state: &AppState, own: Option<&Route>) -> (Route, bool) {
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
        Err(problem) => Ok(bot::format_invalid_reply(&problem.to_string())),
    }
}

/// The effective look: the member's own, else the server's default.
pub(crate) fn look(state: &AppState, own: Option<Look>) -> (Look, bool) {
    match own {
        Some(look) => (look, true),
        None => (state.outbox.default_look(), false),
    }
}

/// The member's quiet hours: their own (`Off`: none), else the server's default; and
/// whether they are the member's own.
pub(crate) fn quiet_hours(
    state: &AppState,
    own: Option<QuietSetting>,
) -> (Option<QuietHours>, bool) {
    (
        QuietSetting::effective(own, state.quiet_hours),
        own.is_some(),
    )
}

/// The member's offset from UTC: their own, else the server's; and whether it is their own.
pub(crate) fn offset(state: &AppState, own: Option<i32>) -> (i32, bool) {
    match own {
        Some(secs) => (secs, true),
        None => (state.utc_offset, false),
    }
}

/// The member's quiet hours changed (or their offset, which moves them): their messages
/// held by quiet hours are due at the end of the window if it is quiet now, else at once.
/// Answers the end of the window when it is quiet now (`HH:MM`), and how many messages
/// were given a new time.
async fn retime(
    state: &AppState,
    userid: &UserId,
    hours: Option<QuietHours>,
    utc_offset: i32,
) -> Result<(Option<String>, u64), ApiError> {
    let now = UnixMillis::now();
    let until = hours
        .filter(|h| quiet::is_quiet(now, h.window, utc_offset))
        .map(|h| (quiet::ends_at(now, h.window, utc_offset), h.window.end()));
    let deliver_at = until.map_or(now, |(at, _)| at);
    let retimed = state
        .store
        .retime_held(userid, crate::store::Held::Quiet, deliver_at)
        .await?;
    if retimed > 0 {
        tracing::info!(userid = %userid, messages = retimed, "quiet hours changed; held messages re-timed");
    }
    Ok((until.map(|(_, end)| quiet::clock(end)), retimed))
}

/// `quiet 23:00-07:00 [strict]`, `quiet off`, `quiet default`; `quiet` alone shows them.
async fn quiet(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    let typed = typed.trim();
    let prefs = state.store.member_prefs(userid).await?;
    let (utc_offset, _) = offset(state, prefs.utc_offset);
    let offset_text = quiet::offset_text(utc_offset);
    if typed.is_empty() {
        let (hours, own) = quiet_hours(state, prefs.quiet);
        return Ok(bot::quiet_usage_reply(
            None,
            hours.as_ref(),
            own,
            &offset_text,
        ));
    }
    let own = if bot::is_reset(typed) {
        None
    } else {
        match typed.parse::<QuietSetting>() {
            Ok(setting) => Some(setting),
            Err(problem) => {
                let (hours, own) = quiet_hours(state, prefs.quiet);
                return Ok(bot::quiet_usage_reply(
                    Some(&problem.to_string()),
                    hours.as_ref(),
                    own,
                    &offset_text,
                ));
            }
        }
    };
    state.store.set_quiet(userid, own).await?;
    tracing::info!(userid = %userid, quiet = %own.map_or_else(|| "default".to_owned(), QuietSetting::to_stored), "quiet hours set");
    let (hours, own) = quiet_hours(state, own);
    let (until, retimed) = retime(state, userid, hours, utc_offset).await?;
    Ok(match hours {
        Some(hours) => bot::quiet_set_reply(&hours, own, &offset_text, until.as_deref(), retimed),
        None => bot::quiet_off_reply(own, retimed),
    })
}

/// `timezone +08:00`, `timezone default`; `timezone` alone shows it.
async fn timezone(state: &AppState, userid: &UserId, typed: &str) -> Result<String, ApiError> {
    let typed = typed.trim();
    let prefs = state.store.member_prefs(userid).await?;
    if typed.is_empty() {
        let (utc_offset, own) = offset(state, prefs.utc_offset);
        return Ok(bot::timezone_usage_reply(
            None,
            &quiet::offset_text(utc_offset),
            own,
        ));
    }
    let own = if bot::is_reset(typed) {
        None
    } else {
        match quiet::parse_offset(typed) {
            Ok(secs) => Some(secs),
            Err(problem) => {
                let (utc_offset, own) = offset(state, prefs.utc_offset);
                return Ok(bot::timezone_usage_reply(
                    Some(&problem.to_string()),
                    &quiet::offset_text(utc_offset),
                    own,
                ));
            }
        }
    };
    state.store.set_utc_offset(userid, own).await?;
    let (utc_offset, own) = offset(state, own);
    let offset_text = quiet::offset_text(utc_offset);
    tracing::info!(userid = %userid, utc_offset = %offset_text, own, "time zone set");
    // The window moved with the offset.
    let (hours, _) = quiet_hours(state, prefs.quiet);
    if hours.is_some() {
        retime(state, userid, hours, utc_offset).await?;
    }
    Ok(bot::timezone_set_reply(&offset_text, own, hours.as_ref()))
}

/// The channels of `route` the member cannot be reached on (e-mail without an address).
pub(crate) fn unusable(
    state: &AppState,
    userid: &UserId,
    route: &Route,
    bound: &[ChannelName],
) -> Vec<String> {
    route
        .channels()
        .iter()
        .filter(|c| !state.outbox.reaches(**c, Some(userid), bound))
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// A channel that needs an address, as `status` and the console show it.
pub(crate) struct AddressLine {
    pub channel: ChannelName,
    /// Its chat command (`email`, `phone`), or its name when this server lacks it.
    pub command: String,
    /// The bound address, masked; `None`: none bound.
    pub masked: Option<String>,
    /// Whether this server has the channel (an address can be bound and verified).
    pub configured: bool,
}

/// A line for each channel here that needs an address (and any bound elsewhere).
pub(crate) fn addresses(state: &AppState, prefs: &crate::store::MemberPrefs) -> Vec<AddressLine> {
    ChannelName::ALL
        .into_iter()
        .filter_map(|channel| {
            let address = prefs.address(channel);
            match (state.outbox.binding(channel), address) {
                (Some(b), address) => Some(AddressLine {
                    channel,
                    command: b.command.to_owned(),
                    masked: address.map(b.mask),
                    configured: true,
                }),
                (None, Some(_)) => Some(AddressLine {
                    channel,
                    command: channel.as_str().to_owned(),
                    masked: Some("***".to_owned()),
                    configured: false,
                }),
                (None, None) => None,
            }
        })
        .collect()
}

async fn status(state: &AppState, userid: &UserId) -> Result<String, ApiError> {
    let prefs = state.store.member_prefs(userid).await?;
    let token = state.store.existing_token(userid).await?;
    let (route, own_order) = order(state, prefs.channels.as_ref());
    let unusable = unusable(state, userid, &route, &prefs.bound());
    let addresses = addresses(state, &prefs)
        .into_iter()
        .map(|a| (a.command, a.masked))
        .collect();
    // "Today" in the member's time zone.
    let (utc_offset, own_offset) = offset(state, prefs.utc_offset);
    let day_start = UnixMillis::now().start_of_day(utc_offset);
    let today = state
        .store
        .channel_counts_since(userid, day_start)
        .await?
        .into_iter()
        .map(|(channel, c)| (channel.to_string(), c.delivered, c.failed))
        .collect();
    let (look, own_look) = look(state, prefs.look);
    let (hours, own_quiet) = quiet_hours(state, prefs.quiet);
    Ok(bot::status_reply(&StatusView {
        quiet: hours.map(|h| h.to_string()),
        own_quiet,
        offset: quiet::offset_text(utc_offset),
        own_offset,
        look: look.as_str().to_owned(),
        own_look,
        token_hint: token.map(|t| t.hint()),
        addresses,
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
                "a channel order lists channels: wecom, email, sms",
            ));
        }
        Err(problem) => return Ok(bot::fallback_invalid_reply(&problem.to_string())),
    };
    // A name that is neither a channel nor a destination here (shared, or the member's
    // own) is a typo, not an order.
    let prefs = state.store.member_prefs(userid).await?;
    if let Some(unknown) = route.channels().iter().find(|c| {
        matches!(c, ChannelName::Dest(_))
            && state.outbox.channel(**c).is_none()
            && !prefs.destinations.contains(c)
    }) {
        let unknown = UnknownChannel {
            name: unknown.as_str().to_owned(),
        };
        return Ok(bot::fallback_invalid_reply(&unknown.to_string()));
    }
    // Checked like a sender's choice, so the member hears now what would not work.
    let reach = Reach {
        userid: Some(userid.clone()),
        bound: prefs.bound(),
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
