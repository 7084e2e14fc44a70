//! Guest programs built from source by `build.rs`: the bare-metal guest runtime (a tiny 64-bit
//! kernel that runs a C program at CPL3) with its test guests, `pvh-hello`, an independent
//! 32-bit test kernel, and static Linux programs for Linux guests (`linux-programs/`).
//! `runtime/README.md` documents the entry contract, the memory map, the exit codes and the
//! snapshot-device API; `include/snapshot_device.h` is the device's C ABI.

use std::path::PathBuf;

/// How a built guest expects to be entered by the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEntry {
    /// 64-bit ELF without a PVH note: long mode at `e_entry`, RSI = Linux boot_params.
    Elf64,
    /// 64-bit ELF with a PVH note: 32-bit protected mode at the note's entry, EBX = hvm_start_info.
    Pvh,
    /// 32-bit ELF with a Multiboot v1 header and a PVH note (entered either way).
    MultibootOrPvh32,
}

/// One guest image in the build output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltGuest {
    /// What callers pass to [`guest_path`], e.g. `"hello"` or `"hello-pvh"`.
    pub name: &'static str,
    /// The file name in [`guest_dir`].
    pub file_name: &'static str,
    pub entry: GuestEntry,
    /// The ELF itself, embedded so a binary that links guest-tools carries its guests along.
    pub image: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// What `snapvmm build-target` needs to turn a libFuzzer harness into a fuzz target: the
/// runtime's kernel object, user library and linker script, the libFuzzer shim, the libc
/// subset and its headers (`libfuzzer/`, docs/libfuzzer-targets.md).
pub mod libfuzzer_kit {
    include!(concat!(env!("OUT_DIR"), "/libfuzzer_kit.rs"));
}

/// The `hello` guest (64-bit ELF entry): the VMM's built-in default guest.
pub const HELLO_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));

/// The directory the guests were built into.
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("OUT_DIR"))
}

/// The path of the built guest called `name` (see [`BUILT_GUESTS`]), if there is one.
pub fn guest_path(name: &str) -> Option<PathBuf> {
    BUILT_GUESTS
        .iter()
        .find(|guest| guest.name == name)
        .map(|guest| guest_dir().join(guest.file_name))
}

/// The path of the static Linux program called `name` (see [`LINUX_PROGRAMS`]), if there is one.
/// These run as user programs inside a Linux guest (for example in the real-KVM lane), not as
/// kernels.
pub fn linux_program_path(name: &str) -> Option<PathBuf> {
    LINUX_PROGRAMS
        .iter()
        .find(|program| **program == name)
        .map(|program| guest_dir().join(program))
}

/// The path of the native (host) fuzz harness called `name` (see [`NATIVE_HARNESSES`]), if there
/// is one: e.g. `simg-stdin`, the demo target's parser reading one input from stdin.
pub fn native_harness_path(name: &str) -> Option<PathBuf> {
    NATIVE_HARNESSES
        .iter()
        .find(|harness| **harness == name)
        .map(|harness| guest_dir().join(harness))
}

/// `snapshot-demo` (`linux-programs/snapshot-demo.c`): SAVE, change a variable, RESTORE through
/// `/sys/bus/pci/devices/0000:00:04.0/resource0`; prints `snapshot-demo: PASS ...` and exits 0
/// when the variable rolled back and execution continued after the SAVE.
pub const SNAPSHOT_DEMO_PATH: &str = concat!(env!("OUT_DIR"), "/snapshot-demo");

/// Exit codes the runtime writes to the debug-exit port 0xf4 (mirrors `runtime/include/rt_abi.h`).
pub mod exit_code {
    /// The program returned 0 from `main`.
    pub const OK: u8 = 0;
    /// Programs keep their own exit codes in `0..=USER_MAX`.
    pub const USER_MAX: u8 = 28;
    /// `rt_abort()` (or `RT_ASSERT`) in the user runtime.
    pub const ABORT: u8 = 29;
    /// The kernel could not set the machine up (no memory map, image not in RAM, ...).
    pub const BOOT_ERROR: u8 = 30;
    /// CPU exception in the kernel itself, or an interrupt nothing should have raised.
    pub const KERNEL_FAULT: u8 = 31;
    /// CPU exception `vector` in the user program.
    pub const fn user_exception(vector: u8) -> u8 {
        32 + (vector & 31)
    }
    /// The exception vector behind an exit code, if it is a user-exception code.
    pub const fn exception_vector(code: u8) -> Option<u8> {
        if code >= 32 && code < 64 {
            Some(code - 32)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod fuzz_target_tests;
#[cfg(test)]
mod tests;
