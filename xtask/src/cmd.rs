//! Running commands visibly: each is printed before it runs, its output goes to the terminal.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use gateway_tests::process::display;

/// Prints `$ [VAR=value ...] COMMAND`, runs it with inherited stdio and fails when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let env: String = cmd
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={} ", key.display(), value?.display())))
        .collect();
    let line = display(cmd);
    println!("$ {env}{line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    ensure!(status.success(), "`{line}` failed ({status})");
    Ok(())
}
