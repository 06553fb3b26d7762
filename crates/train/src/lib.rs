//! # yuanli-train — optimizers, schedules, the pretraining loop and fine-tuning data
//!
//! Optimizers work on a whole [`ParamStore`](yuanli_nn::ParamStore): one pass over the
//! contiguous value, gradient and moment buffers per step. Parameter groups pick the weight
//! decay and learning-rate multiplier per parameter (by default no decay on norms, biases and
//! embeddings); runs of neighbouring parameters with the same settings are updated in one call.
//! [`sft`] turns conversations into token ids with an assistant-only loss mask; [`align`] holds
//! the alignment losses (reward model, DPO, GRPO, PPO, distillation) as TRL computes them.

pub mod align;
pub mod distill;
pub mod grpo;
pub mod optim;
pub mod plot;
pub mod ppo;
pub mod preference;
pub mod pretrain;
pub mod schedule;
pub mod sft;

pub use optim::{Adam, ParamGroup, Sgd};
pub use schedule::LrSchedule;
