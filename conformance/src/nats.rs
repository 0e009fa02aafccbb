//! The event broker a run reads: a NATS JetStream server of the run's own
//! (local target, benchmarks), or the deployment's (`--nats-url`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the deployment's events are published.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub stream: String,
}

/// A `nats-server -js` launched by the harness on a free loopback port
/// with its own store directory; stopped when dropped.
pub struct OwnNats {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl OwnNats {
    /// Launches `nats-server` from PATH.
    pub fn launch() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nats-server: {e}"))?;
        let mut nats = Self { child, _dir: dir, url: format!("nats://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nats.child.try_wait() {
                anyhow::bail!("nats-server exited with {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(nats)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
