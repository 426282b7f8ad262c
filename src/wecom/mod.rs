//! The WeCom (企业微信) protocol: callback crypto and XML (pure), and the server API client.

pub mod checks;
pub mod client;
pub mod credentials;
pub mod crypto;
pub mod xml;
