//! The machine types this crate knows and, per machine, which sections a loader maps onto
//! snapvmm's state and which it skips (README.md has the same table). Any other section is an
//! error naming it (`SectionError::Unknown`).

/// A QEMU 7.2 x86 machine type (the canonical name the configuration section carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineType {
    Microvm,
    PcI440fx72,
    PcQ35_72,
}

impl MachineType {
    pub fn name(self) -> &'static str {
        match self {
            MachineType::Microvm => "microvm",
            MachineType::PcI440fx72 => "pc-i440fx-7.2",
            MachineType::PcQ35_72 => "pc-q35-7.2",
        }
    }

    /// The machine of a stream's configuration section.
    pub fn from_stream_name(name: &str) -> Option<MachineType> {
        [
            MachineType::Microvm,
            MachineType::PcI440fx72,
            MachineType::PcQ35_72,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    /// The RAM block that holds guest RAM.
    pub fn main_ram_block(self) -> &'static str {
        match self {
            MachineType::Microvm => "microvm.ram",
            MachineType::PcI440fx72 | MachineType::PcQ35_72 => "pc.ram",
        }
    }

    /// Bytes of the main block mapped below 4 GiB (reference §6.4, default properties).
    pub fn low_ram(self, ram_bytes: u64) -> u64 {
        const GIB: u64 = 1 << 30;
        match self {
            MachineType::Microvm => ram_bytes.min(3 * GIB),
            MachineType::PcI440fx72 if ram_bytes >= 3 * GIB + GIB / 2 => 3 * GIB,
            MachineType::PcQ35_72 if ram_bytes >= 2 * GIB + 3 * GIB / 4 => 2 * GIB,
            _ => ram_bytes,
        }
    }

    /// Sections that map onto snapvmm's state (by vmsd name).
    pub fn mapped_sections(self) -> &'static [&'static str] {
        match self {
            MachineType::Microvm => &[
                "timer",
                "cpu_common",
                "cpu",
                "apic",
                "kvmclock",
                "ioapic",
                "i8259",
                "i8254",
                "serial",
                "mc146818rtc",
                "globalstate",
            ],
            MachineType::PcI440fx72 | MachineType::PcQ35_72 => &[
                "timer",
                "cpu_common",
                "cpu",
                "apic",
                "kvmclock",
                "ioapic",
                "i8259",
                "i8254",
                "serial",
                "mc146818rtc",
                "globalstate",
            ],
        }
    }

    /// Sections of devices snapvmm does not have, which an import parses (sized from their
    /// layouts) and drops. The guest loses those devices' state (see README.md).
    pub fn skipped_sections(self) -> &'static [&'static str] {
        match self {
            MachineType::Microvm => &["kvm-tpr-opt", "fw_cfg", "acpi-ged"],
            MachineType::PcI440fx72 => &[
                "kvm-tpr-opt",
                "fw_cfg",
                "PCIHost",
                "PCIBUS",
                "I440FX",
                "dma",
                "PIIX3",
                "hpet",
                "pcspk",
                "fdc",
                "ps2kbd",
                "ps2mouse",
                "pckbd",
                "vmmouse",
                "port92",
                "ide",
                "i2c_bus",
                "piix4_pm",
                "acpi_build",
            ],
            MachineType::PcQ35_72 => &[
                "kvm-tpr-opt",
                "fw_cfg",
                "mch",
                "PCIHost",
                "PCIBUS",
                "dma",
                "ICH9LPC",
                "hpet",
                "pcspk",
                "ps2kbd",
                "ps2mouse",
                "pckbd",
                "vmmouse",
                "port92",
                "ich9_ahci",
                "i2c_bus",
                "ich9_smb",
                "acpi_build",
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skipped_section_has_a_layout_or_a_model() {
        for machine in [
            MachineType::Microvm,
            MachineType::PcI440fx72,
            MachineType::PcQ35_72,
        ] {
            for name in machine.skipped_sections() {
                let typed = *name == "kvm-tpr-opt";
                assert!(typed || crate::sections::skipped::is_known(name), "{name}");
            }
        }
        let known = crate::sections::skipped::skipped_names();
        for name in known {
            assert!(
                [
                    MachineType::Microvm,
                    MachineType::PcI440fx72,
                    MachineType::PcQ35_72
                ]
                .iter()
                .any(|m| m.skipped_sections().contains(&name)),
                "{name} has a layout but is in no machine's table"
            );
        }
    }

    #[test]
    fn ram_split_rules() {
        let gib = 1u64 << 30;
        assert_eq!(MachineType::Microvm.low_ram(4 * gib), 3 * gib);
        assert_eq!(MachineType::PcI440fx72.low_ram(3 * gib), 3 * gib);
        assert_eq!(MachineType::PcI440fx72.low_ram(4 * gib), 3 * gib);
        assert_eq!(MachineType::PcQ35_72.low_ram(3 * gib), 2 * gib);
        assert_eq!(MachineType::PcQ35_72.low_ram(gib), gib);
    }
}
