//! The snapshot engine's counters, for logs and benchmarks.

use std::time::{Duration, Instant};

use snapshot::CaptureReport;

#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// When the first SAVE finished: benchmarks time the restore loop from here.
    pub first_save_done: Option<Instant>,
    pub saves: u64,
    pub restores: u64,
    pub full_vcpu_restores: u64,
    /// Fast vCPU restores that also set the LAPIC (a guest kernel changed it during the round,
    /// or its timer is armed in the snapshot).
    pub lapic_restores: u64,
    pub pages_restored: u64,
    /// Pages a SAVE over remapped RAM wrote into the previous snapshot's memory (instead of
    /// capturing all of RAM).
    pub pages_saved_in_place: u64,
    pub shadow_mmu_resets: u64,
    /// Restores that only had to make KVM forget the pages whose A/D bits they put back.
    pub shadow_mmu_invalidations: u64,
    /// EPT/NPT: restores that flushed the guest's TLB (the round changed its page tables).
    pub guest_tlb_flushes: u64,
    pub verified_restores: u64,
    /// Restores that arrived while the background RAM capture was still running.
    pub restores_during_capture: u64,
    /// Time spent in RESTORE handling itself (the VMM's share of a round).
    pub restore_time: Duration,
    /// How long the guest was stopped by the last SAVE, and by its RAM capture alone.
    pub last_save_stall: Duration,
    pub last_capture_stall: Duration,
    pub last_capture_report: Option<CaptureReport>,
}

impl EngineStats {
    /// One line for the end of a run; `None` when no snapshot was taken.
    pub fn summary(&self) -> Option<String> {
        (self.saves > 0 || self.restores > 0).then(|| {
            format!(
                "{} save(s), {} restore(s) ({} during RAM capture, {} with full vCPU state, {} verified), \
                 {} pages restored, {} shadow MMU resets, {} A/D invalidations, {:.1} us per restore in the VMM, \
                 last SAVE stall {:.2} ms{}{}{}",
                self.saves,
                self.restores,
                self.restores_during_capture,
                self.full_vcpu_restores,
                self.verified_restores,
                self.pages_restored,
                self.shadow_mmu_resets,
                self.shadow_mmu_invalidations,
                self.restore_time.as_secs_f64() * 1e6 / self.restores.max(1) as f64,
                self.last_save_stall.as_secs_f64() * 1e3,
                if self.pages_saved_in_place > 0 {
                    format!(", {} pages saved in place", self.pages_saved_in_place)
                } else {
                    String::new()
                },
                if self.lapic_restores > 0 {
                    format!(", {} LAPIC restores", self.lapic_restores)
                } else {
                    String::new()
                },
                if self.guest_tlb_flushes > 0 {
                    format!(", {} guest TLB flushes", self.guest_tlb_flushes)
                } else {
                    String::new()
                }
            )
        })
    }
}
