//! Tokens: `base64url(claims) "." base64url(HMAC-SHA256(key, claims))`, the claims being
//! postcard of [`Claims`]. The key is in the replicated auth state, so any node verifies what
//! any node signed, and nothing about a token is kept on the node that issued it.
//!
//! A token is good until its expiry and while its user's generation is the one it carries
//! (see `User::generation`); the signature makes both claims unforgeable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Claims {
    pub(super) user: String,
    pub(super) generation: u64,
    /// Seconds since the Unix epoch.
    pub(super) expires_at: u64,
}

/// Longest token accepted: the claims of a long user name, base64 and the signature. Anything
/// longer is refused before it is decoded.
const MAX_TOKEN: usize = 2048;

fn signing_key(key: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key)
}

/// Signs `claims` with `key`.
pub(super) fn sign(key: &[u8; 32], claims: &Claims) -> std::io::Result<String> {
    let body = encode(claims)?;
    let tag = hmac::sign(&signing_key(key), &body);
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

/// The claims of `token` if `key` signed it (expiry and generation are the caller's to check).
pub(super) fn open(key: &[u8; 32], token: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN {
        return None;
    }
    let (body, tag) = token.split_once('.')?;
    let body = URL_SAFE_NO_PAD.decode(body).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // Constant-time comparison, inside ring.
    hmac::verify(&signing_key(key), &body, &tag).ok()?;
    decode(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user: "app".into(),
            generation: 4,
            expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn a_signed_token_opens_with_its_key_only() {
        let key = [1u8; 32];
        let token = sign(&key, &claims()).unwrap();
        assert_eq!(open(&key, &token), Some(claims()));
        assert_eq!(open(&[2u8; 32], &token), None, "another cluster's key");
    }

    #[test]
    fn a_changed_token_does_not_open() {
        let key = [1u8; 32];
        let token = sign(&key, &claims()).unwrap();
        let (body, tag) = token.split_once('.').unwrap();
        let mut forged = claims();
        forged.user = "root".into();
        let forged_body = URL_SAFE_NO_PAD.encode(encode(&forged).unwrap());
        assert_eq!(open(&key, &format!("{forged_body}.{tag}")), None);
        assert_eq!(open(&key, body), None);
        assert_eq!(open(&key, "garbage"), None);
        assert_eq!(open(&key, &"a.".repeat(2000)), None);
    }
}
