//! The LoRA adapters an endpoint's engine holds ([`Adapters`]), as a serving sidecar reports
//! them and a routing sidecar scores them: a request for an adapter the engine already has
//! loaded skips the load (and the eviction of another adapter when the engine is full).
//!
//! Adapters travel as keys, the hash of their name ([`model_key`], the same hash the prompt's
//! `model` gets), not as names: a name may hold the characters that separate the load report's
//! pairs (`,` `=` `:`) and may be long, while a key is 16 hex digits. At most [`MAX`] are
//! kept, so a report stays small and `Copy`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Adapters kept per endpoint; an engine with more loaded reports the first ones.
pub(crate) const MAX: usize = 8;

/// The key of a model or adapter name, as requests and reports carry it.
pub(crate) fn model_key(name: &str) -> u64 {
    xxh3_64_with_seed(name.as_bytes(), 0)
}

/// A set of at most [`MAX`] adapter keys, and how many adapters the engine can hold at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Adapters {
    keys: [u64; MAX],
    len: u8,
    /// The engine's adapter slots (vLLM `max_lora`), when it tells.
    pub(crate) slots: Option<u32>,
}

impl Adapters {
    /// The adapters of these names (duplicates once, beyond [`MAX`] dropped).
    pub(crate) fn of<'a>(names: impl IntoIterator<Item = &'a str>, slots: Option<u32>) -> Self {
        let mut a = Adapters {
            slots,
            ..Default::default()
        };
        for n in names {
            a.insert(model_key(n));
        }
        a
    }

    /// Adds a key; false when the set is full (the key is dropped).
    pub(crate) fn insert(&mut self, key: u64) -> bool {
        if self.holds(key) {
            return true;
        }
        let Some(slot) = self.keys.get_mut(usize::from(self.len)) else {
            return false;
        };
        *slot = key;
        self.len += 1;
        true
    }

    pub(crate) fn keys(&self) -> &[u64] {
        &self.keys[..usize::from(self.len)]
    }

    pub(crate) fn holds(&self, key: u64) -> bool {
        self.keys().contains(&key)
    }

    /// Whether the engine can load one more adapter without evicting one; unknown without
    /// its slot count.
    pub(crate) fn has_room(&self) -> Option<bool> {
        self.slots.map(|s| u32::from(self.len) < s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_each_name_once_and_at_most_max() {
        let names: Vec<String> = (0..12).map(|i| format!("lora-{i}")).collect();
        let a = Adapters::of(
            ["lora-0", "lora-0"]
                .into_iter()
                .chain(names.iter().map(String::as_str)),
            Some(16),
        );
        assert_eq!(a.keys().len(), MAX);
        assert!(a.holds(model_key("lora-0")) && a.holds(model_key("lora-7")));
        assert!(!a.holds(model_key("lora-8")), "past the cap");
        assert_eq!(a.has_room(), Some(true));
        let full = Adapters::of(["a", "b"], Some(2));
        assert_eq!(full.has_room(), Some(false));
        assert_eq!(Adapters::of(["a"], None).has_room(), None);
    }
}
