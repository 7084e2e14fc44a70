//! In-kernel irqchips and PIT (KVM's structures in `snapshot::vm_state`) to and from QEMU's
//! `i8259`, `ioapic` and `i8254` sections (hw/i386/kvm/i8259.c, ioapic.c, i8254.c).

use kvm_bindings::{
    kvm_ioapic_state, kvm_irqchip, kvm_pic_state, kvm_pit_channel_state, kvm_pit_state2,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_FLAGS_HPET_LEGACY,
};
use snapshot::vm_state::IrqchipState;

use crate::sections::{I8254Section, I8259Section, IoapicSection, PitChannel};

/// ELCR bits that may be level-triggered (QEMU's `elcr_mask` properties).
const ELCR_MASK_MASTER: u8 = 0xf8;
const ELCR_MASK_SLAVE: u8 = 0xde;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
const PIT_FREQ: u64 = 1_193_182;
const NS_PER_SEC: u64 = 1_000_000_000;

pub fn i8259_from_kvm(chip: &IrqchipState) -> I8259Section {
    let p = chip.pic();
    I8259Section {
        last_irr: p.last_irr,
        irr: p.irr,
        imr: p.imr,
        isr: p.isr,
        priority_add: p.priority_add,
        irq_base: p.irq_base,
        read_reg_select: p.read_reg_select,
        poll: p.poll,
        special_mask: p.special_mask,
        init_state: p.init_state,
        auto_eoi: p.auto_eoi,
        rotate_on_auto_eoi: p.rotate_on_auto_eoi,
        special_fully_nested_mode: p.special_fully_nested_mode,
        init4: p.init4,
        single_mode: 0,
        elcr: p.elcr,
    }
}

/// `slave` selects the chip id and ELCR mask.
pub fn i8259_to_kvm(pic: &I8259Section, slave: bool) -> IrqchipState {
    let state = kvm_pic_state {
        last_irr: pic.last_irr,
        irr: pic.irr,
        imr: pic.imr,
        isr: pic.isr,
        priority_add: pic.priority_add,
        irq_base: pic.irq_base,
        read_reg_select: pic.read_reg_select,
        poll: pic.poll,
        special_mask: pic.special_mask,
        init_state: pic.init_state,
        auto_eoi: pic.auto_eoi,
        rotate_on_auto_eoi: pic.rotate_on_auto_eoi,
        special_fully_nested_mode: pic.special_fully_nested_mode,
        init4: pic.init4,
        elcr: pic.elcr,
        elcr_mask: if slave {
            ELCR_MASK_SLAVE
        } else {
            ELCR_MASK_MASTER
        },
    };
    let mut chip = kvm_irqchip {
        chip_id: if slave {
            KVM_IRQCHIP_PIC_SLAVE
        } else {
            KVM_IRQCHIP_PIC_MASTER
        },
        ..Default::default()
    };
    chip.chip.pic = state;
    IrqchipState::from_kvm(&chip)
}

pub fn ioapic_from_kvm(chip: &IrqchipState) -> IoapicSection {
    let state = chip.ioapic();
    IoapicSection {
        id: state.id as u8,
        ioregsel: state.ioregsel as u8,
        irr: state.irr,
        // SAFETY: every redirection entry is a plain u64 (`bits`) in the union.
        ioredtbl: std::array::from_fn(|i| unsafe { state.redirtbl[i].bits }),
    }
}

pub fn ioapic_to_kvm(ioapic: &IoapicSection) -> IrqchipState {
    let mut state = kvm_ioapic_state {
        base_address: IOAPIC_BASE,
        ioregsel: u32::from(ioapic.ioregsel),
        id: u32::from(ioapic.id),
        irr: ioapic.irr,
        ..Default::default()
    };
    for (dst, src) in state.redirtbl.iter_mut().zip(ioapic.ioredtbl) {
        dst.bits = src;
    }
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    chip.chip.ioapic = state;
    IrqchipState::from_kvm(&chip)
}

fn muldiv(a: u64, b: u64, c: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) / u128::from(c.max(1))) as u64
}

/// QEMU's `pit_get_next_transition_time` (hw/timer/i8254_common.c), or -1.
pub fn pit_next_transition_time(channel: &PitChannel, now: i64) -> i64 {
    let count = u64::from(channel.count.clamp(1, 0x10000) as u32);
    let d = muldiv(
        now.wrapping_sub(channel.count_load_time).max(0) as u64,
        PIT_FREQ,
        NS_PER_SEC,
    );
    let next = match channel.mode {
        2 => {
            let base = (d / count) * count;
            if d - base == 0 && d != 0 {
                base + count
            } else {
                base + count + 1
            }
        }
        3 => {
            let base = (d / count) * count;
            let half = (count + 1) >> 1;
            if d - base < half {
                base + half
            } else {
                base + count
            }
        }
        4 | 5 => {
            if d < count {
                count
            } else if d == count {
                count + 1
            } else {
                return -1;
            }
        }
        _ => {
            if d < count {
                count
            } else {
                return -1;
            }
        }
    };
    let next = channel
        .count_load_time
        .wrapping_add(muldiv(next, NS_PER_SEC, PIT_FREQ) as i64);
    if next <= now {
        now + 1
    } else {
        next
    }
}

/// The `i8254` section of KVM's PIT. KVM's `count_load_time` is host CLOCK_MONOTONIC ns;
/// `monotonic_to_virtual` is added to express it in the stream's virtual clock (QEMU does the same).
pub fn i8254_from_kvm(
    pit: &kvm_pit_state2,
    monotonic_to_virtual: i64,
    virtual_now: i64,
) -> I8254Section {
    let channels = pit.channels.map(|c| {
        let mut channel = PitChannel {
            count: c.count as i32,
            latched_count: c.latched_count,
            count_latched: c.count_latched,
            status_latched: c.status_latched,
            status: c.status,
            read_state: c.read_state,
            write_state: c.write_state,
            write_latch: c.write_latch,
            rw_mode: c.rw_mode,
            mode: c.mode,
            bcd: c.bcd,
            gate: c.gate,
            count_load_time: c.count_load_time.wrapping_add(monotonic_to_virtual),
            next_transition_time: 0,
        };
        channel.next_transition_time = pit_next_transition_time(&channel, virtual_now);
        channel
    });
    I8254Section {
        irq_disabled: u32::from(pit.flags & KVM_PIT_FLAGS_HPET_LEGACY != 0),
        channels,
        channel0_next_transition_time: channels[0].next_transition_time,
    }
}

/// KVM's PIT state from the `i8254` section; `virtual_to_monotonic` converts the stream's virtual
/// clock to the host CLOCK_MONOTONIC of the restoring process.
pub fn i8254_to_kvm(pit: &I8254Section, virtual_to_monotonic: i64) -> kvm_pit_state2 {
    let channels = pit.channels.map(|c| kvm_pit_channel_state {
        count: c.count as u32,
        latched_count: c.latched_count,
        count_latched: c.count_latched,
        status_latched: c.status_latched,
        status: c.status,
        read_state: c.read_state,
        write_state: c.write_state,
        write_latch: c.write_latch,
        rw_mode: c.rw_mode,
        mode: c.mode,
        bcd: c.bcd,
        gate: c.gate,
        count_load_time: c.count_load_time.wrapping_add(virtual_to_monotonic),
    });
    kvm_pit_state2 {
        channels,
        flags: if pit.irq_disabled != 0 {
            KVM_PIT_FLAGS_HPET_LEGACY
        } else {
            0
        },
        reserved: [0; 9],
    }
}
