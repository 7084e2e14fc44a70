//! A machine state built from scratch in snapvmm's types (not taken from QEMU): a flat 32-bit
//! protected-mode guest at CPL0 that prints A..Z on COM1 forever. Exported as microvm, QEMU 7.2
//! loads it and the guest's output appears on QEMU's serial port.

mod common;

use std::time::Duration;

use devices::serial::SerialDeviceState;
use kvm_bindings::{kvm_segment, KVM_MP_STATE_RUNNABLE};
use qemu_migration::machine::irqchip_map;
use qemu_migration::machine::ram_map::{
    GuestMemory, GuestRamSource, MemoryRegionState, VecGuestMemory,
};
use qemu_migration::sections::{I8259Section, IoapicSection};
use qemu_migration::{export_machine, ExportParts, MachineType};
use snapshot::vm_state::{VcpuState, VmState};

const MEM: u64 = 32 << 20;
const CODE_AT: u64 = 0x1000;

/// mov dx,0x3f8; mov al,'A'; l: out dx,al; inc al; cmp al,'Z'+1; jne l; jmp back to mov al.
const CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x41, 0xee, 0xfe, 0xc0, 0x3c, 0x5b, 0x75, 0xf9, 0xeb, 0xf5,
];

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A 32-bit TSS at this address whose I/O bitmap allows every port below 0x400.
const TSS_AT: u64 = 0x2000;
const TSS_LIMIT: u32 = 104 + 0x400 / 8;

fn vcpu(cpl3: bool) -> VcpuState {
    let mut vcpu = VcpuState::new(0);
    vcpu.regs.rip = CODE_AT;
    vcpu.regs.rflags = 0x2;
    vcpu.regs.rsp = 0x8000;
    let (mut code, mut data) = (flat(0x8, 11), flat(0x10, 3));
    if cpl3 {
        code.selector = 0x1b;
        code.dpl = 3;
        data.selector = 0x23;
        data.dpl = 3;
    }
    vcpu.sregs.cs = code;
    vcpu.sregs.ds = data;
    vcpu.sregs.es = data;
    vcpu.sregs.ss = data;
    vcpu.sregs.fs = data;
    vcpu.sregs.gs = data;
    // Port I/O at CPL3 (IOPL 0) goes through the TSS I/O bitmap: TR must come through exactly.
    vcpu.sregs.tr = kvm_segment {
        base: TSS_AT,
        limit: TSS_LIMIT,
        selector: 0x28,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    vcpu.sregs.ldt = kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    };
    vcpu.sregs.gdt.limit = 0x17;
    vcpu.sregs.idt.limit = 0x3ff;
    vcpu.sregs.cr0 = 0x11;
    vcpu.sregs.apic_base = 0xfee0_0900;
    // x87 and SSE reset values.
    vcpu.xsave[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    vcpu.xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    vcpu.xcrs.nr_xcrs = 1;
    vcpu.xcrs.xcrs[0].value = 1;
    // LAPIC after reset: SVR 0xff, every LVT masked, flat destination format.
    let mut set = |reg: usize, value: u32| {
        vcpu.lapic[reg * 16..reg * 16 + 4].copy_from_slice(&value.to_le_bytes())
    };
    set(0xe, 0xffff_ffff);
    set(0xf, 0xff);
    for lvt in 0x32..0x38 {
        set(lvt, 0x1_0000);
    }
    vcpu.mp_state.mp_state = KVM_MP_STATE_RUNNABLE;
    vcpu.debug_regs.dr6 = 0xffff_0ff0;
    vcpu.debug_regs.dr7 = 0x400;
    vcpu
}

/// Exports the guest and returns what QEMU's COM1 printed.
fn run_in_qemu(cpl3: bool, allow_io: bool) -> String {
    let vcpus = vec![vcpu(cpl3)];
    let regions = vec![MemoryRegionState {
        guest_phys_addr: 0,
        len: MEM,
    }];
    let vm = VmState {
        pic_master: irqchip_map::i8259_to_kvm(&I8259Section::default(), false),
        pic_slave: irqchip_map::i8259_to_kvm(&I8259Section::default(), true),
        ioapic: irqchip_map::ioapic_to_kvm(&IoapicSection::default()),
        pit: Default::default(),
        clock: kvm_bindings::kvm_clock_data {
            clock: 1_000_000_000,
            ..Default::default()
        },
    };
    let mut memory = VecGuestMemory::default();
    memory.prepare(&regions, &[]).unwrap();
    memory.write(CODE_AT, CODE).unwrap();
    let mut tss = vec![if allow_io { 0u8 } else { 0xff }; TSS_LIMIT as usize + 1];
    tss[..104].fill(0);
    tss[102..104].copy_from_slice(&104u16.to_le_bytes());
    tss[TSS_LIMIT as usize] = 0xff;
    memory.write(TSS_AT, &tss).unwrap();
    let serial = SerialDeviceState::default();
    let parts = ExportParts {
        vcpus: &vcpus,
        vm: &vm,
        serial: Some(&serial),
        cmos: None,
        host_monotonic_ns: 0,
        host_realtime_ns: 0,
        virtual_clock_ns: None,
        running: true,
    };
    let mut source = GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).unwrap();
    let stream = export_machine(&parts, &mut source, Vec::new()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "synthetic.bin", &stream);
    let out = dir.path().join("serial.txt");
    let serial_arg = format!("file:{}", out.display());
    let incoming = format!("exec:cat {}", path.display());
    let mut qemu = common::Qemu::start(
        "microvm",
        (MEM >> 20) as u32,
        &["-serial", &serial_arg, "-incoming", &incoming],
    );
    let mut output = String::new();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        output = std::fs::read_to_string(&out).unwrap_or_default();
        if output.len() > 100 {
            break;
        }
    }
    let status = qemu.status();
    let stderr = qemu.quit();
    format!("{output}\n--- status {status}; QEMU said: {stderr}")
}

#[test]
fn a_cpl0_guest_built_in_our_types_runs_in_qemu() {
    let output = run_in_qemu(false, true);
    assert!(
        output.starts_with("ABCDEFGHIJKLMNOPQRSTUVWXYZABC"),
        "{}",
        &output[..output.len().min(300)]
    );
}

#[test]
fn a_cpl3_guest_keeps_its_tss_io_bitmap_in_qemu() {
    let output = run_in_qemu(true, true);
    assert!(
        output.starts_with("ABCDEFGHIJKLMNOPQRSTUVWXYZABC"),
        "{}",
        &output[..output.len().min(300)]
    );
    // The same guest with the ports closed in its I/O bitmap faults instead of printing: the
    // bitmap (through TR) is what QEMU's KVM used.
    let output = run_in_qemu(true, false);
    assert!(
        !output.starts_with('A'),
        "{}",
        &output[..output.len().min(300)]
    );
}
