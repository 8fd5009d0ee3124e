//! The bearer token. With one configured, every route but `/healthz` needs
//! `Authorization: Bearer <token>`. Browsers cannot add that header to a
//! page load, so HTTP Basic with the token as password is accepted too: the
//! browser asks once and sends it with every request of the dashboard.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use flockd_clearml::secret::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The token's digest: comparing digests in constant time hides both the
/// token's content and its length from a timing attacker.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(secret: &Secret) -> Self {
        Token(Sha256::digest(secret.expose().as_bytes()).into())
    }

    fn matches(&self, candidate: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        bool::from(self.0.ct_eq(&digest))
    }

    /// Whether the request carries this token, as a bearer token or as the
    /// password of Basic credentials.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.matches(rest.trim());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else { return false };
            let Ok(text) = String::from_utf8(decoded) else { return false };
            return text.split_once(':').is_some_and(|(_, password)| self.matches(password));
        }
        false
    }
}

pub async fn require_token(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    match &token {
        Some(token) if request.uri().path() != "/healthz" && !token.admits(request.headers()) => {
            let mut response =
                (StatusCode::UNAUTHORIZED, "a token is required: send `Authorization: Bearer <token>`\n")
                    .into_response();
            let challenges = response.headers_mut();
            challenges.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"flockd\""));
            challenges.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"flockd\", charset=\"UTF-8\""),
            );
            response
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn admits_bearer_and_basic_with_the_token_only() {
        let token = Token::new(&Secret::new("tok-123"));
        assert!(token.admits(&headers("Bearer tok-123")));
        assert!(token.admits(&headers("bearer  tok-123 ")));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok-123");
        assert!(token.admits(&headers(&format!("Basic {basic}"))));
        assert!(!token.admits(&headers("Bearer tok-12")));
        assert!(!token.admits(&headers("Bearer tok-1234")));
        assert!(!token.admits(&headers("tok-123")));
        assert!(!token.admits(&HeaderMap::new()));
        let wrong = base64::engine::general_purpose::STANDARD.encode("tok-123:nope");
        assert!(!token.admits(&headers(&format!("Basic {wrong}"))));
    }
}
