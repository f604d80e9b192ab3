//! Which entries a namespace's mesh config carries, so that one bad ModelService never freezes the
//! others: each generated entry is checked with the mesh contract's own rules
//! (`ServiceConfig::validate`, what every sidecar applies), and the whole must fit under
//! [`MAX_CONFIG_BYTES`]. An entry refused for either reason falls back to its last published one
//! when there is one (its traffic goes on as before), else it is left out; the refusal is reported
//! on that ModelService alone.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap},
};

use infermesh_crds::mesh::{MeshConfig, ServiceConfig};

/// The most JSON `mesh.json` may hold. The API server refuses a ConfigMap whose data exceed
/// 1 MiB (1,048,576 bytes) and etcd caps the stored object near 1.5 MiB; 900 KiB leaves room for
/// the metadata (owner references grow with the namespace's ModelServices) and the revision
/// annotation, so a config that passes this check is never refused for its size.
pub const MAX_CONFIG_BYTES: usize = 900 * 1024;

/// Why a ModelService's generated entry is not what the namespace's config carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The entry breaks a rule of the mesh contract (`error` is the validator's message).
    InvalidSpec { error: String, kept: bool },
    /// The entry (`bytes` of JSON) does not fit in the config under `cap`.
    TooLarge {
        bytes: usize,
        cap: usize,
        kept: bool,
    },
}

impl Refusal {
    /// The last published entry is still in force.
    pub fn kept(&self) -> bool {
        match self {
            Refusal::InvalidSpec { kept, .. } | Refusal::TooLarge { kept, .. } => *kept,
        }
    }
}

/// A namespace's config and what it refused, by ModelService name.
#[derive(Clone, Debug, PartialEq)]
pub struct Screened {
    pub config: MeshConfig,
    pub refused: BTreeMap<String, Refusal>,
}

fn json_len(entry: &ServiceConfig) -> usize {
    serde_json::to_string(entry).map_or(usize::MAX, |s| s.len())
}

/// Bytes of a config's compact JSON with entries of these sizes: the envelope (revision, list)
/// plus the entries and the commas between them.
fn config_len(sizes: &BTreeMap<String, usize>) -> usize {
    let envelope = serde_json::to_string(&MeshConfig::new(vec![])).map_or(0, |s| s.len());
    let entries: usize = sizes.values().fold(0, |a, b| a.saturating_add(*b));
    envelope + entries + sizes.len().saturating_sub(1)
}

/// The config made of `generated` (one entry per ModelService), given the entries last published
/// (`previous`, by name) and the size `cap`.
///
/// An invalid entry is replaced by its last published one, if that one is valid, else left out.
/// While the config is over `cap`, the largest entry that is new or changed since the last
/// publication (ties: the first name) goes back to its last published entry, or out when it has
/// none: what grew is what is refused, and the others keep what they had. When every entry is as
/// last published and the config is still over (the cap was lowered, or a first publication is
/// too large), the largest entries are left out.
pub fn screen(
    generated: Vec<ServiceConfig>,
    previous: &HashMap<String, ServiceConfig>,
    cap: usize,
) -> Screened {
    let last_valid = |name: &str| previous.get(name).filter(|p| p.validate().is_ok()).cloned();
    let mut refused = BTreeMap::new();
    let mut carried: BTreeMap<String, ServiceConfig> = BTreeMap::new();
    for entry in generated {
        let name = entry.name.clone();
        match entry.validate() {
            Ok(()) => {
                carried.insert(name, entry);
            }
            Err(error) => {
                let last = last_valid(&name);
                let kept = last.is_some();
                if let Some(last) = last {
                    carried.insert(name.clone(), last);
                }
                refused.insert(name, Refusal::InvalidSpec { error, kept });
            }
        }
    }

    let mut sizes: BTreeMap<String, usize> = carried
        .iter()
        .map(|(n, e)| (n.clone(), json_len(e)))
        .collect();
    // New or changed since the last publication.
    let mut changed: BTreeSet<String> = carried
        .iter()
        .filter(|(n, e)| previous.get(*n) != Some(*e))
        .map(|(n, _)| n.clone())
        .collect();
    while config_len(&sizes) > cap {
        let largest = |among: &mut dyn Iterator<Item = &String>| {
            among.max_by_key(|n| (sizes[*n], Reverse(*n))).cloned()
        };
        if let Some(name) = largest(&mut changed.iter()) {
            changed.remove(&name);
            let bytes = sizes[&name];
            let last = last_valid(&name);
            let kept = last.is_some();
            match last {
                Some(last) => {
                    sizes.insert(name.clone(), json_len(&last));
                    carried.insert(name.clone(), last);
                }
                None => {
                    sizes.remove(&name);
                    carried.remove(&name);
                }
            }
            refused.insert(name, Refusal::TooLarge { bytes, cap, kept });
        } else if let Some(name) = largest(&mut sizes.keys()) {
            let bytes = sizes.remove(&name).unwrap_or_default();
            carried.remove(&name);
            match refused.get_mut(&name) {
                Some(Refusal::InvalidSpec { kept, .. }) => *kept = false,
                _ => {
                    refused.insert(
                        name,
                        Refusal::TooLarge {
                            bytes,
                            cap,
                            kept: false,
                        },
                    );
                }
            }
        } else {
            break;
        }
    }
    Screened {
        config: MeshConfig::new(carried.into_values().collect()),
        refused,
    }
}

