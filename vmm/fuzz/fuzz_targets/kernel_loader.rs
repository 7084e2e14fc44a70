//! `vmm::boot::load_kernel` on arbitrary kernel images, into guest memory that lives in this
//! process (no KVM): format detection, ELF loading (linux-loader's for ELF64, ours for ELF32),
//! the PVH note, the Multiboot header, linux-loader's bzImage setup-header parsing, initrd
//! placement and the boot structures. Input: one byte of initrd length (KiB, 0 = none), then the
//! kernel. Checked: no panic; an accepted kernel lies in guest RAM and an initrd after it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::boot::{load_kernel, InitrdSource};

const MEM_BYTES: u64 = 64 << 20;

fn guest_memory() -> &'static GuestMemoryMmap {
    static MEMORY: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEMORY.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_BYTES as usize)])
            .expect("guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&initrd_kib, kernel)) = data.split_first() else {
        return;
    };
    let initrd_bytes = vec![0x5au8; usize::from(initrd_kib) * 1024];
    let mut reader = initrd_bytes.as_slice();
    let initrd = (initrd_kib > 0).then_some(InitrdSource {
        reader: &mut reader,
        size: initrd_bytes.len() as u64,
    });
    let Ok(setup) = load_kernel(guest_memory(), MEM_BYTES, kernel, initrd, "console=ttyS0") else {
        return;
    };
    assert!(setup.kernel_end <= MEM_BYTES, "{setup:?}");
    if let Some(initrd) = setup.initrd {
        assert!(initrd.addr >= setup.kernel_end, "{setup:?}");
        assert!(initrd.addr + initrd.size <= MEM_BYTES, "{setup:?}");
    }
});
