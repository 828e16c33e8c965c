#![no_std]
// This file exists to enable the library target, which `agent/build.rs`
// depends on so that cargo rebuilds the agent when the kernel programs change.
