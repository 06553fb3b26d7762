//! Continuous batching: one engine loop serves every request.
//!
//! Each request is a *sequence* in one paged KV [`Session`]. Every step the loop builds one
//! ragged [`Batch`]:
//!
//! 1. every sequence that is generating contributes its last sampled token (one position);
//! 2. the rest of the step's token budget goes to sequences still reading their prompt, a chunk
//!    of each in arrival order (chunked prefill: a long prompt never stalls the others for
//!    more than one step's budget);
//!
//! then runs one [`CausalLm::forward_batch`], samples a token for every sequence whose
//! prompt is fully read, and hands each new piece of text to its request's channel. New
//! requests join between steps; a finished, stopped or cancelled sequence (its client went
//! away: the channel is closed) leaves at once and its KV blocks go back to the pool.
//!
//! Full blocks of finished prompts stay in a [prefix cache](crate::prefix): a request whose
//! prompt begins with cached blocks starts on them and reads only the rest.
//!
//! KV blocks are taken as sequences grow. When a step needs more blocks than are free, the
//! most recently admitted sequences are *preempted*: their blocks are freed and they wait at
//! the head of the queue; when they come back they read their prompt and what they had
//! generated again (recomputation, as vLLM does), and go on exactly where they were.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::prefix::PrefixCache;
use tokio::sync::mpsc::UnboundedSender;
use yuanli_infer::{Constraint, Finish, Model, TextStream};
use yuanli_models::{Batch, Logits, Sampler, SamplingParams, SeqId, Session, SessionOpts};
use yuanli_tensor::Rng;

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct SchedulerOpts {
    /// Sequences generating at once at most.
    pub parallel: usize,
    /// Positions in the KV pool (all sequences together).
    pub kv_tokens: usize,
    /// Positions fed to the model per step at most (decodes and prompt chunks together).
    pub step_tokens: usize,
    /// Requests waiting for a slot at most; beyond it [`Scheduler::submit`] refuses.
    pub max_waiting: usize,
    /// Batch-invariant arithmetic ([`SessionOpts::batch_invariant`]): each reply is what the
    /// request gets alone, whatever else runs. On by default.
    pub batch_invariant: bool,
}

impl Default for SchedulerOpts {
    fn default() -> Self {
        SchedulerOpts { parallel: 16, kv_tokens: 32_768, step_tokens: 512, max_waiting: 64, batch_invariant: true }
    }
}

/// One generation to run.
pub struct Job {
    /// The prompt's ids (non-empty; with room for at least one more token in the context).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// How to sample.
    pub params: SamplingParams,
    /// The random seed.
    pub seed: u64,
    /// Stop strings (not returned).
    pub stops: Vec<String>,
    /// `Some(n)`: report each token's log-probability and the `n` most likely alternatives.
    pub top_logprobs: Option<usize>,
    /// Structured output: only tokens this grammar allows are sampled.
    pub constraint: Option<Constraint>,
    /// Where the events go; closing it cancels the job.
    pub events: UnboundedSender<Event>,
}

/// A generated token's log-probability (natural log, under the model's distribution before
/// temperature and truncation) and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first: (text, bytes, log-prob).
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What a job hears.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New text (possibly empty when only log-probabilities are new), and the log-probabilities
    /// of the tokens generated since the last event when they were asked for.
    Text {
        /// Text safe to show (whole characters, no part of a stop string).
        text: String,
        /// One entry per token, when asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// The end.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (end-of-sequence token included).
        completion_tokens: usize,
        /// Prompt tokens found in the prefix cache (not computed).
        cached_tokens: usize,
    },
    /// The job could not run (the message says why).
    Failed(String),
}

/// Why a job was not queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full.
    #[error("the server is busy: {0} requests are already waiting")]
    Busy(usize),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The job can never fit: its prompt needs more KV positions than the pool has.
    #[error("the prompt ({prompt} tokens) does not fit in the KV pool ({pool} positions)")]
    TooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Pool positions.
        pool: usize,
    },
}

