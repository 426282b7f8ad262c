//! WeCom re-sends a callback it got no timely answer for, and the copies can arrive
//! together: each is processed once.

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_of_one_rotate_callback_rotate_once() {
    let app = spawn_app().await;
    let user = userid("dup");
    let old = app.get_token(&user).await;
    let msg_id = next_msg_id();
    let sealed = seal_with(&app.crypto, &text_message(&user, "rotate", msg_id));
    // Open the connections first, so that the copies really arrive together.
    let warm_up = (0..10).map(|_| app.healthz());
    futures_util::future::join_all(warm_up).await;

    let copies = (0..10).map(|_| {
        let app = &app;
        let sealed = &sealed;
        async move {
            let resp = app.post_sealed(sealed).await;
            assert_eq!(resp.status(), 200);
            open_reply(&resp.text().await.unwrap())
        }
    });
    let replies = futures_util::future::join_all(copies).await;
    let tokens: Vec<String> = replies
        .iter()
        .flatten()
        .map(|r| token_from_reply(&r.content))
        .collect();
    // Copies that arrive while the first is still being processed wait for its reply:
    // every copy is answered, and with the same, single new token.
    assert_eq!(tokens.len(), 10, "every copy is answered: {replies:?}");
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "one rotation, one new token: {tokens:?}"
    );
    let current = app.get_token(&user).await;
    assert_eq!(current, tokens[0]);
    assert_ne!(current, old);

    // A later copy gets the stored answer, not another rotation.
    let again = app
        .user_says_with_id(&user, "rotate", msg_id)
        .await
        .unwrap();
    assert_eq!(token_from_reply(&again), current);
}
