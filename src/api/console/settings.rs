//! The console's Settings page: what the member set in the chat (bindings, destinations,
//! channel order, format, quiet hours, time zone), each marked default or own, and a form
//! for every change.
//!
//! Nothing here changes anything by itself: every form becomes the chat [`Command`] a
//! member would type and goes through [`chat::run`], and the bot's reply is the page's
//! notice. So the console can do exactly what the chat can (no more), an invalid value
//! gets the chat's answer and changes nothing, and the current values are read as the
//! chat's `status` reads them.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::{HasLayout, Layout, Posted, Session, failure, notice, render};
use crate::api::AppState;
use crate::api::chat;
use crate::bot::{self, Command};
use crate::delivery::quiet::{self, QuietSetting};
use crate::domain::{ChannelName, UserId};
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    let mut router = Router::new().route("/console/settings", get(show));
    for change in Change::ALL {
        router = router.route(
            &format!("/console/settings/{}", change.path()),
            post(move |State(state): State<AppState>, posted: Posted| apply(state, posted, change)),
        );
    }
    router
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    layout: Layout,
    view: SettingsView,
}

impl SettingsPage {
    /// "你的设置 yours" or "默认 default": whose a setting is (as `status` marks it).
    fn whose(&self, own: &bool) -> &'static str {
        if *own {
            "你的设置 yours"
        } else {
            "默认 default"
        }
    }
}

impl HasLayout for SettingsPage {
    fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// The page as the member's settings are now, with `flash` (the bot's reply) on top.
async fn page(state: &AppState, session: &Session, flash: Option<String>) -> Response {
    let view = match SettingsView::read(state, &session.userid).await {
        Ok(view) => view,
        Err(err) => return failure(state, &err),
    };
    let mut layout = Layout::new(state, session, "settings", "设置 Settings");
    layout.flash = flash;
    render(StatusCode::OK, &SettingsPage { layout, view })
}

/// `GET {base}/settings`.
async fn show(State(state): State<AppState>, session: Session) -> Response {
    page(&state, &session, None).await
}

/// `POST {base}/settings/{change}` (its CSRF field checked by [`Posted`]): the chat
/// command the form stands for, run as the chat runs it; the page shows the bot's answer.
async fn apply(state: AppState, posted: Posted, change: Change) -> Response {
    let form = ChangeForm::of(&posted);
    let command = match command(change, &form) {
        Ok(command) => command,
        Err(bad) => {
            return notice(
                &state,
                Some(&posted.session),
                StatusCode::BAD_REQUEST,
                "请求无效 · Bad request",
                &bad.to_string(),
            );
        }
    };
    match chat::run(&state, &posted.session.userid, command).await {
        Ok(reply) => page(&state, &posted.session, Some(reply)).await,
        Err(err) => failure(&state, &err),
    }
}

/// A change the settings page can ask for: one form, one route
/// (`POST {base}/settings/{path}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// `email ADDRESS` / `phone NUMBER`: a code goes to the address.
    Bind,
    /// `verify CODE`.
    Verify,
    /// `email off` / `phone off`.
    Unbind,
    /// `robot NAME URL [SECRET]` / `robot NAME telegram CHAT`.
    AddDestination,
    /// `robot NAME off`.
    RemoveDestination,
    /// `fallback …`.
    Fallback,
    /// `format …`.
    Format,
    /// `quiet …`.
    Quiet,
    /// `timezone …`.
    Timezone,
}

impl Change {
    pub(super) const ALL: [Change; 9] = [
        Change::Bind,
        Change::Verify,
        Change::Unbind,
        Change::AddDestination,
        Change::RemoveDestination,
        Change::Fallback,
        Change::Format,
        Change::Quiet,
        Change::Timezone,
    ];

    /// Its route below `{base}/settings/`.
    pub(super) fn path(self) -> &'static str {
        match self {
            Change::Bind => "bind",
            Change::Verify => "verify",
            Change::Unbind => "unbind",
            Change::AddDestination => "destination",
            Change::RemoveDestination => "destination/remove",
            Change::Fallback => "fallback",
            Change::Format => "format",
            Change::Quiet => "quiet",
            Change::Timezone => "timezone",
        }
    }
}

