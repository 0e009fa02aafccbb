//! Prometheus counters and a request-latency histogram in the text
//! exposition format (`# HELP` and `# TYPE` for every metric).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::store::batch::{BATCH_SIZE_BOUNDS, WriteQueueSnapshot};

/// What each metric counts, for its `# HELP` line.
const HELP: [(&str, &str); 11] = [
    (RELAY_PUBLISHED, "Outbox events the relay published and the broker acknowledged."),
    (
        RELAY_DUPLICATES,
        "Published events the broker acknowledged as duplicates of its de-duplication window (re-sent after a crash or a failed mark).",
    ),
    (RELAY_RETRIES, "Relay rounds that failed (broker or store) and were retried after a back-off."),
    (
        RELAY_LAG,
        "Age in seconds of the oldest unpublished outbox event when the relay last looked (0 when none waits).",
    ),
    ("oneprotect_enrollment_tokens_issued_total", "Enrollment tokens issued."),
    (
        "oneprotect_exchanges_total",
        "Enrollment exchanges, by outcome: enrolled, rate_limited, or the problem code of the refusal.",
    ),
    ("oneprotect_heartbeats_total", "Heartbeats accepted, by outcome: accepted or duplicate."),
    ("oneprotect_rejections_total", "Refusals the service decided and audited, by reason."),
    (REQUEST_DURATION, "Seconds to answer an HTTP request, by route template, method and status."),
    (QUEUE_DEPTH, "Writes waiting for the store's writer (SQLite: every write; PostgreSQL: heartbeats)."),
    (BATCH_SIZE, "Writes committed per transaction by the store's writer."),
];

pub const RELAY_PUBLISHED: &str = "oneprotect_relay_published_total";
pub const RELAY_DUPLICATES: &str = "oneprotect_relay_duplicates_total";
pub const RELAY_RETRIES: &str = "oneprotect_relay_retries_total";
pub const RELAY_LAG: &str = "oneprotect_relay_lag_seconds";

const QUEUE_DEPTH: &str = "oneprotect_store_write_queue_depth";
const BATCH_SIZE: &str = "oneprotect_store_write_batch_size";

const REQUEST_DURATION: &str = "oneprotect_http_request_duration_seconds";

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    per_bucket: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    gauges: Mutex<BTreeMap<&'static str, f64>>,
    requests: Mutex<BTreeMap<String, Histogram>>,
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn help(name: &str) -> &'static str {
    HELP.iter().find(|(n, _)| *n == name).map_or("OneProtect metric.", |(_, h)| *h)
}

impl Metrics {
    /// Adds one to `name{label="value"}`.
    pub fn inc(&self, name: &'static str, label: &'static str, value: &str) {
        let key = (name, format!("{label}=\"{}\"", escape(value)));
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(0) += 1;
    }

    /// Adds `n` to the unlabelled counter `name`.
    pub fn add(&self, name: &'static str, n: u64) {
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()).entry((name, String::new())).or_insert(0) +=
            n;
    }

    /// Sets the gauge `name`.
    pub fn set_gauge(&self, name: &'static str, value: f64) {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).insert(name, value);
    }

    /// The current value of an unlabelled counter.
    pub fn counter(&self, name: &'static str) -> u64 {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name, String::new()))
            .copied()
            .unwrap_or(0)
    }

    /// The current value of a gauge (0 when never set).
    pub fn gauge(&self, name: &'static str) -> f64 {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).get(name).copied().unwrap_or(0.0)
    }

    /// Records the answer time of one request. `route` is the matched route
    /// template (a bounded set), never the raw path.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = format!("route=\"{}\",method=\"{}\",status=\"{status}\"", escape(route), escape(method));
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let h = requests.entry(labels).or_default();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.per_bucket[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Every metric, the store's write queue included.
    pub fn render(&self, queue: &WriteQueueSnapshot) -> String {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &counters {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {}", help(name));
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, value) in &gauges {
            let _ = writeln!(out, "# HELP {name} {}", help(name));
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        if !requests.is_empty() {
            let _ = writeln!(out, "# HELP {REQUEST_DURATION} {}", help(REQUEST_DURATION));
            let _ = writeln!(out, "# TYPE {REQUEST_DURATION} histogram");
        }
        for (labels, h) in &requests {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.per_bucket) {
                cumulative += n;
                let _ = writeln!(out, "{REQUEST_DURATION}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{REQUEST_DURATION}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{REQUEST_DURATION}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{REQUEST_DURATION}_count{{{labels}}} {}", h.count);
        }
        let _ = writeln!(out, "# HELP {QUEUE_DEPTH} {}", help(QUEUE_DEPTH));
        let _ = writeln!(out, "# TYPE {QUEUE_DEPTH} gauge");
        let _ = writeln!(out, "{QUEUE_DEPTH} {}", queue.queued);
        let _ = writeln!(out, "# HELP {BATCH_SIZE} {}", help(BATCH_SIZE));
        let _ = writeln!(out, "# TYPE {BATCH_SIZE} histogram");
        for (bound, n) in BATCH_SIZE_BOUNDS.iter().zip(queue.cumulative) {
            let _ = writeln!(out, "{BATCH_SIZE}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{BATCH_SIZE}_bucket{{le=\"+Inf\"}} {}", queue.batches);
        let _ = writeln!(out, "{BATCH_SIZE}_sum {}", queue.writes);
        let _ = writeln!(out, "{BATCH_SIZE}_count {}", queue.batches);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_type_and_histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.inc("oneprotect_exchanges_total", "outcome", "enrolled");
        m.inc("oneprotect_exchanges_total", "outcome", "rate_limited");
        for s in [0.001, 0.02, 0.02, 0.3, 20.0] {
            m.observe_request("/fixture/things/{thing_id}", "GET", 200, s);
        }
        let text = m.render(&WriteQueueSnapshot::default());
        for name in ["oneprotect_exchanges_total", REQUEST_DURATION] {
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        assert!(text.contains("# TYPE oneprotect_exchanges_total counter"));
        assert!(text.contains(&format!("# TYPE {REQUEST_DURATION} histogram")));
        let bucket = |le: &str| {
            let prefix = format!(
                "{REQUEST_DURATION}_bucket{{route=\"/fixture/things/{{thing_id}}\",method=\"GET\",status=\"200\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no bucket {le}: {text}"))
        };
        assert_eq!(
            (bucket("0.005"), bucket("0.025"), bucket("0.5"), bucket("10"), bucket("+Inf")),
            (1, 3, 4, 4, 5)
        );
        assert!(text.contains(&format!("{REQUEST_DURATION}_count{{route=\"/fixture/things/{{thing_id}}\",method=\"GET\",status=\"200\"}} 5")));
        // Every sample line is `name{labels} number` or `name number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.inc("oneprotect_rejections_total", "reason", "a\"b\\c");
        assert!(
            m.render(&WriteQueueSnapshot::default()).contains("reason=\"a\\\"b\\\\c\""),
            "{}",
            m.render(&WriteQueueSnapshot::default())
        );
    }
}
