//! snapvmm's machine state as a `microvm` stream that QEMU 7.2 resumes.

use std::io::Write;

use devices::cmos::CmosState;
use devices::serial::SerialDeviceState;
use snapshot::vm_state::{VcpuState, VmState};
use thiserror::Error;

use super::cpu_map::{self, CpuMapError};
use super::{device_map, irqchip_map, MachineType};
use crate::positional_output::PositionalOutput;
use crate::ram::RamSource;
use crate::reader::Section;
use crate::sections::{GlobalStateSection, KvmclockSection, SectionState, TimerSection};
use crate::writer::{StreamWriter, WriteError};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Cpu(#[from] CpuMapError),
    #[error("invalid VM state: {0}")]
    State(String),
    #[error("the RAM source has no {0:?} block")]
    NoMainBlock(&'static str),
}

/// What goes into an exported stream besides RAM.
#[derive(Debug, Clone, Copy)]
pub struct ExportParts<'a> {
    /// The vCPUs, in APIC-id order.
    pub vcpus: &'a [VcpuState],
    pub vm: &'a VmState,
    /// The UART's state; sent as QEMU's `serial` (the destination needs `-serial ...`).
    pub serial: Option<&'a SerialDeviceState>,
    /// The CMOS/RTC state; sent as `mc146818rtc` (the destination needs `-M microvm,rtc=on`).
    pub cmos: Option<&'a CmosState>,
    /// Host CLOCK_MONOTONIC ns when `vm.pit` was read (KVM's PIT times are in that clock).
    pub host_monotonic_ns: i64,
    /// Host wall-clock ns at the same moment (QEMU's RTC runs on it).
    pub host_realtime_ns: i64,
    /// The stream's virtual clock (QEMU_CLOCK_VIRTUAL ns, the `timer` section); `None` takes the
    /// guest's kvmclock. An imported machine's `virtual_clock_ns` keeps a QEMU state exact.
    pub virtual_clock_ns: Option<i64>,
    /// `running`: QEMU starts the guest after loading; else it stays paused until `cont`.
    pub running: bool,
}

/// Section id of `ram`; device sections follow from 2 (id 0 would misroute PART/END records).
pub const RAM_SECTION_ID: u32 = 1;

/// Writes `parts` and the RAM `ram` gives as a QEMU 7.2 `microvm` stream. `ram` must offer the
/// `microvm.ram` block (e.g. `ram_map::GuestRamSource`); every block it offers is sent.
pub fn export_machine<W: Write>(
    parts: &ExportParts,
    ram: &mut dyn RamSource,
    out: W,
) -> Result<W, ExportError> {
    export_machine_to(parts, ram, out, None)
}

/// `export_machine` into a file (at its current position): pages are written at their offsets
/// by writer threads while the encoder goes on (`StreamWriter::write_ram_at`).
pub fn export_machine_to_file(
    parts: &ExportParts,
    ram: &mut dyn RamSource,
    file: &std::fs::File,
) -> Result<(), ExportError> {
    // A FIFO or a device cannot be written at offsets: it gets the stream in order.
    let positional = file.metadata().is_ok_and(|m| m.is_file());
    let file_at: Option<&dyn PositionalOutput> = if positional { Some(file) } else { None };
    export_machine_to(parts, ram, file, file_at).map(drop)
}

fn export_machine_to<W: Write>(
    parts: &ExportParts,
    ram: &mut dyn RamSource,
    out: W,
    positional: Option<&dyn PositionalOutput>,
) -> Result<W, ExportError> {
    let machine = MachineType::Microvm;
    let vm = parts.vm;
    if parts.vcpus.is_empty() {
        return Err(ExportError::State("no vCPU".into()));
    }
    vm.validate()
        .map_err(|e| ExportError::State(e.to_string()))?;
    let blocks = ram.blocks();
    if !blocks.iter().any(|b| b.name == machine.main_ram_block()) {
        return Err(ExportError::NoMainBlock(machine.main_ram_block()));
    }
    // The stream's virtual clock: by default the guest's kvmclock (ns since it started).
    let virtual_now = parts
        .virtual_clock_ns
        .unwrap_or(vm.clock.clock as i64)
        .max(1);

    let mut sections: Vec<(String, u32, SectionState)> = vec![(
        "timer".into(),
        0,
        SectionState::Timer(TimerSection {
            cpu_ticks_offset: 0,
            cpu_clock_offset: virtual_now,
        }),
    )];
    for (index, vcpu) in parts.vcpus.iter().enumerate() {
        let (common, cpu) = cpu_map::cpu_from_vcpu(vcpu)?;
        let apic = cpu_map::apic_from_vcpu(vcpu, virtual_now);
        sections.push((
            "cpu_common".into(),
            index as u32,
            SectionState::CpuCommon(common),
        ));
        sections.push(("cpu".into(), index as u32, SectionState::Cpu(Box::new(cpu))));
        sections.push(("apic".into(), vcpu.vcpu_id, SectionState::Apic(apic)));
    }
    sections.push((
        "ioapic".into(),
        0,
        SectionState::Ioapic(irqchip_map::ioapic_from_kvm(&vm.ioapic)),
    ));
    sections.push((
        "kvmclock".into(),
        0,
        SectionState::Kvmclock(KvmclockSection::reliable(vm.clock.clock)),
    ));
    sections.push((
        "i8259".into(),
        0,
        SectionState::I8259(irqchip_map::i8259_from_kvm(&vm.pic_master)),
    ));
    sections.push((
        "i8259".into(),
        1,
        SectionState::I8259(irqchip_map::i8259_from_kvm(&vm.pic_slave)),
    ));
    sections.push((
        "i8254".into(),
        0,
        SectionState::I8254(irqchip_map::i8254_from_kvm(
            &vm.pit,
            virtual_now.wrapping_sub(parts.host_monotonic_ns),
            virtual_now,
        )),
    ));
    if let Some(serial) = parts.serial {
        sections.push((
            "serial".into(),
            0,
            SectionState::Serial(device_map::serial_from_device(serial)),
        ));
    }
    if let Some(cmos) = parts.cmos {
        sections.push((
            "mc146818rtc".into(),
            0,
            SectionState::Rtc(device_map::rtc_from_cmos(cmos, parts.host_realtime_ns)),
        ));
    }
    sections.push((
        "globalstate".into(),
        0,
        SectionState::GlobalState(GlobalStateSection {
            runstate: if parts.running { "running" } else { "paused" }.into(),
        }),
    ));

    let mut writer = StreamWriter::new(out, machine.name())?;
    match positional {
        Some(file) => writer.write_ram_at(RAM_SECTION_ID, &blocks, ram, file)?,
        None => writer.write_ram(RAM_SECTION_ID, &blocks, ram)?,
    }
    for (index, (idstr, instance_id, state)) in sections.into_iter().enumerate() {
        writer.write_section(&Section {
            section_id: RAM_SECTION_ID + 1 + index as u32,
            idstr,
            instance_id,
            state,
        })?;
    }
    Ok(writer.finish()?)
}
