//! `--window-hook`: a command the bench runs as each measurement window
//! starts and ends, so that what the windows alone cost elsewhere can be
//! counted exactly: `scripts/bench/backend-instructions` has PostgreSQL's
//! backends dump their callgrind counts with it, leaving the untimed
//! preparation out.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long a hook may take. A dozen backends under callgrind dumping
/// their counts take seconds; a hook that hangs must not hang the run.
const WITHIN: Duration = Duration::from_secs(600);

/// The two moments a hook is run at, passed as its last argument.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Start,
    End,
}

impl Phase {
    fn arg(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::End => "end",
        }
    }
}

/// Runs `command phase` with `sh -c` and waits for it; an error if it
/// fails, cannot start, or takes longer than [`WITHIN`] (it is killed).
pub async fn run(command: Option<&str>, phase: Phase) -> anyhow::Result<()> {
    let Some(command) = command else {
        return Ok(());
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{command} {}", phase.arg()))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("--window-hook did not start")?;
    let status = tokio::time::timeout(WITHIN, child.wait())
        .await
        .with_context(|| {
            format!(
                "--window-hook {} did not end within {} s",
                phase.arg(),
                WITHIN.as_secs()
            )
        })?
        .context("--window-hook")?;
    if !status.success() {
        bail!("--window-hook {} failed: {status}", phase.arg());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Phase, run};

    #[tokio::test]
    async fn a_hook_gets_its_phase_as_its_last_argument() {
        let log = std::env::temp_dir().join(format!("ccc-hook-{}", uuid::Uuid::new_v4()));
        let command = format!("echo >>{}", log.display());
        run(Some(&command), Phase::Start).await.expect("start");
        run(Some(&command), Phase::End).await.expect("end");
        let phases = std::fs::read_to_string(&log).expect("the log");
        let _ = std::fs::remove_file(&log);
        assert_eq!(phases, "start\nend\n");
    }

    #[tokio::test]
    async fn a_failing_hook_fails_the_run() {
        let e = run(Some("exit 3;"), Phase::Start).await.expect_err("fails");
        assert!(e.to_string().contains("start failed"), "{e:#}");
    }

    #[tokio::test]
    async fn no_hook_is_nothing_to_run() {
        run(None, Phase::End).await.expect("nothing to do");
    }
}