#[cfg(test)]
mod tests {
    use infermesh_crds::mesh::{HeaderMatch, HeaderValueMatch, RouteConfig};

    use super::*;
    use crate::{
        config::service_config,
        endpoints::resolve,
        fixtures::{model_service, pod, spec_with},
    };

    /// `name` with one variant of `weight` and `endpoints` ready pods.
    fn entry(name: &str, weight: i32, endpoints: usize) -> ServiceConfig {
        let ms = model_service(name, "ns", spec_with(&[("stable", weight, "v1")]));
        let pods: Vec<_> = (0..endpoints)
            .map(|i| {
                pod(
                    &format!("p{i}"),
                    "ns",
                    "v1",
                    Some(&format!("198.18.{}.{}", i / 250, i % 250 + 1)),
                    true,
                    true,
                )
            })
            .collect();
        service_config(&ms, &resolve(&ms.spec, "ns", &pods))
    }

    fn bad_regex(mut e: ServiceConfig) -> ServiceConfig {
        e.routes = vec![RouteConfig {
            name: None,
            headers: vec![HeaderMatch {
                name: "x-cohort".into(),
                value: HeaderValueMatch::Regex("([a-z".into()),
            }],
            path_prefix: None,
            model: None,
            variant: "stable".into(),
        }];
        e
    }

