//! The ACPI tables' byte layout: RSDP, XSDT/RSDT, FACS, FADT, MADT and the DSDT (whose AML comes
//! from `aml.rs`), placed one after the other in one block for guest memory.

use devices::acpi_pm::{
    PM1_CONTROL_BLOCK_LEN, PM1_CONTROL_BLOCK_PORT, PM1_EVENT_BLOCK_LEN, PM1_EVENT_BLOCK_PORT,
    SCI_IRQ, SLEEP_TYPE_S5,
};
use devices::cmos::REG_CENTURY;
use devices::pci::{PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN};

use super::aml::{
    aml_buffer, aml_device, aml_integer, aml_name, aml_package, aml_scope, dword_address, eisa_id,
    word_address, AML_ROOT_CHAR, RES_END_TAG, RES_IO_DECODE_16, RES_IO_ENTIRE_RANGE, RES_IO_PORT,
    RES_MEMORY_READ_WRITE, RES_TYPE_BUS, RES_TYPE_IO, RES_TYPE_MEMORY,
};
use crate::arch::layout::{IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START};

const OEM_ID: &[u8; 6] = b"SNAPVM";
const OEM_TABLE_ID: &[u8; 8] = b"SNAPVMM ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: &[u8; 4] = b"SNAP";
const CREATOR_REVISION: u32 = 1;

const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const RSDP_V1_LEN: usize = 20;
const FACS_LEN: usize = 64;
/// ACPI 6.x FADT, up to and including the hypervisor vendor identity.
const FADT_LEN: usize = 276;
const FADT_REVISION: u8 = 6;
const FADT_MINOR_REVISION: u8 = 3;
const MADT_REVISION: u8 = 5;
/// Revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

// FADT field offsets (ACPI 6.3, table 5-34).
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_SCI_INT: usize = 46;
const FADT_SMI_CMD: usize = 48;
const FADT_PM1A_EVT_BLK: usize = 56;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM1_EVT_LEN: usize = 88;
const FADT_PM1_CNT_LEN: usize = 89;
const FADT_P_LVL2_LAT: usize = 96;
const FADT_P_LVL3_LAT: usize = 98;
const FADT_CENTURY: usize = 108;
const FADT_IAPC_BOOT_ARCH: usize = 109;
const FADT_FLAGS: usize = 112;
const FADT_MINOR_VERSION: usize = 131;
const FADT_X_DSDT: usize = 140;
const FADT_X_PM1A_EVT_BLK: usize = 148;
const FADT_X_PM1A_CNT_BLK: usize = 172;
const FADT_HYPERVISOR_VENDOR: usize = 268;

/// C2/C3 latencies above 100/1000 us mean "not supported".
const C2_NOT_SUPPORTED: u16 = 0x0fff;
const C3_NOT_SUPPORTED: u16 = 0x0fff;

const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

const FADT_FLAG_WBINVD: u32 = 1 << 0;
const FADT_FLAG_PROC_C1: u32 = 1 << 2;
/// Set: no fixed-feature power button.
const FADT_FLAG_PWR_BUTTON: u32 = 1 << 4;
/// Set: no fixed-feature sleep button.
const FADT_FLAG_SLP_BUTTON: u32 = 1 << 5;
/// Set: the RTC alarm cannot wake the machine through PM1_STS.
const FADT_FLAG_FIX_RTC: u32 = 1 << 6;

const GAS_SYSTEM_IO: u8 = 1;

const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LOCAL_APIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01), level triggered (11 << 2).
const MPS_ACTIVE_HIGH_LEVEL: u16 = 0b11_01;
const ALL_PROCESSORS: u8 = 0xff;
const IOAPIC_ID: u8 = 0;
const NMI_LINT: u8 = 1;

/// The tables as one block for guest memory at `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    pub base: u64,
    pub bytes: Vec<u8>,
    /// Guest-physical address of the RSDP (the first byte of the block).
    pub rsdp_addr: u64,
}

/// Builds every table for a guest with `vcpus` vCPUs, laid out from `base` (16-byte aligned,
/// below 4 GiB so the RSDT can point at the tables).
pub fn build_tables(base: u64, vcpus: u8) -> AcpiTables {
    let mut block = Block::new(base);
    let rsdp = block.place(&[0; RSDP_LEN], 16);
    let facs = block.place(&build_facs(), 64);
    let dsdt = block.place(&build_dsdt(), 16);
    let fadt = block.place(&build_fadt(facs, dsdt), 16);
    let madt = block.place(&build_madt(vcpus), 16);
    let xsdt = block.place(&build_xsdt(&[fadt, madt]), 16);
    let rsdt = block.place(&build_rsdt(&[fadt, madt]), 16);
    let offset = (rsdp - base) as usize;
    block.bytes[offset..offset + RSDP_LEN].copy_from_slice(&build_rsdp(rsdt, xsdt));
    AcpiTables {
        base,
        bytes: block.bytes,
        rsdp_addr: rsdp,
    }
}

