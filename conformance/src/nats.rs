//! The event broker a run reads: a NATS JetStream server of the run's own
//! (local target, benchmarks), or the deployment's (`--nats-url`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the deployment's events are published.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub stream: String,
}

/// A `nats-server -js` launched by the harness on a loopback port it picks
/// itself, with its own store directory; stopped when dropped.
pub struct OwnNats {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

/// How long a launched server may take to write its ports file.
const LAUNCH_DEADLINE: Duration = Duration::from_secs(20);

impl OwnNats {
    /// Launches `nats-server` from PATH. The server binds a free port
    /// itself (`-p -1`) and names it in its ports file: a port chosen here
    /// and handed over could be taken by another process in between, and
    /// the run would then read someone else's broker.
    pub async fn launch() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nats-server: {e}"))?;
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let mut nats = Self { child, _dir: dir, url: String::new() };
        let deadline = Instant::now() + LAUNCH_DEADLINE;
        loop {
            if let Some(url) = client_url(&ports_file) {
                nats.url = url;
                return Ok(nats);
            }
            if let Ok(Some(status)) = nats.child.try_wait() {
                anyhow::bail!("nats-server exited with {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "nats-server wrote no ports file within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The client URL a ports file names, once it is written whole.
fn client_url(ports_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str().map(str::to_owned)
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ports_file_names_the_client_url_only_once_written_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("nats-server_1.ports");
        assert_eq!(client_url(&file), None, "not yet written");
        std::fs::write(&file, r#"{"nats":["nats://127.0.0.1:4"#).expect("write");
        assert_eq!(client_url(&file), None, "half written");
        std::fs::write(&file, r#"{"nats":["nats://127.0.0.1:41731"],"monitoring":[]}"#).expect("write");
        assert_eq!(client_url(&file).as_deref(), Some("nats://127.0.0.1:41731"));
    }
}
