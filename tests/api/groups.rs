//! Groups (issue 29), managing side: made, joined, left, muted and managed by chatting with
//! the app and over HTTP with the member's personal token.

use serde_json::{Value, json};

use crate::helpers::*;

/// The invite code in a reply: the first word shaped `XXXX-XXXX`.
fn invite_in(reply: &str) -> String {
    reply
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| {
            w.len() == 9
                && w.as_bytes()[4] == b'-'
                && w.bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || b.is_ascii_uppercase())
        })
        .unwrap_or_else(|| panic!("no invite code in {reply:?}"))
        .to_owned()
}

/// The group token in a reply: the line that is a token alone.
fn token_in(reply: &str) -> String {
    reply
        .lines()
        .find(|l| is_token(l))
        .unwrap_or_else(|| panic!("no token line in {reply:?}"))
        .to_owned()
}

async fn says(app: &TestApp, user: &str, text: &str) -> String {
    app.user_says(user, text)
        .await
        .unwrap_or_else(|| panic!("no answer to {text:?}"))
}

/// `method path` with `token` as a bearer token and `body` as JSON (none if `Null`).
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(token);
    if !body.is_null() {
        req = req.json(body);
    }
    req.send().await.expect("a /groups request")
}

async fn ok_json(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    body
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    call(app, reqwest::Method::POST, path, token, &body).await
}

async fn del(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    call(app, reqwest::Method::DELETE, path, token, &Value::Null).await
}

async fn list(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = call(app, reqwest::Method::GET, "/groups", token, &Value::Null).await;
    ok_json(resp).await["groups"]
        .as_array()
        .expect("groups is a list")
        .clone()
}

#[tokio::test]
async fn a_group_is_made_joined_and_listed_in_the_chat() {
    let app = spawn_app().await;
    let (alice, bob) = (userid("alice"), userid("bob"));

    // As typed on a phone: full-width, Chinese, a final stop.
    let made = says(&app, &alice, "建群 Ｏｐｓ。").await;
    assert!(made.contains("ops"), "{made}");
    let token = token_in(&made);
    let invite = invite_in(&made);
    assert!(made.contains(&format!("{PUBLIC_URL}/send")), "{made}");
    assert!(made.contains(&format!("join {invite}")), "{made}");
    // The group's token is not the member's own.
    assert_ne!(token, app.get_token(&alice).await);

    // Joined with the code typed in lower case without the dash.
    let typed = invite.replace('-', "").to_lowercase();
    let joined = says(&app, &bob, &format!("加入 {typed}")).await;
    assert!(
        joined.contains("已加入") && joined.contains("ops"),
        "{joined}"
    );
    let again = says(&app, &bob, &format!("join {invite}")).await;
    assert!(again.contains("already"), "{again}");

    // The owner sees token and invite; a member sees neither.
    let owners = says(&app, &alice, "groups").await;
    assert!(
        owners.contains(&token) && owners.contains(&invite),
        "{owners}"
    );
    assert!(owners.contains("2 人 members"), "{owners}");
    let members = says(&app, &bob, "群组").await;
    assert!(members.contains("ops"), "{members}");
    assert!(
        !members.contains(&token) && !members.contains(&invite),
        "{members}"
    );

    // The same over HTTP with bob's personal token.
    let bobs = list(&app, &app.get_token(&bob).await).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["name"], "ops");
    assert_eq!(bobs[0]["owner"], false);
    assert_eq!(bobs[0]["members"], 2);
    assert!(bobs[0].get("token").is_none() && bobs[0].get("invite").is_none());

    // A wrong code gets a clear answer, and `退出登录` is still logout.
    let wrong = says(&app, &bob, "join 0000-0000").await;
    assert!(
        wrong
            .to_lowercase()
            .contains("no group has this invite code"),
        "{wrong}"
    );
    let logout = says(&app, &bob, "退出登录").await;
    assert!(!logout.contains("ops"), "{logout}");
    let usage = says(&app, &bob, "group new").await;
    assert!(usage.contains("group new ops"), "{usage}");
    let bad = says(&app, &bob, "group new two words").await;
    assert!(bad.contains("one word"), "{bad}");
}

