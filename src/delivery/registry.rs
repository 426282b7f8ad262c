//! The channels this server has, built from the config: the one list a new channel is
//! added to. Order matters: it is the order `channel=all` tries them, and the first
//! channel that needs no address is where a member's messages go when nothing else can
//! reach them.

use std::sync::Arc;

use super::Channel;
use super::destinations::{self, Factory};
use super::email::EmailChannel;
use super::sms::{self, SmsChannel};
use super::wecom::WeComChannel;
use crate::app::{Egress, StartupError, http_client, http_client_no_redirects};
use crate::config::Settings;
use crate::store::Store;
use crate::wecom::client::WeComClient;

/// What builds the destinations members add in the chat (and their test messages).
pub fn destinations(settings: &Settings, store: &Store) -> Result<Arc<Factory>, StartupError> {
    let timeout = settings.destinations.timeout;
    // No redirects: a request stays on the address that was checked.
    let http = http_client_no_redirects(timeout, Egress::Environment)?;
    Ok(Arc::new(Factory::new(
        store.clone(),
        settings.destinations.bases(),
        http,
        destinations::Settings {
            telegram_bot_token: settings.destinations.telegram_bot_token.clone(),
            timeout,
        },
        settings.public_base().into(),
    )))
}

/// Every configured channel, WeCom first.
pub fn build(
    settings: &Settings,
    wecom: Arc<WeComClient>,
    store: &Store,
    factory: &Factory,
) -> Result<Vec<Arc<dyn Channel>>, StartupError> {
    let mut channels: Vec<Arc<dyn Channel>> = vec![Arc::new(WeComChannel::new(
        wecom,
        settings.public_base().into(),
        settings.wecom.member_limits.clone(),
        store.clone(),
    ))];
    if let Some(email) = &settings.email {
        channels.push(Arc::new(
            EmailChannel::new(email)?.with_store(store.clone()),
        ));
    }
    for d in settings.destinations.configured()? {
        channels.push(Arc::new(factory.shared(d)));
    }
    if let Some(sms) = &settings.sms {
        // Not through `wecom.proxy` (that is for WeCom's trusted-IP rule); each call has
        // its own `sms.timeout`.
        let http = http_client(sms.timeout, Egress::Environment)?;
        let provider = sms::build(sms, http).map_err(StartupError::Sms)?;
        channels.push(Arc::new(SmsChannel::new(
            provider,
            store.clone(),
            sms,
            settings.public_base().into(),
        )));
    }
    Ok(channels)
}
