//! Traffic across the lab: TLS material ([`tls`]), the clients
//! ([`client`]), and the attacks an adversary would try ([`attack`]).

pub mod attack;
pub mod client;
pub mod tls;

pub use client::*;
