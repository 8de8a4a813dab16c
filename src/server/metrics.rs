//! The policy server's Prometheus metrics: decisions by outcome, refusals for bad tokens,
//! backend errors, bundle reloads, and a decision-latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Prometheus counters and a latency histogram.
#[derive(Default)]
pub struct Metrics {
    pub(super) allow: AtomicU64,
    pub(super) deny: AtomicU64,
    pub(super) unauthorized: AtomicU64,
    pub(super) backend_errors: AtomicU64,
    pub(super) reloads_ok: AtomicU64,
    pub(super) reloads_failed: AtomicU64,
    buckets: [AtomicU64; 8],
    sum_us: AtomicU64,
    count: AtomicU64,
}

const BUCKETS_MS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, f64::INFINITY];

impl Metrics {
    pub(super) fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        s.push_str(
            "# HELP kz_decisions_total Decisions by outcome.\n# TYPE kz_decisions_total counter\n",
        );
        s.push_str(&format!(
            "kz_decisions_total{{decision=\"allow\"}} {}\n",
            g(&self.allow)
        ));
        s.push_str(&format!(
            "kz_decisions_total{{decision=\"deny\"}} {}\n",
            g(&self.deny)
        ));
        s.push_str("# HELP kz_unauthorized_total Requests refused for a bad or missing token.\n# TYPE kz_unauthorized_total counter\n");
        s.push_str(&format!(
            "kz_unauthorized_total {}\n",
            g(&self.unauthorized)
        ));
        s.push_str("# HELP kz_backend_errors_total Secret backend failures.\n# TYPE kz_backend_errors_total counter\n");
        s.push_str(&format!(
            "kz_backend_errors_total {}\n",
            g(&self.backend_errors)
        ));
        s.push_str("# HELP kz_bundle_reloads_total Bundle reloads by result.\n# TYPE kz_bundle_reloads_total counter\n");
        s.push_str(&format!(
            "kz_bundle_reloads_total{{result=\"ok\"}} {}\n",
            g(&self.reloads_ok)
        ));
        s.push_str(&format!(
            "kz_bundle_reloads_total{{result=\"failed\"}} {}\n",
            g(&self.reloads_failed)
        ));
        s.push_str(
            "# HELP kz_decision_seconds Decision latency.\n# TYPE kz_decision_seconds histogram\n",
        );
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let le = if b.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{}", b / 1000.0)
            };
            s.push_str(&format!(
                "kz_decision_seconds_bucket{{le=\"{le}\"}} {}\n",
                g(&self.buckets[i])
            ));
        }
        s.push_str(&format!(
            "kz_decision_seconds_sum {}\n",
            g(&self.sum_us) as f64 / 1e6
        ));
        s.push_str(&format!("kz_decision_seconds_count {}\n", g(&self.count)));
        s
    }
}
