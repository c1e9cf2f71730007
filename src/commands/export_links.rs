//! `export-links`: for administrators who send their own messages, each converted user's redeem
//! URL and the tenant's Teams link as CSV. The file is created 0600 and never overwritten; the
//! URLs are never logged or printed. Converted users without a stored link (their invitation's
//! answer was lost, so the conversion was reconciled from a re-read) are counted and named on
//! stderr, with the way to get them one: `resend --only`.

use std::path::Path;

use anyhow::Context as _;

use super::{common, out_file};
use crate::cli::ExportLinksArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::queue::track::RedeemLink;
use crate::queue::Queue;

pub fn export_links(db: &Path, args: ExportLinksArgs) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
    let run = common::pick_live_run(&queue, args.run_id)?;
    if !run.options.keep_redeem_links {
        return Err(ExitError::usage(format!(
            "run {} was not started with --keep-redeem-links: no redeem URL was stored \
             (`resume {} --keep-redeem-links` keeps them for users converted from now on)",
            run.id, run.id
        ))
        .into());
    }
    let links = queue.redeem_links(run.id)?;
    let file = create_private(&args.out)?;
    write_csv(file, &links, run.tenant_id.as_deref())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} redeem links of run {} written to {} (readable by you only; treat it like a password)",
        links.len(),
        run.id,
        args.out.display()
    );
    let missing = queue.converted_without_link(run.id)?;
    if !missing.is_empty() {
        eprintln!("{}", missing_links_notice(run.id, &missing));
    }
    Ok(ExitStatus::Success)
}

/// Most users named on stderr; the rest are counted.
const MISSING_NAMED: usize = 50;

/// What stderr says about converted users without a link: how many, who, and how to get one.
fn missing_links_notice(run_id: i64, missing: &[String]) -> String {
    let mut text = format!(
        "{} converted users of run {run_id} have no stored redeem link (the answer to their invitation was lost; \
         the conversion was confirmed by re-reading the user) and are not in the file:",
        missing.len()
    );
    for name in missing.iter().take(MISSING_NAMED) {
        text.push_str("\n  ");
        text.push_str(name);
    }
    if missing.len() > MISSING_NAMED {
        text.push_str(&format!("\n  … and {} more", missing.len() - MISSING_NAMED));
    }
    text.push_str(&format!(
        "\nto get them a link: put their UPNs in a file, one a line, and run \
         `b2b-convert resend {run_id} --only FILE` (a fresh invitation, whose link is stored), \
         then export-links again to a new file"
    ));
    text
}

/// Creates `path` for writing, owner-only, refusing an existing file.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    out_file::create_private_file(path)
        .map_err(|e| out_file::refused(path, e, "the file exists; export-links never overwrites"))
}

/// The tenant's Teams link (`https://teams.microsoft.com/?tenantId=<tenant>`), or Teams' plain
/// address when the run does not know its tenant (token sign-in).
pub fn teams_url(tenant_id: Option<&str>) -> String {
    match tenant_id {
        Some(t) => format!("https://teams.microsoft.com/?tenantId={t}"),
        None => "https://teams.microsoft.com/".to_string(),
    }
}

fn write_csv<W: std::io::Write>(
    out: W,
    links: &[RedeemLink],
    tenant_id: Option<&str>,
) -> anyhow::Result<()> {
    let teams = teams_url(tenant_id);
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "userPrincipalName",
        "externalEmail",
        "inviteRedeemUrl",
        "teamsUrl",
    ])?;
    for link in links {
        w.write_record([
            link.user_principal_name.as_deref().unwrap_or(""),
            link.external_email.as_deref().unwrap_or(""),
            link.invite_redeem_url.as_str(),
            teams.as_str(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::assert_contains;

    #[test]
    fn csv_has_the_contract_columns() {
        let links = vec![RedeemLink {
            user_principal_name: Some("a@contoso.com".into()),
            external_email: Some("a@fabrikam.com".into()),
            invite_redeem_url: "https://login.example/redeem?x=1,2".into(),
        }];
        let mut out = Vec::new();
        write_csv(&mut out, &links, Some("t-1")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "userPrincipalName,externalEmail,inviteRedeemUrl,teamsUrl\n\
             a@contoso.com,a@fabrikam.com,\"https://login.example/redeem?x=1,2\",\
             https://teams.microsoft.com/?tenantId=t-1\n"
        );
        assert!(!format!("{:?}", links[0]).contains("redeem?x"));
    }

    #[test]
    fn missing_links_are_counted_named_and_explained() {
        let names: Vec<String> = (0..60).map(|i| format!("u{i}@contoso.com")).collect();
        let text = missing_links_notice(7, &names);
        assert!(text.starts_with("60 converted users of run 7 have no stored redeem link"));
        assert_contains(
            &text,
            &[
                "\n  u0@contoso.com\n",
                "u49@contoso.com",
                "… and 10 more",
                "resend 7 --only FILE",
            ],
        );
        assert!(!text.contains("u50@contoso.com"));
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("links.csv");
        drop(create_private(&path).unwrap());
        assert_eq!(out_file::mode_of(&path), 0o600);
        let err = create_private(&path).unwrap_err();
        assert!(err.to_string().contains("never overwrites"), "{err}");
    }
}
