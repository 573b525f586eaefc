//! The `dbtools` CLI as an operator runs it: the real binary (the one `scripts/stack.sh run`
//! built with the functions), pointed at the local stack's API, and `tmux` for what it draws
//! in a real terminal.

use std::{path::PathBuf, process::Stdio, sync::OnceLock, time::Duration};

use serde_json::Value;

use crate::env::{api_url, var};

/// The `dbtools` binary: the one `scripts/stack.sh run` built with the functions (`cargo
/// build --workspace --bins`), in the target directory of this test binary (`.../debug/deps/`
/// -> `.../debug/dbtools`); built with `cargo build -p dbtools` only if it is not there.
/// Building it in every test process would wait for the build lock, and `-p dbtools` alone
/// unifies features differently from the workspace build.
pub fn dbtools_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let beside = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("dbtools"));
        if let Some(bin) = beside.filter(|b| b.is_file()) {
            return bin;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "dbtools",
            "--bin",
            "dbtools",
            "--message-format=json",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::inherit());
        if std::env::var("DBTOOLS_BUILD_PROFILE").as_deref() == Ok("release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build -p dbtools");
        assert!(out.status.success(), "cargo build -p dbtools failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "dbtools")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo build names the dbtools executable")
    })
}

/// What a `dbtools` run printed, and how it ended.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Asserts exit 0; the run itself, for chaining.
    pub fn ok(self) -> CliRun {
        assert_eq!(self.code, 0, "dbtools failed: {self:#?}");
        self
    }

    /// Asserts the exit code and that stderr contains `needle`.
    pub fn fails(self, code: i32, needle: &str) -> CliRun {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        self
    }

    /// Stdout as JSON (`--output json`).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Where a `dbtools` run's stdout goes.
pub enum Stdout {
    /// Read, as `CliRun::stdout`.
    Captured,
    /// A pipe whose reader is gone before `dbtools` writes (`dbtools ... | head`, once `head`
    /// has had enough): a write fails with EPIPE.
    ClosedPipe,
    /// `/dev/full`: every write fails with ENOSPC.
    DevFull,
}

/// Runs `dbtools` with `args` against the local stack's API (`DBTOOLS_API`), each API call
/// given 120 s as the tests' own client gives it (a function `cargo lambda watch` starts on
/// demand may wait for the build lock); at most three minutes in all.
pub async fn dbtools(args: &[&str]) -> CliRun {
    dbtools_to(args, Stdout::Captured).await
}

/// `dbtools`, its stdout sent to `stdout`.
pub async fn dbtools_to(args: &[&str], stdout: Stdout) -> CliRun {
    let bin = dbtools_bin().clone();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env("DBTOOLS_API", api_url())
        .env("DBTOOLS_TIMEOUT", "120")
        .env_remove("DBTOOLS_LAMBDA_ENDPOINT")
        .env_remove("DBTOOLS_MIGRATE_FUNCTION")
        .env_remove("DBTOOLS_STALL_AFTER")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match stdout {
        Stdout::Captured | Stdout::ClosedPipe => cmd.stdout(Stdio::piped()),
        Stdout::DevFull => cmd.stdout(std::fs::File::create("/dev/full").expect("/dev/full")),
    };
    let mut child = cmd.spawn().expect("run dbtools");
    if let Stdout::ClosedPipe = stdout {
        // The reader goes away at once; dbtools writes only after the API has answered.
        drop(child.stdout.take());
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("dbtools {args:?} still running after 3 minutes"))
        .expect("run dbtools");
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A tmux server of the test's own (its own socket), running one command in a detached
/// session of a fixed size; killed when dropped.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a `width` x `height` terminal.
    pub fn start(command: &str, width: u16, height: u16) -> Tmux {
        let version = std::process::Command::new("tmux").arg("-V").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "tmux is needed to test what `dbtools runs watch` draws in a terminal: install it \
             (apt-get install tmux): {version:?}"
        );
        let socket = format!("dbtools-test-{}", uuid::Uuid::new_v4().simple());
        let status = std::process::Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "cli",
            ])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(["-e", &format!("DBTOOLS_API={}", api_url())])
            .args(["-e", "DBTOOLS_TIMEOUT=120"])
            .arg(command)
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed: {status}");
        Tmux { socket }
    }

    /// The pane's text as it is now.
    pub fn capture(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "cli"])
            .output()
            .expect("run tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The local stack's directory (for files a test leaves for itself).
pub fn local_dir() -> String {
    var("DBTOOLS_LOCAL_DIR")
}
