//! A stable hardware fingerprint, sent only as a keyed hash: the machine id
//! (or product UUID), never a MAC address, never the raw value.

use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;

/// The HMAC key: a fixed domain separator, so the value is useless outside
/// OneProtect and the platform re-keys it before storing.
const FINGERPRINT_KEY: &[u8] = b"oneprotect-agent/hardware-fingerprint/v1";

#[cfg(target_os = "linux")]
const MACHINE_ID_SOURCES: &[&str] =
    &["/etc/machine-id", "/var/lib/dbus/machine-id", "/sys/class/dmi/id/product_uuid"];
#[cfg(not(target_os = "linux"))]
const MACHINE_ID_SOURCES: &[&str] = &[];

/// The first non-empty machine id from the platform's usual sources.
pub fn machine_id() -> Option<SecretString> {
    MACHINE_ID_SOURCES
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .map(SecretString::from)
}

/// Hex HMAC-SHA256 of a machine id.
pub fn fingerprint_hash(machine_id: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(FINGERPRINT_KEY) else { return String::new() };
    mac.update(machine_id.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_keyed_and_never_the_raw_value() {
        let a = fingerprint_hash("fixture-machine-id-0001");
        assert_eq!(a, fingerprint_hash("fixture-machine-id-0001"));
        assert_ne!(a, fingerprint_hash("fixture-machine-id-0002"));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("fixture"));
        use sha2::Digest;
        let plain: String =
            sha2::Sha256::digest(b"fixture-machine-id-0001").iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(a, plain, "keyed, not a bare hash");
    }
}
