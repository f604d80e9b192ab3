//! The continuous-batching scheduler, after vLLM V1's: pure logic (no I/O, time passed in), so
//! it is tested step by step.
//!
//! A sequence has `tokens` (prompt, then the answer so far) and `num_computed` of them in the KV
//! cache. Each step has a budget of `max_batched_tokens`:
//! 1. running sequences first, oldest first: each gets its remaining tokens (one when decoding,
//!    a chunk of its prompt when prefilling); when its KV blocks cannot grow, the youngest
//!    running sequence is preempted (blocks freed, back to the front of the queue, recomputed
//!    later), possibly itself;
//! 2. then, if nothing was preempted, waiting sequences in arrival order while the batch has
//!    room (`max_num_seqs`), budget and KV blocks: leading blocks found in the prefix cache are
//!    not recomputed; a sequence whose LoRA adapter cannot be loaded (every slot busy) is passed
//!    over, one that does not fit in the cache stops admission (first come, first served).
//!
//! When a sequence has all its tokens computed after a step, it samples its next token.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::kv_cache::{BlockId, KvCache};
use super::prefix;
use crate::config::StepCost;
use crate::lora::{LoraSlots, Slot};
use crate::sampler::Sampler;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_num_seqs: usize,
    pub max_batched_tokens: usize,
    pub max_model_len: usize,
    pub kv_blocks: usize,
    pub block_size: usize,
    pub max_loras: usize,
}

/// A request handed to the scheduler.
#[derive(Debug)]
pub struct NewSeq {
    pub id: u64,
    /// Prompt token ids (non-empty prompts are not required).
    pub prompt: Vec<u64>,
    pub max_tokens: usize,
    /// Index of the LoRA adapter, `None` for the base model.
    pub lora: Option<usize>,
    pub sampler: Sampler,
    pub arrival: Instant,
}

#[derive(Debug)]
struct Seq {
    id: u64,
    tokens: Vec<u64>,
    prompt_len: usize,
    max_tokens: usize,
    lora: Option<usize>,
    sampler: Sampler,
    num_computed: usize,
    blocks: Vec<BlockId>,
    /// Hashes of the full blocks of `tokens`.
    hashes: Vec<u64>,
    /// Leading blocks already registered in the prefix cache.
    registered: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    cached_tokens: Option<usize>,
    arrival: Instant,
    first_scheduled: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Seq {
    fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// The end of an answer, with its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// What one sequence produced in a step: a token, the end, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub id: u64,
    pub text: Option<String>,
    pub finish: Option<Finish>,
}

/// The work of one step.
#[derive(Debug, Default)]
pub struct Plan {
    /// (index in the running list, sequence id, tokens to compute).
    items: Vec<(usize, u64, usize)>,
    pub prefill_tokens: usize,
    pub decode_seqs: usize,
    pub lora_loads: usize,
    pub preempted: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sequences in the step.
    pub fn num_seqs(&self) -> usize {
        self.items.len()
    }

    /// Simulated duration of the step.
    pub fn cost(&self, c: &StepCost) -> Duration {
        let times = |d: Duration, n: usize| d.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        c.base
            .saturating_add(times(c.prefill_per_token, self.prefill_tokens))
            .saturating_add(times(c.decode_per_seq, self.decode_seqs))
            .saturating_add(times(c.lora_load, self.lora_loads))
    }
}

/// Per-step observations for the metrics (seconds).
#[derive(Debug, Default)]
pub struct StepStats {
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub ttft: Vec<f64>,
    pub itl: Vec<f64>,
    pub e2e: Vec<f64>,
    pub queue: Vec<f64>,
    pub requests: Vec<RequestStats>,
    pub finished: Vec<FinishReason>,
}

/// Phases and sizes of a finished request, as vLLM observes them (seconds, tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestStats {
    /// First admission to first token.
    pub prefill: f64,
    /// First token to last token.
    pub decode: f64,
    /// First admission to last token.
    pub inference: f64,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    pub max_tokens: usize,
}

/// Scheduler state: the queue, the batch, the KV cache and the LoRA slots.
#[derive(Debug)]
pub struct Scheduler {
    limits: Limits,
    kv: KvCache,
    loras: LoraSlots,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Cumulative prefix-cache queries and hits, in tokens (vLLM's counters).
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    first_admissions: usize,
}

impl Scheduler {
    pub fn new(limits: Limits) -> Self {
        Self {
            kv: KvCache::new(limits.kv_blocks, limits.block_size),
            loras: LoraSlots::new(limits.max_loras),
            limits,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            first_admissions: 0,
        }
    }