/// Tables placed one after the other, each aligned.
struct Block {
    base: u64,
    bytes: Vec<u8>,
}

impl Block {
    fn new(base: u64) -> Self {
        Block {
            base,
            bytes: Vec::new(),
        }
    }

    fn place(&mut self, table: &[u8], align: usize) -> u64 {
        let start = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(start, 0);
        self.bytes.extend_from_slice(table);
        self.base + start as u64
    }
}

/// The value that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)))
}

fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Table addresses are below 4 GiB (the block lives in the BIOS area).
fn addr32(addr: u64) -> u32 {
    u32::try_from(addr).unwrap_or(0)
}

/// A system description table: the standard header followed by `body`, checksummed.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = vec![0; HEADER_LEN];
    table.extend_from_slice(body);
    finish_table(&mut table, signature, revision);
    table
}

/// Fills in the header of a whole table (header space included) and its checksum.
fn finish_table(table: &mut [u8], signature: &[u8; 4], revision: u8) {
    let len = table.len() as u32;
    table[0..4].copy_from_slice(signature);
    put_u32(table, 4, len);
    table[8] = revision;
    table[9] = 0;
    table[10..16].copy_from_slice(OEM_ID);
    table[16..24].copy_from_slice(OEM_TABLE_ID);
    put_u32(table, 24, OEM_REVISION);
    table[28..32].copy_from_slice(CREATOR_ID);
    put_u32(table, 32, CREATOR_REVISION);
    table[9] = checksum(table);
}

fn build_rsdp(rsdt: u64, xsdt: u64) -> [u8; RSDP_LEN] {
    let mut rsdp = [0u8; RSDP_LEN];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(OEM_ID);
    rsdp[15] = 2; // ACPI 2.0+: the XSDT fields are valid
    put_u32(&mut rsdp, 16, addr32(rsdt));
    put_u32(&mut rsdp, 20, RSDP_LEN as u32);
    put_u64(&mut rsdp, 24, xsdt);
    rsdp[8] = checksum(&rsdp[..RSDP_V1_LEN]);
    rsdp[32] = checksum(&rsdp);
    rsdp
}

fn build_facs() -> [u8; FACS_LEN] {
    let mut facs = [0u8; FACS_LEN];
    facs[0..4].copy_from_slice(b"FACS");
    put_u32(&mut facs, 4, FACS_LEN as u32);
    facs[32] = 2; // version
    facs
}

fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    table(b"XSDT", 1, &body)
}

fn build_rsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries
        .iter()
        .flat_map(|&e| addr32(e).to_le_bytes())
        .collect();
    table(b"RSDT", 1, &body)
}

/// A Generic Address Structure for `bytes` I/O ports at `port`.
fn io_register(port: u16, bytes: u8) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = GAS_SYSTEM_IO;
    gas[1] = bytes * 8; // register bit width
                        // bit offset 0, access size 0 (undefined: the OS uses the register width)
    put_u64(&mut gas, 4, u64::from(port));
    gas
}

