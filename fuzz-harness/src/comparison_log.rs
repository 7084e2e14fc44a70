//! The comparison log a target writes (the snapshot device's BAR1, filled by the target's
//! trace-cmp callbacks): turning it on and reading it into LibAFL's `CmpValues`. Written by hand
//! because LibAFL's cmplog observers read the maps of its own in-process instrumentation, not a
//! log in guest memory. The stage that uses it is `cmplog`.

use std::collections::HashSet;

use libafl::observers::cmp::CmpValues;

/// The log's layout (`devices::snapshot_device::CMPLOG_*`, `snapshot_device.h`).
pub const ENABLE: usize = 0x0;
pub const COUNT: usize = 0x4;
pub const ENTRIES: usize = 0x10;
pub const ENTRY_SIZE: usize = 24;
/// Entry flag: an operand is a compile-time constant.
const CONSTANT: u8 = 0x1;
/// At most this many distinct comparisons kept per queue entry.
const MAX_VALUES: usize = 1024;

fn word32(log: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(log.get(at..at + 4)?.try_into().ok()?))
}

fn word64(log: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(log.get(at..at + 8)?.try_into().ok()?))
}

/// Turns logging on (`true`) or off and empties the log.
pub fn arm(log: &mut [u8], on: bool) {
    if let Some(enable) = log.get_mut(ENABLE..ENABLE + 4) {
        enable.copy_from_slice(&u32::from(on).to_le_bytes());
    }
    if let Some(count) = log.get_mut(COUNT..COUNT + 4) {
        count.fill(0);
    }
}

/// The distinct comparisons of a log whose operands differ (equal ones are already satisfied).
/// Whatever the guest wrote, malformed entries are skipped, never trusted.
pub fn parse(log: &[u8]) -> Vec<CmpValues> {
    let capacity = log.len().saturating_sub(ENTRIES) / ENTRY_SIZE;
    let count = word32(log, COUNT)
        .map_or(0, |count| count as usize)
        .min(capacity);
    let mut seen = HashSet::new();
    let mut values = Vec::new();
    for index in 0..count {
        let at = ENTRIES + index * ENTRY_SIZE;
        let (Some(&size), Some(&flags), Some(first), Some(second)) = (
            log.get(at),
            log.get(at + 1),
            word64(log, at + 8),
            word64(log, at + 16),
        ) else {
            break;
        };
        if first == second || !seen.insert((size, first, second)) {
            continue;
        }
        let constant = flags & CONSTANT != 0;
        let value = match size {
            1 => CmpValues::U8((first as u8, second as u8, constant)),
            2 => CmpValues::U16((first as u16, second as u16, constant)),
            4 => CmpValues::U32((first as u32, second as u32, constant)),
            8 => CmpValues::U64((first, second, constant)),
            _ => continue,
        };
        values.push(value);
        if values.len() == MAX_VALUES {
            break;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log: &mut [u8], index: usize, size: u8, flags: u8, first: u64, second: u64) {
        let at = ENTRIES + index * ENTRY_SIZE;
        log[at] = size;
        log[at + 1] = flags;
        log[at + 8..at + 16].copy_from_slice(&first.to_le_bytes());
        log[at + 16..at + 24].copy_from_slice(&second.to_le_bytes());
    }

    #[test]
    fn a_log_becomes_distinct_unequal_comparisons_and_garbage_is_skipped() {
        let mut log = vec![0u8; 4096];
        arm(&mut log, true);
        assert_eq!(word32(&log, ENABLE), Some(1));
        entry(&mut log, 0, 8, CONSTANT, 0x4d41_4749_4331_3233, 0x1122);
        entry(&mut log, 1, 1, 0, 0x41, 0x41);
        entry(&mut log, 2, 8, CONSTANT, 0x4d41_4749_4331_3233, 0x1122);
        entry(&mut log, 3, 3, 0, 1, 2);
        entry(&mut log, 4, 2, 0, 0x1_0005, 7);
        log[COUNT..COUNT + 4].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(
            parse(&log),
            vec![
                CmpValues::U64((0x4d41_4749_4331_3233, 0x1122, true)),
                CmpValues::U16((5, 7, false)),
            ]
        );
        // A count past the capacity (the guest logs more than fits) reads what fits.
        log[COUNT..COUNT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&log).len(), 2);
        arm(&mut log, false);
        assert_eq!(word32(&log, ENABLE), Some(0));
        assert!(parse(&log).is_empty());
        assert!(parse(&[0u8; 3]).is_empty());
    }
}
