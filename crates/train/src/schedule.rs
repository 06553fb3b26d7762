//! Learning-rate schedules as pure functions of the step.

/// How the learning rate changes with the step (0-based).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The same rate at every step.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// Linear warm-up from ~0 to `max_lr` over `warmup` steps, then cosine decay to `min_lr`
    /// at `total` steps, and `min_lr` after.
    WarmupCosine {
        /// Peak rate, reached at the end of warm-up.
        max_lr: f64,
        /// Floor of the decay.
        min_lr: f64,
        /// Warm-up length in steps.
        warmup: usize,
        /// Step at which the decay reaches `min_lr`.
        total: usize,
    },
}

impl LrSchedule {
    /// The rate at `step`:
    /// warm-up `max·(step+1)/warmup`; decay `min + ½(1 + cos(π·r))·(max − min)` with
    /// `r = (step − warmup)/(total − warmup)`.
    pub fn lr(&self, step: usize) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine { max_lr, min_lr, warmup, total } => {
                if step < warmup {
                    return max_lr * (step + 1) as f64 / warmup as f64;
                }
                if step >= total || total <= warmup {
                    return min_lr;
                }
                let r = (step - warmup) as f64 / (total - warmup) as f64;
                min_lr + 0.5 * (1.0 + (std::f64::consts::PI * r).cos()) * (max_lr - min_lr)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_hits_its_landmarks() {
        let s = LrSchedule::WarmupCosine { max_lr: 1e-3, min_lr: 1e-4, warmup: 100, total: 2000 };
        assert!((s.lr(0) - 1e-5).abs() < 1e-12);
        assert!((s.lr(99) - 1e-3).abs() < 1e-12);
        assert!((s.lr(100) - 1e-3).abs() < 1e-12);
        assert!((s.lr(1050) - 5.5e-4).abs() < 1e-9, "halfway is the midpoint");
        assert!((s.lr(2000) - 1e-4).abs() < 1e-12 && (s.lr(5000) - 1e-4).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 100..2000 {
            assert!(s.lr(step) <= prev);
            prev = s.lr(step);
        }
        assert_eq!(LrSchedule::Constant { lr: 0.1 }.lr(7), 0.1);
    }
}