fn build_fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut fadt = vec![0u8; FADT_LEN];
    put_u32(&mut fadt, FADT_FIRMWARE_CTRL, addr32(facs));
    put_u32(&mut fadt, FADT_DSDT, addr32(dsdt));
    put_u16(&mut fadt, FADT_SCI_INT, u16::from(SCI_IRQ));
    // No SMI command port: the machine is in ACPI mode from power-up.
    put_u32(&mut fadt, FADT_SMI_CMD, 0);
    put_u32(
        &mut fadt,
        FADT_PM1A_EVT_BLK,
        u32::from(PM1_EVENT_BLOCK_PORT),
    );
    put_u32(
        &mut fadt,
        FADT_PM1A_CNT_BLK,
        u32::from(PM1_CONTROL_BLOCK_PORT),
    );
    fadt[FADT_PM1_EVT_LEN] = PM1_EVENT_BLOCK_LEN;
    fadt[FADT_PM1_CNT_LEN] = PM1_CONTROL_BLOCK_LEN;
    put_u16(&mut fadt, FADT_P_LVL2_LAT, C2_NOT_SUPPORTED);
    put_u16(&mut fadt, FADT_P_LVL3_LAT, C3_NOT_SUPPORTED);
    fadt[FADT_CENTURY] = REG_CENTURY;
    put_u16(
        &mut fadt,
        FADT_IAPC_BOOT_ARCH,
        BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_VGA_NOT_PRESENT,
    );
    put_u32(
        &mut fadt,
        FADT_FLAGS,
        FADT_FLAG_WBINVD
            | FADT_FLAG_PROC_C1
            | FADT_FLAG_PWR_BUTTON
            | FADT_FLAG_SLP_BUTTON
            | FADT_FLAG_FIX_RTC,
    );
    fadt[FADT_MINOR_VERSION] = FADT_MINOR_REVISION;
    put_u64(&mut fadt, FADT_X_DSDT, dsdt);
    fadt[FADT_X_PM1A_EVT_BLK..FADT_X_PM1A_EVT_BLK + 12]
        .copy_from_slice(&io_register(PM1_EVENT_BLOCK_PORT, PM1_EVENT_BLOCK_LEN));
    fadt[FADT_X_PM1A_CNT_BLK..FADT_X_PM1A_CNT_BLK + 12]
        .copy_from_slice(&io_register(PM1_CONTROL_BLOCK_PORT, PM1_CONTROL_BLOCK_LEN));
    fadt[FADT_HYPERVISOR_VENDOR..FADT_HYPERVISOR_VENDOR + 8].copy_from_slice(b"SNAPVMM ");
    finish_table(&mut fadt, b"FACP", FADT_REVISION);
    fadt
}

fn build_madt(vcpus: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&addr32(LAPIC_ADDR).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..vcpus {
        // ACPI processor UID and APIC id are the vCPU index.
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        body.extend_from_slice(&MADT_LOCAL_APIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&addr32(IOAPIC_ADDR).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    body.extend_from_slice(&[MADT_INTERRUPT_OVERRIDE, 10, 0, SCI_IRQ]);
    body.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    body.extend_from_slice(&MPS_ACTIVE_HIGH_LEVEL.to_le_bytes());
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 0, NMI_LINT]);
    table(b"APIC", MADT_REVISION, &body)
}

fn build_dsdt() -> Vec<u8> {
    let mut aml = aml_name(
        "_S5_",
        &aml_package(&[
            aml_integer(u64::from(SLEEP_TYPE_S5)),
            aml_integer(u64::from(SLEEP_TYPE_S5)),
            aml_integer(0),
            aml_integer(0),
        ]),
    );
    let pci0 = [
        aml_name("_HID", &aml_integer(u64::from(eisa_id(*b"PNP0A03")))),
        aml_name("_UID", &aml_integer(0)),
        aml_name("_BBN", &aml_integer(0)),
        aml_name("_CRS", &aml_buffer(&pci_root_resources())),
    ]
    .concat();
    let system_bus = aml_device("PCI0", &pci0);
    aml.extend(aml_scope(
        &[AML_ROOT_CHAR, b'_', b'S', b'B', b'_'],
        &system_bus,
    ));
    table(b"DSDT", DSDT_REVISION, &aml)
}

/// What the root bridge decodes: buses 0-255, the configuration ports, every other I/O port and
/// the 32-bit memory window where BARs live.
fn pci_root_resources() -> Vec<u8> {
    let config_last = PCI_CONFIG_PORT_BASE + (PCI_CONFIG_PORT_LEN - 1);
    let mut resources = word_address(RES_TYPE_BUS, 0, 0, 0xff);
    resources.extend_from_slice(&[RES_IO_PORT, RES_IO_DECODE_16]);
    resources.extend_from_slice(&PCI_CONFIG_PORT_BASE.to_le_bytes());
    resources.extend_from_slice(&PCI_CONFIG_PORT_BASE.to_le_bytes());
    resources.extend_from_slice(&[1, PCI_CONFIG_PORT_LEN as u8]);
    resources.extend(word_address(
        RES_TYPE_IO,
        RES_IO_ENTIRE_RANGE,
        0,
        PCI_CONFIG_PORT_BASE - 1,
    ));
    resources.extend(word_address(
        RES_TYPE_IO,
        RES_IO_ENTIRE_RANGE,
        config_last + 1,
        0xffff,
    ));
    resources.extend(dword_address(
        RES_TYPE_MEMORY,
        RES_MEMORY_READ_WRITE,
        addr32(PCI_MMIO_START),
        addr32(PCI_MMIO_END - 1),
    ));
    // End tag; a zero checksum means "not checked".
    resources.extend_from_slice(&[RES_END_TAG, 0]);
    resources
}

