//! Shared support for the end-to-end tests in `tests/`: finding the real
//! binaries (built once per test process with the same cargo and profile),
//! free loopback ports, and waiting for a listener.
//!
//! Tests run the binaries as a user would, through their flags, so that the
//! contract in DESIGN.md is what gets exercised.

pub mod netns;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of a workspace binary (`portcullis` or `portcullis-controller`),
/// built first if needed. Integration tests of this root package cannot use
/// `CARGO_BIN_EXE_*` for other packages' binaries, so we ask cargo (a no-op
/// when up to date).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|p| p.parent())
            .ok_or("test executable has no profile dir")?
            .to_path_buf();
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "portcullis-proxy",
            "-p",
            "portcullis-controller",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
        Ok(profile_dir)
    });
    match dir {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("cannot build the binaries for end-to-end tests: {e}"),
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
