//! Static keys given by reference (`env:`/`file:`), read again every few
//! minutes so a rotated secret file (a Kubernetes secret, a vault agent's
//! output) is picked up without restarting flockd.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, future};
use flockd_core::ProviderError;

use crate::config::AwsCredentialRefs;

/// How long keys read from their references are used before reading again.
const REREAD_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct ReferencedKeys {
    refs: AwsCredentialRefs,
}

impl ReferencedKeys {
    /// Reads the keys once now, so a missing file or variable fails at
    /// start-up rather than at the first call.
    pub fn new(refs: AwsCredentialRefs) -> Result<Self, ProviderError> {
        let keys = ReferencedKeys { refs };
        keys.read()?;
        Ok(keys)
    }

    pub fn read(&self) -> Result<Credentials, ProviderError> {
        let at = "credentials";
        let session_token = match &self.refs.session_token {
            Some(token) => Some(token.resolve(&format!("{at}.session-token"))?),
            None => None,
        };
        Ok(Credentials::new(
            self.refs.access_key_id.resolve(&format!("{at}.access-key-id"))?,
            self.refs.secret_access_key.resolve(&format!("{at}.secret-access-key"))?,
            session_token,
            Some(SystemTime::now() + REREAD_AFTER),
            "flockd-config",
        ))
    }
}

impl ProvideCredentials for ReferencedKeys {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        // Errors name the reference, never a value.
        future::ProvideCredentials::ready(self.read().map_err(|e| CredentialsError::provider_error(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    #[test]
    fn keys_are_read_again_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let (id, secret) = (dir.path().join("id"), dir.path().join("secret"));
        std::fs::write(&id, "AKIAFAKEFIRST\n").unwrap();
        std::fs::write(&secret, "fake-secret-1").unwrap();
        let keys = ReferencedKeys::new(AwsCredentialRefs {
            access_key_id: SecretRef::File(id.clone()),
            secret_access_key: SecretRef::File(secret.clone()),
            session_token: None,
        })
        .unwrap();
        assert_eq!(keys.read().unwrap().access_key_id(), "AKIAFAKEFIRST");
        let first = keys.read().unwrap();
        assert!(first.expiry().is_some(), "an expiry makes the SDK ask again");

        std::fs::write(&id, "AKIAFAKESECOND").unwrap();
        assert_eq!(keys.read().unwrap().access_key_id(), "AKIAFAKESECOND");

        std::fs::remove_file(&secret).unwrap();
        let err = keys.read().unwrap_err().to_string();
        assert!(err.contains("secret-access-key") && !err.contains("fake-secret"), "{err}");
    }
}
