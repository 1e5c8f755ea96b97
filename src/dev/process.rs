//! Local server processes, for `dropgate dev` and the tests: free ports,
//! temporary directories, children started in their own process group with
//! their output in a log, stopped when dropped.

use std::fs::{self, File};
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const READY_POLL: Duration = Duration::from_millis(50);
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 20;

/// A started server plus its temp dir. Field order matters: the process is
/// stopped before its dir is removed.
#[derive(Debug)]
pub(super) struct ServiceGuard {
    pub(super) process: ProcessGuard,
    pub(super) log: PathBuf,
    pub(super) dir: TempDir,
}

impl ServiceGuard {
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }
}

pub(super) async fn wait_until_ready<F, Fut>(
    guard: &mut ServiceGuard,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let name = guard.process.name;
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if let Some(status) = guard
            .process
            .child
            .try_wait()
            .context("checking on the child")?
        {
            bail!(
                // The log dies with the temp dir, so its tail goes in here.
                "{name} exited ({status}) before accepting connections; its log ends:\n{}",
                guard.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} did not accept connections within {timeout:?}; its log ends:\n{}",
                guard.log_tail()
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

pub(super) fn spawn_logged(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // A process group of its own keeps a terminal Ctrl-C from killing the
    // stores while dropgate still drains into them; Drop stops them after.
    cmd.process_group(0);
    Ok(cmd.spawn()?)
}

/// A child server that is stopped gracefully when dropped.
#[derive(Debug)]
pub(super) struct ProcessGuard {
    pub(super) name: &'static str,
    pub(super) child: Child,
    /// Name as `kill -s` takes it.
    pub(super) stop_signal: &'static str,
    /// When set, the pid on its first line is the process to signal.
    pub(super) pid_file: Option<PathBuf>,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let child_pid = self.child.id();
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let target = self
            .pid_file
            .as_deref()
            .and_then(read_pid_file)
            .unwrap_or(child_pid);
        if send_signal(target, self.stop_signal).is_err() {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(STOP_POLL),
                _ => break,
            }
        }
        tracing::warn!(
            name = self.name,
            pid = target,
            "did not stop within {STOP_TIMEOUT:?}; killing it"
        );
        let _ = self.child.kill();
        if target != child_pid {
            let _ = send_signal(target, "KILL");
        }
        let _ = self.child.wait();
    }
}

pub(super) fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Through kill(1): std only sends SIGKILL, and `unsafe` (libc) is forbidden.
fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -s {signal} {pid}: {status}"
        )))
    }
}

/// A directory removed, with everything in it, when dropped.
#[derive(Debug)]
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn create(base: &Path, kind: &str) -> anyhow::Result<Self> {
        let path = base.join(format!("dropgate-{kind}-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove temp dir");
        }
    }
}

/// The OS picks a port nobody holds; the listener is dropped so the server
/// can bind it. Another process could grab it in between; that race is rare
/// enough on a dev machine to accept.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(super) fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default()
}

pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    path_dirs()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub(super) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
