use kvm_bindings::{kvm_pit_channel_state, kvm_segment, KVM_MP_STATE_HALTED};

use super::*;

/// A named way to break a valid state.
type Corruption<T> = (&'static str, Box<dyn Fn(&mut T)>);
use crate::ram_layout::PAGE_SIZE;
use crate::snapshot_dir::{save_snapshot, LoadedSnapshot};

fn sample_vcpu(vcpu_id: u32) -> VcpuState {
    let mut vcpu = VcpuState::new(vcpu_id);
    vcpu.regs = kvm_regs {
        rax: 0x1234,
        rip: 0xffff_ffff_8100_0000,
        rsp: 0x7fff_0000,
        rflags: 0x246,
        ..Default::default()
    };
    vcpu.sregs.cs = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x10,
        type_: 11,
        present: 1,
        dpl: 0,
        l: 1,
        ..Default::default()
    };
    vcpu.sregs.cr0 = 0x8005_0033;
    vcpu.sregs.cr3 = 0x1000;
    vcpu.sregs.efer = 0xd01;
    vcpu.sregs.apic_base = 0xfee0_0900;
    vcpu.set_xsave_words(
        &(0..1024u32)
            .map(|i| i.wrapping_mul(0x0101_0101))
            .collect::<Vec<_>>(),
    );
    vcpu.xcrs.nr_xcrs = 1;
    vcpu.xcrs.xcrs[0].value = 0x7;
    vcpu.msrs = vec![
        MsrEntry {
            index: msr::IA32_TSC,
            value: 123_456_789,
        },
        MsrEntry {
            index: msr::KVM_SYSTEM_TIME_NEW,
            value: 0x5000_0001,
        },
        MsrEntry {
            index: msr::LSTAR,
            value: 0xffff_ffff_8180_0000,
        },
    ];
    let mut lapic = kvm_lapic_state { regs: [0; 1024] };
    lapic.regs[0x20] = 0x01; // APIC ID register
    lapic.regs[0xf0] = 0xff_u8 as std::os::raw::c_char; // spurious vector
    vcpu.set_lapic(&lapic);
    vcpu.vcpu_events.exception.injected = 1;
    vcpu.vcpu_events.exception.nr = 14;
    vcpu.mp_state.mp_state = KVM_MP_STATE_HALTED;
    vcpu.debug_regs.dr7 = 0x400;
    vcpu.tsc_khz = Some(2_000_000);
    vcpu.cpuid = vec![kvm_cpuid_entry2 {
        function: 0,
        eax: 0xd,
        ebx: 0x6874_7541,
        ..Default::default()
    }];
    vcpu
}

fn sample_vm() -> VmState {
    let mut pit = kvm_pit_state2::default();
    pit.channels[0] = kvm_pit_channel_state {
        count: 0x10000,
        mode: 2,
        gate: 1,
        count_load_time: -5,
        ..Default::default()
    };
    VmState {
        pic_master: chip(KVM_IRQCHIP_PIC_MASTER, 1),
        pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, 2),
        ioapic: chip(KVM_IRQCHIP_IOAPIC, 3),
        pit,
        clock: kvm_clock_data {
            clock: 987_654_321,
            flags: 2,
            ..Default::default()
        },
    }
}

/// An irqchip whose fixed-range fields hold valid values (the rest is a byte pattern).
fn chip(chip_id: u32, fill: u8) -> IrqchipState {
    let mut state = IrqchipState {
        chip_id,
        bytes: (0..IRQCHIP_STATE_LEN)
            .map(|i| (i as u8).wrapping_add(fill))
            .collect(),
    };
    let mut kvm = state.to_kvm();
    if chip_id == KVM_IRQCHIP_IOAPIC {
        kvm.chip.ioapic.ioregsel = 0x10;
    } else {
        kvm.chip.pic.read_reg_select = 1;
        kvm.chip.pic.init_state = 0;
    }
    state = IrqchipState::from_kvm(&kvm);
    state
}

#[test]
fn sample_state_validates_and_round_trips() {
    let vm = sample_vm();
    vm.validate().unwrap();
    let bytes = postcard::to_allocvec(&vm).unwrap();
    let back: VmState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, vm);
    back.validate().unwrap();

    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    save_snapshot(&dir, &vm, vec![0u8; PAGE_SIZE].as_slice()).unwrap();
    assert_eq!(
        LoadedSnapshot::open(&dir)
            .unwrap()
            .decode_state::<VmState>()
            .unwrap(),
        vm
    );
}

