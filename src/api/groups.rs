//! `/groups` (issue 29): a member makes, joins, leaves, mutes and (as owner) manages groups
//! with their PERSONAL token. A group's own token only sends: it is refused here.
//!
//! The operations below are also the chat's (`crate::api::chat`): one implementation, each
//! answering either what was done or a [`Refusal`] the caller words for its medium.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{AppState, auth};
use crate::domain::{PushToken, UserId};
use crate::error::ApiError;
use crate::groups::{Refusal, RefusalKind, normalize_name, parse_invite, show_invite};
use crate::metrics::TokenRoute;
use crate::store::{Created, GroupRef, GroupView, Joined, Kicked, Left, NewGroup, Owned};
use crate::time::UnixMillis;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/join", post(join))
        .route("/groups/{name}", delete(remove))
        .route("/groups/{name}/leave", post(leave))
        .route("/groups/{name}/rotate", post(rotate))
        .route("/groups/{name}/invite", post(invite))
        .route("/groups/{name}/mute", post(mute))
        .route("/groups/{name}/unmute", post(unmute))
        .route("/groups/{name}/members/{userid}", delete(kick))
}

/// What an operation did, or why it did nothing.
pub(crate) type Outcome<T> = Result<Result<T, Refusal>, ApiError>;

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.message();
        match refusal.kind() {
            RefusalKind::BadRequest => Self::BadRequest(message),
            RefusalKind::Forbidden => Self::Forbidden(message),
            RefusalKind::NotFound => Self::NotFound(message),
            RefusalKind::Gone => Self::Gone(message),
            RefusalKind::Conflict => Self::Conflict(message),
            RefusalKind::TooMany => Self::TooManyRequests {
                message,
                retry_after: match refusal {
                    Refusal::TooManyTries(window) => window,
                    _ => std::time::Duration::from_secs(60),
                },
            },
        }
    }
}

fn name_of(typed: &str) -> Result<String, Refusal> {
    normalize_name(typed).map_err(Refusal::BadName)
}

/// `group new NAME`, `POST /groups`.
pub(crate) async fn create_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<NewGroup> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let limits = &state.groups;
    if limits.wecom_names.contains(&name) {
        return Ok(Err(Refusal::Reserved(name)));
    }
    Ok(
        match state.store.create_group(userid, &name, limits).await? {
            Created::Created(new) => {
                tracing::info!(userid = %userid, group = %new.group.name, "group made");
                Ok(new)
            }
            Created::NameTaken => Err(Refusal::NameTaken(name)),
            Created::TooManyGroups => Err(Refusal::TooManyGroups(limits.max_groups_per_member)),
        },
    )
}

/// `join CODE`, `POST /groups/join`.
pub(crate) async fn join_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<GroupRef> {
    let Some(code) = parse_invite(typed) else {
        return Ok(Err(Refusal::BadInvite));
    };
    let limits = &state.groups;
    Ok(match state.store.join_group(userid, &code, limits).await? {
        Joined::Joined(group) => {
            tracing::info!(userid = %userid, group = %group.name, "joined a group");
            Ok(group)
        }
        Joined::AlreadyMember(group) => Err(Refusal::AlreadyMember(group.name)),
        Joined::NoSuchInvite => {
            tracing::info!(userid = %userid, "wrong invite code");
            Err(Refusal::WrongInvite)
        }
        Joined::Expired => Err(Refusal::InviteExpired),
        Joined::TooManyTries => {
            tracing::warn!(userid = %userid, "too many wrong invite codes; refused");
            Err(Refusal::TooManyTries(limits.join_window))
        }
        Joined::Full(group) => Err(Refusal::Full(group.name, limits.max_members)),
        Joined::TooManyGroups => Err(Refusal::TooManyGroups(limits.max_groups_per_member)),
        Joined::NameTaken(group) => Err(Refusal::NameTaken(group.name)),
    })
}

/// `leave NAME`, `POST /groups/{name}/leave`: (group, new owner, deleted).
pub(crate) async fn leave_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<(GroupRef, Option<UserId>, bool)> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(match state.store.leave_group(userid, &name).await? {
        Left::Left {
            group,
            new_owner,
            deleted,
        } => {
            // Their copies not sent yet were marked `left` in the same transaction.
            tracing::info!(userid = %userid, group = %group.name, "member left a group");
            if let Some(owner) = &new_owner {
                tracing::info!(group = %group.name, owner = %owner, "group handed to its longest-standing member");
            }
            if deleted {
                tracing::info!(group = %group.name, "last member left; group deleted");
            }
            Ok((group, new_owner, deleted))
        }
        Left::NoSuchGroup => Err(Refusal::NoSuchGroup(name)),
        Left::FromWecom => Err(Refusal::FromWecom(name)),
    })
}

