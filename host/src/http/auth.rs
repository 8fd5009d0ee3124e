//! The bearer token. With one configured, every route but the probes
//! (`/healthz`, `/readyz`) needs `Authorization: Bearer <token>`; without
//! one, only requests addressed to a loopback name are answered. Browsers cannot add that header to a
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

/// The probes say only "alive" and "ready": a kubelet or a load balancer
/// has no token, so they stay open.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Every request passes here. With a token it must carry it. Without one the
/// server listens on loopback only, and a request must also be *addressed*
/// to a loopback name: a web page whose name an attacker rebinds to
/// 127.0.0.1 reaches this port from the victim's browser, but its requests
/// carry the attacker's name as Host (DNS rebinding).
pub async fn guard(State(token): State<Option<Token>>, request: Request, next: Next) -> Response {
    if is_probe(request.uri().path()) {
        return next.run(request).await;
    }
    match &token {
        Some(token) if !token.admits(request.headers()) => {
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
        Some(_) => next.run(request).await,
        None => {
            // HTTP/1.1 names the host in the Host header, HTTP/2 in the URI.
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| request.uri().authority().map(|a| a.as_str()));
            if host.is_some_and(is_loopback_host) {
                return next.run(request).await;
            }
            let message = format!(
                "this flockd has no [http] token, so it answers only requests addressed to localhost, 127.0.0.1 or [::1] (this one was for {:?}): another name may be a web page rebound to this machine. Open the dashboard as http://127.0.0.1:<port>/, or set [http] token = \"env:FLOCKD_HTTP_TOKEN\" to serve other names\n",
                host.unwrap_or("no host")
            );
            (StatusCode::FORBIDDEN, message).into_response()
        }
    }
}

/// `localhost`, a 127.0.0.0/8 address or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, rest)) if rest.is_empty() || rest.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
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
    fn loopback_host_names_with_and_without_ports() {
        for ok in ["localhost", "LOCALHOST:9090", "127.0.0.1", "127.0.0.1:9090", "127.1.2.3:1", "[::1]", "[::1]:9090"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "rebound.example",
            "rebound.example:9090",
            "localhost.evil.test",
            "127.0.0.1.nip.io",
            "[::2]:1",
            "[::1",
            "",
            "10.0.0.1:9090",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
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