#[test]
fn kvm_shaped_conversions_round_trip() {
    let vcpu = sample_vcpu(3);
    assert_eq!(vcpu.tsc(), Some(123_456_789));
    assert_eq!(vcpu.msr(msr::LSTAR), Some(0xffff_ffff_8180_0000));
    assert_eq!(vcpu.msr(msr::STAR), None);
    let lapic = vcpu.lapic_state();
    assert_eq!(lapic.regs[0x20], 1);
    assert_eq!(lapic.regs[0xf0] as u8, 0xff);
    let words = vcpu.xsave_words();
    assert_eq!(words.len(), 1024);
    assert_eq!(words[5], 5u32.wrapping_mul(0x0101_0101));

    let mut kvm_chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_PIC_SLAVE,
        ..Default::default()
    };
    kvm_chip.chip.pic = kvm_pic_state {
        irr: 0x12,
        imr: 0xfb,
        irq_base: 0x28,
        elcr: 0x0c,
        ..Default::default()
    };
    let state = IrqchipState::from_kvm(&kvm_chip);
    assert_eq!(state.bytes.len(), IRQCHIP_STATE_LEN);
    let pic = state.pic();
    assert_eq!(
        (pic.irr, pic.imr, pic.irq_base, pic.elcr),
        (0x12, 0xfb, 0x28, 0x0c)
    );
    assert_eq!(IrqchipState::from_kvm(&state.to_kvm()), state);

    let mut kvm_ioapic = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    // SAFETY: writing plain integers into the IOAPIC member of a zeroed union.
    unsafe {
        kvm_ioapic.chip.ioapic.id = 4;
        kvm_ioapic.chip.ioapic.redirtbl[3].bits = 0x1_0000_0031;
    }
    let ioapic = IrqchipState::from_kvm(&kvm_ioapic).ioapic();
    assert_eq!(ioapic.id, 4);
    // SAFETY: reading the integer view of a redirection entry.
    assert_eq!(unsafe { ioapic.redirtbl[3].bits }, 0x1_0000_0031);
}

#[test]
fn msr_list_sets_tsc_before_kvmclock_and_has_no_duplicates() {
    let indices = snapshot_msr_indices();
    let position = |index| indices.iter().position(|&i| i == index).unwrap();
    assert!(position(msr::IA32_TSC) < position(msr::KVM_SYSTEM_TIME_NEW));
    assert!(position(msr::IA32_TSC) < position(msr::KVM_WALL_CLOCK_NEW));
    let unique: BTreeSet<u32> = indices.iter().copied().collect();
    assert_eq!(unique.len(), indices.len());
    assert_eq!(indices.len(), SNAPSHOT_MSRS.len() + 16 + 11);
}

#[test]
fn invalid_vcpu_states_are_rejected() {
    let cases: Vec<Corruption<VcpuState>> = vec![
        ("short xsave", Box::new(|v| v.xsave.truncate(100))),
        ("odd xsave", Box::new(|v| v.xsave.push(0))),
        (
            "huge xsave",
            Box::new(|v| v.xsave = vec![0; XSAVE_MAX_LEN + 4]),
        ),
        (
            "short lapic",
            Box::new(|v| v.lapic.pop().map(drop).unwrap_or(())),
        ),
        (
            "duplicate msr",
            Box::new(|v| {
                v.msrs.push(MsrEntry {
                    index: msr::IA32_TSC,
                    value: 0,
                })
            }),
        ),
        (
            "too many msrs",
            Box::new(|v| {
                v.msrs = (0..MAX_MSRS as u32 + 1)
                    .map(|index| MsrEntry { index, value: 0 })
                    .collect()
            }),
        ),
        (
            "too many cpuid",
            Box::new(|v| v.cpuid = vec![kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES + 1]),
        ),
        ("no cpuid", Box::new(|v| v.cpuid.clear())),
        (
            "too many xcrs",
            Box::new(|v| v.xcrs.nr_xcrs = KVM_MAX_XCRS + 1),
        ),
        ("rflags bit 1", Box::new(|v| v.regs.rflags = 0)),
        ("mp state", Box::new(|v| v.mp_state.mp_state = 99)),
        (
            "exception vector",
            Box::new(|v| v.vcpu_events.exception.nr = 40),
        ),
    ];
    for (what, corrupt) in cases {
        let mut vcpu = sample_vcpu(0);
        corrupt(&mut vcpu);
        assert!(vcpu.validate().is_err(), "{what} was accepted");
    }
}

#[test]
fn invalid_vm_states_are_rejected() {
    let cases: Vec<Corruption<VmState>> = vec![
        (
            "pic master id",
            Box::new(|vm| vm.pic_master.chip_id = KVM_IRQCHIP_IOAPIC),
        ),
        (
            "pic slave size",
            Box::new(|vm| vm.pic_slave.bytes.truncate(10)),
        ),
        (
            "ioapic id",
            Box::new(|vm| vm.ioapic.chip_id = KVM_IRQCHIP_PIC_MASTER),
        ),
        (
            "pic register select",
            Box::new(|vm| {
                let mut kvm = vm.pic_master.to_kvm();
                kvm.chip.pic.read_reg_select = 7;
                vm.pic_master = IrqchipState::from_kvm(&kvm);
            }),
        ),
        (
            "ioapic register select",
            Box::new(|vm| {
                let mut kvm = vm.ioapic.to_kvm();
                kvm.chip.ioapic.ioregsel = 0x1000;
                vm.ioapic = IrqchipState::from_kvm(&kvm);
            }),
        ),
        (
            "pit count",
            Box::new(|vm| vm.pit.channels[0].count = 0x2_0000),
        ),
        ("pit mode", Box::new(|vm| vm.pit.channels[1].mode = 9)),
        (
            "pit access mode",
            Box::new(|vm| vm.pit.channels[2].rw_mode = 4),
        ),
        (
            "pit read state",
            Box::new(|vm| vm.pit.channels[2].read_state = 200),
        ),
        ("pit gate", Box::new(|vm| vm.pit.channels[0].gate = 2)),
        ("pit bcd", Box::new(|vm| vm.pit.channels[0].bcd = 3)),
    ];
    for (what, corrupt) in cases {
        let mut vm = sample_vm();
        corrupt(&mut vm);
        let err = vm.validate().expect_err(what);
        assert!(!PersistError::from(err).to_string().is_empty());
    }
}
