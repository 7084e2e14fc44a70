//! Guest accesses to every emulated device: port I/O of any width and value to every device's
//! ports (and any other port), PCI configuration sequences through 0xcf8/0xcfc including BAR
//! moves, snapshot-device register accesses at any offset and width, MMIO anywhere, and the
//! snapshot commands they trigger played on the devices (SAVE keeps every state, RESTORE puts it
//! back in place). Checked: no panic, unclaimed ports read all ones, MAGIC always reads right,
//! decoded BARs stay aligned and inside the physical address space, save/restore round trips.
#![no_main]

use devices_fuzz::{Machine, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| {
    let mut machine = Machine::new();
    for op in ops.iter().take(4096) {
        machine.apply(op);
    }
});
