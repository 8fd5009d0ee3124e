//! GCE's naming rules, and the deterministic names and ids a retried launch
//! must reproduce.
//!
//! Label values hold only lowercase letters, digits, `_` and `-`, at most 63
//! characters, so flockd's values (cluster, resource, launch key, worker
//! prefix) are sanitised: uppercase is lowered, any other character becomes
//! `_`, and a value that is still too long is cut to 54 characters followed
//! by `-` and 8 hex digits of its SHA-256. Sanitising can map two values to
//! one label, so the exact values also go into instance metadata
//! (`flockd-cluster`, `flockd-resource`, `flockd-launch-key`), and `list`
//! checks the exact cluster there after filtering by label.

use sha2::{Digest, Sha256};
use uuid::Uuid;

const MAX_LABEL: usize = 63;

/// Namespace of the request ids flockd derives (uuid v5).
const REQUEST_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_d0a5_3b6e_4a8e_9a57_1f0c_c0de_f10c);

pub fn is_valid_label(value: &str) -> bool {
    value.len() <= MAX_LABEL
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `value` as a label value (see the module doc).
pub fn label_value(value: &str) -> String {
    if is_valid_label(value) {
        return value.to_owned();
    }
    let sanitized: String = value
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if sanitized.len() <= MAX_LABEL { sanitized } else { format!("{}-{}", &sanitized[..54], &digest_hex(value)[..8]) }
}

/// The instance name for a launch: the same cluster and key always give the
/// same name, so a retried insert collides with the first instead of
/// starting a second. `flockd-<resource, at most 30 chars>-<16 hex>`, a valid
/// GCE name (lowercase, digits, `-`, starts with a letter, at most 63).
pub fn instance_name(cluster: &str, resource: &str, idempotency_key: &str) -> String {
    let readable: String = resource
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(30)
        .collect();
    let key = digest_hex(&format!("{cluster}\0{idempotency_key}"));
    format!("flockd-{readable}-{}", &key[..16])
}

/// GCE wants a UUID as requestId: derived from everything that identifies
/// one call, so a retry sends the same one.
pub fn request_id(parts: &[&str]) -> String {
    Uuid::new_v5(&REQUEST_ID_NAMESPACE, parts.join("\0").as_bytes()).to_string()
}

fn digest_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource named with '_' (gpu_g4dn) keeps it in its label and gets
    /// a valid instance name (GCE names take no '_').
    #[test]
    fn a_resource_named_with_an_underscore_gets_a_valid_instance_name() {
        let name = instance_name("corp", "gpu_g4dn", "flockd-k-1");
        assert!(name.starts_with("flockd-gpu-g4dn-"), "{name}");
        let valid = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.ends_with('-');
        assert!(valid, "{name}");
        assert_eq!(label_value("gpu_g4dn"), "gpu_g4dn");
    }

    #[test]
    fn label_values_are_kept_when_valid_and_sanitised_otherwise() {
        assert_eq!(label_value("prod-1_a"), "prod-1_a");
        assert_eq!(label_value("Prod:GPU spot"), "prod_gpu_spot");
        assert_eq!(label_value("flockd:prod:gpu:"), "flockd_prod_gpu_");
        let long = "x".repeat(100);
        let label = label_value(&long);
        assert_eq!(label.len(), 63);
        assert!(is_valid_label(&label));
        assert_ne!(label, label_value(&"x".repeat(101)), "long values stay distinct");
    }

    #[test]
    fn names_and_request_ids_are_deterministic_and_valid() {
        let name = instance_name("prod", "GPU_spot.big", "key-1");
        assert_eq!(name, instance_name("prod", "GPU_spot.big", "key-1"));
        assert_ne!(name, instance_name("prod", "GPU_spot.big", "key-2"));
        assert_ne!(name, instance_name("dev", "GPU_spot.big", "key-1"));
        assert!(name.starts_with("flockd-gpu-spot-big-"), "{name}");
        assert!(name.len() <= 63);
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        let long = instance_name("prod", &"r".repeat(80), "k");
        assert!(long.len() <= 63, "{long}");

        let id = request_id(&["prod", "key-1", "zone-a", "insert"]);
        assert_eq!(id, request_id(&["prod", "key-1", "zone-a", "insert"]));
        assert_ne!(id, request_id(&["prod", "key-1", "zone-b", "insert"]));
        assert!(Uuid::parse_str(&id).is_ok());
    }
}
