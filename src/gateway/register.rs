//! Outbound REGISTER for trunks that want it: registered, refreshed before
//! expiry, exponential back-off on failure, every state change logged.

use crate::config::RegisterConfig;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::Registration;
use rsipstack::transaction::endpoint::EndpointInnerRef;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Keep one trunk registered until `cancel`.
pub(super) async fn keep_registered(
    endpoint: EndpointInnerRef,
    trunk: String,
    cfg: RegisterConfig,
    cancel: CancellationToken,
    board: crate::api::board::CallBoard,
) {
    board.registration(&trunk, false);
    let server = match rsipstack::sip::Uri::try_from(cfg.registrar.as_str()) {
        Ok(u) => u,
        Err(e) => {
            warn!(%trunk, registrar = %cfg.registrar, error = %e, "bad registrar URI: not registering");
            return;
        }
    };
    let credential = Credential {
        username: cfg.user.clone(),
        password: cfg.password.clone().unwrap_or_default(),
        realm: None,
        auth_username: cfg.auth_user.clone(),
    };
    let mut registration = Registration::new(endpoint, Some(credential));
    let mut backoff = cfg.retry_min;
    loop {
        let wait = match registration
            .register(server.clone(), Some(cfg.expiry.as_secs() as u32))
            .await
        {
            Ok(resp) if resp.status_code.code() / 100 == 2 => {
                let granted = Duration::from_secs(u64::from(registration.expires()));
                info!(%trunk, registrar = %cfg.registrar, expires_s = granted.as_secs(), "registered");
                backoff = cfg.retry_min;
                board.registration(&trunk, true);
                granted
                    .saturating_sub(cfg.refresh_before)
                    .max(Duration::from_secs(5))
            }
            Ok(resp) => {
                board.registration(&trunk, false);
                warn!(%trunk, registrar = %cfg.registrar, status = resp.status_code.code(), retry_s = backoff.as_secs(), "registration refused");
                next_backoff(&mut backoff, cfg.retry_max)
            }
            Err(e) => {
                board.registration(&trunk, false);
                warn!(%trunk, registrar = %cfg.registrar, error = %e, retry_s = backoff.as_secs(), "registration failed");
                next_backoff(&mut backoff, cfg.retry_max)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => {
                let _ = registration.register(server.clone(), Some(0)).await;
                info!(%trunk, "unregistered");
                return;
            }
        }
    }
}

fn next_backoff(current: &mut Duration, max: Duration) -> Duration {
    let wait = *current;
    *current = (*current * 2).min(max);
    wait
}
