//! `yuanli lesson N|list`: run a lesson of the book.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use yuanli_lessons::LessonOpts;

#[derive(Args, Debug)]
pub(crate) struct LessonArgs {
    /// Lesson number, or `list` to see them all.
    which: String,
    /// Print one JSON object with the headline numbers as the last line.
    #[arg(long)]
    json: bool,
    /// Directory holding the lesson data sets.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Directory for plots and other outputs.
    #[arg(long, default_value = "runs/out")]
    out_dir: PathBuf,
    /// Master random seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

pub(crate) fn run(args: LessonArgs) -> Result<()> {
    let lessons = yuanli_lessons::all();
    if args.which == "list" {
        for l in &lessons {
            println!("{:>2}  {}", l.number, l.title);
        }
        return Ok(());
    }
    let n: u32 = match args.which.parse() {
        Ok(n) => n,
        Err(_) => bail!("lesson {:?}: expected a number or `list`", args.which),
    };
    let Some(lesson) = lessons.iter().find(|l| l.number == n) else {
        let have: Vec<String> = lessons.iter().map(|l| l.number.to_string()).collect();
        bail!("there is no lesson {n}; available: {} (see `yuanli lesson list`)", have.join(", "));
    };
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| anyhow::anyhow!("creating output directory {}: {e}", args.out_dir.display()))?;
    let opts = LessonOpts { data_dir: args.data_dir, out_dir: args.out_dir, seed: args.seed, quiet: args.json };
    let summary = (lesson.run)(&opts)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}