    pub fn add(&mut self, seq: NewSeq) {
        let prompt_len = seq.prompt.len();
        self.waiting.push_back(Seq {
            id: seq.id,
            tokens: seq.prompt,
            prompt_len,
            max_tokens: seq.max_tokens,
            lora: seq.lora,
            sampler: seq.sampler,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            registered: 0,
            cached_tokens: None,
            arrival: seq.arrival,
            first_scheduled: None,
            first_token: None,
            last_token: None,
        });
    }

    /// Drops a sequence (its client went away); `Some(admitted before)` if it was known. Its
    /// cached blocks stay.
    pub fn abort(&mut self, id: u64) -> Option<bool> {
        if let Some(pos) = self.running.iter().position(|s| s.id == id) {
            let seq = self.running.remove(pos);
            self.kv.release(seq.blocks);
            return Some(true);
        }
        let pos = self.waiting.iter().position(|s| s.id == id)?;
        let seq = self.waiting.remove(pos)?;
        let admitted = seq.cached_tokens.is_some();
        self.kv.release(seq.blocks);
        Some(admitted)
    }

    /// Sequences admitted to the batch for the first time since the last call.
    pub fn take_first_admissions(&mut self) -> usize {
        std::mem::take(&mut self.first_admissions)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    pub fn lora_loads(&self) -> u64 {
        self.loras.loads()
    }

    /// Ids of sequences in the batch and in the queue.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.running.iter().chain(&self.waiting).map(|s| s.id)
    }

    /// Ids of the sequences in the batch, oldest first.
    pub fn running_ids(&self) -> Vec<u64> {
        self.running.iter().map(|s| s.id).collect()
    }

