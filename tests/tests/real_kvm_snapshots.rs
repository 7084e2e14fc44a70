//! The real-KVM lane (docs/real-kvm-lane.md), `snapshots` boot: snapshot exactness on real KVM
//! (the suite of tests/tests/snapshot.rs) under snapvmm inside an outer Linux (L1, QEMU TCG):
//! thousands of restores verified byte for byte (RAM, vCPU, devices) by snapvmm and checked by the
//! guest itself, for both restore strategies, on kvm_amd with NPT (TDP MMU: no shadow-MMU resets
//! needed), and at the end on kvm_amd reloaded with npt=0 (KVM's own shadow MMU: resets needed).
//!
//! Needs the images of `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without
//! them every test here fails with a message that says so. Each `real_kvm_*.rs` file is one L1
//! boot shared by its tests (`lane_support::shared`); cargo runs the files one after another.

use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{Job, JobOutcome, Lane, LaneRun};
use snapvmm_tests::lane_support::{bare_metal_command, bare_metal_path, check, shared, SECOND};

/// Printed by every snapshot job before snapvmm runs: the MMU snapvmm is about to detect.
const NPT_PARAMETER: &str = "/sys/module/kvm_amd/parameters/npt";
/// kvm_amd's module file inside L1 (l1-init.sh loads it from there).
const KVM_AMD_MODULE: &str = "/lib/modules/kvm_amd.ko";

/// One `snapshot-stress` run.
struct StressRun {
    job: &'static str,
    strategy: &'static str,
    page_tables: bool,
    rounds: u32,
    seed: u32,
    /// `--verify-restores`: snapvmm compares all guest RAM (and vCPU, devices) after each one.
    verify: bool,
    budget_seconds: u64,
}

impl StressRun {
    fn command(&self) -> String {
        let budget = self.budget_seconds;
        format!(
            "echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\"; snapvmm run --kernel {} --mem 32M \
             --restore {} {} --timeout {} --cmdline 'rounds={} pages=16 seed={} pt={} fpu=1'",
            bare_metal_path("snapshot-stress"),
            self.strategy,
            if self.verify { "--verify-restores" } else { "" },
            budget.saturating_sub(10).max(1),
            self.rounds,
            self.seed,
            u8::from(self.page_tables),
        )
    }

    fn job(&self) -> Job {
        Job::new(
            self.job,
            Duration::from_secs(self.budget_seconds),
            &self.command(),
        )
    }
}

/// Measured in the lane (2 shared cores, QEMU 7.2 TCG, see docs/real-kvm-lane.md): a verified
/// restore of this 32 MiB guest costs 31 ms (dirty) / 39 ms (remap), 39-42 ms with page-table
/// changes; without verification 1.8 ms / 7.5 ms. Budgets are ~4x the measured time.
const TDP_STRESS: &[StressRun] = &[
    StressRun {
        job: "stress-dirty",
        strategy: "dirty",
        page_tables: false,
        rounds: 1000,
        seed: 11,
        verify: true,
        budget_seconds: 150,
    },
    StressRun {
        job: "stress-remap",
        strategy: "remap",
        page_tables: false,
        rounds: 1000,
        seed: 12,
        verify: true,
        budget_seconds: 180,
    },
    StressRun {
        job: "stress-dirty-page-tables",
        strategy: "dirty",
        page_tables: true,
        rounds: 500,
        seed: 13,
        verify: true,
        budget_seconds: 100,
    },
    StressRun {
        job: "stress-remap-page-tables",
        strategy: "remap",
        page_tables: true,
        rounds: 500,
        seed: 14,
        verify: true,
        budget_seconds: 100,
    },
    StressRun {
        job: "stress-dirty-fast",
        strategy: "dirty",
        page_tables: false,
        rounds: 5000,
        seed: 15,
        verify: false,
        budget_seconds: 60,
    },
    StressRun {
        job: "stress-remap-fast",
        strategy: "remap",
        page_tables: false,
        rounds: 2000,
        seed: 16,
        verify: false,
        budget_seconds: 60,
    },
];

/// With `npt=0` kvm_amd shadows the guest's page tables; page-table pages put back by memcpy
/// need snapvmm's shadow-MMU reset, exactly as on kvm_pvm.
const SHADOW_STRESS: &[StressRun] = &[
    StressRun {
        job: "shadow-stress-dirty-page-tables",
        strategy: "dirty",
        page_tables: true,
        rounds: 200,
        seed: 21,
        verify: true,
        budget_seconds: 60,
    },
    StressRun {
        job: "shadow-stress-remap-page-tables",
        strategy: "remap",
        page_tables: true,
        rounds: 200,
        seed: 22,
        verify: true,
        budget_seconds: 60,
    },
];

