//! Host telemetry via `sysinfo`. One collector lives as long as the agent,
//! so CPU usage is a real delta between two samples.

use chrono::Utc;
use oneprotect_contracts::types::AgentHeartbeatTelemetryRequest;
use serde_json::{Value, json};
use sysinfo::{
    CpuRefreshKind, Disks, MemoryRefreshKind, Networks, ProcessRefreshKind, ProcessesToUpdate, RefreshKind,
    System,
};

/// File systems that are not storage: never reported as disks.
const PSEUDO_FILE_SYSTEMS: &[&str] = &[
    "tmpfs",
    "devtmpfs",
    "overlay",
    "squashfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "autofs",
    "fusectl",
    "configfs",
    "hugetlbfs",
    "ramfs",
    "nsfs",
    "efivarfs",
    "binfmt_misc",
    "rpc_pipefs",
    "fuse.lxcfs",
    "fuse.snapfuse",
    "shm",
    "none",
];

pub fn is_pseudo_file_system(fs: &str) -> bool {
    PSEUDO_FILE_SYSTEMS.contains(&fs)
}

pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collector")
    }
}

impl Collector {
    pub fn new() -> Result<Self, String> {
        let kind = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        let system =
            System::new_with_specifics(kind).map_err(|e| format!("cannot read system information: {e}"))?;
        let disks = Disks::new_with_refreshed_list().map_err(|e| format!("cannot read disks: {e}"))?;
        let networks = Networks::new_with_refreshed_list()
            .map_err(|e| format!("cannot read network interfaces: {e}"))?;
        Ok(Self { system, disks, networks })
    }

    /// Refreshes and returns one sample as the contract's JSON object.
    pub fn sample(&mut self, sequence: u64, agent_version: &str) -> Value {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let process_count = self.process_count();
        self.disks.refresh(true);
        self.networks.refresh(true);

        let mut disks: Vec<Value> = self
            .disks
            .iter()
            .filter(|d| !is_pseudo_file_system(&d.file_system().to_string_lossy()) && d.total_space() > 0)
            .map(|d| {
                json!({
                    "mount_point": truncate(&d.mount_point().to_string_lossy(), 4096),
                    "file_system": truncate(&d.file_system().to_string_lossy(), 64),
                    "total_bytes": d.total_space(),
                    "used_bytes": df_used(d.mount_point(), d.total_space().saturating_sub(d.available_space())),
                })
            })
            .collect();
        disks.sort_by(|a, b| a["mount_point"].as_str().cmp(&b["mount_point"].as_str()));
        disks.dedup_by(|a, b| a["mount_point"] == b["mount_point"]);
        disks.truncate(256);

        let mut interfaces: Vec<Value> = self
            .networks
            .iter()
            .map(|(name, data)| {
                let mut ips: Vec<String> = data.ip_networks().iter().map(|n| n.addr.to_string()).collect();
                ips.sort();
                ips.truncate(256);
                let mut iface =
                    json!({ "name": truncate(&name.to_string_lossy(), 256), "ip_addresses": ips });
                if !data.mac_address().is_unspecified() {
                    iface["mac_address"] = Value::String(data.mac_address().to_string());
                }
                iface
            })
            .collect();
        interfaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        interfaces.truncate(256);

        let mut sample = json!({
            "sequence": sequence,
            "collected_at": Utc::now(),
            "hostname": truncate(&System::host_name().unwrap_or_else(|_| "unknown".into()), 253),
            "agent_version": truncate(agent_version, 64),
            "os_family": truncate(std::env::consts::OS, 32),
            "uptime_seconds": System::uptime().unwrap_or(0),
            "cpu_count": self.system.cpus().len(),
            "cpu_usage_percent": f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0),
            "memory_total_bytes": self.system.total_memory(),
            "memory_used_bytes": self.system.used_memory(),
            "disks": disks,
            "network_interfaces": interfaces,
            "process_count": process_count,
        });
        if let Ok(v) = System::long_os_version().or_else(|_| System::os_version()) {
            sample["os_version"] = Value::String(truncate(&v, 128));
        }
        sample
    }

    /// One sample as the generated request type. The type's constrained
    /// fields enforce the contract's bounds; the platform validates the
    /// full schema on receipt.
    pub fn heartbeat(
        &mut self,
        sequence: u64,
        agent_version: &str,
    ) -> Result<AgentHeartbeatTelemetryRequest, String> {
        let mut sample = self.sample(sequence, agent_version);
        if crate::faults::active("cpu-usage-summed-over-cores") {
            let cores = sample["cpu_count"].as_u64().unwrap_or(1).max(2);
            sample["cpu_usage_percent"] = serde_json::json!(100.0 * cores as f64);
        }
        serde_json::from_value(sample).map_err(|e| format!("telemetry does not fit the contract type: {e}"))
    }

    /// Running processes. On Linux, counting /proc entries avoids keeping
    /// a table of every process in memory.
    fn process_count(&mut self) -> usize {
        #[cfg(target_os = "linux")]
        if let Ok(entries) = std::fs::read_dir("/proc") {
            return entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
                .count();
        }
        self.system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
        let n = self.system.processes().len();
        // Drop the table again: only the count is needed.
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[]),
            true,
            ProcessRefreshKind::nothing(),
        );
        n
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Bytes used on the file system at `mount` as `df` reports them: blocks
/// that are not free (`f_blocks - f_bfree`). Total minus *available* would
/// count the blocks reserved for root as used (201 GB "used" where `df`
/// says 28 GB was measured). `fallback` where statvfs is not available.
#[cfg(unix)]
fn df_used(mount: &std::path::Path, fallback: u64) -> u64 {
    match rustix::fs::statvfs(mount) {
        Ok(s) => s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(s.f_frsize),
        Err(_) => fallback,
    }
}

