//! A tiny deterministic generator for property-style tests (no external crates, reproducible).

pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        TestRng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*: fast, good enough to spread test values over every bit.
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() < u64::MAX / n.max(1)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Interesting values more often than uniform ones: all ones, zero, single bits, sizing masks.
    pub fn next_config_value(&mut self) -> u32 {
        match self.next_u64() % 6 {
            0 => u32::MAX,
            1 => 0,
            2 => 1 << (self.next_u64() % 32),
            3 => u32::MAX << (self.next_u64() % 32),
            _ => self.next_u32(),
        }
    }
}
