//! `profiles`: the named tenants of `b2b-convert.toml`, read locally (no secrets, nothing
//! fetched).

use crate::exit::ExitStatus;
use crate::profile;

pub fn profiles() -> anyhow::Result<ExitStatus> {
    let Some((path, profiles)) = profile::load()? else {
        println!(
            "no {} in the working directory or the configuration directory",
            profile::FILE_NAME
        );
        return Ok(ExitStatus::Success);
    };
    println!("profiles in {}", path.display());
    println!(
        "  {:<16} {:<38} {:<38} {:<16} db",
        "name", "tenant", "client id", "auth"
    );
    for (name, p) in &profiles {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:<38} {:<38} {:<16} {}",
            name,
            or_dash(&p.tenant_id),
            or_dash(&p.client_id),
            or_dash(&p.auth),
            p.db(name)
        );
    }
    Ok(ExitStatus::Success)
}
