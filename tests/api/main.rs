//! Integration tests: one binary (fast to build) with one module per area.

mod helpers;
mod mock_wecom;

mod bot;
mod callback;
mod cli;
mod connections;
mod delivery;
mod http_rules;
mod restart;
mod send;
mod storage;
