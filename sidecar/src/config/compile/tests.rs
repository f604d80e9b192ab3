//! Tests for config validation and compilation, including property tests: no input panics.

use super::*;
use proptest::prelude::*;

fn cx(m: &Metrics) -> CompileContext<'_> {
    CompileContext {
        metrics: m,
        pod_ip: Some("10.0.0.2".parse().unwrap()),
        model_host: [127, 0, 0, 1].into(),
        ewma: EwmaPolicy::default(),
        now: Instant::now(),
    }
}

fn parse(json: &str) -> MeshConfig {
    serde_json::from_str(json).unwrap()
}

const BASE: &str = r#"{"services":[{"name":"llm","namespace":"team","port":8000,
  "variants":[{"name":"stable","weight":90,"endpoints":[{"address":"10.0.0.1:15006","meshed":true},
                                                          {"address":"10.0.0.2:15006","meshed":true}]},
              {"name":"canary","weight":10,"endpoints":[{"address":"10.0.0.3:8000"}]}],
  "routes":[{"headers":[{"name":"X-User","regex":"beta-.*"}],"variant":"canary"}],
  "stickyHeader":"x-session"}]}"#;

#[tokio::test]
async fn compiles_hosts_routes_and_local_endpoints() {
    let m = Metrics::new();
    let t = compile(parse(BASE), &RoutingTable::empty(), &cx(&m));
    let s = t.service("llm").unwrap();
    assert_eq!(s.variants.len(), 2);
    assert_eq!(s.router.routes[0].variant, 1);
    assert_eq!(
        s.router.sticky_header.as_ref().unwrap().as_str(),
        "x-session"
    );
    let eps = &s.variants[0].endpoints;
    assert!(eps[0].meshed);
    assert_eq!(eps[0].conns.authority().as_str(), "10.0.0.1:15006");
    // This pod's own endpoint goes to the local model directly.
    assert!(!eps[1].meshed);
    assert_eq!(eps[1].conns.authority().as_str(), "127.0.0.1:8000");
    assert_eq!(s.variants[0].routed, "llm/stable");
}

/// `--model-host`: local delivery, and this pod's own endpoint, go to that address.
#[tokio::test]
async fn the_local_model_is_reached_at_the_model_host() {
    let m = Metrics::new();
    let cx = CompileContext {
        model_host: [127, 0, 0, 22].into(),
        ..cx(&m)
    };
    let t = compile(parse(BASE), &RoutingTable::empty(), &cx);
    let s = t.service("llm").unwrap();
    assert_eq!(s.local.authority().as_str(), "127.0.0.22:8000");
    assert_eq!(
        s.variants[0].endpoints[1].conns.authority().as_str(),
        "127.0.0.22:8000"
    );
}

/// BASE with a second, valid service `other` beside `llm`.
fn with_other(base: &str) -> MeshConfig {
    let mut cfg = parse(base);
    let other = r#"{"name":"other","port":9000,"variants":[{"name":"v","weight":100,
        "endpoints":[{"address":"10.0.0.9:9000"}]}]}"#;
    cfg.services.push(serde_json::from_str(other).unwrap());
    cfg
}

#[tokio::test]
async fn a_bad_service_is_left_out_with_its_reason_and_the_others_compile() {
    let m = Metrics::new();
    let bad = [
        (BASE.replace("\"beta-.*\"", "\"([a-z\""), "does not compile"),
        (
            BASE.replace("\"variant\":\"canary\"", "\"variant\":\"nope\""),
            "unknown variant",
        ),
        (BASE.replace("10.0.0.3:8000", "not-an-address"), "ip:port"),
        (
            BASE.replace("\"port\":8000", "\"port\":15006"),
            "sidecar's own",
        ),
        (
            BASE.replace("\"name\":\"canary\"", "\"name\":\"llm.v3\""),
            "variant name",
        ),
        (BASE.replace("\"X-User\"", "\"bad header\""), "header name"),
        (
            BASE.replace(
                "\"stickyHeader\"",
                "\"timeouts\":{\"firstByteMs\":0},\"stickyHeader\"",
            ),
            "firstByteMs is 0",
        ),
        (
            BASE.replace(
                "\"stickyHeader\"",
                "\"loadBalancing\":{\"policy\":\"ConsistentHash\"},\"stickyHeader\"",
            ),
            "hashOn",
        ),
    ];
    for (json, why) in bad {
        let t = compile(with_other(&json), &RoutingTable::empty(), &cx(&m));
        assert!(t.service("llm").is_none(), "{why}: llm should be left out");
        let reason = &t.refused["llm"];
        assert!(reason.contains(why), "{reason} should mention {why}");
        assert!(
            t.service("other").is_some(),
            "{why}: other must stay in force"
        );
    }
}

#[tokio::test]
async fn a_name_given_twice_keeps_its_first_entry() {
    let m = Metrics::new();
    let twice = r#"{"services":[{"name":"a","port":1,"variants":[{"name":"first","weight":1}]},
                                {"name":"A","port":1,"variants":[{"name":"second","weight":1}]}]}"#;
    let t = compile(parse(twice), &RoutingTable::empty(), &cx(&m));
    assert_eq!(t.services.len(), 1);
    assert_eq!(t.service("a").unwrap().variants[0].name, "first");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<MeshConfig>(&bytes);
    }

    /// Arbitrary (structurally valid) configs compile or are refused, never panic.
    #[test]
    fn compiling_arbitrary_configs_never_panics(
        name in "[a-zA-Z0-9 ._-]{0,12}",
        port in any::<u16>(),
        weights in proptest::collection::vec(any::<u32>(), 0..4),
        address in "[0-9.:a-z]{0,24}",
        regex in ".{0,16}",
        header in ".{0,12}",
        policy in 0..4u8,
        ratio in any::<f64>(),
        attempts in any::<u32>(),
    ) {
        let variants: Vec<serde_json::Value> = weights.iter().enumerate().map(|(i, w)| serde_json::json!({
            "name": format!("v{i}"), "weight": w, "endpoints": [{"address": address, "meshed": i % 2 == 0}]
        })).collect();
        let policy = ["LeastRequest", "PeakEwma", "RoundRobin", "ConsistentHash"][policy as usize];
        let doc = serde_json::json!({"services": [{
            "name": name, "port": port, "variants": variants,
            "routes": [{"headers": [{"name": header, "regex": regex}], "variant": "v0"}],
            "stickyHeader": header,
            "loadBalancing": {"policy": policy, "hashOn": header},
            "retries": {"attempts": attempts, "backoffBaseMs": 1, "backoffMaxMs": 2, "backoffJitter": 0.5,
                        "budgetRatio": if ratio.is_finite() { ratio } else { 0.1 }, "budgetMinPerSecond": 1}
        }]});
        if let Ok(cfg) = serde_json::from_value::<MeshConfig>(doc) {
            let m = Metrics::new();
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let _enter = rt.enter();
            let _ = compile(cfg, &RoutingTable::empty(), &cx(&m));
        }
    }
}
