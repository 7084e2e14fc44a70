/*
 * snapshot_device.h - the guest ABI of snapvmm's snapshot device (PCI 1234:f987), version 1.
 *
 * The contract is shared/design/device-abi.md; devices/src/snapshot_device/mod.rs implements it
 * (extensions marked below). Usable by the bare-metal runtime (freestanding) and by Linux
 * programs: it needs only the compiler's own <stdint.h>, no libc.
 *
 * Access rules: BAR0 registers are 32 bits wide, little-endian, and must be accessed with single
 * aligned 32-bit loads and stores: the device acts on a COMMAND write only when all four bytes
 * arrive in one access. The accessors below are one `movl` each.
 *
 * SAVE "returns twice", like setjmp or fork: once right after the write, and again after every
 * RESTORE, with every register and every byte of RAM as they were at the SAVE. The device's
 * RESTORES counter is host state (not rolled back), so reading it right after the SAVE tells the
 * first return (0) from the later ones (1, 2, ...).
 */
#ifndef SNAPVMM_SNAPSHOT_DEVICE_H
#define SNAPVMM_SNAPSHOT_DEVICE_H

#include <stdint.h>

/* ---- PCI identity */
#define SNAPSHOT_DEVICE_VENDOR_ID 0x1234u
#define SNAPSHOT_DEVICE_DEVICE_ID 0xf987u
#define SNAPSHOT_DEVICE_CLASS 0xffu
#define SNAPSHOT_DEVICE_REVISION 1u
#define SNAPSHOT_DEVICE_DEFAULT_SLOT 4u /* 0000:00:04.0 unless the VMM was told otherwise */

/* ---- BARs */
#define SNAPSHOT_BAR_REGISTERS 0u /* 32-bit, non-prefetchable, 1 MiB: the registers below */
#define SNAPSHOT_BAR_INPUT 2u     /* 64-bit prefetchable: the input (INPUT_LEN bytes); not snapshotted */
#define SNAPSHOT_BAR_COVERAGE 4u  /* 64-bit prefetchable: AFL-style edge map; not snapshotted */
#define SNAPSHOT_REGISTERS_SIZE 0x100000u

/* ---- BAR0 register offsets */
#define SNAPSHOT_REG_MAGIC 0x00u         /* R: SNAPSHOT_MAGIC */
#define SNAPSHOT_REG_COMMAND 0x00u       /* W: SNAPSHOT_CMD_* */
#define SNAPSHOT_REG_STATUS 0x04u        /* R: SNAPSHOT_STATUS_* */
#define SNAPSHOT_REG_RESTORES_LO 0x08u   /* R: restores since the current snapshot, low half */
#define SNAPSHOT_REG_RESTORES_HI 0x0cu   /* R: high half */
#define SNAPSHOT_REG_INPUT_LEN 0x10u     /* R: bytes of input in BAR2 */
#define SNAPSHOT_REG_ARG 0x14u           /* W (R in snapvmm): argument of the next command */
#define SNAPSHOT_REG_ABI_VERSION 0x18u   /* R: SNAPSHOT_ABI_VERSION */
#define SNAPSHOT_REG_INPUT_SIZE 0x1cu    /* R, snapvmm extension: size of BAR2 in bytes */
#define SNAPSHOT_REG_COVERAGE_SIZE 0x20u /* R, snapvmm extension: size of BAR4 in bytes */
#define SNAPSHOT_REG_FAULT_PC_LO 0x24u   /* R/W, snapvmm extension: address the next CRASH or
                                          * EXCEPTION is attributed to, low half (consumed by it) */
#define SNAPSHOT_REG_FAULT_PC_HI 0x28u   /* R/W, snapvmm extension: high half */

