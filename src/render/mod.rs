//! How a message looks: pure text work (no I/O), shared by the WeCom and e-mail channels
//! and the message page.

pub mod cut;
pub mod markdown;
pub mod page;
pub mod visible;
