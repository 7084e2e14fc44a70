//! Writes the seed corpus of `snapshot_dir_loader`: real snapshots written by `save_snapshot`,
//! joined into the target's input layout. Usage: make_seeds OUT_DIR
use std::fs;
use std::path::Path;

use kvm_bindings::{kvm_clock_data, kvm_pit_state2};
use snapshot::snapshot_dir::{MEMORY_FILE, STATE_FILE};
use snapshot::vm_state::IRQCHIP_STATE_LEN;
use snapshot::{
    save_snapshot, save_snapshot_bytes, IrqchipState, MemoryRegionState, VcpuState, VmState,
};
use snapshot_fuzz::{join_input, REPAIR_CHECKSUMS};

fn snapshot_input(dir: &Path, flags: u8) -> Vec<u8> {
    let state = fs::read(dir.join(STATE_FILE)).expect("reading state.bin");
    let memory = fs::read(dir.join(MEMORY_FILE)).expect("reading memory.raw");
    join_input(flags, &state, &memory)
}

fn irqchip(chip_id: u32) -> IrqchipState {
    IrqchipState {
        chip_id,
        bytes: vec![0; IRQCHIP_STATE_LEN],
    }
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: make_seeds OUT_DIR");
    let out = Path::new(&out);
    fs::create_dir_all(out).expect("creating the corpus directory");
    let scratch = std::env::temp_dir().join(format!("snapshot-seeds-{}", std::process::id()));
    fs::create_dir_all(&scratch).expect("creating a scratch directory");

    let page: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let vm = VmState {
        vcpus: vec![VcpuState::new(0)],
        pic_master: irqchip(0),
        pic_slave: irqchip(1),
        ioapic: irqchip(2),
        pit: kvm_pit_state2::default(),
        clock: kvm_clock_data::default(),
        memory_regions: vec![MemoryRegionState {
            guest_phys_addr: 0,
            len: 8192,
        }],
        devices: Vec::new(),
    };
    type SaveSeed<'a> = Box<dyn Fn(&Path) + 'a>;
    let seeds: Vec<(&str, SaveSeed)> = vec![
        (
            "opaque-one-page",
            Box::new(|d| save_snapshot_bytes(d, b"opaque state", page.as_slice()).unwrap()),
        ),
        (
            "opaque-no-memory",
            Box::new(|d| save_snapshot_bytes(d, b"", &[][..]).unwrap()),
        ),
        (
            "vcpu-two-pages",
            Box::new(|d| {
                save_snapshot(
                    d,
                    &VcpuState::new(0),
                    [page.clone(), vec![0; 4096]].concat().as_slice(),
                )
                .unwrap()
            }),
        ),
        (
            "vm-state",
            Box::new(|d| save_snapshot(d, &vm, vec![0u8; 8192].as_slice()).unwrap()),
        ),
    ];
    for (name, save) in seeds {
        let dir = scratch.join(name);
        save(&dir);
        fs::write(out.join(name), snapshot_input(&dir, 0)).expect("writing a seed");
        let repaired = out.join(format!("{name}-repair-checksums"));
        fs::write(repaired, snapshot_input(&dir, REPAIR_CHECKSUMS)).expect("writing a seed");
    }
    fs::remove_dir_all(&scratch).expect("removing the scratch directory");
}
