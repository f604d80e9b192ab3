//! The engine's timing model on a paused tokio clock: time only moves when the engine sleeps for
//! a step, so every latency below is exactly the sum of the step costs, run after run.

use std::time::Duration;

use infermesh_model_server::engine::{Engine, Finish, FinishReason, Request};
use infermesh_model_server::sampler::{self, Sampler, StopSpec};
use infermesh_model_server::{EngineConfig, Mode, StepCost, tokenizer};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Prefill cost per token: whole milliseconds for the prompt sizes below, as tokio timers have a
/// millisecond resolution.
const PREFILL: Duration = Duration::from_micros(125);

/// Base 1 ms, prefill 0.125 ms per token, decode 1 ms per sequence.
fn config() -> EngineConfig {
    EngineConfig {
        max_model_len: 1024,
        max_num_seqs: 8,
        max_batched_tokens: 1024,
        max_waiting: 64,
        kv_blocks: 256,
        block_size: 16,
        cost: StepCost {
            base: MS,
            prefill_per_token: PREFILL,
            decode_per_seq: MS,
            lora_load: 50 * MS,
        },
        ..EngineConfig::default()
    }
}

/// A prompt of `n` distinct words starting at word `from`.
fn words(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn request(cfg: &EngineConfig, prompt: &str, max_tokens: usize, lora: Option<usize>) -> Request {
    let ids: Vec<u64> = tokenizer::tokenize(prompt)
        .into_iter()
        .map(|t| t.id)
        .collect();
    let seed = sampler::request_seed(cfg.seed, None, &ids);
    Request {
        sampler: Sampler::new(
            cfg.mode,
            prompt,
            seed,
            cfg.mean_output_tokens,
            StopSpec::default(),
        ),
        prompt: ids,
        max_tokens,
        lora,
        arrival: Instant::now(),
    }
}

/// What one request saw: time to first token, the tokens, the end.
#[derive(Debug)]
struct Seen {
    ttft: Duration,
    text: String,
    finish: Finish,
}

async fn collect(mut rx: UnboundedReceiver<infermesh_model_server::engine::Output>) -> Seen {
    let start = Instant::now();
    let mut ttft = None;
    let mut text = String::new();
    while let Some(out) = rx.recv().await {
        if let Some(t) = out.text {
            ttft.get_or_insert(start.elapsed());
            text.push_str(&t);
        }
        if let Some(finish) = out.finish {
            return Seen {
                ttft: ttft.unwrap_or(start.elapsed()),
                text,
                finish,
            };
        }
    }
    panic!("the engine dropped a request");
}

async fn run_one(engine: &Engine, req: Request) -> Seen {
    collect(engine.submit(req).expect("queued")).await
}

#[tokio::test(start_paused = true)]
async fn ttft_grows_with_queue_depth() {
    let cfg = EngineConfig {
        max_num_seqs: 1,
        ..config()
    };
    let engine = Engine::start(&cfg);
    let rxs: Vec<_> = (0..4)
        .map(|k| {
            engine
                .submit(request(&cfg, &words(k * 1000, 96), 2, None))
                .expect("queued")
        })
        .collect();
    let seen: Vec<Seen> = futures_join(rxs).await;
    // One at a time: prefill 96 tokens = 1 + 12 ms, then one decode step 1 + 1 ms.
    let ttfts: Vec<Duration> = seen.iter().map(|s| s.ttft).collect();
    assert_eq!(ttfts, [13 * MS, 28 * MS, 43 * MS, 58 * MS]);
    let m = engine.metrics();
    assert_eq!(m.ttft.count(), 4);
    assert!((m.ttft.sum() - 0.142).abs() < 1e-9, "{}", m.ttft.sum());
    assert_eq!(m.queue.count(), 4);
    assert!((m.queue.sum() - (0.015 + 0.030 + 0.045)).abs() < 1e-9);
    // Each: prefill 13 ms from admission, decode 2 ms, running 15 ms.
    assert!((m.prefill_time.sum() - 0.052).abs() < 1e-9);
    assert!((m.decode_time.sum() - 0.008).abs() < 1e-9);
    assert!((m.inference_time.sum() - 0.060).abs() < 1e-9);
    assert_eq!(m.request_prompt_tokens.sum(), 4.0 * 96.0);
    assert_eq!(m.request_generation_tokens.sum(), 8.0);
    // Steps: 4 prefills (96 prompt + 1 generated token each), 4 decodes of 1 token.
    assert_eq!(m.iteration_tokens.count(), 8);
    assert_eq!(m.iteration_tokens.sum(), 4.0 * 97.0 + 4.0);
    // Batched instead: the four prefill together in one step and decode together.
    let engine = Engine::start(&config());
    let rxs: Vec<_> = (0..4)
        .map(|k| {
            engine
                .submit(request(&cfg, &words(k * 1000, 96), 2, None))
                .expect("queued")
        })
        .collect();
    let seen = futures_join(rxs).await;
    assert!(seen.iter().all(|s| s.ttft == 49 * MS), "{seen:?}");
}

/// Awaits every receiver (they are fed by the engine concurrently).
async fn futures_join(
    rxs: Vec<UnboundedReceiver<infermesh_model_server::engine::Output>>,
) -> Vec<Seen> {
    let handles: Vec<_> = rxs
        .into_iter()
        .map(|rx| tokio::spawn(collect(rx)))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("collector"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_repeated_prefix_skips_its_prefill() {
    let cfg = config();
    let engine = Engine::start(&cfg);
    let prompt = words(0, 256); // 16 full blocks
    let cold = run_one(&engine, request(&cfg, &prompt, 1, None)).await;
    assert_eq!(cold.ttft, MS + 256 * PREFILL);
    assert_eq!(cold.finish.cached_tokens, 0);
    let warm = run_one(&engine, request(&cfg, &prompt, 1, None)).await;
    // 15 blocks come from the cache; the last block is recomputed (its last token's logits).
    assert_eq!(warm.finish.cached_tokens, 240);
    assert_eq!(warm.ttft, MS + 16 * PREFILL);
    assert_eq!(warm.text, cold.text);
    // A shared system prompt with another question: its leading blocks are hits.
    let other = format!("{} {}", words(0, 128), words(5000, 40));
    let shared = run_one(&engine, request(&cfg, &other, 1, None)).await;
    assert_eq!(shared.finish.cached_tokens, 128);
    assert_eq!(shared.ttft, MS + 40 * PREFILL);
    let m = engine.metrics();
    assert_eq!(m.prefix_cache_queries, 256 + 256 + 168);
    assert_eq!(m.prefix_cache_hits, 240 + 128);
    assert_eq!(m.prompt_tokens, 256 + 256 + 168);
    assert_eq!(m.generation_tokens, 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_kv_cache_queues_and_preempts() {
    let cfg = EngineConfig {
        max_model_len: 128,
        kv_blocks: 8, // 128 tokens
        ..config()
    };
    let engine = Engine::start(&cfg);
    // Each grows from 3 blocks to 7: two cannot finish side by side.
    let rxs: Vec<_> = (0..3)
        .map(|k| {
            engine
                .submit(request(&cfg, &words(k * 1000, 48), 60, None))
                .expect("queued")
        })
        .collect();
    let handles: Vec<_> = rxs
        .into_iter()
        .map(|rx| tokio::spawn(collect(rx)))
        .collect();
    // While they run, someone waits and the cache fills up.
    let mut saw_waiting = false;
    let mut max_usage: f64 = 0.0;
    for _ in 0..200 {
        tokio::time::sleep(MS).await;
        let m = engine.metrics();
        saw_waiting |= m.num_requests_waiting > 0 && m.num_requests_running > 0;
        max_usage = max_usage.max(m.kv_cache_usage);
    }
    assert!(saw_waiting);
    assert!(max_usage > 0.8, "{max_usage}");
    for h in handles {
        let seen = h.await.expect("collector");
        assert_eq!(seen.finish.completion_tokens, 60);
        assert_eq!(seen.finish.reason, FinishReason::Length);
    }
    let m = engine.metrics();
    assert!(m.num_preemptions > 0, "no preemption");
    assert_eq!(m.kv_cache_usage, 0.0);
    assert_eq!((m.num_requests_running, m.num_requests_waiting), (0, 0));
    assert_eq!(m.success_length, 3);
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_tokens() {
    let answer = |seed: u64| async move {
        let cfg = EngineConfig {
            seed,
            mode: Mode::Random,
            mean_output_tokens: 8.0,
            ..config()
        };
        let engine = Engine::start(&cfg);
        let mut texts = Vec::new();
        for k in 0..6 {
            let seen = run_one(&engine, request(&cfg, &words(k, 5), 64, None)).await;
            texts.push((seen.text, seen.finish.reason, seen.finish.completion_tokens));
        }
        texts
    };
    let a = answer(1).await;
    assert_eq!(a, answer(1).await);
    assert_ne!(a, answer(2).await);
    // A seeded length distribution ends most answers before max_tokens.
    assert!(
        a.iter()
            .any(|(_, r, n)| *r == FinishReason::Stop && *n < 64),
        "{a:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lora_loads_cost_once_and_the_least_recent_is_evicted() {
    let cfg = EngineConfig {
        loras: vec!["a".into(), "b".into()],
        max_loras: 1,
        ..config()
    };
    let engine = Engine::start(&cfg);
    let step = MS + 8 * PREFILL; // prefill of 8 tokens
    let prompt = words(0, 7);
    let mut ttfts = Vec::new();
    for (lora, k) in [(0, 0), (0, 1), (1, 2), (0, 3), (0, 4)] {
        // Distinct prompts, so the prefix cache does not blur the figures.
        let p = format!("{prompt} q{k}");
        let seen = run_one(&engine, request(&cfg, &p, 1, Some(lora))).await;
        ttfts.push(seen.ttft);
    }
    let load = 50 * MS;
    assert_eq!(
        ttfts,
        [step + load, step, step + load, step + load, step],
        "a loads, stays; b evicts a; a reloads"
    );
    let m = engine.metrics();
    assert_eq!(m.max_lora, Some(1));
    // While b runs, a request for a waits for the slot: both show in lora_requests_info.
    let _running = engine
        .submit(request(&cfg, &words(100, 8), 50, Some(1)))
        .expect("queued");
    tokio::time::sleep(60 * MS).await;
    let _waiting = engine
        .submit(request(&cfg, &words(200, 8), 5, Some(0)))
        .expect("queued");
    tokio::time::sleep(5 * MS).await;
    let m = engine.metrics();
    assert_eq!(m.running_lora_adapters, ["b"]);
    assert_eq!(m.waiting_lora_adapters, ["a"]);
    assert_eq!((m.num_requests_running, m.num_requests_waiting), (1, 1));
    assert!(m.lora_info_time > 1.6e9, "a Unix time");
}

#[tokio::test(start_paused = true)]
async fn the_waiting_queue_is_bounded() {
    let cfg = EngineConfig {
        max_num_seqs: 1,
        max_waiting: 2,
        ..config()
    };
    let engine = Engine::start(&cfg);
    let first = engine.submit(request(&cfg, "a", 50, None)).expect("queued");
    tokio::time::sleep(5 * MS).await; // admitted: leaves the queue
    let _b = engine.submit(request(&cfg, "b", 5, None)).expect("queued");
    let _c = engine.submit(request(&cfg, "c", 5, None)).expect("queued");
    assert!(engine.submit(request(&cfg, "d", 5, None)).is_err());
    drop(first); // the client goes away: aborted, the others move up
    tokio::time::sleep(5 * MS).await;
    assert!(engine.submit(request(&cfg, "e", 5, None)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn sub_millisecond_steps_do_not_drift() {
    // 0.5 ms per decode step: tokio's timers fire on whole milliseconds, yet 100 steps take
    // 50 ms, not 100, because each step is timed from the previous step's deadline.
    let cfg = EngineConfig {
        cost: StepCost {
            base: Duration::from_micros(500),
            ..StepCost::default()
        },
        ..config()
    };
    let engine = Engine::start(&cfg);
    let start = Instant::now();
    let seen = run_one(&engine, request(&cfg, "a b", 100, None)).await;
    assert_eq!(seen.finish.completion_tokens, 100);
    let took = start.elapsed();
    assert!(took >= 50 * MS && took <= 52 * MS, "{took:?}");
}