#[tokio::test]
async fn owners_manage_and_members_mute_and_leave_in_the_chat() {
    let app = spawn_app().await;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(userid);
    let made = says(&app, &alice, "group new ops").await;
    let (token, invite) = (token_in(&made), invite_in(&made));
    for who in [&bob, &carol] {
        says(&app, who, &format!("join {invite}")).await;
    }

    // Only the owner manages.
    for command in [
        "group rotate ops",
        "group invite ops",
        "group delete ops",
        &format!("group kick ops {alice}"),
    ] {
        let refused = says(&app, &bob, command).await;
        assert!(
            refused.to_lowercase().contains("only the owner"),
            "{command}: {refused}"
        );
    }
    let outsider = says(&app, &userid("dave"), "group rotate ops").await;
    assert!(outsider.contains("no group named"), "{outsider}");

    // Rotate: a new token, the old one dead at once.
    let rotated = says(&app, &alice, "group rotate ops").await;
    let new_token = token_in(&rotated);
    assert_ne!(new_token, token);
    let listed = says(&app, &alice, "groups").await;
    assert!(
        listed.contains(&new_token) && !listed.contains(&token),
        "{listed}"
    );

    // A new invite: the old code no longer joins.
    let renewed = says(&app, &alice, "群组 邀请 ops").await;
    let new_invite = invite_in(&renewed);
    assert_ne!(new_invite, invite);
    let dave = userid("dave");
    let old = says(&app, &dave, &format!("join {invite}")).await;
    assert!(
        old.to_lowercase().contains("no group has this invite code"),
        "{old}"
    );
    says(&app, &dave, &format!("join {new_invite}")).await;

    // Mute and unmute are the member's own.
    let muted = says(&app, &carol, "静音 ops").await;
    assert!(muted.contains("muted"), "{muted}");
    assert!(says(&app, &carol, "groups").await.contains("muted"));
    let unmuted = says(&app, &carol, "取消静音ops").await;
    assert!(unmuted.contains("unmuted"), "{unmuted}");
    assert!(!says(&app, &carol, "groups").await.contains("已静音"));

    // Kick: dave is out.
    let kicked = says(&app, &alice, &format!("group kick ops {dave}")).await;
    assert!(kicked.contains(&dave), "{kicked}");
    assert!(says(&app, &dave, "groups").await.contains("no group"));
    let themself = says(&app, &alice, &format!("group kick ops {alice}")).await;
    assert!(themself.contains("leave ops"), "{themself}");

    // The owner leaves: bob (longest-standing) owns it and can rotate.
    let left = says(&app, &alice, "退出 ops").await;
    assert!(left.contains(&bob), "{left}");
    assert!(
        says(&app, &bob, "group rotate ops")
            .await
            .contains("new token")
    );

    // Delete: everyone is out, the name is free again.
    let deleted = says(&app, &bob, "group delete ops").await;
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(says(&app, &carol, "groups").await.contains("no group"));
    says(&app, &carol, "group new ops").await;
    assert_eq!(
        list(&app, &app.get_token(&carol).await).await[0]["owner"],
        true
    );
}

