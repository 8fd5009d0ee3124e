//! ClearML's auth tokens are HS256 JWTs. Clients decode them without
//! verifying (they only read `exp` and the version claims); the server signs
//! and checks them. Both halves are small enough not to need a JWT crate.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `claims` (a JSON object) with `key`.
pub fn sign(claims: &Value, key: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(mac(key, &signing_input).finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The claims of a token signed with `key`, or None if it was not.
pub fn verify(token: &str, key: &[u8]) -> Option<Value> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    mac(key, signing_input).verify_slice(&signature).ok()?;
    decode_unverified(token)
}

/// The claims of any well-formed JWT, signature unchecked: what a client
/// needs to know when to refresh.
pub fn decode_unverified(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn mac(key: &[u8], input: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(input.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signed_tokens_verify_only_with_their_key_and_decode_without_it() {
        let claims = json!({"exp": 123, "api_version": "2.23"});
        let token = sign(&claims, b"k1");
        assert_eq!(verify(&token, b"k1"), Some(claims.clone()));
        assert_eq!(verify(&token, b"k2"), None);
        assert_eq!(decode_unverified(&token), Some(claims));
        let mut forged = token.clone();
        forged.push('x');
        assert_eq!(verify(&forged, b"k1"), None);
        assert_eq!(decode_unverified("garbage"), None);
    }
}
