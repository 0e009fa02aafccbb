//! Documented exit codes. Supervisors use them: systemd's
//! `RestartPreventExitStatus=` keeps the fail-closed codes from looping.

/// Clean stop (also after SIGINT/SIGTERM) or successful command.
pub const OK: u8 = 0;
/// Transient failure that retries did not overcome (network, 5xx).
pub const RUNTIME: u8 = 1;
/// Configuration or usage error (bad config, missing token, already enrolled).
pub const CONFIG: u8 = 2;
/// The platform does not know this identity (401): re-enroll.
pub const IDENTITY_UNKNOWN: u8 = 3;
/// The platform rejected this identity (403): revoked, stale or forbidden.
pub const IDENTITY_REJECTED: u8 = 4;
/// The platform refused the enrollment (invalid token, replayed nonce, bad CSR).
pub const ENROLLMENT_REFUSED: u8 = 5;

/// How the run loop reacts to an HTTP status from the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    Accepted,
    /// Stop with this exit code and keep every file.
    Stop(u8),
    /// Back off and try again.
    Retry,
    /// A request the platform considers malformed: log it, carry on at the
    /// normal interval (retrying the same body would fail the same way).
    Skip,
}

pub fn reaction_to_status(status: u16) -> Reaction {
    match status {
        401 if crate::faults::active("exits-1-on-401") => Reaction::Stop(RUNTIME),
        403 if crate::faults::active("exits-3-on-403") => Reaction::Stop(IDENTITY_UNKNOWN),
        500..=599 if crate::faults::active("exits-on-5xx") => Reaction::Stop(RUNTIME),
        200..=299 => Reaction::Accepted,
        401 => Reaction::Stop(IDENTITY_UNKNOWN),
        403 => Reaction::Stop(IDENTITY_REJECTED),
        // A redirect is a misconfigured platform or proxy, never followed: back off.
        300..=399 | 408 | 429 | 500..=599 => Reaction::Retry,
        _ => Reaction::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_reactions() {
        assert_eq!(reaction_to_status(200), Reaction::Accepted);
        assert_eq!(reaction_to_status(401), Reaction::Stop(IDENTITY_UNKNOWN));
        assert_eq!(reaction_to_status(403), Reaction::Stop(IDENTITY_REJECTED));
        for s in [429, 500, 502, 503, 504] {
            assert_eq!(reaction_to_status(s), Reaction::Retry, "{s}");
        }
        assert_eq!(reaction_to_status(400), Reaction::Skip);
        for s in [301, 302, 307, 308] {
            assert_eq!(reaction_to_status(s), Reaction::Retry, "a redirect is backed off from: {s}");
        }
        assert_eq!(reaction_to_status(413), Reaction::Skip);
        let codes = [OK, RUNTIME, CONFIG, IDENTITY_UNKNOWN, IDENTITY_REJECTED, ENROLLMENT_REFUSED];
        let distinct: std::collections::BTreeSet<u8> = codes.iter().copied().collect();
        assert_eq!(distinct.len(), codes.len(), "exit codes are distinct");
    }
}