#[cfg(not(unix))]
fn df_used(_mount: &std::path::Path, fallback: u64) -> u64 {
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_validates_against_the_contract_with_plausible_values() {
        let mut c = Collector::new().expect("collector");
        let sample = c.sample(1, "0.1.0-test");
        assert_eq!(
            oneprotect_contracts::contract::validate_schema("AgentHeartbeatTelemetryRequest", &sample),
            Ok(())
        );
        assert!(sample["cpu_count"].as_u64().unwrap_or(0) >= 1, "{sample}");
        assert!(sample["memory_total_bytes"].as_u64().unwrap_or(0) > 0);
        assert!(!sample["disks"].as_array().map(Vec::is_empty).unwrap_or(true), "at least one disk");
        assert!(
            !sample["network_interfaces"].as_array().map(Vec::is_empty).unwrap_or(true),
            "at least one interface"
        );
        assert!(sample["process_count"].as_u64().unwrap_or(0) >= 1);
        for d in sample["disks"].as_array().into_iter().flatten() {
            assert!(
                !is_pseudo_file_system(d["file_system"].as_str().unwrap_or_default()),
                "pseudo file systems are filtered: {d}"
            );
        }
        for key in ["tenant_id", "agent_id", "collector_id", "asset_id", "site_id"] {
            assert!(sample.get(key).is_none(), "telemetry never carries identity ({key})");
        }
        assert!(c.heartbeat(2, "0.1.0-test").is_ok());
    }

    #[test]
    fn pseudo_file_systems_are_recognised() {
        for fs in ["tmpfs", "overlay", "squashfs", "proc"] {
            assert!(is_pseudo_file_system(fs));
        }
        for fs in ["ext4", "xfs", "btrfs", "apfs", "NTFS"] {
            assert!(!is_pseudo_file_system(fs));
        }
    }

    #[cfg(unix)]
    #[test]
    fn disk_use_is_what_df_reports_not_total_minus_available() {
        let Ok(out) = std::process::Command::new("df").args(["-B1", "--output=used", "/"]).output() else {
            return;
        };
        let Some(df) =
            String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok())
        else {
            return;
        };
        let ours = df_used(std::path::Path::new("/"), 0);
        // Measured a moment apart on a live file system: within 256 MiB.
        assert!(ours.abs_diff(df) < 256 << 20, "df says {df} bytes used, the agent {ours}");
        let fallback = df_used(std::path::Path::new("/no/such/mount"), 7);
        assert_eq!(fallback, 7, "without statvfs the fallback is reported");
    }
}
