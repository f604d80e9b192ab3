//! Unit tests of `compute_status` and `notices`: conditions and their transition times, the
//! reasons in the order a person must act on them, and events on transitions only.

use super::*;
use crate::endpoints::resolve;
use crate::fixtures::{pod, spec_with};
use k8s_openapi::jiff::Timestamp;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn observe<'a>(resolved: &'a [ResolvedVariant], rev: &str) -> Observation<'a> {
    Observation {
        generation: Some(3),
        resolved,
        entry: Some(Entry {
            revision: rev.into(),
            at: t(100),
        }),
        clashes: &[],
        refusal: None,
        overlaps: &[],
        namespace: "ns",
        sidecars: None,
        unmeshed: &[],
    }
}

fn cond<'a>(s: &'a ModelServiceStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn all_variants_with_endpoints_is_ready() {
    let spec = spec_with(&[("stable", 90, "v1"), ("canary", 10, "v2")]);
    let pods = [
        pod("a", "ns", "v1", Some("198.18.64.5"), true, false),
        pod("b", "ns", "v1", Some("198.18.64.6"), true, false),
        pod("c", "ns", "v2", Some("198.18.64.7"), true, false),
    ];
    let r = resolve(&spec, "ns", &pods);
    let s = compute_status(&spec, None, &observe(&r, "abc"), &t(200));
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, CONFIG_GENERATED).status, "True");
    assert_eq!(cond(&s, ENDPOINTS_AVAILABLE).reason, "EndpointsReady");
    assert_eq!(cond(&s, READY).observed_generation, Some(3));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.variant_weights.as_deref(), Some("stable=90,canary=10"));
    assert_eq!(s.ready_endpoints, Some(3));
    assert_eq!(s.variants[0].ready_endpoints, 2);
    assert_eq!(s.variants[1].weight, 10);
    assert_eq!(s.revision.as_deref(), Some("abc"));
}

#[test]
fn a_weighted_variant_without_endpoints_is_not_ready_and_says_which() {
    let spec = spec_with(&[("stable", 90, "v1"), ("canary", 10, "v2")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let s = compute_status(&spec, None, &observe(&r, "abc"), &t(200));
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoReadyEndpoints")
    );
    assert!(ready.message.contains("canary"), "{}", ready.message);
    assert_eq!(cond(&s, CONFIG_GENERATED).status, "True");
}

#[test]
fn a_zero_weight_unrouted_variant_does_not_block_ready() {
    let spec = spec_with(&[("stable", 100, "v1"), ("shadow", 0, "v2")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let s = compute_status(&spec, None, &observe(&r, "abc"), &t(200));
    assert_eq!(cond(&s, READY).status, "True");
}

#[test]
fn transition_time_is_kept_while_status_is_unchanged() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let first = compute_status(&spec, None, &observe(&r, "abc"), &t(200));
    let again = compute_status(&spec, Some(&first), &observe(&r, "abc"), &t(300));
    assert_eq!(first, again, "an unchanged world gives an identical status");

    let none = resolve(&spec, "ns", &[]);
    let down = compute_status(&spec, Some(&first), &observe(&none, "def"), &t(400));
    assert_eq!(cond(&down, READY).last_transition_time, t(400));
    assert_eq!(cond(&down, CONFIG_GENERATED).last_transition_time, t(200));
}

#[test]
fn invalid_selector_is_reported() {
    let mut spec = spec_with(&[("stable", 100, "v1")]);
    spec.variants[0].selector = Default::default();
    let r = resolve(&spec, "ns", &[]);
    let s = compute_status(&spec, None, &observe(&r, "abc"), &t(200));
    assert_eq!(cond(&s, ENDPOINTS_AVAILABLE).reason, "InvalidSelector");
    let n = notices(&spec, None, &s, &r);
    assert!(n.iter().any(|n| n.reason == "InvalidSelector" && n.warning));
    assert!(notices(&spec, Some(&s), &s, &r).is_empty(), "no repeat");
}

#[test]
fn a_name_clash_makes_ready_false_first_and_is_told_once() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let clashes = [Clash {
        kind: "Service",
        name: "llm".into(),
    }];
    let obs = Observation {
        clashes: &clashes,
        ..observe(&r, "abc")
    };
    let s = compute_status(&spec, None, &obs, &t(200));
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", NAME_CLASH)
    );
    assert!(ready.message.contains("Service llm"), "{}", ready.message);
    assert_eq!(cond(&s, ENDPOINTS_AVAILABLE).status, "True");
    let n = notices(&spec, None, &s, &r);
    let clash: Vec<_> = n.iter().filter(|n| n.reason == NAME_CLASH).collect();
    assert_eq!(clash.len(), 1);
    assert!(clash[0].warning && clash[0].note == ready.message);
    assert!(!n.iter().any(|n| n.reason == "Ready"));
    let again = compute_status(&spec, Some(&s), &obs, &t(300));
    assert!(notices(&spec, Some(&s), &again, &r).is_empty(), "no repeat");
    let fixed = compute_status(&spec, Some(&again), &observe(&r, "abc"), &t(400));
    assert_eq!(cond(&fixed, READY).status, "True");
    let told: Vec<_> = notices(&spec, Some(&again), &fixed, &r)
        .into_iter()
        .map(|n| n.reason)
        .collect();
    assert_eq!(told, ["Ready"], "recovered once the clash is gone");
}