/// The fields of every settings form (each form sends the ones it has; the CSRF field is
/// checked before this is read). Unknown names are ignored, as a browser may add some.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub(super) struct ChangeForm {
    /// `email` or `sms`: the channel of an address.
    pub channel: Option<String>,
    /// An e-mail address or a phone number; a destination's URL or Telegram chat.
    pub address: Option<String>,
    /// The six digits of a verification code.
    pub code: Option<String>,
    /// A destination's name.
    pub name: Option<String>,
    /// A destination's kind: `robot` (a group robot's URL) or `telegram` (a chat id).
    pub kind: Option<String>,
    /// A group robot's signing secret (DingTalk 加签, Feishu 签名校验).
    pub secret: Option<String>,
    /// The value of a one-field setting (order, format, quiet hours, time zone; `default`
    /// for the server's).
    pub value: Option<String>,
    /// Quiet hours: the checkbox "urgent ones wait too".
    pub strict: Option<String>,
}

impl ChangeForm {
    /// The fields of a posted form (the first of each name).
    fn of(posted: &Posted) -> Self {
        let field = |name: &str| posted.get(name).map(str::to_owned);
        Self {
            channel: field("channel"),
            address: field("address"),
            code: field("code"),
            name: field("name"),
            kind: field("kind"),
            secret: field("secret"),
            value: field("value"),
            strict: field("strict"),
        }
    }
}

/// Why a form is not one the settings page sends (a 400 page): a request made by hand,
/// never a value a member typed (those get the chat's answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadForm {
    #[error("choose the channel of the address: email or sms（请选择渠道）")]
    Channel,
    #[error("choose the kind of destination: robot or telegram（请选择类型）")]
    Kind,
}

/// A form field as the chat reads a typed argument ([`bot::fold`]: full-width forms folded,
/// invisible characters and trailing sentence punctuation dropped, trimmed); absent: empty.
fn typed(field: Option<&str>) -> String {
    bot::fold(field.unwrap_or(""))
}

/// The channel of an address (`email`, `sms`): built-in names only, so that nothing a
/// client sends is taken for (and interned as) a destination's name.
fn address_channel(field: Option<&str>) -> Result<ChannelName, BadForm> {
    let typed = typed(field).to_ascii_lowercase();
    [ChannelName::Email, ChannelName::Sms]
        .into_iter()
        .find(|c| c.as_str() == typed)
        .ok_or(BadForm::Channel)
}

/// The chat command a settings form asks for, exactly as the member would type it in the
/// chat: the same command and argument, so the same checks and the same answer.
pub(super) fn command(change: Change, form: &ChangeForm) -> Result<Command, BadForm> {
    Ok(match change {
        Change::Bind => Command::Bind {
            channel: address_channel(form.channel.as_deref())?,
            typed: typed(form.address.as_deref()),
        },
        Change::Verify => {
            let code = typed(form.code.as_deref());
            if bot::is_code(&code) {
                Command::Verify(code)
            } else {
                Command::VerifyUsage
            }
        }
        Change::Unbind => Command::Unbind(address_channel(form.channel.as_deref())?),
        Change::AddDestination => {
            let telegram = match typed(form.kind.as_deref()).to_ascii_lowercase().as_str() {
                "robot" => false,
                "telegram" => true,
                _ => return Err(BadForm::Kind),
            };
            let (name, address) = (typed(form.name.as_deref()), typed(form.address.as_deref()));
            let secret = Some(typed(form.secret.as_deref())).filter(|s| !s.is_empty());
            // What the chat reads as one word each; anything else is its usage answer.
            let one_word = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
            let secret_fits =
                secret.as_deref().is_none_or(one_word) && !(telegram && secret.is_some());
            if one_word(&name) && one_word(&address) && secret_fits {
                Command::AddRobot {
                    name,
                    telegram,
                    address,
                    secret,
                }
            } else {
                Command::RobotUsage
            }
        }
        Change::RemoveDestination => {
            let name = typed(form.name.as_deref());
            if name.is_empty() || name.contains(char::is_whitespace) {
                Command::RobotUsage
            } else {
                Command::RemoveRobot(name)
            }
        }
        // `、` is how a Chinese IME separates list items (the chat reads it as `,`).
        Change::Fallback => Command::Fallback(typed(form.value.as_deref()).replace('、', ",")),
        Change::Format => Command::Format(typed(form.value.as_deref())),
        Change::Quiet => {
            let hours = typed(form.value.as_deref());
            let strict = form.strict.as_deref().is_some_and(|s| !s.trim().is_empty());
            Command::Quiet(if strict && !hours.is_empty() {
                format!("{hours} strict")
            } else {
                hours
            })
        }
        Change::Timezone => Command::Timezone(typed(form.value.as_deref())),
    })
}