fn owned<T>(owned: Owned<T>, name: String) -> Result<T, Refusal> {
    match owned {
        Owned::Done(done) => Ok(done),
        Owned::NoSuchGroup => Err(Refusal::NoSuchGroup(name)),
        Owned::NotOwner => Err(Refusal::NotOwner(name)),
        Owned::FromWecom => Err(Refusal::FromWecom(name)),
    }
}

/// `group rotate NAME`, `POST /groups/{name}/rotate`.
pub(crate) async fn rotate_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<(GroupRef, PushToken)> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let done = owned(state.store.rotate_group_token(userid, &name).await?, name);
    if let Ok((group, _)) = &done {
        tracing::info!(userid = %userid, group = %group.name, "group token rotated");
    }
    Ok(done)
}

/// `group invite NAME`, `POST /groups/{name}/invite`: (group, code, expiry).
pub(crate) async fn renew_invite(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<(GroupRef, String, UnixMillis)> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let renewed = state
        .store
        .renew_invite(userid, &name, &state.groups)
        .await?;
    Ok(owned(renewed, name))
}

/// `group kick NAME USERID`, `DELETE /groups/{name}/members/{userid}`.
pub(crate) async fn kick_member(
    state: &AppState,
    userid: &UserId,
    typed: &str,
    member: &str,
) -> Outcome<(GroupRef, UserId)> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let member = UserId::new(member);
    let kicked = state.store.kick_from_group(userid, &name, &member).await?;
    Ok(match owned(kicked, name.clone()) {
        Ok((group, Kicked::Kicked)) => {
            tracing::info!(
                owner = %userid,
                userid = %member,
                group = %group.name,
                "member removed by the group's owner"
            );
            Ok((group, member))
        }
        Ok((_, Kicked::NotMember)) => Err(Refusal::NotMember(name, member.to_string())),
        Ok((_, Kicked::Themself)) => Err(Refusal::KickSelf(name)),
        Err(refusal) => Err(refusal),
    })
}

/// `group delete NAME`, `DELETE /groups/{name}`.
pub(crate) async fn delete_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
) -> Outcome<GroupRef> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let done = owned(state.store.delete_group(userid, &name).await?, name);
    if let Ok(group) = &done {
        tracing::info!(userid = %userid, group = %group.name, "group deleted by its owner");
    }
    Ok(done)
}

/// `mute NAME` / `unmute NAME`, `POST /groups/{name}/mute|unmute`.
pub(crate) async fn mute_group(
    state: &AppState,
    userid: &UserId,
    typed: &str,
    muted: bool,
) -> Outcome<GroupRef> {
    let name = match name_of(typed) {
        Ok(name) => name,
        Err(refusal) => return Ok(Err(refusal)),
    };
    Ok(state
        .store
        .set_group_muted(userid, &name, muted)
        .await?
        .ok_or(Refusal::NoSuchGroup(name)))
}

/// The member's groups (token and invite for those they own).
pub(crate) async fn groups_of(
    state: &AppState,
    userid: &UserId,
) -> Result<Vec<GroupView>, ApiError> {
    Ok(state.store.groups_of(userid).await?)
}

// ------------------------------------------------------------------------------------------
// HTTP
// ------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// A request body's fields: JSON (`{"name":"ops"}`) or a form (`name=ops`); empty is none.
#[derive(Deserialize, Default)]
struct Fields {
    name: Option<String>,
    invite: Option<String>,
    token: Option<String>,
}

fn fields(headers: &HeaderMap, body: &Bytes) -> Result<Fields, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::default());
    }
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if form {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid JSON body ({e}); send e.g. {{\"name\":\"ops\"}} or {{\"invite\":\"K7QM-3XPA\"}}"
            ))
        })
    }
}

