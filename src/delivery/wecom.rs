//! The WeCom app channel: a text message to the member through `message/send`.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Channel, ChannelError};
use crate::domain::{ChannelName, Outbound};
use crate::wecom::client::WeComClient;

/// WeCom truncates text content beyond 2048 bytes without saying so; we cut first, on a
/// character boundary, and say that we did.
pub const MAX_TEXT_BYTES: usize = 2048;
const TRUNCATION_MARK: &str = "\n…(truncated)";

pub struct WeComChannel {
    client: Arc<WeComClient>,
}

impl WeComChannel {
    pub fn new(client: Arc<WeComClient>) -> Self {
        Self { client }
    }
}

impl Channel for WeComChannel {
    fn name(&self) -> ChannelName {
        ChannelName::WeCom
    }

    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(async move {
            let text = render_text(message.title.as_deref(), message.content.as_deref());
            self.client
                .send_text(message.userid.as_str(), &text)
                .await
                .map_err(|e| {
                    if e.is_transient() {
                        ChannelError::Transient {
                            unreachable: e.is_unreachable(),
                            reason: e.to_string(),
                        }
                    } else {
                        ChannelError::Permanent {
                            reason: e.to_string(),
                        }
                    }
                })
        })
    }
}

/// `title`, a blank line, `content` — or whichever of the two is present — cut to fit.
pub fn render_text(title: Option<&str>, content: Option<&str>) -> String {
    let text = match (title, content) {
        (Some(t), Some(c)) => format!("{t}\n\n{c}"),
        (Some(t), None) => t.to_owned(),
        (None, Some(c)) => c.to_owned(),
        (None, None) => String::new(),
    };
    truncate_bytes(text, MAX_TEXT_BYTES)
}

fn truncate_bytes(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max - TRUNCATION_MARK.len();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(TRUNCATION_MARK);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_title_and_content() {
        assert_eq!(render_text(Some("T"), Some("C")), "T\n\nC");
        assert_eq!(render_text(Some("T"), None), "T");
        assert_eq!(render_text(None, Some("C")), "C");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_within_the_limit() {
        let long = "磁盘".repeat(1000); // 6000 bytes
        let out = render_text(None, Some(&long));
        assert!(out.len() <= MAX_TEXT_BYTES);
        // As much as fits: at most one 3-byte character short of the limit.
        assert!(out.len() > MAX_TEXT_BYTES - 3, "{}", out.len());
        assert!(out.ends_with("(truncated)"));
        let short = "x".repeat(MAX_TEXT_BYTES);
        assert_eq!(render_text(None, Some(&short)), short);
    }
}
