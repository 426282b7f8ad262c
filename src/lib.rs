//! pushbot: a self-hosted push gateway. Members get a personal push token from a WeCom app
//! bot; scripts push with it; an outbox delivers every accepted message or reports it failed.

pub mod api;
pub mod app;
pub mod bot;
pub mod config;
pub mod delivery;
pub mod doctor;
pub mod domain;
pub mod error;
pub mod groups;
pub mod media;
pub mod metrics;
pub mod render;
pub mod server;
pub mod store;
pub mod supervise;
pub mod telemetry;
pub mod time;
pub mod token;
pub mod wecom;
pub mod wecom_groups;
