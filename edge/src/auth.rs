//! JWT authentication (CONTRACT.md §1): HS256 only, `sub` and `exp` required, optional
//! issuer and audience checks. HTTP reads `Authorization: Bearer` first, then the
//! `auth-token` cookie.

use crate::config::AuthConfig;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use legato_schema::UserId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token")]
    Invalid,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Authenticator {
            key: DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        UserId::parse(data.claims.sub).map_err(|_| AuthError::Invalid)
    }

    /// The token of an HTTP request: the bearer header wins over the cookie. A bearer header
    /// with an empty or malformed token is still the request's credential (refused), never a
    /// reason to use the cookie instead. HTTP parsers strip the trailing space of `Bearer `,
    /// so a bare `Bearer` is such an empty token, and `Bearer<TAB>token` is a bearer header too.
    pub fn token_from_headers<'a>(
        authorization: Option<&'a str>,
        cookie: Option<&'a str>,
    ) -> Option<&'a str> {
        if let Some(rest) = authorization.and_then(|h| h.trim().strip_prefix("Bearer"))
            && (rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_whitespace()))
        {
            return Some(rest.trim());
        }
        cookie?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == "auth-token")
            .map(|(_, value)| value.trim())
    }

    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> Result<UserId, AuthError> {
        let token = Self::token_from_headers(authorization, cookie)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        self.verify(token)
    }
}

/// Issues an HS256 token (the edge's `gen-token` subcommand and tests).
pub fn issue_token(secret: &str, sub: &str, ttl_secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + ttl_secs;
    let claims = Claims {
        sub: sub.into(),
        exp,
        email: None,
        iss: None,
        aud: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use legato_runtime::config::Secret;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            jwt_secret: Secret::new("secret"),
            issuer: None,
            audience: None,
        })
    }

    #[test]
    fn accepts_a_valid_token() {
        let t = issue_token("secret", "user_1", 60);
        assert_eq!(auth().verify(&t).unwrap().as_str(), "user_1");
    }

    #[test]
    fn refuses_wrong_key_wrong_alg_and_expired() {
        assert_eq!(
            auth().verify(&issue_token("other", "u", 60)),
            Err(AuthError::Invalid)
        );
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "u".into(),
                exp: u64::MAX / 2,
                email: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(auth().verify(&hs512), Err(AuthError::Invalid));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "u".into(),
                exp: 1_000,
                email: None,
                iss: None,
                aud: None,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(auth().verify(&expired), Err(AuthError::Invalid));
        // alg none: header {"alg":"none"}, no signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert_eq!(auth().verify(none), Err(AuthError::Invalid));
        assert_eq!(auth().verify(""), Err(AuthError::Invalid));
    }

    #[test]
    fn bearer_header_wins_over_cookie() {
        assert_eq!(
            Authenticator::token_from_headers(Some("Bearer abc"), Some("auth-token=def")),
            Some("abc")
        );
        assert_eq!(
            Authenticator::token_from_headers(Some("bearer abc"), Some("x=1; auth-token=def")),
            Some("def")
        );
        assert_eq!(Authenticator::token_from_headers(None, Some("x=1")), None);
        assert_eq!(auth().authenticate(None, None), Err(AuthError::Missing));
        // an empty bearer token does not fall back to the cookie, however it is spelled
        let good = issue_token("secret", "user_1", 60);
        let cookie = format!("auth-token={good}");
        for header in ["Bearer ", "Bearer", "Bearer   ", " Bearer ", "Bearer\t"] {
            assert_eq!(
                auth().authenticate(Some(header), Some(&cookie)),
                Err(AuthError::Missing),
                "{header:?}"
            );
        }
        assert_eq!(
            Authenticator::token_from_headers(Some("Bearer\tabc"), Some("auth-token=def")),
            Some("abc")
        );
        // not a bearer header (CONTRACT.md §1): the cookie is the credential
        for header in ["Basic x", "bearer x", "Bearerx"] {
            assert_eq!(
                auth()
                    .authenticate(Some(header), Some(&cookie))
                    .unwrap()
                    .as_str(),
                "user_1",
                "{header:?}"
            );
        }
    }
}
