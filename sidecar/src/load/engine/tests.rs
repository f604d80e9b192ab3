//! Tests of the engine metric parsers against real metric text (`../fixtures/`).

use super::*;
use proptest::prelude::*;

const VLLM: &str = include_str!("../fixtures/vllm.txt");
const VLLM_LORA: &str = include_str!("../fixtures/vllm-lora.txt");
const SGLANG: &str = include_str!("../fixtures/sglang.txt");
const LLAMACPP: &str = include_str!("../fixtures/llamacpp.txt");
const SIMULATOR: &str = include_str!("../fixtures/simulator.txt");

fn ok(engine: Engine, text: &str) -> EngineLoad {
    match parse(engine, text) {
        Ok(load) => load,
        Err(e) => panic!("{engine:?}: {e}"),
    }
}

#[test]
fn vllm_v1_fixture() {
    let load = ok(Engine::Vllm, VLLM);
    assert_eq!(
        load,
        EngineLoad {
            waiting: Some(0.0),
            running: Some(0.0),
            kv_usage: Some(0.0),
            prefix_queries: Some(0.0),
            prefix_hits: Some(0.0),
            hit_rate_gauge: None,
            lora: None,
        }
    );
}

#[test]
fn vllm_lora_fixture_takes_the_newest_series() {
    // The excerpt has no waiting/running gauges: no load, although LoRA info is there.
    assert_eq!(parse(Engine::Vllm, VLLM_LORA), Err(MetricsError::NoLoad));
    let text = format!("{VLLM_LORA}vllm:num_requests_waiting 1\n");
    let load = ok(Engine::Vllm, &text);
    assert_eq!(
        load.lora,
        Some(LoraInfo {
            running: vec!["test-lora".into()],
            waiting: vec![],
            max: Some(1),
        })
    );
}

#[test]
fn sglang_fixture() {
    let load = ok(Engine::Sglang, SGLANG);
    assert_eq!(load.waiting, Some(2826.0));
    assert_eq!(load.running, Some(162.0));
    assert_eq!(load.kv_usage, Some(0.28));
    assert_eq!(load.hit_rate_gauge, Some(0.007507552643049313));
    assert_eq!(load.prefix_queries, None);
    assert_eq!(load.lora, None);
    // No counters: the hit rate is the engine's own gauge.
    assert_eq!(hit_rate(&load, &load), Some(0.007507552643049313));
}

#[test]
fn llamacpp_fixture() {
    let load = ok(Engine::LlamaCpp, LLAMACPP);
    assert_eq!(load.waiting, Some(0.0));
    assert_eq!(load.running, Some(0.0));
    assert_eq!(load.kv_usage, None);
    // queried = uncached 31 + cached 0
    assert_eq!(load.prefix_queries, Some(31.0));
    assert_eq!(load.prefix_hits, Some(0.0));
    assert_eq!(load.hit_rate_gauge, None);
}

#[test]
fn llamacpp_without_cached_counter_has_no_prefix_fields() {
    let text = "llamacpp:prompt_tokens_total 31\nllamacpp:requests_processing 1\n\
                llamacpp:requests_deferred 2\nllamacpp:kv_cache_usage_ratio 0.25\n";
    let load = ok(Engine::LlamaCpp, text);
    assert_eq!((load.waiting, load.running), (Some(2.0), Some(1.0)));
    assert_eq!(load.kv_usage, Some(0.25));
    assert_eq!((load.prefix_queries, load.prefix_hits), (None, None));
}

#[test]
fn simulator_fixture() {
    let load = ok(Engine::Vllm, SIMULATOR);
    assert_eq!(
        load,
        EngineLoad {
            waiting: Some(1.0),
            running: Some(2.0),
            kv_usage: Some(0.375),
            prefix_queries: Some(1200.0),
            prefix_hits: Some(800.0),
            hit_rate_gauge: None,
            lora: Some(LoraInfo {
                running: vec!["sql-lora".into()],
                waiting: vec![],
                max: Some(2),
            }),
        }
    );
}

#[test]
fn trtllm_names() {
    let text = "# TYPE trtllm_num_requests_waiting gauge\n\
                trtllm_num_requests_waiting{model_name=\"m\",engine_type=\"trtllm\"} 4\n\
                trtllm_num_requests_running{model_name=\"m\"} 3\n\
                trtllm_kv_cache_utilization{model_name=\"m\"} 0.5\n";
    let load = ok(Engine::TrtLlm, text);
    assert_eq!(
        (load.waiting, load.running, load.kv_usage),
        (Some(4.0), Some(3.0), Some(0.5))
    );
}