    /// Distinct adapters of running and of waiting sequences, sorted.
    pub fn lora_sets(&self) -> (Vec<usize>, Vec<usize>) {
        let set = |it: &mut dyn Iterator<Item = Option<usize>>| {
            let mut v: Vec<usize> = it.flatten().collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        (
            set(&mut self.running.iter().map(|s| s.lora)),
            set(&mut self.waiting.iter().map(|s| s.lora)),
        )
    }

    fn preempt_youngest(&mut self) -> bool {
        let Some(mut seq) = self.running.pop() else {
            return false;
        };
        self.kv.release(std::mem::take(&mut seq.blocks));
        seq.num_computed = 0;
        seq.registered = 0;
        self.preemptions += 1;
        self.waiting.push_front(seq);
        true
    }

    /// Chooses the work of the next step at time `now`.
    pub fn schedule(&mut self, now: Instant) -> Plan {
        let bs = self.limits.block_size;
        let mut plan = Plan::default();
        let mut budget = self.limits.max_batched_tokens;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let need = seq.tokens.len() - seq.num_computed;
            let n = need.min(budget);
            let target = seq.num_computed + n;
            let mut fits = true;
            while !self.kv.allocate(&mut self.running[i].blocks, target) {
                let is_self = self.running.len() == i + 1;
                self.preempt_youngest();
                plan.preempted += 1;
                if is_self {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            let seq = &self.running[i];
            plan.items.push((i, seq.id, n));
            if need == 1 && seq.output_len() > 0 {
                plan.decode_seqs += 1;
            } else {
                plan.prefill_tokens += n;
            }
            budget -= n;
            i += 1;
        }

        let mut j = 0;
        while plan.preempted == 0
            && j < self.waiting.len()
            && self.running.len() < self.limits.max_num_seqs
            && budget > 0
        {
            if let Some(adapter) = self.waiting[j].lora {
                let running = &self.running;
                match self
                    .loras
                    .acquire(adapter, |a| running.iter().any(|s| s.lora == Some(a)))
                {
                    Slot::Busy => {
                        j += 1;
                        continue;
                    }
                    Slot::Loaded => plan.lora_loads += 1,
                    Slot::Resident => {}
                }
            }
            let seq = &mut self.waiting[j];
            let mut hits = Vec::new();
            if seq.blocks.is_empty() {
                prefix::extend_hashes(&mut seq.hashes, &seq.tokens, bs, seq.lora);
                hits = self.kv.lookup(&seq.hashes);
                // The last token is always computed: its logits give the next token.
                while !hits.is_empty() && hits.len() * bs >= seq.tokens.len() {
                    hits.pop();
                }
            }
            let cached = hits.len() * bs;
            let n = (seq.tokens.len() - cached).min(budget);
            let mut blocks = hits;
            for b in &blocks {
                self.kv.acquire(*b);
            }
            let num_hits = blocks.len();
            if !self.kv.allocate(&mut blocks, cached + n) {
                self.kv.release(blocks);
                break;
            }
            seq.blocks = blocks;
            seq.num_computed = cached;
            seq.registered = num_hits;
            if seq.cached_tokens.is_none() {
                seq.cached_tokens = Some(cached);
                seq.first_scheduled = Some(now);
                self.first_admissions += 1;
                self.prefix_queries += seq.prompt_len as u64;
                self.prefix_hits += cached.min(seq.prompt_len) as u64;
            }
            let Some(seq) = self.waiting.remove(j) else {
                break;
            };
            plan.items.push((self.running.len(), seq.id, n));
            plan.prefill_tokens += n;
            budget -= n;
            self.running.push(seq);
        }
        plan
    }

    /// Applies a step planned by [`schedule`](Self::schedule) that ended at `now`.
    pub fn complete(&mut self, plan: &Plan, now: Instant) -> (Vec<Output>, StepStats) {
        let bs = self.limits.block_size;
        let mut outputs = Vec::new();
        let mut stats = StepStats::default();
        let mut finished = Vec::new();
        for &(i, id, n) in &plan.items {
            let Some(seq) = self.running.get_mut(i).filter(|s| s.id == id) else {
                continue;
            };
            seq.num_computed = (seq.num_computed + n).min(seq.tokens.len());
            prefix::extend_hashes(
                &mut seq.hashes,
                &seq.tokens[..seq.num_computed],
                bs,
                seq.lora,
            );
            while seq.registered < seq.num_computed / bs && seq.registered < seq.blocks.len() {
                self.kv
                    .register(seq.blocks[seq.registered], seq.hashes[seq.registered]);
                seq.registered += 1;
            }
            if seq.num_computed < seq.tokens.len() {
                continue; // a prompt chunk: no token yet
            }
            let index = seq.output_len();
            let mut output = Output {
                id,
                text: None,
                finish: None,
            };
            let mut reason = None;
            if seq.max_tokens == 0 {
                reason = Some(FinishReason::Length);
            } else {
                let sampled = seq.sampler.next(index);
                seq.tokens.push(sampled.id);
                stats.generation_tokens += 1;
                match seq.last_token {
                    None => {
                        stats.prompt_tokens += seq.prompt_len as u64;
                        stats.ttft.push((now - seq.arrival).as_secs_f64());
                        seq.first_token = Some(now);
                    }
                    Some(last) => stats.itl.push((now - last).as_secs_f64()),
                }
                seq.last_token = Some(now);
                output.text = Some(sampled.text);
                if sampled.stop {
                    reason = Some(FinishReason::Stop);
                } else if seq.output_len() >= seq.max_tokens
                    || seq.tokens.len() >= self.limits.max_model_len
                {
                    reason = Some(FinishReason::Length);
                }
            }
            if let Some(reason) = reason {
                output.finish = Some(Finish {
                    reason,
                    prompt_tokens: seq.prompt_len,
                    completion_tokens: seq.output_len(),
                    cached_tokens: seq.cached_tokens.unwrap_or(0),
                });
                stats.finished.push(reason);
                stats.e2e.push((now - seq.arrival).as_secs_f64());
                let scheduled = seq.first_scheduled.unwrap_or(seq.arrival);
                stats.queue.push((scheduled - seq.arrival).as_secs_f64());
                let first = seq.first_token.unwrap_or(now);
                let last = seq.last_token.unwrap_or(now);
                stats.requests.push(RequestStats {
                    prefill: (first - scheduled).as_secs_f64(),
                    decode: (last - first).as_secs_f64(),
                    inference: (last - scheduled).as_secs_f64(),
                    prompt_tokens: seq.prompt_len,
                    generation_tokens: seq.output_len(),
                    max_tokens: seq.max_tokens,
                });
                finished.push(id);
            }
            outputs.push(output);
        }
        if !finished.is_empty() {
            let mut kept = Vec::with_capacity(self.running.len());
            for seq in self.running.drain(..) {
                if finished.contains(&seq.id) {
                    self.kv.release(seq.blocks);
                } else {
                    kept.push(seq);
                }
            }
            self.running = kept;
        }
        (outputs, stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;
    use crate::sampler::StopSpec;

    fn limits() -> Limits {
        Limits {
            max_num_seqs: 4,
            max_batched_tokens: 64,
            max_model_len: 256,
            kv_blocks: 64,
            block_size: 4,
            max_loras: 1,
        }
    }

    fn seq(id: u64, prompt_len: usize, max_tokens: usize, t0: Instant) -> NewSeq {
        NewSeq {
            id,
            prompt: (0..prompt_len as u64).map(|t| t + 1000 * id).collect(),
            max_tokens,
            lora: None,
            sampler: Sampler::new(Mode::Echo, "a b c", 0, 0.0, StopSpec::default()),
            arrival: t0,
        }
    }

    /// Runs steps until idle, returning every output and the number of steps.
    fn run(s: &mut Scheduler, t0: Instant) -> (Vec<Output>, usize) {
        let mut out = Vec::new();
        let mut steps = 0;
        while !s.is_idle() {
            let plan = s.schedule(t0);
            assert!(!plan.is_empty(), "no progress");
            out.extend(s.complete(&plan, t0).0);
            steps += 1;
            assert!(steps < 10_000);
        }
        (out, steps)
    }

    #[test]
    fn prefill_gives_the_first_token_then_one_per_step() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        s.add(seq(1, 10, 3, t0));
        let plan = s.schedule(t0);
        assert_eq!((plan.prefill_tokens, plan.decode_seqs), (10, 0));
        let (out, stats) = s.complete(&plan, t0);
        assert_eq!(out[0].text.as_deref(), Some("a"));
        assert_eq!(stats.ttft.len(), 1);
        let plan = s.schedule(t0);
        assert_eq!((plan.prefill_tokens, plan.decode_seqs), (0, 1));
        let (out, _) = s.complete(&plan, t0);
        assert_eq!(out[0].text.as_deref(), Some(" b"));
        let plan = s.schedule(t0);
        let (out, stats) = s.complete(&plan, t0);
        let f = out[0].finish.expect("finished at max_tokens");
        assert_eq!(f.reason, FinishReason::Length);
        assert_eq!((f.prompt_tokens, f.completion_tokens), (10, 3));
        assert_eq!(stats.e2e.len(), 1);
        assert!(s.is_idle());
        assert_eq!(s.kv().num_free(), 64, "blocks released");
    }

    #[test]
    fn long_prompts_are_chunked_by_the_token_budget() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        s.add(seq(1, 150, 1, t0));
        let sizes: Vec<usize> = (0..3)
            .map(|_| {
                let p = s.schedule(t0);
                let n = p.prefill_tokens;
                s.complete(&p, t0);
                n
            })
            .collect();
        assert_eq!(sizes, [64, 64, 22]);
        assert!(s.is_idle(), "one token after the last chunk");
    }

    #[test]
    fn batch_is_capped_and_decodes_share_the_budget() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        for id in 0..6 {
            s.add(seq(id, 8, 5, t0));
        }
        let plan = s.schedule(t0);
        assert_eq!(plan.num_seqs(), 4, "max_num_seqs");
        assert_eq!(s.num_waiting(), 2);
        s.complete(&plan, t0);
        let plan = s.schedule(t0);
        assert_eq!(plan.decode_seqs, 4);
        let (out, _) = run(&mut s, t0);
        assert_eq!(out.iter().filter(|o| o.finish.is_some()).count(), 6);
    }

    #[test]
    fn prefix_cache_skips_cached_blocks_and_counts_tokens() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        s.add(seq(1, 10, 1, t0));
        run(&mut s, t0);
        assert_eq!((s.prefix_queries, s.prefix_hits), (10, 0));
        // Same prompt again: 2 full blocks (8 tokens) cached, 2 computed.
        s.add(seq(1, 10, 1, t0));
        let plan = s.schedule(t0);
        assert_eq!(plan.prefill_tokens, 2);
        let (out, _) = s.complete(&plan, t0);
        assert_eq!(out[0].finish.expect("done").cached_tokens, 8);
        assert_eq!((s.prefix_queries, s.prefix_hits), (20, 8));
        // A prompt exactly 2 blocks long: its last token is recomputed (one block short).
        s.add(seq(1, 8, 1, t0));
        let plan = s.schedule(t0);
        assert_eq!(plan.prefill_tokens, 4);
        s.complete(&plan, t0);
        // Another prompt shares nothing.
        s.add(seq(2, 10, 1, t0));
        assert_eq!(s.schedule(t0).prefill_tokens, 10);
    }

