//! `--config FILE.toml` for the fine-tuning and alignment commands (`sft`, `rm`, `dpo`,
//! `grpo`, `ppo`, `distill`): the file's keys are the command's long flags (`lr = 1e-4`, `targets = ["q_proj",
//! "v_proj"]`, `rslora = true`), turned into flags placed before the command line's own, which
//! therefore override them. One place for a run's recipe (`configs/*.toml`), no second schema
//! to keep in step with the flags: clap checks every key as it checks a flag.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::Path;

/// The commands whose flags a config file may hold (`train` has its own config format).
const COMMANDS: [&str; 6] = ["sft", "rm", "dpo", "grpo", "ppo", "distill"];

/// The command a recipe in `configs/` is for, from its name (`grpo-arith.toml` → `grpo`);
/// `None` for the pretraining configs (`baby.toml`, read by `yuanli train --config`).
#[cfg(test)]
pub(crate) fn recipe_command(path: &Path) -> Option<&'static str> {
    let stem = path.file_stem()?.to_str()?;
    COMMANDS.iter().copied().find(|c| stem.strip_prefix(c).is_some_and(|rest| rest.starts_with('-')))
}

/// `args` with the flags of a `--config FILE` inserted right after the subcommand (the
/// `--config` itself stays, for clap to accept and ignore).
pub(crate) fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(cmd) = args.iter().position(|a| a.to_str().is_some_and(|s| COMMANDS.contains(&s))) else {
        return Ok(args);
    };
    let mut file = None;
    for (i, a) in args.iter().enumerate().skip(cmd + 1) {
        match a.to_str() {
            Some("--config") => file = args.get(i + 1).cloned(),
            Some(s) if s.starts_with("--config=") => file = Some(OsString::from(&s["--config=".len()..])),
            _ => {}
        }
    }
    let Some(file) = file else { return Ok(args) };
    let flags = flags_of(Path::new(&file))?;
    let mut out = args[..=cmd].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&args[cmd + 1..]);
    Ok(out)
}

/// The flags a TOML file stands for: `key = value` → `--key=value` (`_` in keys read as `-`),
/// `key = true` → `--key`, `key = false` → nothing, an array → its items joined by commas.
fn flags_of(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the config {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{}: not TOML", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => bail!("{}: `{key}` must be a string, a number, true/false or a list of those", path.display()),
            })
        };
        match value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect::<Result<_>>()?;
                flags.push(format!("{flag}={}", items.join(",")));
            }
            v => flags.push(format!("{flag}={}", scalar(v)?)),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_config_becomes_flags_that_the_command_line_overrides() {
        let dir = std::env::temp_dir().join(format!("yuanli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("run.toml");
        std::fs::write(&f, "lr = 1e-4\nmax_new_tokens = 24\ntargets = [\"q_proj\", \"v_proj\"]\nrslora = true\nresume = false\nout = \"runs/x\"\n").unwrap();
        let cfg = f.to_str().unwrap();
        let got = expand(os(&["yuanli", "--threads", "2", "grpo", "--config", cfg, "--lr", "5e-5"])).unwrap();
        let want = [
            "yuanli",
            "--threads",
            "2",
            "grpo",
            "--lr=0.0001",
            "--max-new-tokens=24",
            "--out=runs/x",
            "--rslora",
            "--targets=q_proj,v_proj",
            "--config",
            cfg,
            "--lr",
            "5e-5",
        ];
        let mut got: Vec<String> = got.into_iter().map(|s| s.into_string().unwrap()).collect();
        // TOML tables are ordered by key; compare the inserted flags as a set.
        let (mut a, mut b) = (got[4..9].to_vec(), want[4..9].iter().map(|s| s.to_string()).collect::<Vec<_>>());
        a.sort();
        b.sort();
        assert_eq!(a, b);
        got.splice(4..9, want[4..9].iter().map(|s| s.to_string()));
        assert_eq!(got, want);
        // Other commands, and commands without --config, are left alone.
        let plain = os(&["yuanli", "train", "--config", cfg]);
        assert_eq!(expand(plain.clone()).unwrap(), plain);
        std::fs::write(&f, "lr = { peak = 1 }\n").unwrap();
        let err = expand(os(&["yuanli", "sft", "--config", cfg])).unwrap_err().to_string();
        assert!(err.contains("`lr` must be"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Every recipe in configs/ is accepted by its command's parser, as `yuanli CMD --config
    /// FILE` would read it.
    #[test]
    fn every_recipe_in_configs_parses() {
        use clap::Parser;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(cmd) = recipe_command(&path) else { continue };
            let args = expand(os(&["yuanli", cmd, "--config", path.to_str().unwrap()])).unwrap();
            if let Err(e) = crate::Cli::try_parse_from(args) {
                panic!("{}: {e}", path.display());
            }
            seen.push(cmd);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen,
            ["distill", "dpo", "grpo", "ppo", "rm", "sft"],
            "a recipe for each command in {}",
            dir.display()
        );
    }
}
