//! What each listener takes on at once: plugin calls (admission and the
//! gateway have budgets of their own) and connections (capped per listener,
//! from the process's file descriptor limit), so that a flood on one
//! listener cannot make another fail, least of all admission, whose
//! failures the API server answers by failure policy.

use std::time::Duration;

use crate::listener::ConnectionLimits;

/// Keep-alive idle timeout of the admission listener: longer than the API
/// server's own (Go's `IdleConnTimeout`, 90 s), so the API server closes an
/// idle connection before Tollgate does and never sends a review on a
/// connection that is closing.
pub const ADMISSION_IDLE: Duration = Duration::from_secs(120);

/// Keep-alive idle timeout of the gateway (nginx uses 75 s).
pub const GATEWAY_IDLE: Duration = Duration::from_secs(60);

/// How long a gateway plugin call waits for a free call before the request
/// is answered 503.
pub const GATEWAY_WAIT: Duration = Duration::from_millis(500);

/// Connections the metrics and probes listener keeps open at once.
pub const METRICS_CONNECTIONS: usize = 64;

/// File descriptors kept for everything that is not a client connection:
/// plugin files, the cache, listeners, the API server client.
const RESERVED_FILES: u64 = 128;

/// Plugin calls and connections, per listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Admission plugin calls at once.
    pub admission_calls: usize,
    /// Gateway plugin calls (routes and allowlists) at once.
    pub gateway_calls: usize,
    /// How long a gateway call waits for a free call before 503.
    pub gateway_wait: Duration,
    /// The admission listener's connections.
    pub admission: ConnectionLimits,
    /// The gateway's connections (all its event loops together).
    pub gateway: ConnectionLimits,
    /// The metrics and probes listener's connections.
    pub metrics: ConnectionLimits,
}

impl Limits {
    /// Defaults for a process that may open `files` file descriptors and run
    /// `max_calls` plugin calls at once.
    ///
    /// Calls: a quarter (at least one) is admission's, the rest the
    /// gateway's (at least one). Connections: admission gets an eighth of
    /// the descriptors (16 to 1,024: the API servers are few), the gateway
    /// half of what is left (each client connection may hold an upstream
    /// one), the metrics listener [`METRICS_CONNECTIONS`], and
    /// [`RESERVED_FILES`] stay free, so a full gateway never takes the
    /// descriptors admission and the probes need.
    pub fn new(files: u64, max_calls: usize) -> Self {
        let admission_calls = max_calls.div_ceil(4).max(1);
        let gateway_calls = max_calls.saturating_sub(admission_calls).max(1);
        let admission_connections = (files / 8).clamp(16, 1024);
        let rest = files.saturating_sub(admission_connections + METRICS_CONNECTIONS as u64 + RESERVED_FILES);
        let gateway_connections = (rest / 2).clamp(16, 65_536);
        Self {
            admission_calls,
            gateway_calls,
            gateway_wait: GATEWAY_WAIT,
            admission: per_peer(ConnectionLimits::new(admission_connections as usize, ADMISSION_IDLE)),
            gateway: ConnectionLimits::new(gateway_connections as usize, GATEWAY_IDLE),
            metrics: per_peer(ConnectionLimits::new(METRICS_CONNECTIONS, GATEWAY_IDLE)),
        }
    }

    /// Plugin calls of both budgets together: what the engine's instance
    /// pool must hold.
    pub fn total_calls(&self) -> usize {
        self.admission_calls + self.gateway_calls
    }
}

/// Caps what one client address may hold of `limits` to a quarter (at
/// least 4), so that a single pod that opens connections and sends nothing
/// cannot lock the API servers out of admission, or the kubelet's probes out
/// of the metrics listener. The gateway has no such cap: its clients often
/// arrive from one load balancer's or NAT's address.
fn per_peer(limits: ConnectionLimits) -> ConnectionLimits {
    ConnectionLimits { max_per_peer: Some(peer_share(limits.max_connections)), ..limits }
}

/// What one client address may hold of `max_connections`, where capped.
pub fn peer_share(max_connections: usize) -> usize {
    (max_connections / 4).max(4)
}

/// Raises this process's soft limit on open files to its hard limit (as Go
/// programs do at start; the soft limit is often 1,024 for compatibility
/// with `select`, which Tollgate does not use) and returns the limit now in
/// force. An unlimited one counts as 1,048,576 (the kernel's default
/// `fs.nr_open`).
pub fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let Some(soft) = limit.current else { return 1 << 20 };
    if limit.maximum.is_none_or(|hard| hard > soft) {
        // An unlimited hard limit cannot be the soft one: the kernel caps
        // open files at fs.nr_open, 1,048,576 by default.
        limit.current = Some(limit.maximum.unwrap_or(1 << 20));
        if setrlimit(Resource::Nofile, limit).is_ok() {
            return limit.current.unwrap_or(soft);
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_split_and_never_zero() {
        let limits = Limits::new(1024, 128);
        assert_eq!((limits.admission_calls, limits.gateway_calls), (32, 96));
        let limits = Limits::new(1024, 1);
        assert_eq!((limits.admission_calls, limits.gateway_calls), (1, 1));
    }

    #[test]
    fn connections_fit_in_the_file_limit() {
        // Below 512 the listeners' minimums (16, 16 and 64) may not fit.
        for files in [512, 1024, 4096, 1 << 20] {
            let limits = Limits::new(files, 128);
            let sockets =
                limits.admission.max_connections + 2 * limits.gateway.max_connections + limits.metrics.max_connections;
            assert!(sockets as u64 + RESERVED_FILES <= files, "{files}: {limits:?}");
        }
        let limits = Limits::new(1024, 128);
        assert_eq!((limits.admission.max_connections, limits.gateway.max_connections), (128, 352));
        assert_eq!((limits.admission.max_per_peer, limits.metrics.max_per_peer), (Some(32), Some(16)));
        assert_eq!(limits.gateway.max_per_peer, None);
    }
}