    #[test]
    fn full_cache_queues_then_preempts_the_youngest() {
        let t0 = Instant::now();
        let mut l = limits();
        l.kv_blocks = 6; // 24 tokens
        let mut s = Scheduler::new(l);
        s.add(seq(1, 8, 8, t0)); // 2 blocks, grows to 4
        s.add(seq(2, 8, 8, t0));
        s.add(seq(3, 8, 8, t0)); // 6 blocks in all: the cache is full
        let plan = s.schedule(t0);
        assert_eq!(plan.num_seqs(), 3);
        let mut out = s.complete(&plan, t0).0;
        assert_eq!(s.kv().num_free(), 0);
        // Each now needs a third block for token 9: the oldest gets one by preempting the youngest.
        let plan = s.schedule(t0);
        assert!(plan.preempted >= 1);
        assert_eq!(s.preemptions, plan.preempted as u64);
        assert_eq!(s.running_ids()[0], 1, "the oldest keeps running");
        assert_eq!(
            s.waiting.front().map(|q| q.id),
            Some(3),
            "the youngest waits first"
        );
        out.extend(s.complete(&plan, t0).0);
        // A new request now waits: the cache is full.
        s.add(seq(4, 8, 2, t0));
        out.extend(run(&mut s, t0).0);
        // Everything finishes with its full answer, recomputed ones included.
        for id in 1..=4 {
            let f = out
                .iter()
                .find(|o| o.id == id && o.finish.is_some())
                .and_then(|o| o.finish)
                .expect("finished");
            assert_eq!(f.completion_tokens, if id == 4 { 2 } else { 8 });
        }
        let texts: String = out
            .iter()
            .filter(|o| o.id == 3)
            .filter_map(|o| o.text.clone())
            .collect();
        assert_eq!(
            texts, "a b c a b c a b",
            "no token lost or repeated by preemption"
        );
    }