#[test]
fn a_config_map_clash_keeps_the_revision_and_fails_config_generated() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let before = compute_status(&spec, None, &observe(&r, "r1"), &t(1));
    let clashes = [Clash {
        kind: "ConfigMap",
        name: infermesh_crds::mesh::CONFIG_MAP_NAME.into(),
    }];
    let blocked = Observation {
        entry: None,
        clashes: &clashes,
        ..observe(&r, "unused")
    };
    let s = compute_status(&spec, Some(&before), &blocked, &t(2));
    let config = cond(&s, CONFIG_GENERATED);
    assert_eq!(
        (config.status.as_str(), config.reason.as_str()),
        ("False", NAME_CLASH)
    );
    assert!(config.message.contains("ConfigMap infermesh-mesh-config"));
    assert_eq!(cond(&s, READY).reason, NAME_CLASH);
    assert_eq!(
        s.revision.as_deref(),
        Some("r1"),
        "nothing new was published"
    );
    assert_eq!(s.config_published_at, before.config_published_at);
    let reasons: Vec<_> = notices(&spec, Some(&before), &s, &r)
        .into_iter()
        .map(|n| n.reason)
        .collect();
    assert_eq!(reasons, [NAME_CLASH]);
}

#[test]
fn events_fire_on_transitions_only() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let up = resolve(&spec, "ns", &pods);
    let s1 = compute_status(&spec, None, &observe(&up, "r1"), &t(1));
    let reasons = |n: Vec<Notice>| n.into_iter().map(|n| n.reason).collect::<Vec<_>>();
    assert_eq!(
        reasons(notices(&spec, None, &s1, &up)),
        ["ConfigRegenerated", "Ready"]
    );
    assert!(notices(&spec, Some(&s1), &s1, &up).is_empty());

    let down = resolve(&spec, "ns", &[]);
    let s2 = compute_status(&spec, Some(&s1), &observe(&down, "r2"), &t(2));
    assert_eq!(
        reasons(notices(&spec, Some(&s1), &s2, &down)),
        ["ConfigRegenerated", "NoEndpoints"]
    );
    let s3 = compute_status(&spec, Some(&s2), &observe(&down, "r2"), &t(3));
    assert!(notices(&spec, Some(&s2), &s3, &down).is_empty());
}

fn invalid(kept: bool) -> Refusal {
    Refusal::InvalidSpec {
        error: "route header \"x\": regex \"([a-z\" does not compile".into(),
        kept,
    }
}

#[test]
fn a_refused_spec_with_its_last_entry_in_force_says_so_and_warns_once() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let before = compute_status(&spec, None, &observe(&r, "r1"), &t(1));
    let refusal = invalid(true);
    let obs = Observation {
        refusal: Some(&refusal),
        ..observe(&r, "r1")
    };
    let s = compute_status(&spec, Some(&before), &obs, &t(2));
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", INVALID_SPEC)
    );
    assert!(
        ready.message.contains("does not compile"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.contains("revision r1) stays in force"),
        "{}",
        ready.message
    );
    assert_eq!(cond(&s, CONFIG_GENERATED).reason, INVALID_SPEC);
    assert_eq!(s.revision.as_deref(), Some("r1"), "the entry in force");
    let n = notices(&spec, Some(&before), &s, &r);
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(n[0].warning && n[0].reason == INVALID_SPEC && n[0].note == ready.message);
    let again = compute_status(&spec, Some(&s), &obs, &t(3));
    assert!(
        notices(&spec, Some(&s), &again, &r).is_empty(),
        "once per message"
    );
    let fixed = compute_status(&spec, Some(&again), &observe(&r, "r2"), &t(4));
    let told: Vec<_> = notices(&spec, Some(&again), &fixed, &r)
        .into_iter()
        .map(|n| n.reason)
        .collect();
    assert_eq!(told, ["ConfigRegenerated", "Ready"]);
}