/// A channel that takes an address, as the page shows it.
pub(super) struct AddressRow {
    /// `email`, `sms`: the forms' `channel` field.
    pub channel: &'static str,
    /// `邮箱 E-mail`.
    pub label: String,
    /// The bound address, masked as `status` shows it; `None`: none bound.
    pub masked: Option<String>,
    /// This server has the channel (an address can be bound here).
    pub configured: bool,
    /// What to type, e.g. `you@example.com`.
    pub example: &'static str,
}

/// A destination of the member's own, masked as `robots` shows it.
pub(super) struct DestinationRow {
    pub name: String,
    pub kind: String,
    pub masked: String,
}

/// Everything the settings page shows, read as the chat's `status` and `robots` read it.
pub(super) struct SettingsView {
    pub userid: String,
    pub addresses: Vec<AddressRow>,
    pub destinations: Vec<DestinationRow>,
    /// Shared destinations (from the config) the member may use, by name.
    pub shared: Vec<String>,
    /// `wecom → email`.
    pub order: String,
    /// `wecom,email`: what the order's field starts with.
    pub order_typed: String,
    pub own_order: bool,
    /// Channels in the order the member cannot be reached on.
    pub unusable: Vec<String>,
    /// `text`, `markdown`, `card`.
    pub look: &'static str,
    pub own_look: bool,
    /// `23:00-07:00 strict`; `None`: none.
    pub quiet: Option<String>,
    pub own_quiet: bool,
    /// The window alone (`23:00-07:00`), for the field.
    pub quiet_window: String,
    pub quiet_strict: bool,
    /// `+08:00`.
    pub offset: String,
    pub own_offset: bool,
}