/// Counters for `/metrics` (Prometheus), updated by the loop.
#[derive(Debug, Default)]
pub struct Stats {
    /// Sequences in the batch now.
    pub running: AtomicUsize,
    /// Requests queued (preempted ones included).
    pub waiting: AtomicUsize,
    /// KV blocks in use now.
    pub kv_blocks_used: AtomicUsize,
    /// KV blocks in the pool.
    pub kv_blocks_total: AtomicUsize,
    /// Prompt tokens read (first time only).
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Requests finished (any way).
    pub finished: AtomicU64,
    /// Preemptions.
    pub preemptions: AtomicU64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hit_tokens: AtomicU64,
    /// Blocks in the prefix cache now.
    pub prefix_blocks: AtomicUsize,
    /// Engine steps.
    pub steps: AtomicU64,
    /// Time to first token: count, sum (µs), and counts at most each of [`TTFT_BUCKETS`].
    pub ttft_count: AtomicU64,
    /// Sum of the times to first token, in microseconds.
    pub ttft_sum_us: AtomicU64,
    /// Cumulative bucket counts.
    pub ttft_buckets: [AtomicU64; TTFT_BUCKETS.len()],
}

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
pub const TTFT_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Stats {
    fn observe_ttft(&self, secs: f64) {
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_us.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        for (b, &le) in self.ttft_buckets.iter().zip(&TTFT_BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Queue {
    waiting: VecDeque<(Job, Instant)>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Stats,
    max_waiting: usize,
    pool_tokens: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The engine loop's handle: submit jobs, read statistics, shut down.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Scheduler {
    /// Starts the loop on its own thread, with a KV pool of `opts.kv_tokens` positions; fails
    /// only when the operating system refuses a thread.
    pub fn start(model: Arc<Model>, opts: SchedulerOpts) -> std::io::Result<Scheduler> {
        let session = model.lm().new_session(SessionOpts {
            batch_invariant: opts.batch_invariant,
            ..SessionOpts::tokens(opts.kv_tokens.max(1))
        });
        let pool_tokens = session.total_blocks() * session.block_size();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { waiting: VecDeque::new(), shutdown: false }),
            wake: Condvar::new(),
            stats: Stats::default(),
            max_waiting: opts.max_waiting,
            pool_tokens,
        });
        shared.stats.kv_blocks_total.store(session.total_blocks(), Ordering::Relaxed);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("yuanli-engine".into())
            // Its own thread, not a worker of the compute pool: the loop sleeps between requests,
            // and a sleeping pool worker would leave the kernels one thread short.
            .spawn(move || Engine::new(&model, session, &opts).run(&s))?;
        Ok(Scheduler { shared, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// Queues a job; it starts when a slot and KV room are free.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        // A prompt must fit in the pool with one position to spare for the first new token.
        if job.prompt.len() >= self.shared.pool_tokens {
            return Err(SubmitError::TooLong { prompt: job.prompt.len(), pool: self.shared.pool_tokens });
        }
        let mut q = self.shared.lock();
        if q.shutdown {
            return Err(SubmitError::ShuttingDown);
        }
        if q.waiting.len() >= self.shared.max_waiting {
            return Err(SubmitError::Busy(q.waiting.len()));
        }
        q.waiting.push_back((job, Instant::now()));
        self.shared.stats.waiting.store(q.waiting.len(), Ordering::Relaxed);
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The loop's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Positions the KV pool holds.
    pub fn pool_tokens(&self) -> usize {
        self.shared.pool_tokens
    }

    /// Refuses new jobs, fails the waiting ones, lets the running ones finish, and waits for
    /// the loop to end.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// A sequence in the loop.
struct Live<'m> {
    job: Job,
    submitted: Instant,
    seq: Option<SeqId>,
    /// Prompt and generated ids.
    ids: Vec<u32>,
    /// How many of `ids` the KV cache holds.
    fed: usize,
    prompt_len: usize,
    generated: usize,
    /// Prompt positions the prefix cache supplied.
    cached: usize,
    stream: TextStream<'m>,
    sampler: Sampler,
    rng: Rng,
    first_token_seen: bool,
}

impl Live<'_> {
    fn send(&self, e: Event) -> bool {
        self.job.events.send(e).is_ok()
    }
}

struct Engine<'m> {
    model: &'m Model,
    session: Session,
    opts: SchedulerOpts,
    running: Vec<Live<'m>>,
    /// Preempted sequences, first to come back.
    paused: VecDeque<Live<'m>>,
    batch: Batch,
    logits: Vec<f32>,
    /// One row of logits with a grammar's mask applied.
    masked: Vec<f32>,
    /// For each logits row, the index in `running` it belongs to.
    rows: Vec<usize>,
    cache: PrefixCache,
}

impl<'m> Engine<'m> {
    fn new(model: &'m Model, session: Session, opts: &SchedulerOpts) -> Self {
        let session_block = session.block_size();
        Engine {
            model,
            session,
            opts: opts.clone(),
            running: Vec::new(),
            paused: VecDeque::new(),
            batch: Batch::new(),
            logits: Vec::new(),
            masked: Vec::new(),
            rows: Vec::new(),
            cache: PrefixCache::new(session_block),
        }
    }

    fn run(mut self, shared: &Shared) {
        loop {
            if !self.admit(shared) {
                return;
            }
            self.step(shared);
        }
    }

    /// Moves jobs from the queue into the batch while there is a slot; blocks while there is
    /// nothing to do. Returns false when the loop should end.
    fn admit(&mut self, shared: &Shared) -> bool {
        let mut q = shared.lock();
        loop {
            if q.shutdown {
                for (job, _) in q.waiting.drain(..) {
                    let _ = job.events.send(Event::Failed("the server is shutting down".into()));
                }
            }
            // Preempted sequences come back first, and only when the pool has room for them.
            while self.running.len() < self.opts.parallel {
                let Some(p) = self.paused.front() else { break };
                if self.blocks_for(p.ids.len() + 1) > self.available() {
                    break;
                }
                let mut p = self.paused.pop_front().expect("checked above");
                self.start_on_cache(&mut p, shared);
                self.running.push(p);
            }
            while self.running.len() < self.opts.parallel && self.paused.is_empty() {
                let Some((job, _)) = q.waiting.front() else { break };
                // Admit when its prompt fits in what is free now (the running sequences take
                // theirs as they grow; preemption settles a shortfall).
                if !self.running.is_empty() && self.blocks_for(job.prompt.len() + 1) > self.available() {
                    break;
                }
                let (job, submitted) = q.waiting.pop_front().expect("checked above");
                if job.events.is_closed() {
                    continue;
                }
                let mut live = self.live(job, submitted);
                self.start_on_cache(&mut live, shared);
                self.running.push(live);
            }
            shared.stats.waiting.store(q.waiting.len() + self.paused.len(), Ordering::Relaxed);
            shared.stats.running.store(self.running.len(), Ordering::Relaxed);
            if !self.running.is_empty() {
                return true;
            }
            if q.shutdown && self.paused.is_empty() {
                return false;
            }
            q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn live(&mut self, job: Job, submitted: Instant) -> Live<'m> {
        let stream = self.model.text_stream(&job.stops);
        Live {
            seq: None,
            ids: job.prompt.clone(),
            fed: 0,
            prompt_len: job.prompt.len(),
            generated: 0,
            cached: 0,
            stream,
            sampler: Sampler::default(),
            rng: Rng::new(job.seed),
            first_token_seen: false,
            submitted,
            job,
        }
    }

    /// Gives `l` a KV sequence, on the longest cached prefix of what it must read (at least one
    /// token is left to feed: the step that feeds it yields the next token's logits).
    fn start_on_cache(&mut self, l: &mut Live<'m>, shared: &Shared) {
        let blocks = self.cache.lookup(&l.ids, l.ids.len() - 1);
        let seq = match self.session.add_sequence_on_blocks(&blocks) {
            Ok(seq) if !blocks.is_empty() => {
                l.fed = blocks.len() * self.session.block_size();
                if l.generated == 0 {
                    l.cached = l.fed.min(l.prompt_len);
                    shared.stats.prefix_hit_tokens.fetch_add(l.cached as u64, Ordering::Relaxed);
                }
                seq
            }
            Ok(seq) => seq,
            Err(_) => self.session.add_sequence(),
        };
        l.seq = Some(seq);
    }

    /// Caches the full blocks `l` has computed.
    fn cache_blocks(&mut self, i: usize) {
        let l = &self.running[i];
        if let Some(seq) = l.seq {
            if let Ok(blocks) = self.session.blocks(seq) {
                let blocks = blocks.to_vec();
                self.cache.insert(&mut self.session, &l.ids[..l.fed], &blocks);
            }
        }
    }

    /// Free blocks, counting cached blocks no sequence uses (eviction frees them on demand).
    fn available(&self) -> usize {
        self.session.free_blocks() + self.cache.evictable(&self.session)
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.session.block_size())
    }

    /// One engine step: feed, sample, emit.
    fn step(&mut self, shared: &Shared) {
        // Cancelled jobs leave before anything is computed for them.
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job.events.is_closed() {
                let l = self.running.remove(i);
                self.retire(l, shared);
            } else {
                i += 1;
            }
        }
        self.preempt_to_fit(shared);
        if self.running.is_empty() {
            return;
        }
        // Decodes first (one position each), then prompt chunks within the budget.
        self.batch.clear();
        self.rows.clear();
        let mut budget = self.opts.step_tokens.max(1);
        let mut fed_now = vec![0usize; self.running.len()];
        for (i, l) in self.running.iter().enumerate() {
            if l.ids.len() - l.fed == 1 {
                let seq = l.seq.expect("running sequences hold a KV sequence");
                self.batch.add(seq, l.fed, l.ids[l.fed], true);
                self.rows.push(i);
                fed_now[i] = 1;
                budget = budget.saturating_sub(1);
            }
        }
        for (i, l) in self.running.iter().enumerate() {
            let left = l.ids.len() - l.fed;
            if left <= 1 || budget == 0 {
                continue;
            }
            let n = left.min(budget);
            let seq = l.seq.expect("running sequences hold a KV sequence");
            let last = n == left;
            let logits = if last { Logits::Last } else { Logits::None };
            self.batch.add_seq(seq, l.fed, &l.ids[l.fed..l.fed + n], logits);
            if last {
                self.rows.push(i);
            }
            fed_now[i] = n;
            budget -= n;
        }
        if self.batch.is_empty() {
            return;
        }
        // Rows come out in the order the batch added them: decodes, then finished prompts.
        if let Err(e) = self.model.lm().forward_batch(&mut self.session, &self.batch, &mut self.logits) {
            let msg = format!("the engine failed: {e}");
            for l in self.running.drain(..).collect::<Vec<_>>() {
                l.send(Event::Failed(msg.clone()));
                self.retire(l, shared);
            }
            return;
        }
        shared.stats.steps.fetch_add(1, Ordering::Relaxed);
        for (i, n) in fed_now.iter().enumerate() {
            let l = &mut self.running[i];
            let first_time = (l.fed + n).min(l.prompt_len).saturating_sub(l.fed.min(l.prompt_len));
            if l.generated == 0 {
                shared.stats.prompt_tokens.fetch_add(first_time as u64, Ordering::Relaxed);
            }
            l.fed += n;
        }
        let vocab = self.model.lm().vocab_size();
        let mut done = Vec::new();
        let mut prompts_done = Vec::new();
        for (row, &i) in self.rows.iter().enumerate() {
            let logits = &self.logits[row * vocab..(row + 1) * vocab];
            let l = &mut self.running[i];
            let tok = match &mut l.job.constraint {
                None => Ok(l.sampler.pick(logits, vocab, l.job.params, &l.ids, &mut l.rng)),
                Some(c) => {
                    self.masked.clear();
                    self.masked.extend_from_slice(logits);
                    c.mask(&mut self.masked).and_then(|()| {
                        let tok = l.sampler.pick(&self.masked, vocab, l.job.params, &l.ids, &mut l.rng);
                        c.commit(tok).map(|()| tok)
                    })
                }
            };
            let tok = match tok {
                Ok(t) => t,
                Err(msg) => {
                    l.send(Event::Failed(msg));
                    done.push((i, Finish::Cancelled));
                    continue;
                }
            };
            let logprobs = match l.job.top_logprobs {
                Some(n) => vec![token_logprob(self.model, logits, tok, n)],
                None => Vec::new(),
            };
            if !l.first_token_seen {
                l.first_token_seen = true;
                shared.stats.observe_ttft(l.submitted.elapsed().as_secs_f64());
            }
            l.generated += 1;
            let prompt_done = l.generated == 1;
            shared.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let finish = if self.model.eos.contains(&tok) {
                Some(Finish::Eos)
            } else {
                l.ids.push(tok);
                let (text, stop) = l.stream.push(tok);
                if (!text.is_empty() || !logprobs.is_empty()) && !l.send(Event::Text { text, logprobs }) {
                    Some(Finish::Cancelled)
                } else if stop {
                    Some(Finish::Stop)
                } else if l.generated >= l.job.max_tokens || l.ids.len() >= self.model.lm().context_len() {
                    Some(Finish::Length)
                } else {
                    None
                }
            };
            if let Some(f) = finish {
                done.push((i, f));
            } else if prompt_done {
                prompts_done.push(i);
            }
        }
        for i in prompts_done {
            self.cache_blocks(i);
        }
        // Leave in reverse index order so that the indices stay valid.
        for (i, finish) in done.into_iter().rev() {
            self.cache_blocks(i);
            let mut l = self.running.remove(i);
            if finish != Finish::Stop && finish != Finish::Cancelled {
                let tail = l.stream.finish();
                if !tail.is_empty() {
                    l.send(Event::Text { text: tail, logprobs: Vec::new() });
                }
            }
            l.send(Event::Done {
                finish,
                prompt_tokens: l.prompt_len,
                completion_tokens: l.generated,
                cached_tokens: l.cached,
            });
            self.retire(l, shared);
        }
        let used = self.session.total_blocks() - self.session.free_blocks();
        shared.stats.kv_blocks_used.store(used, Ordering::Relaxed);
        shared.stats.prefix_blocks.store(self.cache.len(), Ordering::Relaxed);
        shared.stats.running.store(self.running.len(), Ordering::Relaxed);
    }

    /// Frees a sequence's blocks.
    fn retire(&mut self, l: Live<'m>, shared: &Shared) {
        if let Some(seq) = l.seq {
            let _ = self.session.remove(seq);
        }
        shared.stats.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Blocks this step will take: each sequence grows by one position (decode) or by a chunk.
    fn blocks_needed(&self) -> usize {
        let mut budget = self.opts.step_tokens.max(1);
        let bs = self.session.block_size();
        let mut need = 0;
        let grow = |fed: usize, n: usize| (fed + n).div_ceil(bs) - fed.div_ceil(bs);
        for l in &self.running {
            if l.ids.len() - l.fed == 1 {
                need += grow(l.fed, 1);
                budget = budget.saturating_sub(1);
            }
        }
        for l in &self.running {
            let left = l.ids.len() - l.fed;
            if left > 1 && budget > 0 {
                let n = left.min(budget);
                need += grow(l.fed, n);
                budget -= n;
            }
        }
        need
    }

    /// Evicts cached blocks no sequence uses, then preempts the most recently admitted
    /// sequences, until this step's blocks fit.
    fn preempt_to_fit(&mut self, shared: &Shared) {
        while self.blocks_needed() > self.session.free_blocks() && self.cache.evict_one(&mut self.session) {}
        while self.running.len() > 1 && self.blocks_needed() > self.session.free_blocks() {
            let mut l = self.running.pop().expect("more than one running");
            if let Some(seq) = l.seq.take() {
                let _ = self.session.remove(seq);
            }
            l.fed = 0;
            shared.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            self.paused.push_front(l);
            while self.blocks_needed() > self.session.free_blocks() && self.cache.evict_one(&mut self.session) {}
        }
        // One sequence alone that still does not fit has outgrown the pool.
        if self.running.len() == 1 && self.blocks_needed() > self.session.free_blocks() {
            let l = self.running.pop().expect("one running");
            l.send(Event::Failed(format!(
                "the sequence outgrew the KV pool ({} positions); start the server with a larger --kv-tokens",
                self.session.total_blocks() * self.session.block_size()
            )));
            self.retire(l, shared);
        }
    }
}

/// The log-probability of `tok` under `softmax(logits)` and the `n` most likely tokens.
fn token_logprob(model: &Model, logits: &[f32], tok: u32, n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&z| (z - max).exp()).sum::<f32>().ln();
    let text = |id: u32| {
        let bytes = match &model.vocab {
            yuanli_infer::Vocab::Bpe(t) => t.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default(),
            yuanli_infer::Vocab::Chars(c) => {
                c.get(id as usize).map(|ch| ch.to_string().into_bytes()).unwrap_or_default()
            }
        };
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let mut top: Vec<(u32, f32)> = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = n.min(idx.len());
        idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        top = idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect();
    }
    let (token, bytes) = text(tok);
    TokenLogprob {
        token,
        bytes,
        logprob: logits.get(tok as usize).map_or(f32::NEG_INFINITY, |&z| z - lse),
        top: top
            .into_iter()
            .map(|(i, lp)| {
                let (t, b) = text(i);
                (t, b, lp)
            })
            .collect(),
    }
}
