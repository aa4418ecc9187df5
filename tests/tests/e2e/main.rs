//! Real-process tests: the real coordinator, real agents, real hook
//! scripts, driven through failoverctl as an operator would.
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod availability;
mod bad_input;
mod cli;
mod failover;
mod hardening;
mod identity;
mod notify;
mod operations;
mod policies;
mod reload;
mod replicas;
mod rest_api;
mod restart;
mod security;
mod source;
mod status_page;
mod switchover;
mod sync;
