//! The SMS channel: texts through the configured [`Provider`], to the phone number a
//! member bound in the chat (`phone 13800138000`), under daily caps, never sent twice.
//!
//! - **Content.** Aliyun and Tencent Cloud send only approved templates: a message fills
//!   `sms.template`'s variables (title, an excerpt, the page link), a code
//!   `sms.code_template`'s. Twilio gets the same as free text in `sms.max_segments`
//!   segments. Every text carries the message's page link, where the whole message is.
//! - **Cost.** Each text is charged (a row in `charges`) before the provider is asked;
//!   past `sms.daily_limit_per_member` or `sms.daily_limit` in the last 24 h the step fails
//!   permanently, saying which cap, and the message moves on or fails — visibly.
//! - **Never twice.** SMS sends are not idempotent. A send that may have reached the
//!   provider (a timeout) leaves its charge unsettled; the next try of that message looks
//!   it up first ([`Provider::lookup`], by the message id given as the provider's
//!   `OutId`/`SessionContext`) and sends only when the provider says it has not. Where
//!   the provider cannot say, after `sms.lookup_after` the step is recorded `unconfirmed`
//!   and the message moves on. A process killed mid-send leaves the same unsettled charge,
//!   so a restart looks up too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Check, Lookup, PhoneNumber, Provider, SmsFailure, SmsText};
use crate::config::SmsSettings;
use crate::delivery::{
    Attachments, BadAddress, Binding, Capabilities, Channel, ChannelError, CheckError,
};
use crate::domain::{ChannelName, Format, Outbound};
use crate::render::cut::cut;
use crate::render::markdown::to_plain_text;
use crate::store::{ChargeCap, Store, StoreError};
use crate::time::UnixMillis;

/// The daily caps look back this far.
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Content handed to the provider's shaping at most (it is cut further to the template's
/// variable limit or the segments).
const MAX_EXCERPT_BYTES: usize = 1024;

pub struct SmsChannel {
    provider: Arc<dyn Provider>,
    store: Store,
    binding: Binding,
    per_member: u32,
    total: u32,
    lookup_after: Duration,
    /// `server.public_url`, for page links.
    public_base: Arc<str>,
}

fn parse_phone(typed: &str) -> Result<String, BadAddress> {
    Ok(PhoneNumber::parse(typed)?.as_str().to_owned())
}

fn mask_phone(stored: &str) -> String {
    PhoneNumber::parse(stored).map_or_else(|_| "***".to_owned(), |p| p.masked())
}

/// A code text: the code alone (the provider's code template says the rest).
fn code_text(code: &str, _ttl_minutes: u64) -> (Option<String>, String) {
    (None, code.to_owned())
}

impl SmsChannel {
    pub fn new(
        provider: Arc<dyn Provider>,
        store: Store,
        settings: &SmsSettings,
        public_base: Arc<str>,
    ) -> Self {
        Self {
            provider,
            store,
            binding: Binding {
                code_ttl: settings.code_ttl,
                codes_per_hour: settings.codes_per_hour,
                command: "phone",
                example: "13800138000",
                noun: ("手机号", "phone number"),
                parse: parse_phone,
                mask: mask_phone,
                code_message: code_text,
            },
            per_member: settings.daily_limit_per_member,
            total: settings.daily_limit,
            lookup_after: settings.lookup_after,
            public_base,
        }
    }

