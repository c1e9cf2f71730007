//! `scripts RUN_ID --out DIR`: the PowerShell 7 an AD DS or Exchange administrator reviews and
//! runs for what Graph cannot write (docs/usage.md, "What Graph cannot reach"): the on-premises
//! password of converted synced users, the on-premises `mail` of synced users blocked on it, and
//! the (unsupported) Exchange Online path for mailbox users.
//!
//! The users come from the run's items in the database alone ([`plan`], a pure function of
//! the items); no Graph request is made. The scripts are plain text a reviewer reads: the users
//! are a literal table with every UPN visible, nothing is encoded or downloaded, every change
//! goes through `ShouldProcess` (`-WhatIf` changes nothing), and each script appends to its own
//! CSV log next to itself. A password is generated on the administrator's machine when the
//! script runs, one character at a time into a `SecureString`: it never exists as text, in the
//! script, its log or this tool.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use super::{common, out_file};
use crate::cli::ScriptsArgs;
use crate::exit::ExitStatus;
use crate::item::{ItemExtras, ItemRecord, ItemState, Reason};
use crate::queue::Queue;

/// How a script finds the on-premises account, most precise first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `onPremisesSecurityIdentifier`: unique and never reused.
    Sid(String),
    /// `onPremisesSamAccountName`.
    Sam(String),
    /// Neither was read (e.g. a run made before the tool read them): the UPN.
    Upn,
}

/// One user a script covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptUser {
    pub user_principal_name: String,
    pub identity: Identity,
    /// The address to set (`ad-set-mail`), or the partner's address from the input
    /// (`exchange-mailbox-users`, when the row gave one).
    pub mail: Option<String>,
    /// `externalUserState` as of the last `track`.
    pub redemption: Option<String>,
}

/// Who each script covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Converted synced users: `ad-retire-passwords.ps1`.
    pub retire: Vec<ScriptUser>,
    /// Synced users blocked `mail_missing`/`mail_mismatch` whose row gave `externalEmail`:
    /// `ad-set-mail.ps1`.
    pub set_mail: Vec<ScriptUser>,
    /// Users blocked `exchange_mailbox`: `exchange-mailbox-users.ps1`.
    pub exchange: Vec<ScriptUser>,
}

impl Plan {
    /// Sorts one item into the script that covers it, if any.
    pub fn add(&mut self, item: &ItemRecord, extras: &ItemExtras) {
        let snapshot = item.snapshot.as_ref();
        let synced = snapshot.is_some_and(|u| u.on_premises_sync_enabled == Some(true));
        let Some(upn) = snapshot
            .and_then(|u| u.user_principal_name.clone())
            .or_else(|| item.user_principal_name.clone())
        else {
            return;
        };
        let identity = match snapshot {
            Some(u) if non_empty(&u.on_premises_security_identifier) => Identity::Sid(
                u.on_premises_security_identifier
                    .clone()
                    .unwrap_or_default(),
            ),
            Some(u) if non_empty(&u.on_premises_sam_account_name) => {
                Identity::Sam(u.on_premises_sam_account_name.clone().unwrap_or_default())
            }
            _ => Identity::Upn,
        };
        let user = ScriptUser {
            user_principal_name: upn,
            identity,
            mail: item.external_email.clone().filter(|m| !m.trim().is_empty()),
            redemption: extras.external_user_state.clone(),
        };
        match (item.state, item.reason) {
            (ItemState::Converted, _) if synced => self.retire.push(user),
            (ItemState::Blocked, Some(Reason::MailMissing | Reason::MailMismatch))
                if synced && user.mail.is_some() =>
            {
                self.set_mail.push(user)
            }
            (ItemState::Blocked, Some(Reason::ExchangeMailbox)) => self.exchange.push(user),
            _ => {}
        }
    }
}

fn non_empty(v: &Option<String>) -> bool {
    v.as_deref().is_some_and(|s| !s.trim().is_empty())
}

/// The run a set of scripts belongs to, as their headers name it.
#[derive(Debug, Clone)]
pub struct Header {
    pub run_id: i64,
    pub tenant: String,
    pub written_at: String,
}