impl SettingsView {
    pub(super) async fn read(state: &AppState, userid: &UserId) -> Result<Self, ApiError> {
        let prefs = state.store.member_prefs(userid).await?;
        let (route, own_order) = chat::order(state, prefs.channels.as_ref());
        let unusable = chat::unusable(state, userid, &route, &prefs.bound());
        let addresses = chat::addresses(state, &prefs)
            .into_iter()
            .map(|line| {
                let binding = state.outbox.binding(line.channel);
                AddressRow {
                    channel: line.channel.as_str(),
                    label: match binding {
                        Some(b) => format!("{} {}", b.noun.0, line.channel.label()),
                        None => line.channel.label().to_owned(),
                    },
                    masked: line.masked,
                    configured: line.configured,
                    example: binding.map_or("", |b| b.example),
                }
            })
            .collect();
        let destinations = chat::own_destinations(state, userid)
            .await?
            .into_iter()
            .map(|(name, kind, masked)| DestinationRow { name, kind, masked })
            .collect();
        let (look, own_look) = chat::look(state, prefs.look);
        let (hours, own_quiet) = chat::quiet_hours(state, prefs.quiet);
        let (utc_offset, own_offset) = chat::offset(state, prefs.utc_offset);
        let own_hours = match prefs.quiet {
            Some(QuietSetting::On(hours)) => Some(hours),
            _ => None,
        };
        Ok(SettingsView {
            userid: userid.as_str().to_owned(),
            addresses,
            destinations,
            shared: chat::shared_destinations(state, userid),
            order: route.to_display(),
            order_typed: route.to_stored(),
            own_order,
            unusable,
            look: look.as_str(),
            own_look,
            quiet: hours.map(|h| h.to_string()),
            own_quiet,
            quiet_window: own_hours.map(|h| h.window.to_string()).unwrap_or_default(),
            quiet_strict: own_hours.is_some_and(|h| h.strict),
            offset: quiet::offset_text(utc_offset),
            own_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form, its fields, and the command it must be.
    type Case = (Change, Vec<(&'static str, &'static str)>, Command);

    fn form(fields: &[(&str, &str)]) -> ChangeForm {
        let encoded = serde_urlencoded::to_string(fields).expect("encodable");
        serde_urlencoded::from_str(&encoded).expect("a form")
    }

    #[test]
    fn each_form_is_the_command_the_chat_reads() {
        let cases: Vec<Case> = vec![
            (
                Change::Bind,
                vec![("channel", "email"), ("address", " ａ＠ｘ．ｃｏｍ。")],
                Command::Bind {
                    channel: ChannelName::Email,
                    typed: "a@x.com".into(),
                },
            ),
            (
                Change::Bind,
                vec![("channel", "sms"), ("address", "13800138000")],
                Command::Bind {
                    channel: ChannelName::Sms,
                    typed: "13800138000".into(),
                },
            ),
            // "off" is an address that does not read, never an unbinding.
            (
                Change::Bind,
                vec![("channel", "email"), ("address", "off")],
                Command::Bind {
                    channel: ChannelName::Email,
                    typed: "off".into(),
                },
            ),
            (
                Change::Verify,
                vec![("code", "１２３４５６")],
                Command::Verify("123456".into()),
            ),
            (
                Change::Verify,
                vec![("code", "12345")],
                Command::VerifyUsage,
            ),
            (Change::Verify, vec![], Command::VerifyUsage),
            (
                Change::Unbind,
                vec![("channel", "sms")],
                Command::Unbind(ChannelName::Sms),
            ),
            (
                Change::AddDestination,
                vec![
                    ("kind", "robot"),
                    ("name", "ops"),
                    ("address", "https://x/send?key=k"),
                    ("secret", ""),
                ],
                Command::AddRobot {
                    name: "ops".into(),
                    telegram: false,
                    address: "https://x/send?key=k".into(),
                    secret: None,
                },
            ),
            (
                Change::AddDestination,
                vec![
                    ("kind", "robot"),
                    ("name", "ding"),
                    ("address", "https://x/robot/send?access_token=t"),
                    ("secret", "SECabc"),
                ],
                Command::AddRobot {
                    name: "ding".into(),
                    telegram: false,
                    address: "https://x/robot/send?access_token=t".into(),
                    secret: Some("SECabc".into()),
                },
            ),
            (
                Change::AddDestination,
                vec![("kind", "telegram"), ("name", "tg"), ("address", "-100123")],
                Command::AddRobot {
                    name: "tg".into(),
                    telegram: true,
                    address: "-100123".into(),
                    secret: None,
                },
            ),
            // What the chat could not read as words: its usage answer.
            (
                Change::AddDestination,
                vec![("kind", "robot"), ("name", "a b"), ("address", "u")],
                Command::RobotUsage,
            ),
            (
                Change::AddDestination,
                vec![("kind", "robot"), ("name", "ops"), ("address", "")],
                Command::RobotUsage,
            ),
            (
                Change::AddDestination,
                vec![
                    ("kind", "telegram"),
                    ("name", "tg"),
                    ("address", "-1"),
                    ("secret", "s"),
                ],
                Command::RobotUsage,
            ),
            (
                Change::RemoveDestination,
                vec![("name", "ops")],
                Command::RemoveRobot("ops".into()),
            ),
            (Change::RemoveDestination, vec![], Command::RobotUsage),
            (
                Change::Fallback,
                vec![("value", "wecom、email")],
                Command::Fallback("wecom,email".into()),
            ),
            (
                Change::Format,
                vec![("value", "card")],
                Command::Format("card".into()),
            ),
            (
                Change::Quiet,
                vec![("value", "23:00-07:00"), ("strict", "on")],
                Command::Quiet("23:00-07:00 strict".into()),
            ),
            (
                Change::Quiet,
                vec![("value", "off")],
                Command::Quiet("off".into()),
            ),
            (
                Change::Quiet,
                vec![("strict", "on")],
                Command::Quiet(String::new()),
            ),
            (
                Change::Timezone,
                vec![("value", "UTC＋８")],
                Command::Timezone("UTC+8".into()),
            ),
        ];
        for (change, fields, want) in cases {
            assert_eq!(
                command(change, &form(&fields)),
                Ok(want),
                "{change:?} {fields:?}"
            );
        }
    }

    #[test]
    fn a_form_no_page_sends_is_refused() {
        for channel in ["", "wecom", "ops", "all", "email,sms"] {
            let f = form(&[("channel", channel), ("address", "a@x.com")]);
            assert_eq!(
                command(Change::Bind, &f),
                Err(BadForm::Channel),
                "{channel}"
            );
            assert_eq!(
                command(Change::Unbind, &f),
                Err(BadForm::Channel),
                "{channel}"
            );
        }
        let f = form(&[("kind", "webhook"), ("name", "x"), ("address", "y")]);
        assert_eq!(command(Change::AddDestination, &f), Err(BadForm::Kind));
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        /// Text made of what the chat reads specially (keywords, separators, full-width and
        /// invisible characters, six digits) and anything else.
        fn typed_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                4 => prop::sample::select(vec![
                    "off",
                    "default",
                    "email",
                    "phone",
                    "sms",
                    "wecom",
                    "strict",
                    "robot",
                    "telegram",
                    "verify",
                    "status",
                    "rotate",
                    "token",
                    " ",
                    "\u{3000}",
                    "、",
                    ",",
                    "。",
                    "!",
                    "\u{200b}",
                    "\u{feff}",
                    "\n",
                    "１２３４５６",
                    "123456",
                    "23:00-07:00",
                    "+08:00",
                    "ops",
                    "\u{0}",
                ])
                .prop_map(str::to_owned),
                1 => "[a-z0-9@._-]{0,12}",
                1 => any::<String>(),
            ];
            prop::collection::vec(piece, 0..5).prop_map(|pieces| pieces.concat())
        }

        fn field() -> impl Strategy<Value = Option<String>> {
            prop::option::of(typed_text())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Whatever a form holds, it asks for its own command (or its usage answer, or
            /// is refused): a value never becomes another command (`off`, `status`,
            /// `rotate` …), and nothing panics.
            #[test]
            fn a_form_asks_only_for_its_own_command(
                change in prop::sample::select(Change::ALL.to_vec()),
                channel in prop_oneof![
                    Just(Some("email".to_owned())),
                    Just(Some("sms".to_owned())),
                    field(),
                ],
                kind in prop_oneof![
                    Just(Some("robot".to_owned())),
                    Just(Some("telegram".to_owned())),
                    field(),
                ],
                address in field(),
                code in field(),
                name in field(),
                secret in field(),
                value in field(),
                strict in field(),
            ) {
                let form = ChangeForm { channel, address, code, name, kind, secret, value, strict };
                let got = command(change, &form);
                let own = match (&change, &got) {
                    (Change::Bind, Ok(Command::Bind { channel, .. })) => {
                        matches!(channel, ChannelName::Email | ChannelName::Sms)
                    }
                    (Change::Bind | Change::Unbind, Err(BadForm::Channel)) => true,
                    (Change::Verify, Ok(Command::Verify(code))) => bot::is_code(code),
                    (Change::Verify, Ok(Command::VerifyUsage)) => true,
                    (Change::Unbind, Ok(Command::Unbind(channel))) => {
                        matches!(channel, ChannelName::Email | ChannelName::Sms)
                    }
                    (Change::AddDestination, Ok(Command::AddRobot { name, address, secret, .. })) => {
                        let word = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
                        word(name) && word(address) && secret.as_deref().is_none_or(word)
                    }
                    (Change::AddDestination, Ok(Command::RobotUsage) | Err(BadForm::Kind)) => true,
                    (Change::RemoveDestination, Ok(Command::RemoveRobot(name))) => {
                        !name.is_empty() && !name.contains(char::is_whitespace)
                    }
                    (Change::RemoveDestination, Ok(Command::RobotUsage)) => true,
                    (Change::Fallback, Ok(Command::Fallback(_)))
                    | (Change::Format, Ok(Command::Format(_)))
                    | (Change::Quiet, Ok(Command::Quiet(_)))
                    | (Change::Timezone, Ok(Command::Timezone(_))) => true,
                    _ => false,
                };
                prop_assert!(own, "{change:?} {form:?} → {got:?}");
            }
        }
    }

    #[test]
    fn routes_are_distinct() {
        let mut paths: Vec<&str> = Change::ALL.iter().map(|c| c.path()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), Change::ALL.len());
    }
}