    fn label(&self) -> &'static str {
        self.provider.label()
    }

    /// What to text for `message`.
    fn text(&self, message: &Outbound) -> SmsText {
        if message.verification {
            return SmsText::Code(message.content.clone().unwrap_or_default());
        }
        let page = message
            .page_key
            .as_deref()
            .map(|key| message.id.page_url(&self.public_base, key));
        let excerpt = message.content.as_deref().map(|c| {
            let mut plain = match message.format {
                Format::Markdown => to_plain_text(c),
                _ => c.to_owned(),
            };
            // The line naming the attachments ends with the page's link, which every text
            // carries anyway: once is enough in a text that is paid by the segment.
            if let Some(page) = page.as_deref().filter(|_| !message.attachments.is_empty()) {
                plain = plain.replace(&format!(" → {page}"), "");
            }
            cut(&plain, MAX_EXCERPT_BYTES).to_owned()
        });
        let link = page.or_else(|| message.url.clone());
        SmsText::Message {
            title: message.title.clone(),
            excerpt,
            link,
        }
    }

    async fn deliver_to(&self, message: &Outbound) -> Result<(), ChannelError> {
        let permanent = |reason: String| ChannelError::Permanent { reason };
        let Some(address) = message.address.as_deref() else {
            return Err(permanent("no phone number to text".to_owned()));
        };
        let to = PhoneNumber::parse(address).map_err(|e| permanent(e.to_string()))?;
        let out_id = message.id.as_str();
        let name = ChannelName::Sms;
        // An earlier try may have sent it: ask before sending again.
        if let Some(charged_at) = self
            .store
            .unsettled_charge(name, out_id)
            .await
            .map_err(store)?
        {
            // Measured before asking: a provider that found it too early to tell did so at
            // this time or later.
            let asked_at = UnixMillis::now();
            match self.provider.lookup(&to, out_id, charged_at).await {
                Lookup::Sent => {
                    self.store
                        .settle_charge(name, out_id)
                        .await
                        .map_err(store)?;
                    return Ok(());
                }
                Lookup::NotSent => self.store.refund(name, out_id).await.map_err(store)?,
                Lookup::CannotTell(why) => {
                    if asked_at < charged_at + self.lookup_after {
                        return Err(ChannelError::Transient {
                            reason: format!(
                                "an earlier try may have texted {} (it timed out or was cut off); \
                                 {} cannot say yet ({why}): looking again before sending",
                                to.masked(),
                                self.label()
                            ),
                            unreachable: false,
                        });
                    }
                    return Err(ChannelError::Unconfirmed {
                        reason: format!(
                            "an earlier try to text {} timed out or was cut off, and {} cannot say \
                             whether it was sent ({why}); not sent again, so as not to text \
                             (and bill) it twice",
                            to.masked(),
                            self.label()
                        ),
                    });
                }
            }
        }
        let charged = self
            .store
            .charge(
                name,
                &message.userid,
                out_id,
                UnixMillis::now(),
                DAY,
                self.per_member,
                self.total,
            )
            .await
            .map_err(store)?;
        if let Err(cap) = charged {
            return Err(permanent(match cap {
                ChargeCap::Member => format!(
                    "the SMS daily limit of {} per member is reached (sms.daily_limit_per_member)",
                    self.per_member
                ),
                ChargeCap::Server => format!(
                    "the server's SMS daily limit of {} is reached (sms.daily_limit)",
                    self.total
                ),
            }));
        }
        let text = self.text(message);
        match self.provider.send(&to, &text, out_id).await {
            Ok(()) => {
                // Sent: if settling fails, the next look-up finds it anyway.
                if let Err(err) = self.store.settle_charge(name, out_id).await {
                    tracing::warn!(error = %crate::error::chain(&err), "could not mark an SMS charge settled");
                }
                Ok(())
            }
            Err(SmsFailure::Unknown(reason)) => Err(ChannelError::Transient {
                reason: format!("{reason} (looked up before any new try, never resent blindly)"),
                unreachable: false,
            }),
            Err(failure) => {
                // Refused: nothing was sent, nothing billed.
                self.store.refund(name, out_id).await.map_err(store)?;
                Err(match failure {
                    SmsFailure::Permanent(reason) => ChannelError::Permanent { reason },
                    SmsFailure::Transient {
                        reason,
                        unreachable,
                    } => ChannelError::Transient {
                        reason,
                        unreachable,
                    },
                    SmsFailure::Unknown(reason) => ChannelError::Transient {
                        reason,
                        unreachable: false,
                    },
                })
            }
        }
    }
}

/// The database failed: try again later (the scheduler records nothing it cannot).
fn store(err: StoreError) -> ChannelError {
    ChannelError::Transient {
        reason: format!(
            "could not read or record the SMS charges: {}",
            crate::error::chain(&err)
        ),
        unreachable: false,
    }
}

impl Channel for SmsChannel {
    fn name(&self) -> ChannelName {
        ChannelName::Sms
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // What a text may carry before its provider's shaping cuts it.
            max_text_bytes: MAX_EXCERPT_BYTES,
            digests: false,
            // A text carries the page's link, where the files are.
            attachments: Attachments::Linked,
        }
    }

    fn binding(&self) -> Option<&Binding> {
        Some(&self.binding)
    }

    fn deliver<'a>(&'a self, message: &'a Outbound) -> BoxFuture<'a, Result<(), ChannelError>> {
        Box::pin(self.deliver_to(message))
    }

    fn check(&self) -> BoxFuture<'_, Result<String, CheckError>> {
        Box::pin(async move {
            match self.provider.check().await {
                Check::Ok(what) => Ok(what),
                Check::Failed(what) => Err(CheckError::Failed(what)),
                Check::CannotCheck(why) => Ok(format!(
                    "{} not checked without sending a text: {why}",
                    self.label()
                )),
            }
        })
    }
}
