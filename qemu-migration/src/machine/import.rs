//! A QEMU 7.2 stream of `microvm`, `pc-i440fx-7.2` or `pc-q35-7.2` as snapvmm's machine state.

use std::io::Read;

use devices::cmos::CmosState;
use devices::serial::SerialDeviceState;
use kvm_bindings::{kvm_clock_data, kvm_cpuid_entry2};
use snapshot::vm_state::{VcpuState, VmState};
use thiserror::Error;

use super::cpu_map::{self, CpuMapError};
use super::ram_map::{firmware_regions, guest_regions, place_blocks, MemoryRegionState};
use super::{device_map, irqchip_map, MachineType};
use crate::ram::{RamBlock, RamSink};
use crate::reader::{read_stream, ReadError, ReadLimits};
use crate::sections::{
    ApicSection, CpuCommonSection, CpuSection, I8254Section, I8259Section, IoapicSection,
    SectionState,
};

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Cpu(#[from] CpuMapError),
    #[error("machine type {0:?} is not supported (microvm, pc-i440fx-7.2 or pc-q35-7.2)")]
    Machine(String),
    #[error("the stream has no {0:?} RAM block")]
    NoMainBlock(&'static str),
    #[error("vCPU {0}: {1} section missing")]
    MissingCpuSection(u32, &'static str),
    #[error("the stream has no vCPU")]
    NoVcpu,
    #[error("imported state is invalid: {0}")]
    State(String),
}

/// What the stream cannot say.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// CPUID for every vCPU (QEMU's destination takes it from `-cpu`; use the same model).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Host CLOCK_MONOTONIC ns now: KVM's PIT times are in that clock.
    pub host_monotonic_ns: i64,
    pub limits: ReadLimits,
}

/// A loaded stream in snapvmm's terms.
#[derive(Debug, Clone)]
pub struct ImportedMachine {
    pub machine: MachineType,
    pub vcpus: Vec<VcpuState>,
    /// Irqchips, PIT, kvmclock.
    pub vm: VmState,
    /// Where the main RAM block goes in guest-physical space.
    pub memory_regions: Vec<MemoryRegionState>,
    pub serial: Option<SerialDeviceState>,
    pub cmos: Option<CmosState>,
    pub ram_blocks: Vec<RamBlock>,
    /// Firmware the guest sees outside RAM (pc/q35's BIOS below 4 GiB), to map besides RAM.
    pub firmware_regions: Vec<crate::machine::ram_map::MemoryRegionState>,
    /// Size of the main RAM block (the guest's RAM).
    pub ram_bytes: u64,
    /// The source's run state was `running` (else the guest waits for `cont`).
    pub running: bool,
    /// The stream's virtual clock (`timer`) in ns.
    pub virtual_clock_ns: i64,
    /// idstr/instance of each section parsed and dropped.
    pub skipped_sections: Vec<String>,
}

/// Reads a stream from `input` (a pipe is fine), RAM pages into `ram` (e.g.
/// `ram_map::GuestRamSink`), and maps its sections onto snapvmm's state.
pub fn import_machine<R: Read>(
    input: R,
    ram: &mut dyn RamSink,
    options: &ImportOptions,
) -> Result<ImportedMachine, ImportError> {
    let parsed = read_stream(input, ram, &options.limits)?;
    let machine = MachineType::from_stream_name(&parsed.machine)
        .ok_or_else(|| ImportError::Machine(parsed.machine.clone()))?;
    let main = machine.main_ram_block();
    let ram_bytes = parsed
        .ram_blocks
        .iter()
        .find(|b| b.name == main)
        .map(|b| b.used_length)
        .ok_or(ImportError::NoMainBlock(main))?;

    let mut virtual_clock_ns = 0;
    let mut commons: Vec<(u32, &CpuCommonSection)> = Vec::new();
    let mut cpus: Vec<(u32, &CpuSection)> = Vec::new();
    let mut apics: Vec<&ApicSection> = Vec::new();
    let mut ioapic = None;
    let mut pics: [Option<&I8259Section>; 2] = [None, None];
    let mut pit = None;
    let mut kvmclock = None;
    let mut serial = None;
    let mut cmos = None;
    let mut rtc_realtime_ns = None;
    let mut running = true;
    let mut skipped_sections = Vec::new();
    for section in &parsed.sections {
        let instance = section.instance_id;
        match &section.state {
            SectionState::Timer(timer) => virtual_clock_ns = timer.cpu_clock_offset,
            SectionState::CpuCommon(c) => commons.push((instance, c)),
            SectionState::Cpu(c) => cpus.push((instance, c)),
            SectionState::Apic(a) => apics.push(a),
            SectionState::Ioapic(a) if instance == 0 => ioapic = Some(a),
            SectionState::I8259(p) if instance < 2 => pics[instance as usize] = Some(p),
            SectionState::I8254(p) => pit = Some(p),
            SectionState::Kvmclock(k) => kvmclock = Some(k.clock),
            SectionState::Serial(s) if instance == 0 => {
                serial = Some(device_map::serial_to_device(s))
            }
            SectionState::Rtc(r) => {
                cmos = Some(device_map::rtc_to_cmos(r));
                rtc_realtime_ns = Some(r.last_update);
            }
            SectionState::GlobalState(g) => running = g.runstate == "running",
            _ => skipped_sections.push(format!("{}/{}", section.idstr, instance)),
        }
    }
    if cpus.is_empty() {
        return Err(ImportError::NoVcpu);
    }
    let mut vcpus = Vec::with_capacity(cpus.len());
    for (position, (index, cpu)) in cpus.iter().enumerate() {
        let common = commons
            .iter()
            .find(|(i, _)| i == index)
            .map(|(_, c)| *c)
            .ok_or(ImportError::MissingCpuSection(*index, "cpu_common"))?;
        let apic = apics
            .get(position)
            .copied()
            .ok_or(ImportError::MissingCpuSection(*index, "apic"))?;
        vcpus.push(cpu_map::vcpu_from_sections(
            *index,
            common,
            cpu,
            apic,
            &options.cpuid,
        )?);
    }
    let reset_pic = I8259Section::default();
    let reset_ioapic = IoapicSection::default();
    let reset_pit = I8254Section::default();
    let virtual_to_monotonic = options.host_monotonic_ns.wrapping_sub(virtual_clock_ns);
    let vm = VmState {
        pic_master: irqchip_map::i8259_to_kvm(pics[0].unwrap_or(&reset_pic), false),
        pic_slave: irqchip_map::i8259_to_kvm(pics[1].unwrap_or(&reset_pic), true),
        ioapic: irqchip_map::ioapic_to_kvm(ioapic.unwrap_or(&reset_ioapic)),
        pit: irqchip_map::i8254_to_kvm(pit.unwrap_or(&reset_pit), virtual_to_monotonic),
        clock: kvm_clock_data {
            // A TCG stream has no kvmclock: the virtual clock is the guest's time then.
            clock: kvmclock.unwrap_or(virtual_clock_ns.max(0) as u64),
            // The wall-clock time the CMOS offset was taken against (the RTC's last update),
            // so that exporting the state again gives the same RTC section.
            flags: if rtc_realtime_ns.is_some() {
                kvm_bindings::KVM_CLOCK_REALTIME
            } else {
                0
            },
            realtime: rtc_realtime_ns.unwrap_or(0),
            ..Default::default()
        },
    };
    vm.validate()
        .map_err(|e| ImportError::State(e.to_string()))?;
    let firmware_regions = place_blocks(machine, &parsed.ram_blocks)
        .map(|placements| firmware_regions(machine, &placements))
        .unwrap_or_default();
    Ok(ImportedMachine {
        firmware_regions,
        machine,
        vcpus,
        memory_regions: guest_regions(machine, ram_bytes),
        vm,
        serial,
        cmos,
        ram_blocks: parsed.ram_blocks,
        ram_bytes,
        running,
        virtual_clock_ns,
        skipped_sections,
    })
}