/// A PowerShell single-quoted literal: `'` and the Unicode single quotes PowerShell also
/// accepts are doubled, so no value can end the literal; control characters (no UPN or address
/// holds one) become `?` so the value can match no account rather than break the line.
pub fn ps_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn header(h: &Header, file: &str, does: &str, users: usize) -> String {
    format!(
        "#Requires -Version 7.0\n\
         <#\n\
         {file}: written by b2b-convert {version} for run {run} of tenant {tenant}, {at}.\n\
         \n\
         What it does: {does}\n\
         \n\
         Users: {users} (the table below, one line each, every UPN visible).\n\
         Review it before running. -WhatIf shows what would be done and changes nothing.\n\
         Log: {log} next to this script (time, user, identity used, result; never a secret).\n\
         Nothing is downloaded and no command is encoded.\n\
         #>\n",
        version = env!("CARGO_PKG_VERSION"),
        run = h.run_id,
        tenant = h.tenant,
        at = h.written_at,
        log = log_name(file),
    )
}

fn log_name(file: &str) -> String {
    format!("{}.log.csv", file.trim_end_matches(".ps1"))
}

/// The shared preamble: strict mode, the log writer, and (for the AD scripts) how an account
/// is found.
fn preamble(file: &str, ad: bool) -> String {
    let mut s = format!(
        r#"Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$LogPath = Join-Path $PSScriptRoot '{log}'

function Write-Log([string]$User, [string]$Identity, [string]$Result) {{
    [pscustomobject]@{{
        Time = (Get-Date).ToUniversalTime().ToString('o')
        UserPrincipalName = $User
        Identity = $Identity
        Result = $Result
    }} | Export-Csv -Path $LogPath -Append -NoTypeInformation -Encoding utf8
}}
"#,
        log = log_name(file)
    );
    if ad {
        s.push_str(FIND_ACCOUNT);
    }
    s
}

const FIND_ACCOUNT: &str = r#"
# By onPremisesSecurityIdentifier when known, else by sAMAccountName, else by UPN.
function Find-Account($U) {
    switch ($U.By) {
        'sid' { return Get-ADUser -Identity $U.Identity -Properties EmailAddress }
        'sam' { return Get-ADUser -Identity $U.Identity -Properties EmailAddress }
        default {
            $upn = $U.UserPrincipalName
            $found = @(Get-ADUser -Filter { UserPrincipalName -eq $upn } -Properties EmailAddress)
            if ($found.Count -ne 1) { throw "found $($found.Count) accounts with UPN $upn" }
            return $found[0]
        }
    }
}
"#;

fn user_row(u: &ScriptUser, extra: &[(&str, String)]) -> String {
    let (by, identity) = match &u.identity {
        Identity::Sid(s) => ("sid", s.as_str()),
        Identity::Sam(s) => ("sam", s.as_str()),
        Identity::Upn => ("upn", u.user_principal_name.as_str()),
    };
    let mut row = format!(
        "    [pscustomobject]@{{ UserPrincipalName = {}; By = '{by}'; Identity = {}",
        ps_quote(&u.user_principal_name),
        ps_quote(identity)
    );
    for (k, v) in extra {
        row.push_str(&format!("; {k} = {v}"));
    }
    row.push_str(" }\n");
    row
}

