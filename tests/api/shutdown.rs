//! SIGTERM in the middle of a load run, against the real binary: everything accepted before
//! the signal is delivered (after a restart if not before), and nothing twice.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test]
async fn sigterm_during_a_load_run_loses_nothing_and_delivers_nothing_twice() {
    let mock = MockWeCom::start().await;
    // Each send takes a while, so attempts are in flight when the signal comes.
    mock.set_delay(Some(Duration::from_millis(30)));
    let setup = bin_setup(&test_settings(), &mock.base_url);
    let mut bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    let mut tokens = Vec::new();
    for n in 0..4 {
        let user = userid(&format!("term{n}"));
        tokens.push(bin.get_token(&user).await);
    }
    let replies = mock.sent().len();

    // Eight clients send as fast as they can; SIGTERM after the first 100 are accepted.
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for c in 0..8usize {
        let http = bin.http.clone();
        let url = bin.url("/send");
        let token = tokens[c % tokens.len()].clone();
        let accepted_tx = accepted_tx.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..200 {
                let text = format!("c{c}-m{i}");
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .form(&[("content", text.as_str())])
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        let _ = accepted_tx.send((id, token.clone(), text));
                    }
                    // Refused or cut off once shutdown began: not accepted, not promised.
                    _ => break,
                }
            }
        }));
    }
    drop(accepted_tx);
    let mut accepted = Vec::new();
    while accepted.len() < 100 {
        match accepted_rx.recv().await {
            Some(a) => accepted.push(a),
            None => break,
        }
    }
    let pid = bin.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    for client in clients {
        client.await.unwrap();
    }
    while let Some(a) = accepted_rx.recv().await {
        accepted.push(a);
    }
    // It stops by itself, within the drain and the delivery grace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = bin.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "pushbot did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let before_restart = mock.sent().len() - replies;

    // The next instance delivers the rest.
    let bin = spawn_binary(&setup.config_path, setup.port, &[]).await;
    for (id, token, _) in &accepted {
        bin.wait_for_status(id, token, "delivered", WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for sent in mock.sent() {
        *delivered.entry(sent.content).or_default() += 1;
    }
    for (_, _, text) in &accepted {
        assert_eq!(
            delivered.get(text).copied(),
            Some(1),
            "{text} delivered exactly once"
        );
    }
    eprintln!(
        "SIGTERM after {} accepted: {} in total, {before_restart} delivered before the restart",
        100,
        accepted.len()
    );
}
