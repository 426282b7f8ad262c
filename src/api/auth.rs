//! Push-token authentication shared by the token-protected routes.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use super::AppState;
use crate::domain::{PushToken, UserId};
use crate::error::ApiError;
use crate::metrics::TokenRoute;
use crate::store::{GroupRef, MemberPrefs};

/// The token from `Authorization: Bearer …`, else from the first candidate given
/// (body field, then query parameter).
pub fn find_token(headers: &HeaderMap, candidates: &[Option<&str>]) -> Option<String> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty());
    bearer
        .or_else(|| {
            candidates
                .iter()
                .flatten()
                .map(|t| t.trim())
                .find(|t| !t.is_empty())
        })
        .map(str::to_owned)
}

/// The member owning the token, or 401 with a message that says what to do (counted as
/// refused on `route`, see [`refused`]).
pub async fn member(
    state: &AppState,
    token: Option<String>,
    route: TokenRoute,
) -> Result<UserId, ApiError> {
    let token = checked(state, token, route)?;
    let member = state.store.member_by_token(&token).await?;
    member.ok_or_else(|| {
        refused(state, route);
        invalid()
    })
}

/// Who a send token belongs to: a member (their personal token), or a group (its own
/// send token, issue 29).
#[derive(Debug, Clone)]
pub enum Sender {
    /// A member, with their preferences when they were read with the token, and the
    /// token itself when what is sent must check it again as it is stored (see
    /// [`crate::store::Store::sender_by_token`]).
    Member(UserId, Option<MemberPrefs>, Option<PushToken>),
    Group(GroupRef),
}

/// The member or group owning a send token, or 401 (counted as refused on `route`). A
/// personal token is looked up first, as always (with the member's preferences, read with
/// the token where the store does not keep them in memory: one round trip for both); only
/// a token that is nobody's costs the second, indexed read of the groups.
pub async fn sender(
    state: &AppState,
    token: Option<String>,
    route: TokenRoute,
) -> Result<Sender, ApiError> {
    let token = checked(state, token, route)?;
    if let Some((userid, prefs, verify)) = state.store.sender_by_token(&token).await? {
        return Ok(Sender::Member(userid, Some(prefs), verify));
    }
    match state.store.group_by_token(&token).await? {
        Some(group) => Ok(Sender::Group(group)),
        None => {
            refused(state, route);
            Err(invalid())
        }
    }
}

/// As [`sender`], without the member's preferences (the routes that only read): the
/// personal token costs what [`member`] costs.
pub async fn token_owner(
    state: &AppState,
    token: Option<String>,
    route: TokenRoute,
) -> Result<Sender, ApiError> {
    let token = checked(state, token, route)?;
    if let Some(userid) = state.store.member_by_token(&token).await? {
        return Ok(Sender::Member(userid, None, None));
    }
    match state.store.group_by_token(&token).await? {
        Some(group) => Ok(Sender::Group(group)),
        None => {
            refused(state, route);
            Err(invalid())
        }
    }
}

/// The token if one was given and has the shape of one, else 401 (counted as refused).
fn checked(
    state: &AppState,
    token: Option<String>,
    route: TokenRoute,
) -> Result<PushToken, ApiError> {
    let Some(token) = token else {
        refused(state, route);
        return Err(ApiError::Unauthorized(
            "missing push token: pass ?token=…, a \"token\" field, or an Authorization: Bearer header"
                .into(),
        ));
    };
    if !crate::token::looks_valid(&token) {
        refused(state, route);
        return Err(invalid());
    }
    Ok(PushToken::new(token))
}

/// Counts a request refused for its push token (missing or invalid) in
/// `pushbot_auth_refused_total` and in the per-address log summary. For the routes that
/// refuse a token before [`member`] sees it.
pub fn refused(state: &AppState, route: TokenRoute) {
    state.metrics.auth_refused(route);
    state.refused.record(route);
}

pub(crate) fn invalid() -> ApiError {
    ApiError::Unauthorized(
        "invalid push token (never issued, or replaced by rotate); send \"token\" to the WeCom app to see yours"
            .into(),
    )
}