    fn by_name(entries: &[ServiceConfig]) -> HashMap<String, ServiceConfig> {
        entries
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    fn names(s: &Screened) -> Vec<&str> {
        s.config.services.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn valid_entries_are_all_carried() {
        let s = screen(
            vec![entry("b", 100, 1), entry("a", 100, 1)],
            &HashMap::new(),
            MAX_CONFIG_BYTES,
        );
        assert_eq!(names(&s), ["a", "b"]);
        assert!(s.refused.is_empty());
        assert_eq!(
            s.config,
            MeshConfig::new(vec![entry("a", 100, 1), entry("b", 100, 1)])
        );
    }

    #[test]
    fn an_invalid_entry_keeps_its_last_valid_one_and_the_others_go_on() {
        let previous = by_name(&[entry("bad", 90, 1), entry("good", 100, 1)]);
        let s = screen(
            vec![bad_regex(entry("bad", 50, 1)), entry("good", 70, 2)],
            &previous,
            MAX_CONFIG_BYTES,
        );
        assert_eq!(
            s.config.services[0], previous["bad"],
            "the last valid entry, unchanged"
        );
        assert_eq!(
            s.config.services[1],
            entry("good", 70, 2),
            "the good one is updated"
        );
        let Refusal::InvalidSpec { error, kept } = &s.refused["bad"] else {
            panic!("{:?}", s.refused)
        };
        assert!(*kept);
        assert!(error.contains("does not compile"), "{error}");
        assert_eq!(s.refused.len(), 1);
    }

    #[test]
    fn an_entry_that_never_was_valid_is_left_out() {
        let s = screen(
            vec![bad_regex(entry("bad", 50, 1)), entry("good", 100, 1)],
            &HashMap::new(),
            MAX_CONFIG_BYTES,
        );
        assert_eq!(names(&s), ["good"]);
        assert!(!s.refused["bad"].kept());
        // A last entry that is itself invalid (a hand edit, read back after a restart) is not kept.
        let s = screen(
            vec![bad_regex(entry("bad", 50, 1))],
            &by_name(&[bad_regex(entry("bad", 90, 1))]),
            MAX_CONFIG_BYTES,
        );
        assert!(s.config.services.is_empty());
        assert!(!s.refused["bad"].kept());
    }

    #[test]
    fn the_size_accounting_is_the_json_length() {
        let entries = vec![entry("a", 100, 3), entry("b", 100, 0), entry("c", 10, 7)];
        let sizes: BTreeMap<String, usize> = entries
            .iter()
            .map(|e| (e.name.clone(), json_len(e)))
            .collect();
        let json = serde_json::to_string(&MeshConfig::new(entries)).unwrap();
        assert_eq!(config_len(&sizes), json.len());
        assert_eq!(
            config_len(&BTreeMap::new()),
            serde_json::to_string(&MeshConfig::new(vec![]))
                .unwrap()
                .len()
        );
    }

    #[test]
    fn over_the_cap_what_grew_goes_back_to_its_last_entry_or_out() {
        let previous = by_name(&[entry("a", 100, 2), entry("b", 100, 2)]);
        let fits = serde_json::to_string(&MeshConfig::new(vec![
            entry("a", 100, 2),
            entry("b", 100, 2),
        ]))
        .unwrap()
        .len();
        // `a` grew to 40 endpoints, `c` is new with 30: neither fits; `b` is unchanged.
        let generated = vec![entry("a", 100, 40), entry("b", 100, 2), entry("c", 100, 30)];
        let s = screen(generated, &previous, fits + 10);
        assert_eq!(names(&s), ["a", "b"]);
        assert_eq!(s.config.services[0], previous["a"], "a keeps what it had");
        assert!(serde_json::to_string(&s.config).unwrap().len() <= fits + 10);
        let too_large = |n: &str| match &s.refused[n] {
            Refusal::TooLarge { bytes, cap, kept } => (*bytes, *cap, *kept),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            too_large("a"),
            (json_len(&entry("a", 100, 40)), fits + 10, true)
        );
        assert_eq!(
            too_large("c"),
            (json_len(&entry("c", 100, 30)), fits + 10, false)
        );
        assert!(!s.refused.contains_key("b"));
    }

    #[test]
    fn only_as_much_is_refused_as_needed_largest_first() {
        let small = entry("small", 100, 1);
        let big = entry("big", 100, 20);
        let cap = serde_json::to_string(&MeshConfig::new(vec![small.clone(), entry("x", 100, 5)]))
            .unwrap()
            .len();
        let s = screen(vec![small, big, entry("x", 100, 5)], &HashMap::new(), cap);
        assert_eq!(names(&s), ["small", "x"]);
        assert_eq!(s.refused.keys().collect::<Vec<_>>(), ["big"]);
    }

    #[test]
    fn when_nothing_changed_and_it_still_does_not_fit_the_largest_are_left_out() {
        let entries = vec![entry("a", 100, 10), entry("b", 100, 1)];
        let previous = by_name(&entries);
        let cap = serde_json::to_string(&MeshConfig::new(vec![entry("b", 100, 1)]))
            .unwrap()
            .len();
        let s = screen(entries, &previous, cap);
        assert_eq!(names(&s), ["b"]);
        assert!(matches!(
            s.refused["a"],
            Refusal::TooLarge { kept: false, .. }
        ));
        // Deterministic: the same input, the same outcome.
        assert_eq!(
            s,
            screen(
                vec![entry("b", 100, 1), entry("a", 100, 10)],
                &previous,
                cap
            )
        );
    }
}
