//! The adapter flags of the RL commands (`grpo`, `ppo`): one definition, flattened into each.

use clap::Args;
use yuanli_nn::LoraConfig;

/// The policy's LoRA adapter.
#[derive(Args, Debug)]
pub(crate) struct PolicyAdapterArgs {
    /// LoRA rank r.
    #[arg(long, default_value_t = 16)]
    pub(crate) rank: usize,
    /// LoRA α: the update is scaled by α/r (α/√r with --rslora).
    #[arg(long, default_value_t = 32.0)]
    pub(crate) alpha: f64,
    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) dropout: f64,
    /// Scale the update by α/√r (rank-stabilised LoRA).
    #[arg(long)]
    pub(crate) rslora: bool,
    /// Modules to adapt, comma-separated (q_proj, …, down_proj, or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    pub(crate) targets: Vec<String>,
    /// QLoRA: keep GGUF bases (the policy's, and PPO's reward model's) block-quantized instead
    /// of dequantizing them to f32.
    #[arg(long)]
    pub(crate) quantized_base: bool,
}

impl PolicyAdapterArgs {
    /// The adapter's configuration.
    pub(crate) fn lora(&self) -> LoraConfig {
        LoraConfig { r: self.rank, alpha: self.alpha, dropout: self.dropout, rslora: self.rslora }
    }
}