#[test]
fn detect_names_each_engine() {
    assert_eq!(Engine::detect(VLLM), Some(Engine::Vllm));
    assert_eq!(Engine::detect(SIMULATOR), Some(Engine::Vllm));
    assert_eq!(Engine::detect(SGLANG), Some(Engine::Sglang));
    assert_eq!(Engine::detect(LLAMACPP), Some(Engine::LlamaCpp));
    assert_eq!(
        Engine::detect("python_gc_objects_collected_total 1\ntrtllm_num_requests_running 0\n"),
        Some(Engine::TrtLlm)
    );
    assert_eq!(Engine::detect("# HELP vllm:x y\nup 1\n"), None);
    assert_eq!(Engine::detect(""), None);
}

#[test]
fn series_are_summed_and_kv_is_the_maximum() {
    let text = "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
                vllm:num_requests_running{engine=\"1\",model_name=\"m\"} 2.0\n\
                vllm:num_requests_waiting{engine=\"0\"} 4\n\
                vllm:num_requests_waiting{engine=\"1\"} 1\n\
                vllm:kv_cache_usage_perc{engine=\"0\"} 0.25\n\
                vllm:kv_cache_usage_perc{engine=\"1\"} 0.75\n\
                vllm:prefix_cache_queries_total{engine=\"0\"} 100\n\
                vllm:prefix_cache_queries_total{engine=\"1\"} 50\n\
                vllm:prefix_cache_hits_total{engine=\"0\"} 40\n\
                vllm:prefix_cache_hits_total{engine=\"1\"} 10\n";
    let load = ok(Engine::Vllm, text);
    assert_eq!(load.running, Some(5.0));
    assert_eq!(load.waiting, Some(5.0));
    assert_eq!(load.kv_usage, Some(0.75));
    assert_eq!(
        (load.prefix_queries, load.prefix_hits),
        (Some(150.0), Some(50.0))
    );
    let sg = "sglang:num_queue_reqs{tp_rank=\"0\"} 3\nsglang:num_queue_reqs{tp_rank=\"1\"} 11\n\
              sglang:cache_hit_rate{tp_rank=\"0\"} 0.2\nsglang:cache_hit_rate{tp_rank=\"1\"} 0.6\n";
    let load = ok(Engine::Sglang, sg);
    assert_eq!((load.waiting, load.hit_rate_gauge), (Some(14.0), Some(0.6)));
}

#[test]
fn counters_with_and_without_total_and_old_kv_name() {
    let bare = "vllm:num_requests_waiting 0\nvllm:prefix_cache_queries 200\n\
                vllm:prefix_cache_hits 50\nvllm:gpu_cache_usage_perc 0.5\n";
    let load = ok(Engine::Vllm, bare);
    assert_eq!(
        (load.prefix_queries, load.prefix_hits),
        (Some(200.0), Some(50.0))
    );
    assert_eq!(load.kv_usage, Some(0.5));
    // `_created` is a timestamp, not the counter.
    let created = "vllm:num_requests_waiting 0\nvllm:prefix_cache_queries_created 1.7e+09\n";
    assert_eq!(ok(Engine::Vllm, created).prefix_queries, None);
}

#[test]
fn kv_and_hit_gauges_are_clamped() {
    let text = "sglang:num_queue_reqs 0\nsglang:token_usage 1.5\nsglang:cache_hit_rate 87.5\n";
    let load = ok(Engine::Sglang, text);
    assert_eq!((load.kv_usage, load.hit_rate_gauge), (Some(1.0), Some(1.0)));
}

#[test]
fn hit_rate_between_readings() {
    let at = |q: f64, h: f64| EngineLoad {
        prefix_queries: Some(q),
        prefix_hits: Some(h),
        hit_rate_gauge: Some(0.9),
        ..EngineLoad::default()
    };
    assert_eq!(hit_rate(&at(1000.0, 400.0), &at(2000.0, 900.0)), Some(0.5));
    assert_eq!(hit_rate(&at(100.0, 40.0), &at(200.0, 140.0)), Some(1.0));
    // Restart: counters went backwards.
    assert_eq!(
        hit_rate(&at(59_681_175.0, 24_623_808.0), &at(1_064_911.0, 612_032.0)),
        None
    );
    assert_eq!(hit_rate(&at(100.0, 90.0), &at(150.0, 10.0)), None);
    // Idle: nothing queried in between.
    assert_eq!(hit_rate(&at(100.0, 40.0), &at(100.0, 40.0)), None);
    // No counters: the gauge of the current reading.
    let gauge = EngineLoad {
        hit_rate_gauge: Some(0.3),
        ..EngineLoad::default()
    };
    assert_eq!(hit_rate(&EngineLoad::default(), &gauge), Some(0.3));
    assert_eq!(
        hit_rate(&EngineLoad::default(), &EngineLoad::default()),
        None
    );
}

#[test]
fn escaped_labels_timestamps_and_bad_values() {
    let text = "vllm:num_requests_waiting{model_name=\"a\\\"}b,c{\\\\\\n\"} 2 1790347303000\n\
                vllm:num_requests_running{model_name=\"x}\"} NaN\n\
                vllm:num_requests_running{model_name=\"y\"} +Inf\n\
                vllm:num_requests_running{model_name=\"z\"} -1\n\
                vllm:kv_cache_usage_perc -Inf\n\
                vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"c\\\",d\"} 5\n";
    let load = ok(Engine::Vllm, text);
    assert_eq!(load.waiting, Some(2.0));
    assert_eq!(load.running, None);
    assert_eq!(load.kv_usage, None);
    assert_eq!(
        load.lora,
        Some(LoraInfo {
            running: vec!["a".into(), "b".into()],
            waiting: vec!["c\"".into(), "d".into()],
            max: Some(4),
        })
    );
}

#[test]
fn malformed_inputs() {
    assert_eq!(parse(Engine::Vllm, ""), Err(MetricsError::Malformed));
    assert_eq!(
        parse(Engine::Vllm, "<html>502 Bad Gateway</html>\n"),
        Err(MetricsError::Malformed)
    );
    assert_eq!(
        parse(
            Engine::Vllm,
            "# HELP vllm:num_requests_waiting x\n# TYPE vllm:num_requests_waiting gauge\n"
        ),
        Err(MetricsError::Malformed)
    );
    assert_eq!(
        parse(Engine::Vllm, "vllm:num_requests_waiting{ 3\n"),
        Err(MetricsError::Malformed)
    );
    // Samples, but the only load value is NaN: no load.
    assert_eq!(
        parse(Engine::Vllm, "vllm:num_requests_waiting NaN\n"),
        Err(MetricsError::NoLoad)
    );
    // Another engine's text.
    assert_eq!(parse(Engine::Vllm, SGLANG), Err(MetricsError::NoLoad));
    assert_eq!(parse(Engine::Sglang, VLLM), Err(MetricsError::NoLoad));
}

#[test]
fn text_past_the_bound_is_ignored() {
    let mut text = String::from("vllm:num_requests_waiting 1\n");
    while text.len() < MAX_BYTES + 10 {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    text.push_str("vllm:num_requests_running 7\n");
    assert_eq!(ok(Engine::Vllm, &text).running, None);
    let many = "up 1\n".repeat(MAX_LINES) + "vllm:num_requests_running 7\n";
    assert_eq!(parse(Engine::Vllm, &many), Err(MetricsError::NoLoad));
}

proptest! {
    #[test]
    fn never_panics_on_any_string(s in ".*") {
        for e in Engine::ALL {
            let _ = parse(e, &s);
        }
        let _ = Engine::detect(&s);
    }

    #[test]
    fn never_panics_on_mutated_fixtures(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = [VLLM, SGLANG, LLAMACPP, SIMULATOR][which];
        let mut bytes = text.as_bytes().to_vec();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let s = String::from_utf8_lossy(&bytes);
        for e in Engine::ALL {
            if let Ok(load) = parse(e, &s) {
                for v in [load.waiting, load.running, load.kv_usage, load.prefix_queries,
                          load.prefix_hits, load.hit_rate_gauge].into_iter().flatten() {
                    prop_assert!(v.is_finite() && v >= 0.0);
                }
                for v in [load.kv_usage, load.hit_rate_gauge].into_iter().flatten() {
                    prop_assert!(v <= 1.0);
                }
            }
        }
    }
}