#[test]
fn a_refused_entry_without_a_last_one_has_no_revision() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let r = resolve(&spec, "ns", &[]);
    let refusal = Refusal::TooLarge {
        bytes: 1_000_000,
        cap: 921_600,
        kept: false,
    };
    let obs = Observation {
        entry: None,
        refusal: Some(&refusal),
        ..observe(&r, "unused")
    };
    let s = compute_status(&spec, None, &obs, &t(1));
    let ready = cond(&s, READY);
    assert_eq!(ready.reason, CONFIG_TOO_LARGE, "before NoReadyEndpoints");
    for part in [
        "1000000 bytes",
        "under 921600 bytes",
        "fewer endpoints",
        "no entry",
    ] {
        assert!(ready.message.contains(part), "{part}: {}", ready.message);
    }
    assert_eq!(cond(&s, CONFIG_GENERATED).reason, CONFIG_TOO_LARGE);
    assert!(s.revision.is_none() && s.config_published_at.is_none());
    let reasons: Vec<_> = notices(&spec, None, &s, &r)
        .into_iter()
        .map(|n| n.reason)
        .collect();
    assert_eq!(
        reasons,
        ["NoEndpoints", CONFIG_TOO_LARGE],
        "no ConfigRegenerated"
    );
}

#[test]
fn problems_come_in_the_order_to_fix_them() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let clashes = [Clash {
        kind: "Service",
        name: "llm".into(),
    }];
    let refusal = invalid(false);
    let overlaps = [Overlap {
        other: "shadow".into(),
        pods: 1,
        owned_by_other: false,
    }];
    let ready_reason = |obs: &Observation<'_>| {
        compute_status(&spec, None, obs, &t(1)).conditions[0]
            .reason
            .clone()
    };
    let all = Observation {
        clashes: &clashes,
        refusal: Some(&refusal),
        overlaps: &overlaps,
        ..observe(&r, "r1")
    };
    assert_eq!(ready_reason(&all), NAME_CLASH);
    let no_clash = Observation {
        clashes: &[],
        ..all.clone()
    };
    assert_eq!(ready_reason(&no_clash), INVALID_SPEC);
    let only_overlap = Observation {
        refusal: None,
        ..no_clash.clone()
    };
    assert_eq!(ready_reason(&only_overlap), OVERLAPPING_SELECTOR);
    let s = compute_status(&spec, None, &only_overlap, &t(1));
    assert!(cond(&s, READY).message.contains("ModelService shadow"));
    assert_eq!(cond(&s, CONFIG_GENERATED).status, "True", "it is published");
    assert!(
        notices(&spec, None, &s, &r)
            .iter()
            .any(|n| n.warning && n.reason == OVERLAPPING_SELECTOR)
    );
}

#[test]
fn each_revision_is_announced_by_its_own_event_with_its_own_numbers() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, false)];
    let r = resolve(&spec, "ns", &pods);
    let s1 = compute_status(&spec, None, &observe(&r, "r1"), &t(1));
    let spec2 = spec_with(&[("stable", 100, "v1"), ("canary", 0, "v2")]);
    let r2 = resolve(&spec2, "ns", &pods);
    let s2 = compute_status(&spec2, Some(&s1), &observe(&r2, "r2"), &t(2));
    let first = &notices(&spec, None, &s1, &r)[0];
    let second = &notices(&spec2, Some(&s1), &s2, &r2)[0];
    assert_eq!(
        (first.reason, second.reason),
        ("ConfigRegenerated", "ConfigRegenerated")
    );
    assert!(first.note.contains("revision r1") && second.note.contains("revision r2"));
    assert!(
        second.note.contains("stable=100,canary=0"),
        "{}",
        second.note
    );
    // The recorder keys a series by reason and action: distinct notes never share one.
    assert_ne!(first.action(), second.action());
    assert_eq!(
        first.action(),
        first.clone().action(),
        "the same note, the same series"
    );
    assert!(first.action().starts_with("Reconcile-"));
}

fn lagging(pods: &[(&str, &str)], total: usize) -> crate::sidecars::Enforcement {
    let lagging: Vec<_> = pods
        .iter()
        .map(|(p, r)| infermesh_crds::model_service::LaggingSidecar {
            pod: p.to_string(),
            revision: r.to_string(),
        })
        .collect();
    crate::sidecars::Enforcement {
        total,
        on_revision: total - lagging.len(),
        lagging,
    }
}