#[cfg(test)]
mod tests {
    use super::super::aml::decoder::{decode_list, Aml};
    use super::super::aml::{RES_DWORD_ADDRESS, RES_WORD_ADDRESS};
    use super::*;
    use crate::arch::layout::{ACPI_TABLES_END, ACPI_TABLES_START};

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
    }

    /// Reads the tables back the way an OS does: scan for the RSDP, follow its pointers, check
    /// every checksum and length.
    struct Parsed<'a> {
        tables: &'a AcpiTables,
    }

    impl<'a> Parsed<'a> {
        fn at(&self, addr: u64) -> &'a [u8] {
            let offset = usize::try_from(addr - self.tables.base).unwrap();
            &self.tables.bytes[offset..]
        }

        /// The table at `addr`, checked, cut to its length.
        fn table(&self, addr: u64, signature: &[u8; 4]) -> &'a [u8] {
            let rest = self.at(addr);
            assert_eq!(&rest[..4], signature);
            let len = u32_at(rest, 4) as usize;
            assert!(
                len >= HEADER_LEN && len <= rest.len(),
                "{signature:?} len {len}"
            );
            let table = &rest[..len];
            assert_eq!(sum(table), 0, "{signature:?} checksum");
            assert_eq!(&table[10..16], OEM_ID);
            table
        }

        fn rsdp(&self) -> &'a [u8] {
            let offset = (0..self.tables.bytes.len())
                .step_by(16)
                .find(|&o| self.tables.bytes[o..].starts_with(b"RSD PTR "))
                .expect("no RSDP on a 16-byte boundary");
            assert_eq!(self.tables.base + offset as u64, self.tables.rsdp_addr);
            let rsdp = &self.tables.bytes[offset..offset + RSDP_LEN];
            assert_eq!(sum(&rsdp[..RSDP_V1_LEN]), 0, "ACPI 1.0 checksum");
            assert_eq!(sum(rsdp), 0, "extended checksum");
            assert_eq!(rsdp[15], 2);
            assert_eq!(u32_at(rsdp, 20), RSDP_LEN as u32);
            rsdp
        }

        /// The tables the XSDT lists, by signature; the RSDT must list the same.
        fn listed(&self) -> Vec<(&'a [u8; 4], u64)> {
            let rsdp = self.rsdp();
            let xsdt = self.table(u64_at(rsdp, 24), b"XSDT");
            let rsdt = self.table(u64::from(u32_at(rsdp, 16)), b"RSDT");
            let from_xsdt: Vec<u64> = xsdt[HEADER_LEN..].chunks(8).map(|c| u64_at(c, 0)).collect();
            let from_rsdt: Vec<u64> = rsdt[HEADER_LEN..]
                .chunks(4)
                .map(|c| u64::from(u32_at(c, 0)))
                .collect();
            assert_eq!(from_xsdt, from_rsdt);
            from_xsdt
                .into_iter()
                .map(|addr| (self.at(addr)[..4].try_into().unwrap(), addr))
                .collect()
        }

        fn find(&self, signature: &[u8; 4]) -> &'a [u8] {
            let (_, addr) = self
                .listed()
                .into_iter()
                .find(|(s, _)| *s == signature)
                .unwrap_or_else(|| panic!("{signature:?} not listed"));
            self.table(addr, signature)
        }
    }

    fn tables() -> AcpiTables {
        build_tables(ACPI_TABLES_START, 1)
    }

    #[test]
    fn rsdp_is_first_and_everything_fits_in_the_bios_area() {
        let tables = tables();
        assert_eq!(tables.rsdp_addr, ACPI_TABLES_START);
        assert_eq!(tables.rsdp_addr % 16, 0);
        assert!(ACPI_TABLES_START + tables.bytes.len() as u64 <= ACPI_TABLES_END);
        let parsed = Parsed { tables: &tables };
        let signatures: Vec<_> = parsed.listed().into_iter().map(|(s, _)| *s).collect();
        assert_eq!(signatures, vec![*b"FACP", *b"APIC"]);
    }

    #[test]
    fn fadt_describes_the_pm_registers_and_points_at_dsdt_and_facs() {
        let tables = tables();
        let parsed = Parsed { tables: &tables };
        let fadt = parsed.find(b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        assert_eq!(fadt[8], 6);
        assert_eq!(fadt[FADT_MINOR_VERSION], 3);
        assert_eq!(u16_at(fadt, FADT_SCI_INT), 9);
        assert_eq!(u32_at(fadt, FADT_SMI_CMD), 0, "ACPI mode is always on");
        assert_eq!(u32_at(fadt, FADT_PM1A_EVT_BLK), 0x600);
        assert_eq!(u32_at(fadt, FADT_PM1A_CNT_BLK), 0x604);
        assert_eq!((fadt[FADT_PM1_EVT_LEN], fadt[FADT_PM1_CNT_LEN]), (4, 2));
        assert_eq!(u32_at(fadt, 76), 0, "no PM timer");
        assert_eq!(u32_at(fadt, 80), 0, "no GPE0 block");
        // The 64-bit register blocks agree with the 32-bit ones.
        let x_evt = &fadt[FADT_X_PM1A_EVT_BLK..FADT_X_PM1A_EVT_BLK + 12];
        assert_eq!((x_evt[0], x_evt[1], u64_at(x_evt, 4)), (1, 32, 0x600));
        let x_cnt = &fadt[FADT_X_PM1A_CNT_BLK..FADT_X_PM1A_CNT_BLK + 12];
        assert_eq!((x_cnt[0], x_cnt[1], u64_at(x_cnt, 4)), (1, 16, 0x604));
        let flags = u32_at(fadt, FADT_FLAGS);
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_ne!(flags & FADT_FLAG_PWR_BUTTON, 0);
        let boot_arch = u16_at(fadt, FADT_IAPC_BOOT_ARCH);
        assert_ne!(
            boot_arch & BOOT_ARCH_8042,
            0,
            "Linux keeps probing the i8042"
        );
        assert_eq!(boot_arch & (1 << 5), 0, "the CMOS RTC is present");
        assert_eq!(fadt[FADT_CENTURY], 0x32);

        let dsdt = u64::from(u32_at(fadt, FADT_DSDT));
        assert_eq!(u64_at(fadt, FADT_X_DSDT), dsdt);
        parsed.table(dsdt, b"DSDT");
        let facs_addr = u64::from(u32_at(fadt, FADT_FIRMWARE_CTRL));
        assert_eq!(facs_addr % 64, 0);
        let facs = &parsed.at(facs_addr)[..FACS_LEN];
        assert_eq!(&facs[..4], b"FACS");
        assert_eq!(u32_at(facs, 4), 64);
    }

    /// (type, entry bytes) of every MADT entry, checking that lengths tile the table exactly.
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut entries = Vec::new();
        let mut at = HEADER_LEN + 8;
        while at < madt.len() {
            let len = madt[at + 1] as usize;
            assert!(len >= 2 && at + len <= madt.len());
            entries.push((madt[at], &madt[at..at + len]));
            at += len;
        }
        assert_eq!(at, madt.len());
        entries
    }

    #[test]
    fn madt_lists_each_cpu_the_ioapic_and_the_sci_override() {
        for vcpus in [1u8, 4] {
            let tables = build_tables(ACPI_TABLES_START, vcpus);
            let parsed = Parsed { tables: &tables };
            let madt = parsed.find(b"APIC");
            assert_eq!(u32_at(madt, HEADER_LEN), 0xfee0_0000);
            assert_eq!(u32_at(madt, HEADER_LEN + 4), 1, "PC-AT 8259s present");
            let entries = madt_entries(madt);
            let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
            assert_eq!(lapics.len(), vcpus as usize);
            for (i, (_, entry)) in lapics.iter().enumerate() {
                assert_eq!(
                    (entry[2], entry[3], u32_at(entry, 4)),
                    (i as u8, i as u8, 1)
                );
            }
            let (_, ioapic) = entries.iter().find(|(t, _)| *t == 1).unwrap();
            assert_eq!(
                (ioapic[2], u32_at(ioapic, 4), u32_at(ioapic, 8)),
                (0, 0xfec0_0000, 0)
            );
            let overrides: Vec<_> = entries.iter().filter(|(t, _)| *t == 2).collect();
            assert_eq!(overrides.len(), 1, "only the SCI; IRQ 0 stays on GSI 0");
            let sci = overrides[0].1;
            assert_eq!((sci[2], sci[3], u32_at(sci, 4)), (0, 9, 9));
            assert_eq!(u16_at(sci, 8), 0b1101, "level triggered, active high");
            let (_, nmi) = entries.iter().find(|(t, _)| *t == 4).unwrap();
            assert_eq!((nmi[2], nmi[5]), (0xff, 1), "LINT1 of every CPU is the NMI");
        }
    }

    fn dsdt_objects() -> Vec<Aml> {
        let tables = tables();
        let parsed = Parsed { tables: &tables };
        let fadt = parsed.find(b"FACP");
        let dsdt = parsed.table(u64::from(u32_at(fadt, FADT_DSDT)), b"DSDT");
        assert_eq!(dsdt[8], 2);
        decode_list(dsdt, HEADER_LEN)
    }

    #[test]
    fn dsdt_offers_s5_with_the_sleep_type_the_pm_device_expects() {
        let objects = dsdt_objects();
        let s5 = objects
            .iter()
            .find_map(|o| match o {
                Aml::Name(name, value) if name == "_S5_" => Some(value),
                _ => None,
            })
            .expect("no \\_S5_");
        assert_eq!(
            **s5,
            Aml::Package(vec![
                Aml::Integer(SLEEP_TYPE_S5.into()),
                Aml::Integer(SLEEP_TYPE_S5.into()),
                Aml::Integer(0),
                Aml::Integer(0)
            ])
        );
        // The exact bytes: Name(_S5, Package(4) {5, 5, 0, 0}).
        let dsdt = build_dsdt();
        let expected = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
        ];
        assert_eq!(&dsdt[HEADER_LEN..HEADER_LEN + expected.len()], &expected);
    }

    #[test]
    fn dsdt_has_a_pci_root_bridge_for_bus_0() {
        let objects = dsdt_objects();
        let Some(Aml::Scope(scope, devices)) = objects.get(1) else {
            panic!("no \\_SB_ scope: {objects:?}");
        };
        assert_eq!(scope, "\\_SB_");
        let [Aml::Device(name, body)] = devices.as_slice() else {
            panic!("{devices:?}");
        };
        assert_eq!(name, "PCI0");
        let value = |wanted: &str| {
            body.iter()
                .find_map(|o| match o {
                    Aml::Name(name, value) if name == wanted => Some(&**value),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {wanted}"))
        };
        assert_eq!(value("_HID"), &Aml::Integer(0x030a_d041), "EisaId(PNP0A03)");
        assert_eq!(value("_BBN"), &Aml::Integer(0));
        let Aml::Buffer(crs) = value("_CRS") else {
            panic!("_CRS is not a buffer");
        };
        // Walk the resource descriptors: the windows and the end tag, nothing left over.
        let mut windows = Vec::new();
        let mut at = 0;
        loop {
            let tag = crs[at];
            if tag & 0x80 == 0 {
                let len = (tag & 7) as usize;
                if tag >> 3 == 0x0f {
                    assert_eq!(at + 2, crs.len(), "end tag is last");
                    break;
                }
                assert_eq!(tag, RES_IO_PORT);
                windows.push((
                    "io",
                    u64::from(u16_at(crs, at + 2)),
                    u64::from(u16_at(crs, at + 4)),
                ));
                at += 1 + len;
            } else {
                let len = u16_at(crs, at + 1) as usize;
                let kind = crs[at + 3];
                let (min, max, length) = match tag {
                    RES_WORD_ADDRESS => (
                        u64::from(u16_at(crs, at + 8)),
                        u64::from(u16_at(crs, at + 10)),
                        u64::from(u16_at(crs, at + 14)),
                    ),
                    RES_DWORD_ADDRESS => (
                        u64::from(u32_at(crs, at + 10)),
                        u64::from(u32_at(crs, at + 14)),
                        u64::from(u32_at(crs, at + 22)),
                    ),
                    other => panic!("unexpected descriptor {other:#x}"),
                };
                // Word lengths of 0x10000 wrap; a full 16-bit window is not used here.
                assert_eq!(max - min + 1, length, "window length");
                windows.push((["mem", "io", "bus"][kind as usize], min, max));
                at += 3 + len;
            }
        }
        assert_eq!(
            windows,
            vec![
                ("bus", 0, 0xff),
                ("io", 0xcf8, 0xcf8),
                ("io", 0, 0xcf7),
                ("io", 0xd00, 0xffff),
                ("mem", 0xc000_0000, 0xfebf_ffff),
            ]
        );
    }

    #[test]
    fn checksums_fix_any_table() {
        let mut bytes = vec![1u8, 2, 3, 250, 0];
        bytes[4] = checksum(&bytes);
        assert_eq!(sum(&bytes), 0);
    }
}
