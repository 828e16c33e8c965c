//! hostscope's kernel programs, one module per signal.
//!
//! Each signal module holds its maps and the programs that fill them; the
//! userspace collector of the same name in `agent/src/signals/` drains them.
#![no_std]
#![no_main]
// atomic_xadd: the bpf target offers no atomic read-modify-write in core::sync.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod filter;
mod oom;
mod procs;
mod sched;
mod syscalls;
mod task;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
