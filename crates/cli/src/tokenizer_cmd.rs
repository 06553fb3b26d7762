//! `yuanli tokenizer …` (to be written).

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum TokenizerCommand {
    /// Train a byte-level BPE vocabulary.
    Train {},
}

pub(crate) fn run(_cmd: TokenizerCommand) -> Result<()> {
    anyhow::bail!("tokenizer commands are not written yet")
}
