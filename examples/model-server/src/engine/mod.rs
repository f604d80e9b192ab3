//! The simulated engine: one tokio task owns the scheduler and runs its step loop; requests reach
//! it over a channel and each gets its tokens back over its own channel. A step sleeps for its
//! simulated cost (tokio time, so tests can run it on a paused clock), then delivers the tokens
//! it produced. Nothing else touches the engine state, so there are no locks on the hot path; the
//! metrics are copied out under a short lock after each step.

pub mod kv_cache;
pub mod prefix;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{EngineConfig, StepCost};
use crate::metrics::Metrics;
use crate::sampler::Sampler;
pub use scheduler::{Finish, FinishReason, Output};
use scheduler::{Limits, NewSeq, Scheduler, StepStats};

/// How far behind its own schedule the engine may fall and still catch up (run the next step
/// shorter); beyond that (an overloaded machine) it restarts from the present.
const CATCH_UP: std::time::Duration = std::time::Duration::from_millis(2);

/// A request for the engine.
#[derive(Debug)]
pub struct Request {
    pub prompt: Vec<u64>,
    pub max_tokens: usize,
    pub lora: Option<usize>,
    pub sampler: Sampler,
    /// When the request arrived (TTFT, queue time and e2e latency count from here).
    pub arrival: Instant,
}

/// Why a request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the waiting queue is full ({0} requests)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
}

struct Submit {
    id: u64,
    request: Request,
    tx: mpsc::UnboundedSender<Output>,
}

/// Handle on the engine task; the task ends once every handle is dropped and its work is done.
pub struct Engine {
    tx: mpsc::UnboundedSender<Submit>,
    /// Requests submitted and not yet admitted to the batch: bounds the queue (and the submit
    /// channel) at `max_waiting`, checked without a round trip to the engine task.
    queued: Arc<AtomicUsize>,
    max_waiting: usize,
    next_id: AtomicU64,
    metrics: Arc<Mutex<Metrics>>,
    loras: Vec<String>,
}

impl Engine {
    /// Starts the engine task (needs a tokio runtime).
    pub fn start(cfg: &EngineConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Mutex::new(Metrics {
            block_size: cfg.block_size,
            num_gpu_blocks: cfg.kv_blocks,
            ..Metrics::new(
                (!cfg.loras.is_empty()).then_some(cfg.max_loras),
                cfg.max_model_len,
            )
        }));
        let scheduler = Scheduler::new(Limits {
            max_num_seqs: cfg.max_num_seqs,
            max_batched_tokens: cfg.max_batched_tokens,
            max_model_len: cfg.max_model_len,
            kv_blocks: cfg.kv_blocks,
            block_size: cfg.block_size,
            max_loras: cfg.max_loras,
        });
        let task = EngineTask {
            scheduler,
            cost: cfg.cost,
            senders: HashMap::new(),
            queued: queued.clone(),
            metrics: metrics.clone(),
            loras: cfg.loras.clone(),
        };
        tokio::spawn(task.run(rx));
        Self {
            tx,
            queued,
            max_waiting: cfg.max_waiting,
            next_id: AtomicU64::new(1),
            metrics,
            loras: cfg.loras.clone(),
        }
    }

    /// Queues `request`; its outputs arrive on the returned channel, the last one with `finish`.
    /// Dropping the receiver aborts the request.
    pub fn submit(&self, request: Request) -> Result<mpsc::UnboundedReceiver<Output>, SubmitError> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(self.max_waiting));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Submit { id, request, tx }).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }

    /// A copy of the current metrics.
    pub fn metrics(&self) -> Metrics {
        self.metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Index of the LoRA adapter called `name`.
    pub fn lora_index(&self, name: &str) -> Option<usize> {
        self.loras.iter().position(|l| l == name)
    }
}

struct EngineTask {
    scheduler: Scheduler,
    cost: StepCost,
    senders: HashMap<u64, mpsc::UnboundedSender<Output>>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Mutex<Metrics>>,
    loras: Vec<String>,
}

impl EngineTask {
    fn add(&mut self, s: Submit) {
        self.senders.insert(s.id, s.tx);
        self.scheduler.add(NewSeq {
            id: s.id,
            prompt: s.request.prompt,
            max_tokens: s.request.max_tokens,
            lora: s.request.lora,
            sampler: s.request.sampler,
            arrival: s.request.arrival,
        });
    }

