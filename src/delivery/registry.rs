//! The channels this server has, built from the config: the one list a new channel is
//! added to. Order matters: it is the order `channel=all` tries them, and the first
//! channel that needs no address is where a member's messages go when nothing else can
//! reach them.

use std::sync::Arc;

use super::Channel;
use super::email::EmailChannel;
use super::wecom::WeComChannel;
use crate::app::StartupError;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::wecom::client::WeComClient;

/// Every configured channel, WeCom first.
pub fn build(
    settings: &Settings,
    wecom: Arc<WeComClient>,
    metrics: &Metrics,
) -> Result<Vec<Arc<dyn Channel>>, StartupError> {
    let _ = metrics;
    let mut channels: Vec<Arc<dyn Channel>> = vec![Arc::new(WeComChannel::new(
        wecom,
        settings.public_base().into(),
        settings.wecom.member_limits.clone(),
    ))];
    if let Some(email) = &settings.email {
        channels.push(Arc::new(EmailChannel::new(email)?));
    }
    Ok(channels)
}
