//! `emulator` subcommand: serve a simulated tenant on loopback until Ctrl-C, after printing the
//! environment a client needs (`NAME=value` lines on stdout).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;

use crate::cli::EmulatorKnobs;
use crate::emulator::{self, EmulatorConfig, Tenant};
use crate::exit::{ExitError, ExitStatus};

pub async fn emulator(args: crate::cli::EmulatorArgs) -> anyhow::Result<ExitStatus> {
    let listen: SocketAddr = args.listen.parse().map_err(|_| {
        ExitError::usage(format!(
            "--listen {}: expected an address such as 127.0.0.1:0",
            args.listen
        ))
    })?;
    if !listen.ip().is_loopback() {
        return Err(ExitError::usage(format!(
            "--listen {listen}: the emulator serves loopback addresses only"
        ))
        .into());
    }
    let tenant = match (&args.tenant, args.generate) {
        (Some(path), _) => Tenant::load(path)?,
        (None, Some(n)) => {
            let t = Tenant::generate(n, args.seed);
            if let Some(csv) = &args.write_csv {
                t.write_csv(csv)
                    .with_context(|| format!("writing {}", csv.display()))?;
                tracing::info!(path = %csv.display(), users = n, "wrote input CSV");
            }
            t
        }
        (None, None) => Tenant::sample(),
    };
    let mut tenant = tenant;
    if let Some(id) = &args.tenant_id {
        let id = uuid::Uuid::parse_str(id.trim())
            .map_err(|_| ExitError::usage(format!("--tenant-id {id}: expected a GUID")))?;
        tenant.tenant_id = id.to_string();
    }
    let users = tenant.users.len();
    let config = EmulatorConfig {
        tls: args.tls,
        ..config_from(tenant, &args.knobs)?
    };
    let emu = emulator::start(config, listen).await?;
    {
        let mut out = std::io::stdout().lock();
        for (name, value) in emu.client_env() {
            writeln!(out, "{name}={value}")?;
        }
        out.flush()?;
    }
    tracing::info!(url = %emu.base_url(), users, "emulator serving; Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("stopping the emulator");
    emu.shutdown().await;
    Ok(ExitStatus::Success)
}

/// The emulator's settings from the command line's flags (the emulator itself knows nothing of
/// `cli`).
pub fn config_from(tenant: Tenant, knobs: &EmulatorKnobs) -> anyhow::Result<EmulatorConfig> {
    let app_directory_roles = emulator::directory_role_ids(&knobs.app_directory_roles)
        .map_err(|e| ExitError::usage(format!("--app-directory-roles: {e}")))?;
    Ok(EmulatorConfig {
        latency: std::time::Duration::from_millis(knobs.latency_ms),
        ru_per_10s: knobs.ru_per_10s,
        writes_per_150s: knobs.writes_per_150s,
        invitations_per_5s: knobs.invitations_per_5s,
        fault_rate: knobs.fault_rate,
        lost_response_rate: knobs.lost_response_rate,
        not_applied_rate: knobs.not_applied_rate,
        block_invitations: knobs.block_invitations,
        token_lifetime: std::time::Duration::from_secs(knobs.token_lifetime_s),
        app_roles: list(&knobs.app_roles),
        delegated_scopes: list(&knobs.delegated_scopes),
        throttle_every_nth_invitation: knobs.throttle_every_nth_invitation,
        allow_invites_from: knobs.allow_invites_from.clone(),
        device_code_approve_after: knobs.device_code_approve_after,
        app_directory_roles,
        fractional_retry_after: knobs.fractional_retry_after,
        ..EmulatorConfig::new(tenant)
    })
}

/// A comma-separated flag value, blanks dropped.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect()
}
