//! Integration tests: one binary (fast to build) with one module per area.

mod db;
mod helpers;
mod mock_destinations;
mod mock_sms;
mod mock_wecom;
mod smtp;
mod tcp_front;

mod bot;
mod browser;
mod callback;
mod callback_dedup;
mod cli;
mod compat;
mod compat_more;
mod conformance;
mod connections;
mod delivery;
mod doctor;
mod email;
mod hostile;
mod http_rules;
mod idempotency;
mod instances;
mod kubernetes;
mod lanes;
mod metrics;
mod outbox;
mod pages;
mod proxy;
mod restart;
mod send;
mod shutdown;
mod sms;
mod storage;
mod supervision;