const SNAPSHOT_BUDGET: Duration = Duration::from_secs(60);

fn snapshot_job(name: &str, guest: &str, args: &str) -> Job {
    Job::new(
        name,
        SNAPSHOT_BUDGET,
        &format!(
            "echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\"; {}",
            bare_metal_command(guest, args)
        ),
    )
}

/// Reloads kvm_amd with `npt=` `value` (no VM may be open).
fn reload_kvm_amd_job(name: &str, value: u8) -> Job {
    Job::new(
        name,
        30 * SECOND,
        &format!(
            "rmmod kvm_amd && insmod {KVM_AMD_MODULE} npt={value} && \
             echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\""
        ),
    )
}

fn snapshots_lane() -> Lane {
    let mut lane = Lane::new("snapshots")
        .with_snapvmm()
        .bare_metal_guests()
        // Default 256 MiB: the background capture of RAM is still running at the RESTORE.
        .job(snapshot_job(
            "basic-dirty",
            "snapshot-basic",
            "--restore dirty --verify-restores",
        ))
        .job(snapshot_job(
            "basic-remap",
            "snapshot-basic",
            "--restore remap --verify-restores",
        ))
        .job(snapshot_job("commands", "snapshot-commands", ""))
        // Every restore in full and verified (a compare of all 32 MiB) under TCG: ~2 ms each,
        // 300 of them took 20-60 s here depending on the host's load, hence its own timeout.
        .job(Job::new(
            "full-vcpu-restores",
            3 * SNAPSHOT_BUDGET,
            &format!(
                "echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\"; snapvmm run --kernel {} --timeout 150 \
                 --mem 32M --vcpu-restore full --verify-restores \
                 --cmdline 'rounds=300 pages=8 seed=9 pt=1 fpu=1'",
                bare_metal_path("snapshot-stress")
            ),
        ));
    for run in TDP_STRESS {
        lane = lane.job(run.job());
    }
    // Last, because it changes L1's KVM: the shadow-MMU runs, then NPT back on.
    lane = lane.job(reload_kvm_amd_job("kvm-amd-without-npt", 0));
    for run in SHADOW_STRESS {
        lane = lane.job(run.job());
    }
    lane.job(reload_kvm_amd_job("kvm-amd-with-npt-again", 1))
}

fn snapshots() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, snapshots_lane)
}

/// A counter from snapvmm's closing `snapvmm: snapshots: ...` line: the number before `label`.
fn engine_counter(job: &JobOutcome, label: &str) -> u64 {
    let line = job
        .output
        .lines()
        .find(|line| line.contains("snapvmm: snapshots:"))
        .unwrap_or_else(|| {
            panic!(
                "job {}: no snapshot summary; output:\n{}",
                job.name, job.output
            )
        });
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("job {}: no '{label}' in {line}", job.name));
    line[..at]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("job {}: no number before '{label}' in {line}", job.name))
}

/// The job ran on kvm_amd with nested paging on (`true`) or off.
fn expect_npt(job: &JobOutcome, enabled: bool) {
    check(job.expect_output(if enabled {
        "kvm_amd npt=Y"
    } else {
        "kvm_amd npt=N"
    }));
}

fn snapshot_job_outcome(name: &str) -> &'static JobOutcome {
    check(snapshots().job(name))
}

/// Checks one stress run: the guest's own checks, every restore counted (and verified), and the
/// shadow-MMU resets that the MMU calls for; prints the restore rate.
fn check_stress(run: &StressRun, npt: bool) {
    let job = snapshot_job_outcome(run.job);
    expect_npt(job, npt);
    check(job.expect_success());
    check(job.expect_output(&format!("snapshot-stress: {} rounds ok", run.rounds)));
    let rounds = u64::from(run.rounds);
    assert_eq!(engine_counter(job, "restore(s)"), rounds, "{}", job.output);
    let verified = if run.verify { rounds } else { 0 };
    assert_eq!(engine_counter(job, "verified"), verified, "{}", job.output);
    let resets = engine_counter(job, "shadow MMU resets");
    if npt {
        // NPT: the CPU walks the guest's page tables itself; a memcpy'd page table is seen at
        // once, so snapvmm (detect_shadow_mmu: npt=Y) must not pay for resets.
        assert_eq!(resets, 0, "{}", job.output);
        if run.page_tables {
            // Rounds that change page tables leave translations in the CPU's TLB that the
            // restored tables no longer give: each such restore flushes it (engine::guest_tlb).
            let flushes = engine_counter(job, "guest TLB flushes");
            assert!(flushes > 0 && flushes <= rounds, "{}", job.output);
        }
    } else if run.page_tables {
        assert!(resets > 0, "{}", job.output);
    }
    let seconds = job.elapsed.as_secs_f64();
    eprintln!(
        "lane {}: {} restores ({}, pt={}, {}) in {seconds:.1} s: {:.0} restores/s",
        run.job,
        run.rounds,
        run.strategy,
        u8::from(run.page_tables),
        if run.verify { "verified" } else { "unverified" },
        f64::from(run.rounds) / seconds.max(0.001)
    );
}