    #[test]
    fn lora_loads_cost_once_and_busy_slots_make_requests_wait() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        let with = |id, lora| NewSeq {
            lora: Some(lora),
            ..seq(id, 4, 3, t0)
        };
        s.add(with(1, 0));
        s.add(with(2, 1)); // max_loras 1: adapter 0 is in use
        s.add(with(3, 0));
        let plan = s.schedule(t0);
        assert_eq!(plan.lora_loads, 1);
        assert_eq!(
            s.running_ids(),
            [1, 3],
            "2 is passed over, 3 uses the loaded adapter"
        );
        assert_eq!(s.lora_sets(), (vec![0], vec![1]));
        let (out, _) = run(&mut s, t0);
        assert_eq!(out.iter().filter(|o| o.finish.is_some()).count(), 3);
        assert_eq!(
            s.lora_loads(),
            2,
            "adapter 1 loaded once adapter 0 was idle"
        );
        s.add(with(4, 1));
        let plan = s.schedule(t0);
        assert_eq!(plan.lora_loads, 0, "still resident");
        let c = StepCost {
            base: Duration::from_millis(1),
            lora_load: Duration::from_millis(100),
            ..StepCost::default()
        };
        assert_eq!(plan.cost(&c), Duration::from_millis(1));
    }

    #[test]
    fn aborted_sequences_free_their_blocks() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        s.add(seq(1, 8, 100, t0));
        s.add(seq(2, 8, 100, t0));
        let plan = s.schedule(t0);
        s.complete(&plan, t0);
        assert_eq!(s.abort(1), Some(true));
        assert_eq!(s.abort(9), None);
        assert_eq!(s.running_ids(), [2]);
        s.add(seq(3, 8, 1, t0));
        assert_eq!(s.abort(3), Some(false), "never admitted");
        assert_eq!(s.abort(2), Some(true));
        assert!(s.is_idle());
        assert_eq!(s.kv().num_free(), 64);
    }

    #[test]
    fn zero_max_tokens_finishes_after_prefill() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(limits());
        s.add(seq(1, 5, 0, t0));
        let (out, steps) = run(&mut s, t0);
        assert_eq!(steps, 1);
        assert_eq!(out[0].text, None);
        assert_eq!(out[0].finish.map(|f| f.completion_tokens), Some(0));
    }
}