fn table(
    users: &[ScriptUser],
    extra: impl Fn(&ScriptUser) -> Vec<(&'static str, String)>,
) -> String {
    let mut s = String::from("$Users = @(\n");
    for u in users {
        s.push_str(&user_row(u, &extra(u)));
    }
    s.push_str(")\n");
    s
}

/// `ad-retire-passwords.ps1`.
pub fn ad_retire_passwords(plan: &Plan, h: &Header) -> String {
    const FILE: &str = "ad-retire-passwords.ps1";
    let mut s = header(
        h,
        FILE,
        "resets the on-premises Active Directory password of each converted synced user below to a \
         random value generated on this machine when the script runs \
         (System.Security.Cryptography.RandomNumberGenerator), never written, shown or logged: \
         the internal credential stops working once Entra Connect syncs the change. Only users \
         who redeemed their invitation (as of the last `b2b-convert track`) are reset, because both \
         credentials work until then; -IncludeUnredeemed resets the others too.",
        plan.retire.len(),
    );
    s.push_str(
        "[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]\n\
         param([switch]$IncludeUnredeemed)\n\
         #Requires -Modules ActiveDirectory\n",
    );
    s.push_str(&preamble(FILE, true));
    s.push_str(
        r#"
# 64 characters, each drawn without bias from lower, upper, digits and symbols, appended one at a
# time to a SecureString: the password never exists as a string.
function New-RandomSecret {
    $classes = @('abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', '!#$%&()*+,-./:;<=>?@[]^_{|}~')
    $all = -join $classes
    $secret = [System.Security.SecureString]::new()
    foreach ($class in $classes) {
        $secret.AppendChar($class[[System.Security.Cryptography.RandomNumberGenerator]::GetInt32($class.Length)])
    }
    for ($i = $classes.Count; $i -lt 64; $i++) {
        $secret.AppendChar($all[[System.Security.Cryptography.RandomNumberGenerator]::GetInt32($all.Length)])
    }
    $secret.MakeReadOnly()
    return $secret
}

"#,
    );
    s.push_str(&table(&plan.retire, |u| {
        vec![(
            "Redeemed",
            if u.redemption.as_deref() == Some("Accepted") {
                "$true".to_string()
            } else {
                "$false".to_string()
            },
        )]
    }));
    s.push_str(
        r#"
foreach ($u in $Users) {
    if (-not $u.Redeemed -and -not $IncludeUnredeemed) {
        Write-Log $u.UserPrincipalName $u.Identity 'skipped: not redeemed at the last track'
        continue
    }
    try {
        $account = Find-Account $u
        if ($PSCmdlet.ShouldProcess("$($u.UserPrincipalName) ($($account.DistinguishedName))", 'Reset the on-premises password to a random value')) {
            Set-ADAccountPassword -Identity $account -Reset -NewPassword (New-RandomSecret)
            Write-Log $u.UserPrincipalName $u.Identity 'reset'
"#,
    );
    s.push_str(AD_LOOP_END);
    s
}

/// How the loop over users of each Active Directory script ends: a change declined (`-WhatIf`,
/// or "no" at the prompt) is logged as such; an error is logged and warned, and the loop goes on
/// to the next user.
const AD_LOOP_END: &str = r#"        } else {
            Write-Log $u.UserPrincipalName $u.Identity 'whatif: not changed'
        }
    } catch {
        Write-Log $u.UserPrincipalName $u.Identity "error: $($_.Exception.Message)"
        Write-Warning "$($u.UserPrincipalName): $($_.Exception.Message)"
    }
}
"#;

/// `ad-set-mail.ps1`.
pub fn ad_set_mail(plan: &Plan, h: &Header) -> String {
    const FILE: &str = "ad-set-mail.ps1";
    let mut s = header(
        h,
        FILE,
        "sets the on-premises Active Directory mail attribute (Set-ADUser -EmailAddress) of each \
         synced user below to the partner's address the input gave, because Graph cannot write a \
         synced user's mail. After Entra Connect syncs it, a new b2b-convert run over these \
         users converts them.",
        plan.set_mail.len(),
    );
    s.push_str(
        "[CmdletBinding(SupportsShouldProcess = $true)]\n\
         param()\n\
         #Requires -Modules ActiveDirectory\n",
    );
    s.push_str(&preamble(FILE, true));
    s.push('\n');
    s.push_str(&table(&plan.set_mail, |u| {
        vec![("Mail", ps_quote(u.mail.as_deref().unwrap_or("")))]
    }));
    s.push_str(
        r#"
foreach ($u in $Users) {
    try {
        $account = Find-Account $u
        $old = $account.EmailAddress
        if ($PSCmdlet.ShouldProcess("$($u.UserPrincipalName) ($($account.DistinguishedName))", "Set mail from '$old' to '$($u.Mail)'")) {
            Set-ADUser -Identity $account -EmailAddress $u.Mail
            Write-Log $u.UserPrincipalName $u.Identity "mail set from '$old' to '$($u.Mail)'"
"#,
    );
    s.push_str(AD_LOOP_END);
    s
}

/// `exchange-mailbox-users.ps1`: one block per user, changing nothing unless `-Apply` is given.
pub fn exchange_mailbox_users(plan: &Plan, h: &Header) -> String {
    const FILE: &str = "exchange-mailbox-users.ps1";
    let mut s = header(
        h,
        FILE,
        "NOT SUPPORTED BY MICROSOFT. The path administrators report for converting a user who \
         has an Exchange Online mailbox: (1) export the mailbox content if it is to be kept, \
         (2) remove the Exchange Online service plan from the user's licenses, (3) once the \
         mailbox is gone, set mail to the partner's address, (4) convert the user with a new \
         b2b-convert run, (5) re-license only if wanted. Without -Apply it only shows each step \
         (as -WhatIf does); with -Apply it still asks before each change. Needs the \
         ExchangeOnlineManagement and Microsoft.Graph.Users modules, connected \
         (Connect-ExchangeOnline; Connect-MgGraph -Scopes User.ReadWrite.All).",
        plan.exchange.len(),
    );
    s.push_str(
        "[CmdletBinding(SupportsShouldProcess = $true, ConfirmImpact = 'High')]\n\
         param([switch]$Apply)\n",
    );
    s.push_str(&preamble(FILE, false));
    s.push_str(
        r#"
if (-not $Apply) { $WhatIfPreference = $true }

# The Exchange Online service plans (the Exchange Online mailbox plans of Microsoft 365 SKUs).
function Remove-ExchangePlan([string]$Upn) {
    foreach ($license in Get-MgUserLicenseDetail -UserId $Upn) {
        $exchange = @($license.ServicePlans | Where-Object { $_.ServiceName -like 'EXCHANGE_S_*' -and $_.ProvisioningStatus -ne 'Disabled' })
        if ($exchange.Count -eq 0) { continue }
        $disabled = @($license.ServicePlans | Where-Object ProvisioningStatus -eq 'Disabled' | ForEach-Object ServicePlanId) + @($exchange | ForEach-Object ServicePlanId)
        if ($PSCmdlet.ShouldProcess($Upn, "Disable $(($exchange | ForEach-Object ServiceName) -join ', ') in license $($license.SkuPartNumber)")) {
            Set-MgUserLicense -UserId $Upn -AddLicenses @(@{ SkuId = $license.SkuId; DisabledPlans = $disabled }) -RemoveLicenses @() | Out-Null
        }
    }
}
"#,
    );
    for u in &plan.exchange {
        let upn = ps_quote(&u.user_principal_name);
        let mail = u
            .mail
            .as_deref()
            .map(ps_quote)
            .unwrap_or_else(|| "$null  # the input gave no partner address: fill it in".into());
        s.push_str(&format!(
            r#"
# ---- {shown}
$Upn = {upn}
$PartnerMail = {mail}
try {{
    # 1. Export: keep what the mailbox holds before its plan is removed (Purview content search
    #    or the Exchange admin center; not scripted here). Its size, for the log:
    $stats = Get-EXOMailboxStatistics -Identity $Upn
    Write-Log $Upn $Upn "mailbox: $($stats.ItemCount) items, $($stats.TotalItemSize)"
    # 2. Remove the Exchange Online plan.
    Remove-ExchangePlan $Upn
    # 3. Once Get-EXOMailbox no longer finds the mailbox, set mail to the partner's address.
    if ($PartnerMail -and -not (Get-EXOMailbox -Identity $Upn -ErrorAction SilentlyContinue)) {{
        if ($PSCmdlet.ShouldProcess($Upn, "Set mail to $PartnerMail")) {{
            Update-MgUser -UserId $Upn -Mail $PartnerMail
        }}
    }}
    # 4. Convert: run b2b-convert again over this user. 5. Re-license only if wanted.
    Write-Log $Upn $Upn ($(if ($WhatIfPreference) {{ 'whatif: not changed' }} else {{ 'done: run b2b-convert again' }}))
}} catch {{
    Write-Log $Upn $Upn "error: $($_.Exception.Message)"
    Write-Warning "$($Upn): $($_.Exception.Message)"
}}
"#,
            shown = u.user_principal_name.replace(|c: char| c.is_control(), "?"),
        ));
    }
    s
}

fn readme(plan: &Plan, h: &Header) -> String {
    let list = |users: &[ScriptUser]| -> String {
        if users.is_empty() {
            return "  (nobody)\n".into();
        }
        users
            .iter()
            .map(|u| {
                format!(
                    "  {}\n",
                    u.user_principal_name.replace(|c: char| c.is_control(), "?")
                )
            })
            .collect()
    };
    format!(
        "Scripts for what Graph cannot reach: run {run} of tenant {tenant}, written {at} by \
         b2b-convert {version}.\n\
         \n\
         Read each script before running it. Each takes -WhatIf (changes nothing), asks before \
         changes, and appends to its own CSV log next to itself. They need PowerShell 7 and the \
         modules named in their headers; the AD scripts run on a machine with the ActiveDirectory \
         module, as an account that may reset passwords and write mail in the users' OUs.\n\
         \n\
         Order:\n\
         1. ad-set-mail.ps1 ({set_mail} users): sets mail in AD for synced users blocked on mail; \
         after Entra Connect syncs, convert them with a new b2b-convert run.\n\
         2. ad-retire-passwords.ps1 ({retire} users): after the partners redeemed (run \
         `b2b-convert track {run}` first), resets each converted synced user's on-premises \
         password to a random value nobody knows. Unredeemed users are skipped unless \
         -IncludeUnredeemed.\n\
         3. exchange-mailbox-users.ps1 ({exchange} users): not supported by Microsoft; the \
         reported path for mailbox users, one block per user, nothing changed without -Apply.\n\
         \n\
         ad-set-mail.ps1 covers {set_mail}:\n{l1}\n\
         ad-retire-passwords.ps1 covers {retire}:\n{l2}\n\
         exchange-mailbox-users.ps1 covers {exchange}:\n{l3}",
        run = h.run_id,
        tenant = h.tenant,
        at = h.written_at,
        version = env!("CARGO_PKG_VERSION"),
        set_mail = plan.set_mail.len(),
        retire = plan.retire.len(),
        exchange = plan.exchange.len(),
        l1 = list(&plan.set_mail),
        l2 = list(&plan.retire),
        l3 = list(&plan.exchange),
    )
}

/// The files `scripts` writes, name and content, in the order they are written.
pub fn files(plan: &Plan, h: &Header) -> Vec<(&'static str, String)> {
    vec![
        ("README.txt", readme(plan, h)),
        ("ad-set-mail.ps1", ad_set_mail(plan, h)),
        ("ad-retire-passwords.ps1", ad_retire_passwords(plan, h)),
        (
            "exchange-mailbox-users.ps1",
            exchange_mailbox_users(plan, h),
        ),
    ]
}

pub fn scripts(db: &Path, args: ScriptsArgs) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
    let run = common::pick_run(&queue, Some(args.run_id))?;
    let mut plan = Plan::default();
    queue
        .for_each_item(run.id, &mut |item, extras| {
            plan.add(item, extras);
            Ok(())
        })
        .context("reading the run's items")?;
    let h = Header {
        run_id: run.id,
        tenant: run
            .tenant_id
            .clone()
            .unwrap_or_else(|| "(tenant not recorded)".into()),
        written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    create_private_dir(&args.out)?;
    for (name, text) in files(&plan, &h) {
        let path = args.out.join(name);
        write_private(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "scripts for run {} written to {}: ad-set-mail.ps1 ({} users), ad-retire-passwords.ps1 ({} users), exchange-mailbox-users.ps1 ({} users); read README.txt first",
        run.id,
        args.out.display(),
        plan.set_mail.len(),
        plan.retire.len(),
        plan.exchange.len()
    );
    Ok(ExitStatus::Success)
}

/// A new directory, owner-only; an existing one is refused so scripts of two runs (or an old
/// review) are never mixed.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    out_file::create_private_dir(dir).map_err(|e| {
        out_file::refused(
            dir,
            e,
            "it exists; scripts are written into a new directory only",
        )
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = out_file::create_private_file(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::User;

    fn item(
        state: ItemState,
        reason: Option<Reason>,
        user: User,
        email: Option<&str>,
    ) -> ItemRecord {
        ItemRecord {
            id: 1,
            run_id: 1,
            state,
            user_id: Some(user.id.clone()),
            user_principal_name: user.user_principal_name.clone(),
            external_email: email.map(str::to_string),
            reason,
            snapshot: Some(user),
            ..ItemRecord::default()
        }
    }

    fn user(upn: &str, synced: bool) -> User {
        User {
            id: format!("id-{upn}"),
            user_principal_name: Some(upn.into()),
            on_premises_sync_enabled: synced.then_some(true),
            ..Default::default()
        }
    }

    /// Every kind of item lands in exactly the script the contract gives it, or in none.
    #[test]
    fn each_item_lands_in_the_right_script() {
        let mut with_sid = user("sid@contoso.com", true);
        with_sid.on_premises_security_identifier = Some("S-1-5-21-1-2-3-1101".into());
        let mut with_sam = user("sam@contoso.com", true);
        with_sam.on_premises_sam_account_name = Some("sam01".into());
        let accepted = ItemExtras {
            external_user_state: Some("Accepted".into()),
            ..Default::default()
        };
        let none = ItemExtras::default();
        let rows = [
            (item(ItemState::Converted, None, with_sid, None), &accepted),
            (item(ItemState::Converted, None, with_sam, None), &none),
            (
                item(
                    ItemState::Converted,
                    None,
                    user("cloud@contoso.com", false),
                    None,
                ),
                &accepted,
            ),
            (
                item(
                    ItemState::WouldConvert,
                    None,
                    user("dry@contoso.com", true),
                    None,
                ),
                &none,
            ),
            (
                item(
                    ItemState::Blocked,
                    Some(Reason::MailMismatch),
                    user("mismatch@contoso.com", true),
                    Some("m@fabrikam.com"),
                ),
                &none,
            ),
            (
                item(
                    ItemState::Blocked,
                    Some(Reason::MailMissing),
                    user("nomail@contoso.com", true),
                    None,
                ),
                &none,
            ),
            (
                item(
                    ItemState::Blocked,
                    Some(Reason::MailMismatch),
                    user("cloudmismatch@contoso.com", false),
                    Some("c@fabrikam.com"),
                ),
                &none,
            ),
            (
                item(
                    ItemState::Blocked,
                    Some(Reason::ExchangeMailbox),
                    user("mbx@contoso.com", false),
                    Some("x@fabrikam.com"),
                ),
                &none,
            ),
            (
                item(
                    ItemState::Blocked,
                    Some(Reason::DomainVerified),
                    user("verified@contoso.com", true),
                    None,
                ),
                &none,
            ),
        ];
        let mut plan = Plan::default();
        for (i, e) in &rows {
            plan.add(i, e);
        }
        let upns = |v: &[ScriptUser]| {
            v.iter()
                .map(|u| u.user_principal_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(upns(&plan.retire), ["sid@contoso.com", "sam@contoso.com"]);
        assert_eq!(
            plan.retire[0].identity,
            Identity::Sid("S-1-5-21-1-2-3-1101".into())
        );
        assert_eq!(plan.retire[1].identity, Identity::Sam("sam01".into()));
        assert_eq!(plan.retire[0].redemption.as_deref(), Some("Accepted"));
        assert_eq!(upns(&plan.set_mail), ["mismatch@contoso.com"]);
        assert_eq!(plan.set_mail[0].identity, Identity::Upn);
        assert_eq!(plan.set_mail[0].mail.as_deref(), Some("m@fabrikam.com"));
        assert_eq!(upns(&plan.exchange), ["mbx@contoso.com"]);
    }

    #[test]
    fn quoting_cannot_end_a_literal() {
        assert_eq!(ps_quote("o'neil@contoso.com"), "'o''neil@contoso.com'");
        assert_eq!(ps_quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(ps_quote("a\nb'; Remove-Item x"), "'a?b''; Remove-Item x'");
    }

    /// The scripts as text: headed, -WhatIf, their own log, the users and nobody else, no
    /// encoded commands, downloads or secrets.
    #[test]
    fn scripts_read_as_the_contract_says() {
        let mut plan = Plan::default();
        plan.retire.push(ScriptUser {
            user_principal_name: "o'neil@contoso.com".into(),
            identity: Identity::Sid("S-1-5-21-9-9-9-1200".into()),
            mail: None,
            redemption: Some("Accepted".into()),
        });
        plan.set_mail.push(ScriptUser {
            user_principal_name: "ann@contoso.com".into(),
            identity: Identity::Sam("ann".into()),
            mail: Some("ann@fabrikam.com".into()),
            redemption: None,
        });
        let h = Header {
            run_id: 7,
            tenant: "a26-tenant".into(),
            written_at: "2026-12-01T00:00:00Z".into(),
        };
        for (name, text) in files(&plan, &h) {
            assert!(
                text.contains("run 7") && text.contains("a26-tenant"),
                "{name}"
            );
            let lower = text.to_lowercase();
            for banned in [
                "-encodedcommand",
                "frombase64string",
                "invoke-webrequest",
                "invoke-restmethod",
                "downloadstring",
                "iex ",
                "invoke-expression",
                "convertto-securestring",
            ] {
                assert!(!lower.contains(banned), "{name} contains {banned}");
            }
            if name.ends_with(".ps1") {
                assert!(text.starts_with("#Requires -Version 7.0"), "{name}");
                assert!(text.contains("SupportsShouldProcess = $true"), "{name}");
                assert!(text.contains("$PSCmdlet.ShouldProcess"), "{name}");
                assert!(text.contains(&log_name(name)), "{name}");
            }
        }
        let retire = ad_retire_passwords(&plan, &h);
        assert!(retire.contains("[System.Security.Cryptography.RandomNumberGenerator]::GetInt32"));
        assert!(retire.contains(
            "Set-ADAccountPassword -Identity $account -Reset -NewPassword (New-RandomSecret)"
        ));
        assert!(retire.contains("UserPrincipalName = 'o''neil@contoso.com'; By = 'sid'; Identity = 'S-1-5-21-9-9-9-1200'; Redeemed = $true"));
        assert!(!retire.contains("ann@contoso.com"));
        let mail = ad_set_mail(&plan, &h);
        assert!(mail.contains("UserPrincipalName = 'ann@contoso.com'; By = 'sam'; Identity = 'ann'; Mail = 'ann@fabrikam.com'"));
        assert!(mail.contains("Set-ADUser -Identity $account -EmailAddress $u.Mail"));
        assert!(!mail.contains("neil"));
        let exchange = exchange_mailbox_users(&plan, &h);
        assert!(exchange.contains("NOT SUPPORTED BY MICROSOFT"));
        assert!(exchange.contains("if (-not $Apply) { $WhatIfPreference = $true }"));
        let readme = readme(&plan, &h);
        assert!(readme.contains("ad-retire-passwords.ps1 covers 1:\n  o'neil@contoso.com\n"));
        assert!(readme.contains("exchange-mailbox-users.ps1 covers 0:\n  (nobody)\n"));
    }

    #[cfg(unix)]
    #[test]
    fn directory_is_new_and_files_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        create_private_dir(&dir).unwrap();
        assert!(create_private_dir(&dir).is_err(), "never reused");
        let f = dir.join("a.ps1");
        write_private(&f, "x").unwrap();
        assert_eq!(out_file::mode_of(&f), 0o600);
        assert_eq!(out_file::mode_of(&dir), 0o700);
        assert!(write_private(&f, "y").is_err(), "never overwritten");
    }
}
