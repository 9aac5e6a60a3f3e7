//! Revocation (RFC 8555 §7.6): with the account, or — for a compromised key whose account is
//! gone — signed by the certificate's own key.

use super::*;

impl Acme {
    /// Revoke with reason keyCompromise (RFC 8555 §7.6): signed with the certificate's own key
    /// when we have it (the CA then knows the key itself is burned), else with the account key.
    pub(crate) async fn revoke(
        &self,
        leaf_der: &[u8],
        key: Option<&crate::keys::PrivateKey>,
    ) -> Result<crate::issuer::RevokeOutcome> {
        let http = Http::new(self.cfg.ca_bundle.as_deref(), self.clock)?;
        self.revoke_over(&http, leaf_der, key)
            .await
            .map_err(|e| self.trust_hint(&http, e))
    }

    async fn revoke_over(
        &self,
        http: &Http,
        leaf_der: &[u8],
        key: Option<&crate::keys::PrivateKey>,
    ) -> Result<crate::issuer::RevokeOutcome> {
        use crate::issuer::RevokeOutcome;
        if let Some(key) = key {
            match self.revoke_with_key(http, leaf_der, key).await? {
                RevokeOutcome::Refused(why) => log::warn!(
                    issuer = self.name.as_str();
                    "the CA refused a revocation signed with the certificate's key ({why}), trying the account key"
                ),
                done => return Ok(done),
            }
        }
        let account = self.account(http).await?;
        let cert = rustls::pki_types::CertificateDer::from(leaf_der.to_vec());
        let req = instant_acme::RevocationRequest {
            certificate: &cert,
            reason: Some(instant_acme::RevocationReason::KeyCompromise),
        };
        match account.revoke(&req).await {
            Ok(()) => Ok(RevokeOutcome::Revoked { by_key: false }),
            Err(instant_acme::Error::Api(p))
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":alreadyRevoked")) =>
            {
                Ok(RevokeOutcome::AlreadyRevoked)
            }
            Err(e @ instant_acme::Error::Api(_)) => Ok(RevokeOutcome::Refused(describe(e))),
            Err(e) => Err(failed("failed to revoke", e)),
        }
    }

    async fn revoke_with_key(
        &self,
        http: &Http,
        leaf_der: &[u8],
        key: &crate::keys::PrivateKey,
    ) -> Result<crate::issuer::RevokeOutcome> {
        use crate::issuer::RevokeOutcome;
        let (status, _, body) = http.get_capped(&self.cfg.directory).await?;
        let dir: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            Error::msg(format!(
                "the ACME directory answered {status} with something that is not JSON"
            ))
        })?;
        let (Some(new_nonce), Some(revoke_url)) =
            (dir["newNonce"].as_str(), dir["revokeCert"].as_str())
        else {
            return Err(Error::msg(
                "the ACME directory lists no newNonce or revokeCert",
            ));
        };
        let fetch_nonce = || async {
            let rsp = http.client().head(new_nonce).send().await.map_err(|e| {
                Error::msg(format!(
                    "failed to get a nonce: {}",
                    crate::http::describe_reqwest(&e)
                ))
            })?;
            nonce_of(rsp.headers()).ok_or_else(|| Error::msg("the CA sent no Replay-Nonce"))
        };
        let mut nonce = fetch_nonce().await?;
        let (alg, jwk) = crate::issuer::jws::jwk(key).map_err(Error::msg)?;
        let payload = serde_json::json!({"certificate": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(leaf_der), "reason": 1});
        for _ in 0..3 {
            let protected =
                serde_json::json!({"alg": alg, "jwk": jwk, "nonce": nonce, "url": revoke_url});
            let jws = crate::issuer::jws::sign(key, &protected, &payload).map_err(Error::msg)?;
            let rsp = http
                .client()
                .post(revoke_url)
                .header(http::header::CONTENT_TYPE, "application/jose+json")
                .body(jws.to_string())
                .send()
                .await
                .map_err(|e| {
                    Error::msg(format!(
                        "failed to revoke: {}",
                        crate::http::describe_reqwest(&e)
                    ))
                })?;
            if rsp.status().is_success() {
                return Ok(RevokeOutcome::Revoked { by_key: true });
            }
            let next = nonce_of(rsp.headers());
            let status = rsp.status();
            let text = rsp
                .bytes()
                .await
                .map(|b| b.slice(..b.len().min(64 << 10)))
                .unwrap_or_default();
            let problem: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
            let kind = problem["type"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("urn:ietf:params:acme:error:")
                .to_string();
            match kind.as_str() {
                "alreadyRevoked" => return Ok(RevokeOutcome::AlreadyRevoked),
                "badNonce" => match next {
                    Some(n) => nonce = n,
                    None => nonce = fetch_nonce().await?,
                },
                _ if status.is_server_error() => {
                    return Err(Error::msg(format!(
                        "failed to revoke: the CA answered {status}"
                    )));
                }
                _ => {
                    let detail = problem["detail"].as_str().unwrap_or("").to_string();
                    return Ok(RevokeOutcome::Refused(format!("{status} {kind}: {detail}")));
                }
            }
        }
        Err(Error::msg("failed to revoke: the CA kept rejecting nonces"))
    }
}

fn nonce_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
