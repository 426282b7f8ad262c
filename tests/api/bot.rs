//! The chat bot behind the callback: tokens, rotation, help, events, retried callbacks.

use crate::helpers::*;

#[tokio::test]
async fn token_command_replies_with_the_token_and_a_curl_example() {
    let app = spawn_app().await;
    // As typed on a phone, too: full-width, a zero-width space, trailing punctuation.
    for word in ["token", "令牌", "ＴＯＫＥＮ。", "\u{200b}令牌！"] {
        let user = userid("zhangsan");
        let reply = app.user_says(&user, word).await.expect("a reply");
        let token = token_from_reply(&reply);
        let example = format!("{PUBLIC_URL}/send?token={token}");
        assert!(
            reply.contains(&example),
            "reply to {word:?} must contain a curl example with {example}: {reply}"
        );
        assert!(reply.contains("curl"), "{reply}");
    }
}

#[tokio::test]
async fn the_token_in_the_reply_works_for_sending() {
    let app = spawn_app().await;
    let user = userid("zhangsan");
    let token = app.get_token(&user).await;
    let id = app.send_ok(&token, "hello", "world").await;
    let sent = app.mock.wait_for_sent(1, WAIT).await;
    assert_eq!(sent[0].touser, user);
    app.wait_for_status(&id, &token, "delivered", WAIT).await;
}

#[tokio::test]
async fn asking_again_gives_the_same_token() {
    let app = spawn_app().await;
    let user = userid("zhangsan");
    let first = app.get_token(&user).await;
    let second = app.get_token(&user).await;
    let third = token_from_reply(&app.user_says(&user, "令牌").await.unwrap());
    assert_eq!(first, second);
    assert_eq!(first, third);
}

#[tokio::test]
async fn members_get_different_tokens() {
    let app = spawn_app().await;
    let a = app.get_token(&userid("alice")).await;
    let b = app.get_token(&userid("bob")).await;
    assert_ne!(a, b);
}

#[tokio::test]
async fn rotate_issues_a_new_token_and_revokes_the_old_one() {
    let app = spawn_app().await;
    for word in ["rotate", "重置"] {
        let user = userid("zhangsan");
        let old = app.get_token(&user).await;
        let reply = app.user_says(&user, word).await.expect("a reply");
        let new = token_from_reply(&reply);
        assert_ne!(old, new, "{word:?} must issue a new token");

        // The bot now hands out the new token.
        assert_eq!(app.get_token(&user).await, new);

        // The old token is dead, the new one works.
        let resp = app
            .send_get(&[("token", &old), ("title", "t"), ("content", "c")])
            .await;
        assert_error(resp, 401, "unauthorized").await;
        let id = app.send_ok(&new, "t", "c").await;
        app.wait_for_status(&id, &new, "delivered", WAIT).await;
    }
}

#[tokio::test]
async fn rotate_before_ever_asking_gives_a_working_token() {
    let app = spawn_app().await;
    let user = userid("newbie");
    let token = app.rotate(&user).await;
    assert_eq!(app.get_token(&user).await, token);
}

#[tokio::test]
async fn rotation_does_not_touch_other_members() {
    let app = spawn_app().await;
    let alice = userid("alice");
    let bob = userid("bob");
    let bobs = app.get_token(&bob).await;
    app.get_token(&alice).await;
    app.rotate(&alice).await;
    assert_eq!(app.get_token(&bob).await, bobs);
    app.send_ok(&bobs, "", "still mine").await;
}

#[tokio::test]
async fn help_and_unknown_text_get_the_help_text() {
    let app = spawn_app().await;
    let user = userid("zhangsan");
    for text in ["help", "帮助", "what is this?", "你好"] {
        let reply = app.user_says(&user, text).await.expect("a reply");
        assert!(reply.contains("token"), "help for {text:?}: {reply}");
        assert!(reply.contains("rotate"), "help for {text:?}: {reply}");
    }
    // Help does not issue or change tokens as a side effect worth noticing: the first
    // `token` afterwards is stable.
    let token = app.get_token(&user).await;
    app.user_says(&user, "help").await;
    assert_eq!(app.get_token(&user).await, token);
}

#[tokio::test]
async fn subscribe_event_gets_a_welcome() {
    let app = spawn_app().await;
    let user = userid("newcomer");
    let reply = app
        .event(&user, "subscribe", None)
        .await
        .expect("a welcome");
    assert!(reply.contains("token"), "welcome: {reply}");
}

#[tokio::test]
async fn menu_clicks_act_as_the_typed_commands() {
    let app = spawn_app().await;
    let user = userid("clicker");

    let reply = app.event(&user, "click", Some("token")).await.unwrap();
    let token = token_from_reply(&reply);
    assert_eq!(app.get_token(&user).await, token);

    let reply = app.event(&user, "click", Some("rotate")).await.unwrap();
    let rotated = token_from_reply(&reply);
    assert_ne!(rotated, token);
    assert_eq!(app.get_token(&user).await, rotated);

    let reply = app.event(&user, "click", Some("help")).await.unwrap();
    assert!(
        reply.contains("token") && reply.contains("rotate"),
        "{reply}"
    );
}

#[tokio::test]
async fn other_events_get_an_empty_200() {
    let app = spawn_app().await;
    let user = userid("visitor");
    for event in ["enter_agent", "view", "location", "unsubscribe"] {
        let reply = app.event(&user, event, Some("x")).await;
        assert!(reply.is_none(), "{event}: {reply:?}");
    }
}

#[tokio::test]
async fn a_retried_rotate_is_processed_once_and_gets_the_same_reply() {
    let app = spawn_app().await;
    let user = userid("zhangsan");
    let original = app.get_token(&user).await;

    let msg_id = next_msg_id();
    let first = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();
    // WeCom retries with a new nonce/timestamp/ciphertext but the same MsgId.
    let second = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();
    let third = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(first, third);

    let rotated = token_from_reply(&first);
    assert_ne!(rotated, original);
    assert_eq!(app.get_token(&user).await, rotated, "rotated exactly once");
}

#[tokio::test]
async fn a_retried_click_event_is_processed_once() {
    let app = spawn_app().await;
    let user = userid("clicker");
    let original = app.get_token(&user).await;

    let at = next_create_time();
    let first = app
        .event_at(&user, "click", Some("rotate"), at)
        .await
        .unwrap();
    let again = app
        .event_at(&user, "click", Some("rotate"), at)
        .await
        .unwrap();
    assert_eq!(first, again);
    let rotated = token_from_reply(&first);
    assert_ne!(rotated, original);
    assert_eq!(app.get_token(&user).await, rotated);

    // The same click a second later is a new event.
    let later = app
        .event_at(&user, "click", Some("rotate"), at + 1)
        .await
        .unwrap();
    assert_ne!(token_from_reply(&later), rotated);
}

#[tokio::test]
async fn concurrent_first_requests_for_a_token_agree() {
    let app = spawn_app().await;
    let user = userid("racer");
    let futures = (0..8).map(|_| app.get_token(&user));
    let tokens = futures_util::future::join_all(futures).await;
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "one member has one token: {tokens:?}"
    );
    assert_eq!(app.get_token(&user).await, tokens[0]);
}