#[test]
fn ready_waits_for_the_sidecars_and_lists_at_most_ten_laggards() {
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, true)];
    let r = resolve(&spec, "ns", &pods);
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    let behind: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "r0")).collect();
    let e = lagging(&behind, 20);
    let obs = Observation {
        sidecars: Some(&e),
        ..observe(&r, "r1")
    };
    let s = compute_status(&spec, None, &obs, &t(1));
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", PROPAGATING)
    );
    assert!(
        ready.message.starts_with(
            "12 of 20 sidecar(s) do not enforce mesh config revision r1 yet: p00 (runs r0), "
        ),
        "{}",
        ready.message
    );
    assert!(
        ready.message.ends_with("p09 (runs r0), and 2 more"),
        "{}",
        ready.message
    );
    assert_eq!(s.lagging_sidecars.len(), 10);
    assert_eq!(
        (s.sidecars_total, s.sidecars_on_revision),
        (Some(20), Some(8))
    );
    let told: Vec<_> = notices(&spec, None, &s, &r)
        .into_iter()
        .map(|n| n.reason)
        .collect();
    assert_eq!(
        told,
        ["ConfigRegenerated"],
        "not Ready, and propagating is not a warning"
    );

    // Missing endpoints come first: they are what a person must fix.
    let none = resolve(&spec, "ns", &[]);
    let obs = Observation {
        sidecars: Some(&e),
        ..observe(&none, "r1")
    };
    assert_eq!(
        cond(&compute_status(&spec, None, &obs, &t(1)), READY).reason,
        "NoReadyEndpoints"
    );

    let synced = lagging(&[], 20);
    let obs = Observation {
        sidecars: Some(&synced),
        ..observe(&r, "r1")
    };
    let ready_now = compute_status(&spec, Some(&s), &obs, &t(2));
    assert_eq!(cond(&ready_now, READY).status, "True");
    assert!(ready_now.lagging_sidecars.is_empty());
    let n = notices(&spec, Some(&s), &ready_now, &r);
    assert_eq!(n[0].reason, "Ready");
    assert!(
        n[0].note.contains("revision r1, enforced by 20 sidecar(s)"),
        "{}",
        n[0].note
    );
}

#[test]
fn unmeshed_pods_are_warned_about_once_per_set_and_cleared_once_meshed() {
    use infermesh_crds::model_service::UnmeshedPod;
    let spec = spec_with(&[("stable", 100, "v1")]);
    let pods = [pod("a", "ns", "v1", Some("198.18.64.5"), true, true)];
    let r = resolve(&spec, "ns", &pods);
    let one = [UnmeshedPod {
        name: "b".into(),
        reason: "OptedOut".into(),
    }];
    let obs = Observation {
        unmeshed: &one,
        ..observe(&r, "r1")
    };
    let s1 = compute_status(&spec, None, &obs, &t(1));
    let injected = cond(&s1, SIDECARS_INJECTED);
    assert_eq!(
        (injected.status.as_str(), injected.reason.as_str()),
        ("False", sidecars::PODS_OPTED_OUT)
    );
    assert!(
        !injected.message.contains("kubectl delete"),
        "{}",
        injected.message
    );
    assert_eq!(
        cond(&s1, READY).status,
        "True",
        "the Service still has meshed pods"
    );
    assert_eq!(s1.unmeshed_pods, one);
    let warned = |prev, next: &ModelServiceStatus| {
        notices(&spec, prev, next, &r)
            .into_iter()
            .filter(|n| n.reason == UNMESHED_PODS)
            .count()
    };
    assert_eq!(warned(None, &s1), 1);
    assert_eq!(
        warned(Some(&s1), &compute_status(&spec, Some(&s1), &obs, &t(2))),
        0
    );

    let two = [
        one[0].clone(),
        UnmeshedPod {
            name: "c".into(),
            reason: "NotInjected".into(),
        },
    ];
    let obs = Observation {
        unmeshed: &two,
        ..observe(&r, "r1")
    };
    let s2 = compute_status(&spec, Some(&s1), &obs, &t(3));
    assert_eq!(cond(&s2, SIDECARS_INJECTED).reason, UNMESHED_PODS);
    assert!(
        cond(&s2, SIDECARS_INJECTED)
            .message
            .contains("kubectl delete pod c -n ns")
    );
    assert_eq!(warned(Some(&s1), &s2), 1, "a new set is told again");

    let s3 = compute_status(&spec, Some(&s2), &observe(&r, "r1"), &t(4));
    assert_eq!(cond(&s3, SIDECARS_INJECTED).status, "True");
    assert!(s3.unmeshed_pods.is_empty());
    assert_eq!(warned(Some(&s2), &s3), 0);
}