/* snapvmm extension: BAR0 + 0x1000 is a page of memory mirroring, at the same offsets, the
 * registers only the host changes (MAGIC, INPUT_LEN, ABI_VERSION, INPUT_SIZE, COVERAGE_SIZE; other
 * words read 0). snapvmm maps it read-only, so reading INPUT_LEN there costs no VM exit. Present
 * when MAGIC reads SNAPSHOT_MAGIC at this offset too (a device without it reads 0). */
#define SNAPSHOT_REGISTER_MIRROR 0x1000u

/* What MAGIC reads: "SNAP" as a big-endian word (the bytes in memory are "PANS"). */
#define SNAPSHOT_MAGIC 0x534e4150u
#define SNAPSHOT_ABI_VERSION 1u

/* ---- commands (written to COMMAND) */
/* Take the snapshot here; the guest continues right after the write. Replaces an older snapshot
 * and resets RESTORES to 0. */
#define SNAPSHOT_CMD_SAVE 0x101u
/* Roll the whole VM back to the snapshot: execution continues right after the SAVE write. With
 * no snapshot nothing happens and STATUS_COMMAND_FAILED is set. */
#define SNAPSHOT_CMD_RESTORE 0x102u
/* The guest found a bug (ARG = code): a harness records the input as a crash, then restores;
 * plain `snapvmm run` stops the VM. */
#define SNAPSHOT_CMD_CRASH 0x103u
/* snapvmm extension: the run ended normally (ARG = result): a harness takes the coverage, puts
 * the next input in BAR2 and restores; plain `snapvmm run` restores. */
#define SNAPSHOT_CMD_DONE 0x104u
/* snapvmm extension: the guest's runtime caught a CPU exception of the target (ARG = vector
 * 0..31, FAULT_PC = faulting instruction): a harness records a crash of kind `exception` and
 * restores; plain `snapvmm run` stops the VM. (0x105 is deliberately undefined.) */
#define SNAPSHOT_CMD_EXCEPTION 0x106u

/* ---- STATUS bits */
#define SNAPSHOT_STATUS_SNAPSHOT_EXISTS 0x1u
#define SNAPSHOT_STATUS_CAPTURE_RUNNING 0x2u /* the RAM capture still runs in the background */
#define SNAPSHOT_STATUS_COMMAND_FAILED 0x4u  /* the last command failed (cleared by the next one) */

/* ---- register access: one aligned 32-bit load or store each. `regs` is where BAR0 is mapped. */
static inline uint32_t snapshot_reg_read(volatile void *regs, uint32_t offset)
{
    uint32_t value;
    __asm__ volatile("movl %1, %0"
                     : "=r"(value)
                     : "m"(*(volatile uint32_t *)((volatile uint8_t *)regs + offset)));
    return value;
}

/* A plain register write (ARG). */
static inline void snapshot_reg_write(volatile void *regs, uint32_t offset, uint32_t value)
{
    __asm__ volatile("movl %1, %0"
                     : "=m"(*(volatile uint32_t *)((volatile uint8_t *)regs + offset))
                     : "r"(value));
}

/* A command write. The memory clobber makes the compiler finish every store before it and
 * re-read memory after it: after a RESTORE (or a second return from SAVE) RAM may hold anything
 * the compiler had cached in registers at the SAVE, which is what it expects, but stores it
 * delayed past the write would be lost to the snapshot. */
static inline void snapshot_command(volatile void *regs, uint32_t command)
{
    __asm__ volatile("movl %1, %0"
                     : "=m"(*(volatile uint32_t *)((volatile uint8_t *)regs + SNAPSHOT_REG_COMMAND))
                     : "r"(command)
                     : "memory");
}

/* RESTORES as 64 bits. The counter only changes on a RESTORE, never while the guest runs, so the
 * two halves cannot tear. */
static inline uint64_t snapshot_restores(volatile void *regs)
{
    uint64_t low = snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_LO);
    uint64_t high = snapshot_reg_read(regs, SNAPSHOT_REG_RESTORES_HI);
    return high << 32 | low;
}

#endif