fn tdp_stress(job: &str) -> &'static StressRun {
    TDP_STRESS
        .iter()
        .find(|run| run.job == job)
        .unwrap_or_else(|| panic!("no stress run {job}"))
}

#[test]
fn tdp_save_returns_twice_and_restore_rolls_back_ram_and_stack() {
    for name in ["basic-dirty", "basic-remap"] {
        let job = snapshot_job_outcome(name);
        expect_npt(job, true);
        check(job.expect_success());
        check(job.expect_output(
            "PASS: the global and the stack rolled back and execution continued after the SAVE",
        ));
        assert_eq!(engine_counter(job, "restore(s)"), 1, "{}", job.output);
        assert_eq!(engine_counter(job, "verified"), 1, "{}", job.output);
        // Under TCG the background copy of 256 MiB takes seconds; the guest restores within
        // milliseconds of its SAVE, so the restore meets the capture still running.
        assert!(
            engine_counter(job, "during RAM capture") >= 1,
            "{}",
            job.output
        );
        assert_eq!(
            engine_counter(job, "shadow MMU resets"),
            0,
            "{}",
            job.output
        );
    }
}

#[test]
fn tdp_crash_and_done_commands_reach_the_vmm() {
    let job = snapshot_job_outcome("commands");
    // Without a fuzz harness a CRASH stops the VM and says so.
    check(job.expect_status(71));
    check(job.expect_output("crash (code 0x2a)"));
}

#[test]
fn tdp_full_vcpu_restores_are_exact() {
    let job = snapshot_job_outcome("full-vcpu-restores");
    expect_npt(job, true);
    check(job.expect_success());
    check(job.expect_output("snapshot-stress: 300 rounds ok"));
    assert_eq!(
        engine_counter(job, "with full vCPU state"),
        300,
        "{}",
        job.output
    );
    assert_eq!(engine_counter(job, "verified"), 300, "{}", job.output);
    assert_eq!(
        engine_counter(job, "shadow MMU resets"),
        0,
        "{}",
        job.output
    );
}

#[test]
fn tdp_thousand_verified_restores_dirty_strategy() {
    check_stress(tdp_stress("stress-dirty"), true);
}

#[test]
fn tdp_thousand_verified_restores_remap_strategy() {
    check_stress(tdp_stress("stress-remap"), true);
}

#[test]
fn tdp_verified_restores_with_guest_page_table_changes_dirty_strategy() {
    check_stress(tdp_stress("stress-dirty-page-tables"), true);
}

#[test]
fn tdp_verified_restores_with_guest_page_table_changes_remap_strategy() {
    check_stress(tdp_stress("stress-remap-page-tables"), true);
}

/// Without --verify-restores: the guest-side checks at full speed.
#[test]
fn tdp_unverified_restores_at_speed_both_strategies() {
    check_stress(tdp_stress("stress-dirty-fast"), true);
    check_stress(tdp_stress("stress-remap-fast"), true);
}

/// kvm_amd with npt=0 uses KVM's shadow MMU: snapvmm detects it (detect_shadow_mmu reads the
/// npt parameter) and resets the MMU after restoring page-table pages, and the restores stay
/// exact. The counterpart of the TDP runs above, which must show 0 resets.
#[test]
fn l1_shadow_mmu_gets_resets_and_stays_exact() {
    let reload = snapshot_job_outcome("kvm-amd-without-npt");
    check(reload.expect_success());
    expect_npt(reload, false);
    for run in SHADOW_STRESS {
        check_stress(run, false);
    }
    let back = snapshot_job_outcome("kvm-amd-with-npt-again");
    check(back.expect_success());
    expect_npt(back, true);
}