#[tokio::test]
async fn groups_are_managed_over_http_with_the_personal_token() {
    let app = spawn_app().await;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(userid);
    let (a, b, c) = (
        app.get_token(&alice).await,
        app.get_token(&bob).await,
        app.get_token(&carol).await,
    );

    let made = ok_json(post(&app, "/groups", &a, json!({"name": "Ops"})).await).await;
    assert_eq!(made["name"], "ops");
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(is_token(&token), "{made}");
    let invite = made["invite"].as_str().unwrap().to_owned();
    assert_eq!(invite.len(), 9, "{made}");
    assert!(made["invite_expires_at"].is_string(), "{made}");

    // A form body works too; a duplicate name is a 409 naming it.
    let form = app
        .http
        .post(app.url("/groups"))
        .bearer_auth(&a)
        .form(&[("name", "dev")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(form).await["name"], "dev");
    let twice = assert_error(
        post(&app, "/groups", &a, json!({"name": "ops"})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        twice["message"].as_str().unwrap().contains("\"ops\""),
        "{twice}"
    );

    for t in [&b, &c] {
        let joined = ok_json(post(&app, "/groups/join", t, json!({"invite": invite})).await).await;
        assert_eq!(joined["name"], "ops");
    }
    assert_error(
        post(&app, "/groups/join", &b, json!({"invite": invite})).await,
        409,
        "conflict",
    )
    .await;

    let mine = list(&app, &a).await;
    let ops = mine.iter().find(|g| g["name"] == "ops").unwrap();
    assert_eq!(
        (
            ops["owner"].clone(),
            ops["members"].clone(),
            ops["token"].clone(),
            ops["invite"].clone()
        ),
        (json!(true), json!(3), json!(token), json!(invite))
    );

    // Non-owners get 403; someone not in the group 404, as for a group that does not exist.
    for (method, path) in [
        (reqwest::Method::POST, "/groups/ops/rotate"),
        (reqwest::Method::POST, "/groups/ops/invite"),
        (reqwest::Method::DELETE, "/groups/ops"),
        (reqwest::Method::DELETE, "/groups/ops/members/carol"),
    ] {
        let path = path.replace("carol", &carol);
        let refused = call(&app, method.clone(), &path, &b, &Value::Null).await;
        let body = assert_error(refused, 403, "forbidden").await;
        assert!(
            body["message"].as_str().unwrap().contains("owner"),
            "{body}"
        );
        let outsider = app.get_token(&userid("dave")).await;
        assert_error(
            call(&app, method, &path, &outsider, &Value::Null).await,
            404,
            "not_found",
        )
        .await;
    }
    assert_error(
        post(&app, "/groups/nope/leave", &b, Value::Null).await,
        404,
        "not_found",
    )
    .await;

    // Rotate: the old token is no group's any more.
    let rotated = ok_json(post(&app, "/groups/ops/rotate", &a, Value::Null).await).await;
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    let renewed = ok_json(post(&app, "/groups/ops/invite", &a, Value::Null).await).await;
    let new_invite = renewed["invite"].as_str().unwrap().to_owned();
    assert_ne!(new_invite, invite);
    let dave_id = userid("dave");
    let dave = app.get_token(&dave_id).await;
    assert_error(
        post(&app, "/groups/join", &dave, json!({"invite": invite})).await,
        404,
        "not_found",
    )
    .await;
    ok_json(
        post(
            &app,
            "/groups/join",
            &dave,
            json!({"invite": new_invite.to_lowercase()}),
        )
        .await,
    )
    .await;

    // A group's token manages nothing; the rotated one is nobody's.
    let old = call(&app, reqwest::Method::GET, "/groups", &token, &Value::Null).await;
    assert_error(old, 401, "unauthorized").await;
    let new = call(
        &app,
        reqwest::Method::GET,
        "/groups",
        &new_token,
        &Value::Null,
    )
    .await;
    assert_error(new, 403, "forbidden").await;
    let body = assert_error(
        post(&app, "/groups", &new_token, json!({"name": "x"})).await,
        403,
        "forbidden",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("personal token"),
        "{body}"
    );

    // Mute and unmute.
    let muted = ok_json(post(&app, "/groups/ops/mute", &c, Value::Null).await).await;
    assert_eq!(muted["muted"], true);
    assert_eq!(list(&app, &c).await[0]["muted"], true);
    ok_json(post(&app, "/groups/ops/unmute", &c, Value::Null).await).await;
    assert_eq!(list(&app, &c).await[0]["muted"], false);

    // Kick, then the owner leaves (bob takes over), then delete.
    let kicked = ok_json(del(&app, &format!("/groups/ops/members/{dave_id}"), &a).await).await;
    assert_eq!(kicked["removed"], dave_id);
    assert!(list(&app, &dave).await.is_empty());
    assert_error(
        del(&app, &format!("/groups/ops/members/{alice}"), &a).await,
        400,
        "bad_request",
    )
    .await;
    assert_error(
        del(&app, "/groups/ops/members/nobody", &a).await,
        404,
        "not_found",
    )
    .await;
    let left = ok_json(post(&app, "/groups/ops/leave", &a, Value::Null).await).await;
    assert_eq!(
        (left["deleted"].clone(), left["new_owner"].clone()),
        (json!(false), json!(bob))
    );
    assert_eq!(list(&app, &b).await[0]["owner"], true);
    let deleted = ok_json(del(&app, "/groups/ops", &b).await).await;
    assert_eq!(deleted["deleted"], true);
    assert!(list(&app, &c).await.is_empty());

    // The last one out deletes it.
    let left = ok_json(post(&app, "/groups/dev/leave", &a, Value::Null).await).await;
    assert_eq!(left["deleted"], true);
    assert!(list(&app, &a).await.is_empty());
}

#[tokio::test]
async fn bad_requests_and_limits_are_refused_by_name() {
    let app = spawn_app_with(|s| {
        s.groups.max_members = 2;
        s.groups.max_groups_per_member = 2;
        s.groups.join_failures.count = 3;
    })
    .await;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(userid);
    let (a, b, c) = (
        app.get_token(&alice).await,
        app.get_token(&bob).await,
        app.get_token(&carol).await,
    );

    // No token, a wrong one, a bad body, a bad name.
    let none = app.http.get(app.url("/groups")).send().await.unwrap();
    assert_error(none, 401, "unauthorized").await;
    let wrong = call(
        &app,
        reqwest::Method::GET,
        "/groups",
        &"x".repeat(32),
        &Value::Null,
    )
    .await;
    assert_error(wrong, 401, "unauthorized").await;
    let garbage = app
        .http
        .post(app.url("/groups"))
        .bearer_auth(&a)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(garbage, 400, "bad_request").await;
    let missing = assert_error(
        post(&app, "/groups", &a, json!({})).await,
        400,
        "bad_request",
    )
    .await;
    assert!(
        missing["message"].as_str().unwrap().contains("name"),
        "{missing}"
    );
    for (name, says) in [
        ("", "empty"),
        ("two words", "one word"),
        (&"x".repeat(33) as &str, "32"),
    ] {
        let body = assert_error(
            post(&app, "/groups", &a, json!({"name": name})).await,
            400,
            "bad_request",
        )
        .await;
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{name:?}: {body}"
        );
    }
    assert_error(
        post(&app, "/groups/join", &a, json!({"invite": "short"})).await,
        400,
        "bad_request",
    )
    .await;

    // Full: the group has its two members.
    let ops = ok_json(post(&app, "/groups", &a, json!({"name": "ops"})).await).await;
    let invite = ops["invite"].as_str().unwrap().to_owned();
    ok_json(post(&app, "/groups/join", &b, json!({"invite": invite})).await).await;
    let full = assert_error(
        post(&app, "/groups/join", &c, json!({"invite": invite})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        full["message"]
            .as_str()
            .unwrap()
            .contains("groups.max_members"),
        "{full}"
    );

    // Too many groups for one member.
    ok_json(post(&app, "/groups", &a, json!({"name": "dev"})).await).await;
    let many = assert_error(
        post(&app, "/groups", &a, json!({"name": "qa"})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        many["message"]
            .as_str()
            .unwrap()
            .contains("groups.max_groups_per_member"),
        "{many}"
    );

    // A name already among the joiner's groups.
    let other = ok_json(post(&app, "/groups", &c, json!({"name": "ops"})).await).await;
    let taken = assert_error(
        post(&app, "/groups/join", &b, json!({"invite": other["invite"]})).await,
        409,
        "conflict",
    )
    .await;
    assert!(
        taken["message"].as_str().unwrap().contains("\"ops\""),
        "{taken}"
    );

    // Expired: a clear 410, not counted as a wrong code.
    let mut db = crate::db::connect(app.store_url()).await;
    sqlx::query("UPDATE groups SET invite_expires_at = 0")
        .execute(&mut db)
        .await
        .unwrap();
    crate::db::close(db).await;
    let expired = assert_error(
        post(&app, "/groups/join", &b, json!({"invite": other["invite"]})).await,
        410,
        "gone",
    )
    .await;
    assert!(
        expired["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );

    // Three wrong codes, then even a right one is refused, with Retry-After.
    let dave_id = userid("dave");
    let dave = app.get_token(&dave_id).await;
    for _ in 0..3 {
        assert_error(
            post(&app, "/groups/join", &dave, json!({"invite": "ZZZZ-ZZZZ"})).await,
            404,
            "not_found",
        )
        .await;
    }
    let renewed = ok_json(post(&app, "/groups/ops/invite", &c, Value::Null).await).await;
    let limited = post(
        &app,
        "/groups/join",
        &dave,
        json!({"invite": renewed["invite"]}),
    )
    .await;
    assert_eq!(
        limited
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("3600")
    );
    assert_error(limited, 429, "rate_limited").await;
    // The chat says so too.
    let chat = says(
        &app,
        &dave_id,
        &format!("join {}", renewed["invite"].as_str().unwrap()),
    )
    .await;
    assert!(
        chat.to_lowercase().contains("too many wrong invite codes"),
        "{chat}"
    );
}
