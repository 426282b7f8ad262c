//! Groups backed by WeCom (issue 29 point 6): `[[groups.wecom]]` tables whose members are
//! read from WeCom's department and tag member lists (the mock's `user/simplelist` and
//! `tag/get`), refreshed, kept when WeCom refuses, and checked by `pushbot doctor`.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;
use crate::mock_wecom::SendReply;
use pushbot::config::{Settings, WecomGroup};
use pushbot::domain::UserId;

fn oncall(party: &[u64], tag: &[u64], owners: &[&str]) -> WecomGroup {
    WecomGroup {
        name: "oncall".to_owned(),
        party: party.to_vec(),
        tag: tag.to_vec(),
        owners: owners.iter().map(|o| (*o).to_owned()).collect(),
    }
}

fn with_group(config: &mut Settings, group: WecomGroup, refresh: Duration) {
    config.groups.wecom = vec![group];
    config.groups.refresh = refresh;
}

/// The caller's groups from `GET /groups`.
async fn groups(app: &TestApp, token: &str) -> Vec<Value> {
    let resp = app
        .http
        .get(app.url("/groups"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /groups");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["groups"].as_array().expect("a list").clone()
}

/// Waits until the caller's group `oncall` has `members` members; answers it.
async fn wait_members(app: &TestApp, token: &str, members: i64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = groups(app, token)
            .await
            .into_iter()
            .find(|g| g["name"] == "oncall");
        if let Some(group) = &found
            && group["members"] == members
        {
            return group.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "oncall never had {members} members: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's recipients as the send path reads them: (userid, muted).
async fn recipients(app: &TestApp, token: &str) -> Vec<(String, bool)> {
    let store = pushbot::store::Store::connect(app.store_url())
        .await
        .expect("store");
    let group = store
        .group_by_token(&pushbot::domain::PushToken::new(token.to_owned()))
        .await
        .expect("read")
        .expect("the group token is known");
    let mut found: Vec<(String, bool)> = store
        .group_recipients(&group.id)
        .await
        .expect("read")
        .into_iter()
        .map(|(u, m)| (u.as_str().to_owned(), m))
        .collect();
    found.sort();
    store.close().await;
    found
}

async fn healthz(app: &TestApp) -> Value {
    let resp = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    resp.json().await.expect("JSON")
}

/// Waits until `/healthz` names `oncall` among the groups WeCom refused.
async fn wait_refused(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = healthz(app).await;
        if health["groups_refresh"]["refused"] == serde_json::json!(["oncall"]) {
            assert_eq!(health["status"], "ok", "delivery goes on: {health}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pushbot doctor`'s output on the app's configuration (it fails: WeCom refused).
async fn doctor(app: &TestApp) -> String {
    let mut out = Vec::new();
    let passed = pushbot::doctor::run_loaded(
        &app.config,
        "the test",
        pushbot::doctor::Database::Open,
        &mut out,
    )
    .await;
    let out = String::from_utf8(out).expect("UTF-8");
    assert!(!passed, "{out}");
    out
}

#[tokio::test]
async fn departments_and_tags_make_the_members_and_the_owner_sees_the_token() {
    let owner = userid("owner");
    let (a, b, c, d) = (userid("a"), userid("b"), userid("c"), userid("d"));
    let mock_setup = |app: &TestApp| {
        app.mock.set_department(2, &[a.as_str(), b.as_str()]);
        // Tag 5: c by name, and department 3 (d, and b again) as a whole.
        app.mock.set_tag(5, &[c.as_str()], &[3]);
        app.mock.set_department(3, &[d.as_str(), b.as_str()]);
    };
    let group = oncall(&[2], &[5], &[owner.as_str()]);
    // Set up the mock before the first pass: start with a long refresh, set, then restart.
    let mut app = spawn_app_with(|c| with_group(c, group.clone(), Duration::from_secs(3600))).await;
    mock_setup(&app);
    app.restart().await;
    let token = app.get_token(&owner).await;
    let seen = wait_members(&app, &token, 5).await;
    assert_eq!(seen["owner"], true, "{seen}");
    assert_eq!(seen["source"], "wecom", "{seen}");
    assert!(seen.get("invite").is_none(), "no invite code: {seen}");
    let group_token = seen["token"].as_str().expect("the owner sees the token");
    // a, b, c and d never chatted with the app: recipients by userid all the same.
    let mut want: Vec<(String, bool)> = [&owner, &a, &b, &c, &d]
        .iter()
        .map(|u| (UserId::new(u).as_str().to_owned(), false))
        .collect();
    want.sort();
    assert_eq!(recipients(&app, group_token).await, want);

    // A member who is not an owner sees the group, not its token.
    let a_token = app.get_token(&a).await;
    let mine = groups(&app, &a_token).await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["owner"], false);
    assert!(mine[0].get("token").is_none(), "{mine:?}");

    // The owner rotates its token like any group's.
    let rotated = app
        .http
        .post(app.url("/groups/oncall/rotate"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("rotate");
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.expect("JSON");
    let new_token = rotated["token"].as_str().expect("a new token").to_owned();
    assert_ne!(new_token, group_token);

    // A restart keeps the group and its (rotated) token.
    app.restart().await;
    let seen = wait_members(&app, &token, 5).await;
    assert_eq!(seen["token"], new_token.as_str());

    // A table removed from the configuration deletes its group: its token stops working.
    app.config.groups.wecom.clear();
    app.restart().await;
    assert!(groups(&app, &token).await.is_empty());
    let store = pushbot::store::Store::connect(app.store_url())
        .await
        .expect("store");
    let found = store
        .group_by_token(&pushbot::domain::PushToken::new(new_token.clone()))
        .await
        .expect("read");
    assert_eq!(found, None, "the removed group's token is dead");
    store.close().await;
}

#[tokio::test]
async fn a_refresh_picks_up_changes_and_keeps_mute_flags() {
    let owner = userid("owner");
    let (a, b, e) = (userid("a"), userid("b"), userid("e"));
    let mut app = spawn_app_with(|c| {
        with_group(
            c,
            oncall(&[2], &[], &[owner.as_str()]),
            Duration::from_millis(300),
        )
    })
    .await;
    app.mock.set_department(2, &[a.as_str(), b.as_str()]);
    app.restart().await;
    let token = app.get_token(&owner).await;
    let seen = wait_members(&app, &token, 3).await;
    let group_token = seen["token"].as_str().expect("token").to_owned();

    // a mutes it; then WeCom moves b out and e in.
    let a_token = app.get_token(&a).await;
    let muted = app
        .http
        .post(app.url("/groups/oncall/mute"))
        .bearer_auth(&a_token)
        .send()
        .await
        .expect("mute");
    assert_eq!(muted.status(), 200);
    // Due in an hour, accepted while b is in: b's copy waits.
    let resp = app
        .send_json(
            Some(&group_token),
            &serde_json::json!({"title": "later", "delay": "1h"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let later: serde_json::Value = resp.json().await.expect("JSON");
    let later = later["id"].as_str().expect("an id").to_owned();
    app.mock.set_department(2, &[a.as_str(), e.as_str()]);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut want = vec![
        (UserId::new(&a).as_str().to_owned(), true),
        (UserId::new(&e).as_str().to_owned(), false),
        (UserId::new(&owner).as_str().to_owned(), false),
    ];
    want.sort();
    loop {
        let found = recipients(&app, &group_token).await;
        if found == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refreshed: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b is out: b's waiting copy is not sent (left), as when a member leaves.
    let status = app.message_json(&later, &group_token).await;
    let of_b = status["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["member"] == UserId::new(&b).as_str())
        .cloned()
        .unwrap_or_else(|| panic!("b's copy: {status}"));
    assert_eq!(of_b["status"], "left", "{status}");
    let health = healthz(&app).await;
    assert_eq!(health["groups_refresh"]["groups"], 1, "{health}");
    assert_eq!(health["groups_refresh"]["panics"], 0, "{health}");
}

#[tokio::test]
async fn a_refusal_keeps_the_last_members_and_says_which_permission_to_grant() {
    let owner = userid("owner");
    let (a, b) = (userid("a"), userid("b"));
    let mut app = spawn_app_with(|c| {
        with_group(
            c,
            oncall(&[2], &[5], &[owner.as_str()]),
            Duration::from_millis(300),
        )
    })
    .await;
    app.mock.set_department(2, &[a.as_str(), b.as_str()]);
    app.mock.set_tag(5, &[], &[]);
    app.restart().await;
    let token = app.get_token(&owner).await;
    let seen = wait_members(&app, &token, 3).await;
    let group_token = seen["token"].as_str().expect("token").to_owned();
    let before = recipients(&app, &group_token).await;

    app.mock.refuse_department(
        2,
        Some(SendReply::errcode(
            60011,
            "no privilege to access/modify contact/party/agent",
        )),
    );
    wait_refused(&app).await;
    assert_eq!(
        recipients(&app, &group_token).await,
        before,
        "last members kept"
    );

    // The doctor says which permission to grant.
    let out = doctor(&app).await;
    assert!(out.contains("✗ 群组 oncall 无法读取成员"), "{out}");
    assert!(out.contains("department 2"), "{out}");
    assert!(out.contains("可见范围"), "{out}");

    // Healed: read again, and healthz forgets the refusal.
    app.mock.refuse_department(2, None);
    app.mock.set_department(2, &[a.as_str()]);
    wait_members(&app, &token, 2).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let health = healthz(&app).await;
        if health["groups_refresh"]["refused"]
            .as_array()
            .is_some_and(|r| r.is_empty())
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A tag refused the same way names the tag.
    app.mock.refuse_tag(
        5,
        Some(SendReply::errcode(60011, "no privilege, hint: [mock]")),
    );
    wait_refused(&app).await;
    wait_members(&app, &token, 2).await;
    let out = doctor(&app).await;
    assert!(out.contains("tag 5") && out.contains("可见范围"), "{out}");
}

#[tokio::test]
async fn a_panicking_refresh_loop_is_restarted_and_counted_in_healthz() {
    let owner = userid("owner");
    let a = userid("a");
    let mut app = spawn_app_with(|c| {
        with_group(
            c,
            oncall(&[2], &[], &[owner.as_str()]),
            Duration::from_millis(200),
        )
    })
    .await;
    app.mock.set_department(2, &[]);
    app.restart().await;
    let token = app.get_token(&owner).await;
    wait_members(&app, &token, 1).await;
    app.faults()
        .arm(pushbot::supervise::FaultPoint::GroupRefreshPanic, 1);
    app.mock.set_department(2, &[a.as_str()]);
    wait_members(&app, &token, 2).await;
    let health = healthz(&app).await;
    assert_eq!(health["groups_refresh"]["panics"], 1, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
}

/// The send path's hook: `refresh_if_stale` reads a WeCom-backed group only when it was
/// read longer than `groups.refresh` ago, and never calls WeCom for other groups.
#[tokio::test]
async fn refresh_if_stale_reads_only_stale_wecom_groups() {
    let app = spawn_app().await;
    let owner = userid("owner");
    let a = userid("a");
    app.mock.set_department(7, &[a.as_str()]);
    let mut settings = app.config.clone();
    with_group(
        &mut settings,
        oncall(&[7], &[], &[owner.as_str()]),
        Duration::from_millis(400),
    );
    let store = pushbot::store::Store::connect(app.store_url())
        .await
        .expect("store");
    let http = reqwest::Client::new();
    let client = std::sync::Arc::new(pushbot::wecom::client::WeComClient::new(
        http,
        &settings.wecom,
    ));
    let wecom = pushbot::wecom_groups::WecomGroups::start(&store, client, &settings.groups)
        .await
        .expect("start");
    let owner_token = app.get_token(&owner).await;
    let group_token = groups(&app, &owner_token).await[0]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let group = store
        .group_by_token(&pushbot::domain::PushToken::new(group_token.clone()))
        .await
        .expect("read")
        .expect("known");
    // Never read: read now.
    wecom.refresh_if_stale(&group.id).await;
    assert_eq!(app.mock.member_list_calls(), 1);
    assert_eq!(
        store.group_recipients(&group.id).await.expect("read").len(),
        2
    );
    // Fresh: nothing is called.
    app.mock.set_department(7, &[]);
    wecom.refresh_if_stale(&group.id).await;
    wecom.refresh_if_stale("not-a-wecom-group").await;
    assert_eq!(app.mock.member_list_calls(), 1);
    // Stale: read again.
    tokio::time::sleep(Duration::from_millis(450)).await;
    wecom.refresh_if_stale(&group.id).await;
    assert_eq!(app.mock.member_list_calls(), 2);
    assert_eq!(
        store.group_recipients(&group.id).await.expect("read").len(),
        1
    );
    store.close().await;
}

/// A send to a WeCom-backed group whose members were last read longer than
/// `groups.refresh` ago reads them again before it takes the membership: a member WeCom
/// added since gets the message — one who never chatted with the app, by userid.
#[tokio::test]
async fn a_send_to_a_stale_wecom_group_reads_its_members_first() {
    let owner = userid("owner");
    let (a, e) = (userid("a"), userid("e"));
    // The loop would not look again for an hour: only the send path can.
    let mut app = spawn_app_with(|c| {
        with_group(
            c,
            oncall(&[2], &[], &[owner.as_str()]),
            Duration::from_secs(3600),
        )
    })
    .await;
    app.mock.set_department(2, &[a.as_str()]);
    app.restart().await;
    let token = app.get_token(&owner).await;
    let seen = wait_members(&app, &token, 2).await;
    let group_token = seen["token"].as_str().expect("token").to_owned();

    // Fresh: a send takes the members as read (WeCom's change is not seen yet).
    app.mock.set_department(2, &[a.as_str(), e.as_str()]);
    let resp = app
        .send_json(
            Some(&group_token),
            &serde_json::json!({"title": "t", "content": "fresh"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["recipients"], 2, "{body}");

    // Stale (last read an hour and more ago): the send reads WeCom first.
    let mut db = crate::db::connect(app.store_url()).await;
    sqlx::query("UPDATE groups SET refreshed_at = 0")
        .execute(&mut db)
        .await
        .expect("update");
    crate::db::close(db).await;
    let resp = app
        .send_json(
            Some(&group_token),
            &serde_json::json!({"title": "t", "content": "stale"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["recipients"], 3, "{body}");
    app.mock.wait_for_sent(5, WAIT).await;
    let mut stale: Vec<String> = app
        .mock
        .sent()
        .into_iter()
        .filter(|s| s.content.contains("stale"))
        .map(|s| s.touser)
        .collect();
    stale.sort();
    let mut want: Vec<String> = [&owner, &a, &e]
        .iter()
        .map(|u| UserId::new(u).as_str().to_owned())
        .collect();
    want.sort();
    assert_eq!(stale, want);
}

/// A WeCom-backed group's name is its own: no member makes a chat group of that name (in any
/// case), over HTTP (409 naming the config table) or in the chat — a member in both would
/// otherwise have two groups answering to one name.
#[tokio::test]
async fn a_wecom_backed_groups_name_is_not_free_for_a_chat_group() {
    let user = userid("maker");
    let app = spawn_app_with(|c| {
        with_group(c, oncall(&[2], &[], &[]), Duration::from_secs(3600));
    })
    .await;
    let token = app.get_token(&user).await;
    let resp = app
        .http
        .post(app.url("/groups"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "OnCall"}))
        .send()
        .await
        .expect("POST /groups");
    let body = assert_error(resp, 409, "conflict").await;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("[[groups.wecom]]"), "{body}");
    let reply = say(&app, &user, "建群 oncall").await;
    assert_says(&reply, "企业微信", "a reserved name in the chat");
    assert!(groups(&app, &token).await.is_empty(), "nothing was made");
    // Any other name is fine.
    let reply = say(&app, &user, "group new oncall2").await;
    assert!(!has(&reply, "企业微信部门"), "{reply}");
    assert_eq!(groups(&app, &token).await.len(), 1);
}
