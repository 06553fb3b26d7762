//! Where a training step spends its time, op by op: set `YUANLI_PROFILE=1` and call
//! [`report`] at the end (`yuanli bench lora` and `yuanli sft` do).
//!
//! Forward: the time between one recorded op and the next is charged to the later one (the
//! code between two `Var::from_op` calls is the later op's forward computation). Backward:
//! each op's `backward` call is timed. Cheap enough to leave in: one flag check per op when off.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

#[derive(Default, Clone, Copy)]
struct Times {
    forward: f64,
    backward: f64,
    calls: usize,
}

fn table() -> &'static Mutex<HashMap<&'static str, Times>> {
    static T: OnceLock<Mutex<HashMap<&'static str, Times>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

thread_local! {
    static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Whether profiling is on (`YUANLI_PROFILE` set and not `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("YUANLI_PROFILE").is_ok_and(|v| v != "0" && !v.is_empty()))
}

/// Starts the forward clock (call before a forward pass; also restarted by every op).
pub fn mark() {
    if enabled() {
        LAST.with(|l| l.set(Some(Instant::now())));
    }
}

pub(crate) fn forward_op(name: &'static str) {
    if !enabled() {
        return;
    }
    let now = Instant::now();
    let dt = LAST.with(|l| l.replace(Some(now))).map_or(0.0, |t| (now - t).as_secs_f64());
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let e = t.entry(name).or_default();
    e.forward += dt;
    e.calls += 1;
}

pub(crate) fn backward_op(name: &'static str, secs: f64) {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    t.entry(name).or_default().backward += secs;
}

/// The table so far, slowest op first (seconds forward and backward, calls), then cleared.
pub fn report() -> String {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<(&'static str, Times)> = t.drain().collect();
    rows.sort_by(|a, b| (b.1.forward + b.1.backward).total_cmp(&(a.1.forward + a.1.backward)));
    let total: f64 = rows.iter().map(|r| r.1.forward + r.1.backward).sum();
    let mut out = format!("{:<24} {:>9} {:>9} {:>6} {:>7}\n", "op", "fwd s", "bwd s", "share", "calls");
    for (name, x) in rows {
        out += &format!(
            "{name:<24} {:>9.3} {:>9.3} {:>5.1}% {:>7}\n",
            x.forward,
            x.backward,
            100.0 * (x.forward + x.backward) / total.max(1e-12),
            x.calls
        );
    }
    out
}
