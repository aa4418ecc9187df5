//! Real-process tests: the real coordinator, real agents, real hook
//! scripts, driven through failoverctl as an operator would.

mod availability;
mod bad_input;
mod failover;
mod identity;
mod operations;
mod policies;
mod restart;
mod source;
mod switchover;
