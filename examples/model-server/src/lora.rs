//! LoRA adapters: which are resident (at most `--max-loras`, as vLLM's GPU LoRA slots), which one
//! to unload when another is needed (the least recently used one no running sequence uses), and
//! whether admitting a sequence costs a load.

/// The resident adapters, least recently used first.
#[derive(Debug)]
pub struct LoraSlots {
    max: usize,
    resident: Vec<usize>,
    loads: u64,
}

/// Whether a sequence using an adapter can run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Already resident.
    Resident,
    /// Loaded now (the step pays the load cost).
    Loaded,
    /// Every slot holds an adapter a running sequence uses: wait.
    Busy,
}

impl LoraSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            resident: Vec::new(),
            loads: 0,
        }
    }

    /// Adapters loaded so far (each load, including reloads after an eviction).
    pub fn loads(&self) -> u64 {
        self.loads
    }

    pub fn is_resident(&self, adapter: usize) -> bool {
        self.resident.contains(&adapter)
    }

    /// Makes `adapter` resident if possible; `in_use` says whether a running sequence uses an
    /// adapter (those are never unloaded).
    pub fn acquire(&mut self, adapter: usize, in_use: impl Fn(usize) -> bool) -> Slot {
        if let Some(pos) = self.resident.iter().position(|a| *a == adapter) {
            let a = self.resident.remove(pos);
            self.resident.push(a);
            return Slot::Resident;
        }
        if self.resident.len() >= self.max {
            let Some(victim) = self.resident.iter().position(|a| !in_use(*a)) else {
                return Slot::Busy;
            };
            self.resident.remove(victim);
        }
        self.resident.push(adapter);
        self.loads += 1;
        Slot::Loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_once_then_evicts_least_recently_used_idle_adapter() {
        let mut s = LoraSlots::new(2);
        let idle = |_| false;
        assert_eq!(s.acquire(0, idle), Slot::Loaded);
        assert_eq!(s.acquire(0, idle), Slot::Resident);
        assert_eq!(s.acquire(1, idle), Slot::Loaded);
        assert_eq!(s.acquire(0, idle), Slot::Resident); // 1 is now least recent
        assert_eq!(s.acquire(2, idle), Slot::Loaded);
        assert!(!s.is_resident(1));
        assert!(s.is_resident(0) && s.is_resident(2));
        assert_eq!(s.loads(), 3);
        // Adapters in use are kept: no slot for a third one.
        assert_eq!(s.acquire(1, |_| true), Slot::Busy);
        assert_eq!(s.acquire(1, |a| a == 0), Slot::Loaded);
        assert!(s.is_resident(0) && s.is_resident(1));
    }
}
