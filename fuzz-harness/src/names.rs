//! AFL++'s file names for queue entries, crashes and hangs, so its tools and triage scripts read
//! ours: `id:000012,src:000003,time:1234,execs:5678,op:havoc,rep:4,+cov`.
//!
//! Crash names carry `sig:NN` (see [`CrashKind::signal`] for the mapping) and, after AFL++'s own
//! fields, ours: `kind:NAME,code:N,pc:0xHEX` (kind is `crash`, `exception`, `triplefault` or
//! `emulation`; code is the CRASH code or the exception vector). A resumed campaign rebuilds its
//! crash deduplication from these.

use crate::target::{CrashInfo, CrashKind};

/// Where a new input came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A seed file, by its (sanitised) file name.
    Seed { name: String },
    /// An input another fuzzer found and shared (LLMP): AFL++'s `sync:NAME`, here the sender's
    /// LLMP client id (`client3`).
    Sync { from: String },
    /// A mutation of queue entry `src` by mutator `op` stacked `rep` times.
    Mutation {
        src: u32,
        op: &'static str,
        rep: u32,
    },
}

/// Longest seed name kept in `orig:`.
const MAX_ORIG_LEN: usize = 64;

/// A seed file name made safe for AFL++'s comma-separated names.
pub fn sanitise_seed_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_ORIG_LEN)
        .collect();
    if cleaned.is_empty() {
        "seed".to_string()
    } else {
        cleaned
    }
}

/// AFL++'s `describe_op`: the part after `id:` (and `sig:` for crashes).
fn describe(origin: &Origin, time_ms: u64, execs: u64) -> String {
    match origin {
        Origin::Seed { name } => format!("time:{time_ms},execs:{execs},orig:{name}"),
        Origin::Sync { from } => format!("sync:{from},time:{time_ms},execs:{execs}"),
        Origin::Mutation { src, op, rep } => {
            format!("src:{src:06},time:{time_ms},execs:{execs},op:{op},rep:{rep}")
        }
    }
}

/// Name of queue entry `id`; `new_coverage` adds AFL++'s `+cov` (the entry found new edges).
pub fn queue_name(
    id: u32,
    origin: &Origin,
    time_ms: u64,
    execs: u64,
    new_coverage: bool,
) -> String {
    let mut name = format!("id:{id:06},{}", describe(origin, time_ms, execs));
    if new_coverage && matches!(origin, Origin::Mutation { .. }) {
        name.push_str(",+cov");
    }
    name
}

/// Name of crash `id`.
pub fn crash_name(id: u32, crash: &CrashInfo, origin: &Origin, time_ms: u64, execs: u64) -> String {
    format!(
        "id:{id:06},sig:{:02},{},kind:{},code:{},pc:{:#x}",
        crash.kind.signal(),
        describe(origin, time_ms, execs),
        crash.kind.name(),
        crash.kind.code(),
        crash.pc
    )
}

/// Name of hang `id`.
pub fn hang_name(id: u32, origin: &Origin, time_ms: u64, execs: u64) -> String {
    format!("id:{id:06},{}", describe(origin, time_ms, execs))
}

/// The value of field `key` in an AFL++ name (`key:value`, comma-separated).
fn field<'n>(name: &'n str, key: &str) -> Option<&'n str> {
    name.split(',').find_map(|part| {
        part.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// The `id:` of an AFL++ file name.
pub fn parse_id(name: &str) -> Option<u32> {
    let first = name.split(',').next()?;
    first.strip_prefix("id:")?.parse().ok()
}

/// The crash a crash file name describes (our `kind`, `code`, `pc` fields).
pub fn parse_crash(name: &str) -> Option<CrashInfo> {
    let kind_name = field(name, "kind")?;
    let code: u32 = field(name, "code")?.parse().ok()?;
    let pc_text = field(name, "pc")?;
    let pc = u64::from_str_radix(pc_text.trim_start_matches("0x"), 16).ok()?;
    let kind = CrashKind::from_name_and_code(kind_name, code)?;
    Some(CrashInfo { kind, pc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_afl() {
        let seed = Origin::Seed {
            name: sanitise_seed_name("my seed,1"),
        };
        assert_eq!(
            queue_name(0, &seed, 0, 0, true),
            "id:000000,time:0,execs:0,orig:my_seed_1"
        );
        let mutation = Origin::Mutation {
            src: 3,
            op: "havoc",
            rep: 4,
        };
        assert_eq!(
            queue_name(12, &mutation, 1234, 5678, true),
            "id:000012,src:000003,time:1234,execs:5678,op:havoc,rep:4,+cov"
        );
        assert_eq!(parse_id("id:000012,src:000003"), Some(12));
        assert_eq!(parse_id("README.txt"), None);
    }

    #[test]
    fn crash_names_round_trip() {
        let crash = CrashInfo {
            kind: CrashKind::Exception { vector: 14 },
            pc: 0x40_1234,
        };
        let origin = Origin::Mutation {
            src: 1,
            op: "havoc",
            rep: 2,
        };
        let name = crash_name(7, &crash, &origin, 10, 20);
        assert_eq!(
            name,
            "id:000007,sig:11,src:000001,time:10,execs:20,op:havoc,rep:2,kind:exception,code:14,pc:0x401234"
        );
        assert_eq!(parse_crash(&name), Some(crash));
        assert_eq!(parse_id(&name), Some(7));
        assert_eq!(parse_crash("id:000001,sig:06,src:000001"), None);
        assert_eq!(
            hang_name(2, &origin, 5, 6),
            "id:000002,src:000001,time:5,execs:6,op:havoc,rep:2"
        );
    }
}