/// The member whose PERSONAL token the request carries. A group's token is refused by
/// name: it sends to the group, it does not manage it.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    body_token: Option<&str>,
) -> Result<UserId, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
    let token = auth::find_token(headers, &[body_token, query.token.as_deref()]);
    if let Some(given) = token.as_deref().filter(|t| crate::token::looks_valid(t))
        && state
            .store
            .group_by_token(&PushToken::new(given.to_owned()))
            .await?
            .is_some()
    {
        return Err(ApiError::Forbidden(
            "this is a group's token: it sends to the group; manage groups with your personal \
             token (send token in the chat to see it)"
                .into(),
        ));
    }
    auth::member(state, token, TokenRoute::Groups).await
}

fn rfc3339(at: UnixMillis) -> String {
    humantime::format_rfc3339_seconds(at.to_system_time()).to_string()
}

#[derive(Serialize)]
struct GroupJson {
    name: String,
    owner: bool,
    members: i64,
    muted: bool,
    /// `chat` or `wecom`.
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invite_expires_at: Option<String>,
}

#[derive(Serialize)]
struct ListJson {
    ok: bool,
    groups: Vec<GroupJson>,
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<ListJson>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let groups = groups_of(&state, &userid)
        .await?
        .into_iter()
        .map(|g| GroupJson {
            name: g.group.name,
            owner: g.owner,
            members: g.members,
            muted: g.muted,
            source: g.source,
            token: g.token.map(|t| t.expose().to_owned()),
            invite: g.invite.as_deref().map(show_invite),
            invite_expires_at: g.invite_expires_at.map(rfc3339),
        })
        .collect();
    Ok(Json(ListJson { ok: true, groups }))
}

/// `{"ok":true,"name":…}` and what the action returns besides.
fn answer(name: &str, more: serde_json::Value) -> Json<serde_json::Value> {
    let mut body = serde_json::json!({"ok": true, "name": name});
    if let (Some(body), serde_json::Value::Object(more)) = (body.as_object_mut(), more) {
        body.extend(more);
    }
    Json(body)
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let fields = fields(&headers, &body)?;
    let userid = caller(&state, &headers, query, fields.token.as_deref()).await?;
    let Some(name) = fields.name else {
        return Err(ApiError::BadRequest(
            "missing \"name\": send {\"name\":\"ops\"} (1 to 32 characters, one word)".into(),
        ));
    };
    let new = create_group(&state, &userid, &name).await??;
    Ok(answer(
        &new.group.name,
        serde_json::json!({
            "token": new.token.expose(),
            "invite": show_invite(&new.invite),
            "invite_expires_at": rfc3339(new.invite_expires_at),
        }),
    ))
}

async fn join(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TokenQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let fields = fields(&headers, &body)?;
    let userid = caller(&state, &headers, query, fields.token.as_deref()).await?;
    let Some(invite) = fields.invite else {
        return Err(ApiError::BadRequest(
            "missing \"invite\": send {\"invite\":\"K7QM-3XPA\"}, the code the group's owner \
             passed on"
                .into(),
        ));
    };
    let group = join_group(&state, &userid, &invite).await??;
    Ok(answer(&group.name, serde_json::json!({})))
}

async fn leave(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let (group, new_owner, deleted) = leave_group(&state, &userid, &name).await??;
    Ok(answer(
        &group.name,
        serde_json::json!({
            "deleted": deleted,
            "new_owner": new_owner.map(|o| o.to_string()),
        }),
    ))
}

async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let (group, token) = rotate_group(&state, &userid, &name).await??;
    Ok(answer(
        &group.name,
        serde_json::json!({"token": token.expose()}),
    ))
}

async fn invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let (group, code, expires) = renew_invite(&state, &userid, &name).await??;
    Ok(answer(
        &group.name,
        serde_json::json!({
            "invite": show_invite(&code),
            "invite_expires_at": rfc3339(expires),
        }),
    ))
}

async fn kick(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, member)): Path<(String, String)>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let (group, member) = kick_member(&state, &userid, &name, &member).await??;
    Ok(answer(
        &group.name,
        serde_json::json!({"removed": member.to_string()}),
    ))
}

async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let group = delete_group(&state, &userid, &name).await??;
    Ok(answer(&group.name, serde_json::json!({"deleted": true})))
}

async fn mute(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let group = mute_group(&state, &userid, &name, true).await??;
    Ok(answer(&group.name, serde_json::json!({"muted": true})))
}

async fn unmute(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let userid = caller(&state, &headers, query, None).await?;
    let group = mute_group(&state, &userid, &name, false).await??;
    Ok(answer(&group.name, serde_json::json!({"muted": false})))
}