    /// Aborts requests whose client went away (receiver dropped).
    fn abort_closed(&mut self) {
        let gone: Vec<u64> = self
            .scheduler
            .ids()
            .filter(|id| self.senders.get(id).is_none_or(|tx| tx.is_closed()))
            .collect();
        for id in gone {
            // One never admitted still holds a queue slot.
            if self.scheduler.abort(id) == Some(false) {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
            self.senders.remove(&id);
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Submit>) {
        let mut open = true;
        // End of the last simulated step, while the engine is busy.
        let mut deadline: Option<Instant> = None;
        loop {
            while open {
                match rx.try_recv() {
                    Ok(s) => self.add(s),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            self.abort_closed();
            if self.scheduler.is_idle() {
                self.publish(None);
                if !open {
                    return;
                }
                deadline = None;
                match rx.recv().await {
                    Some(s) => self.add(s),
                    None => return,
                }
                continue;
            }
            let plan = self.scheduler.schedule(Instant::now());
            self.release_queue_slots();
            // As vLLM, the gauges show the batch being computed during the step.
            self.publish(None);
            if plan.is_empty() {
                // Cannot happen with validated limits (a lone request always fits); wait for
                // new work rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            let cost = plan.cost(&self.cost);
            if cost.is_zero() {
                tokio::task::yield_now().await;
            } else {
                // Back-to-back steps are timed from the previous step's deadline, not from when
                // the timer fired: tokio timers round up to the millisecond, and sub-millisecond
                // costs would otherwise add up to a slower engine than modelled.
                let now = Instant::now();
                let start = match deadline {
                    Some(d) if d + CATCH_UP >= now => d,
                    _ => now,
                };
                let end = start
                    .checked_add(cost)
                    .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400));
                deadline = Some(end);
                tokio::time::sleep_until(end).await;
            }
            let (outputs, stats) = self.scheduler.complete(&plan, Instant::now());
            // Metrics first: a client that got its last token and then scrapes sees it counted.
            self.publish(Some(stats));
            for out in outputs {
                let done = out.finish.is_some();
                let id = out.id;
                if let Some(tx) = self.senders.get(&id) {
                    let _ = tx.send(out);
                }
                if done {
                    self.senders.remove(&id);
                }
            }
        }
    }

    /// Frees the queue slots of requests that have been admitted at least once.
    fn release_queue_slots(&mut self) {
        let admitted = self.scheduler.take_first_admissions();
        if admitted > 0 {
            self.queued.fetch_sub(admitted, Ordering::AcqRel);
        }
    }

    fn publish(&self, stats: Option<StepStats>) {
        let mut m = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        let s = &self.scheduler;
        m.num_requests_running = s.num_running();
        m.num_requests_waiting = s.num_waiting();
        m.kv_cache_usage = s.kv_usage();
        m.prefix_cache_queries = s.prefix_queries;
        m.prefix_cache_hits = s.prefix_hits;
        m.num_preemptions = s.preemptions;
        if m.max_lora.is_some() {
            let (running, waiting) = s.lora_sets();
            let name = |i: usize| self.loras.get(i).cloned().unwrap_or_default();
            m.running_lora_adapters = running.into_iter().map(name).collect();
            m.waiting_lora_adapters = waiting.into_iter().map(name).collect();
            m.lora_info_time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
        }
        let Some(stats) = stats else {
            return;
        };
        m.prompt_tokens += stats.prompt_tokens;
        m.generation_tokens += stats.generation_tokens;
        m.iteration_tokens
            .observe((stats.prompt_tokens + stats.generation_tokens) as f64);
        for r in &stats.requests {
            m.prefill_time.observe(r.prefill);
            m.decode_time.observe(r.decode);
            m.inference_time.observe(r.inference);
            m.request_prompt_tokens.observe(r.prompt_tokens as f64);
            m.request_generation_tokens
                .observe(r.generation_tokens as f64);
            m.request_max_tokens.observe(r.max_tokens as f64);
        }
        for v in stats.ttft {
            m.ttft.observe(v);
        }
        for v in stats.itl {
            m.itl.observe(v);
        }
        for v in stats.e2e {
            m.e2e.observe(v);
        }
        for v in stats.queue {
            m.queue.observe(v);
        }
        for r in stats.finished {
            match r {
                FinishReason::Stop => m.success_stop += 1,
                FinishReason::Length => m.success_length += 1,
            }
        }
    }
}
