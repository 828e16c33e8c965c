//! `cargo xtask run [-- <hostscope run args>]`: setup, release build, then
//! replace this process with `hostscope run`, so output streams straight
//! through, Ctrl+C reaches the agent, and its exit code is ours.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{build_cmd, setup, util};

/// Defaults added to `hostscope run` unless the user passes the flag. The
/// agent rejects a single-valued flag given twice, and `--exporter` is
/// repeatable, so a default would add an exporter rather than replace it.
const DEFAULTS: &[(&str, &str)] = &[("--exporter", "stdout"), ("--interval", "10")];

/// Options of `cargo xtask run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Extra arguments for `hostscope run` (after `--`), e.g. `-- --interval 2 --duration 10`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

/// Builds and execs the agent; returns only if that fails.
pub fn run(args: &RunArgs) -> Result<()> {
    setup::run()?;
    build_cmd::build(true)?;
    let mut cmd = agent_command(&args.extra);
    eprintln!("$ {}", util::display(&cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{}`", util::display(&cmd)))
}

/// `hostscope run <defaults the user did not override> <extra>`, through
/// `sudo -E` unless already root.
fn agent_command(extra: &[String]) -> Command {
    let bin = util::built_binary("release", "hostscope");
    let mut cmd = if util::is_root() {
        Command::new(&bin)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&bin);
        sudo
    };
    cmd.arg("run");
    for (flag, value) in DEFAULTS {
        if !passes_flag(extra, flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(extra);
    cmd
}

/// Whether `args` contain `flag` as `--flag value` or `--flag=value`.
fn passes_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|&a| a.to_owned()).collect()
    }

    fn rendered(extra: &[&str]) -> Vec<String> {
        agent_command(&args(extra))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .skip_while(|a| a != "run")
            .collect()
    }

    #[test]
    fn defaults_only_when_not_passed() {
        assert_eq!(
            rendered(&[]),
            args(&["run", "--exporter", "stdout", "--interval", "10"])
        );
        assert_eq!(
            rendered(&["--interval", "2", "--duration", "10"]),
            args(&[
                "run",
                "--exporter",
                "stdout",
                "--interval",
                "2",
                "--duration",
                "10"
            ])
        );
        assert_eq!(
            rendered(&["--interval=2", "--exporter=otlp"]),
            args(&["run", "--interval=2", "--exporter=otlp"])
        );
    }

    #[test]
    fn flag_prefixes_are_not_flags() {
        assert!(!passes_flag(&args(&["--intervals"]), "--interval"));
        assert!(passes_flag(&args(&["--interval=1"]), "--interval"));
    }
}
