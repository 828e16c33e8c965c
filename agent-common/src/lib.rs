//! Types shared by hostscope's kernel programs (`hostscope-ebpf`) and its
//! userspace agent (`hostscope`).
//!
//! Every type here is `#[repr(C)]` and free of implicit padding, so the bytes
//! the kernel writes are exactly the bytes userspace reads. With the `user`
//! feature the types implement `aya::Pod`.
#![no_std]

pub mod filter;
pub mod oom;
pub mod procs;
pub mod sched;
pub mod syscalls;
pub mod task;
pub mod tcp;
