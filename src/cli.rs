//! Command-line surface (docs/usage.md, "Command line"). Parsing only: each command's behaviour lives in
//! `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
/// Plain option types live in `config` so `logging` and `report` need not import the command line.
pub use crate::config::{LogFormat, ReportFormat};

/// Credentials, exit codes and examples, after the option list of `b2b-convert --help`.
const AFTER_HELP: &str = "\
Credentials (environment, Azure SDK names; never on the command line):
  AZURE_TENANT_ID, AZURE_CLIENT_ID   the app registration
  AZURE_CLIENT_SECRET                its client secret, or
  AZURE_CLIENT_CERTIFICATE_PATH      a PEM file with its certificate and unencrypted private key
  B2B_ACCESS_TOKEN                   instead of the above: a ready Graph token (not renewed)
  AZURE_FEDERATED_TOKEN_FILE         workload identity: a federated token as client assertion
  IDENTITY_ENDPOINT, IDENTITY_HEADER managed identity (App Service, Automation)
  B2B_GRAPH_URL, B2B_LOGIN_URL       endpoint overrides (default from --cloud)
  SSL_CERT_FILE                      extra trusted CAs (PEM), e.g. the emulator's --tls CA
  B2B_DB                             the work queue (--db)
  --auth picks one explicitly: secret, certificate, device-code (a person signs in),
  azure-cli, managed-identity (B2B_IMDS_URL overrides the VM metadata address),
  workload-identity or token; without it the first configured wins, in that order.
  Permissions: User.Invite.All, User.Read.All, Domain.Read.All; GroupMember.Read.All with
  --group; User.ReadWrite.All with --set-mail/--set-guest. `preflight` checks them.

Exit codes:
  0    every user converted, would convert, or was skipped
  3    the run finished, but some users are blocked or failed (see the report)
  4    the tenant refused to go on (invitations blocked, consent revoked); resumable
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP); `resume` continues the run
  2    usage error
  1    any other fatal error (configuration, credentials, database)

Examples:
  b2b-convert demo                                               rehearse on the sample tenant
  b2b-convert preflight --set-guest                              will Saturday's run work?
  b2b-convert run --csv partners.csv --dry-run --report dry-run.html
  b2b-convert run --csv partners.csv --silent --limit 50 --report pilot.html
  b2b-convert resume --report live.html                          everyone else in that run
  b2b-convert status --json
  b2b-convert report 1 --out run-1.csv

Run `b2b-convert help <COMMAND>` for a command's options.";

#[derive(Debug, Parser)]
#[command(
    name = "b2b-convert",
    version,
    about = "Convert a Microsoft Entra tenant's internal partner accounts to B2B collaboration",
    long_about = "Convert internal (member) accounts of a Microsoft Entra tenant to B2B collaboration \
through the Graph invitation API, keeping object id, UPN, groups and app assignments. Work is \
queued in a SQLite file, so a run can be stopped and resumed without losing or repeating anyone.",
    term_width = 100,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The SQLite work queue (ignored by `emulator` and `demo`, which keep their own).
    #[arg(
        help_heading = "Global options",
        long,
        global = true,
        default_value = config::DEFAULT_DB,
        env = "B2B_DB"
    )]
    pub db: PathBuf,

    /// A named tenant from b2b-convert.toml (`[profiles.NAME]`): its sign-in settings and its own
    /// database, where flags and environment give none.
    #[arg(
        help_heading = "Global options",
        long,
        global = true,
        value_name = "NAME",
        env = "B2B_PROFILE"
    )]
    pub profile: Option<String>,

    /// Log format on stderr: `json` writes one object per line, for log collectors.
    #[arg(help_heading = "Global options", long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log output (repeat for more; `RUST_LOG` overrides).
    #[arg(help_heading = "Global options", short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (repeat for less).
    #[arg(help_heading = "Global options", short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Before the weekend: sign in, check permissions and the invitation policy (exit 0 ready, 3 not).
    Preflight(PreflightArgs),
    /// Ingest a source into a new run, then validate and convert.
    Run(RunArgs),
    /// Continue a run that stopped (crash, Ctrl-C, network loss); default the latest run.
    Resume(ResumeArgs),
    /// The live run of exactly what a finished dry run approved (its would_convert users, its
    /// options); users who changed since are not converted.
    Apply(ApplyArgs),
    /// Put a run's failed items back to pending, then continue it.
    Retry(RetryArgs),
    /// Counts by state and by reason.
    Status(StatusArgs),
    /// List the runs in the database, newest last.
    Runs(RunsArgs),
    /// Write a run's report from the database (Markdown or HTML for people, CSV or JSON for
    /// machines).
    Report(ReportArgs),
    /// Re-read every converted user of a run: who redeemed, who has not, and any invitation
    /// Graph answered 201 for that never took effect.
    Track(TrackArgs),
    /// Re-invite converted users still PendingAcceptance (resetRedemption), once each per pass.
    Resend(ResendArgs),
    /// After redemption: set each converted cloud-only user's internal password to a random
    /// value and revoke its sessions, once each; synced users are left to `scripts`.
    Retire(RetireArgs),
    /// Write the redeem links of a run started with --keep-redeem-links (CSV, created 0600).
    ExportLinks(ExportLinksArgs),
    /// Undo the tool's own follow-up writes from the snapshot: userType back where --set-guest
    /// changed it, mail back where --set-mail changed it.
    Restore(RestoreArgs),
    /// Convert named redeemed users back to internal members (Microsoft Graph beta).
    Rollback(RollbackArgs),
    /// Write reviewed PowerShell 7 for what Graph cannot reach (on-premises AD DS passwords and
    /// mail, Exchange Online mailbox users) for this run's users, into a new directory.
    Scripts(ScriptsArgs),
    /// List the profiles of b2b-convert.toml (no secrets, nothing fetched).
    Profiles,
    /// Serve the simulated tenant until stopped.
    Emulator(EmulatorArgs),
    /// Rehearse on the shipped sample tenant: dry run, then live run, against an in-process emulator.
    Demo(DemoArgs),
    /// Measure throughput against the emulator (see docs/performance.md).
    #[command(hide = true)]
    Bench(BenchArgs),
}

/// Exactly one source.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// A CSV file naming users by `id` or `userPrincipalName`.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Users matching a Graph `$filter`.
    #[arg(long, value_name = "ODATA_FILTER")]
    pub filter: Option<String>,
    /// Members of a group.
    #[arg(long, value_name = "GROUP_ID")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Global,
    Usgov,
    China,
}

impl Cloud {
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }
}

/// Where Graph and the token endpoint are.
/// How to sign in, and where: every command that talks to Graph takes these.
#[derive(Debug, Clone, Args)]
pub struct SignInArgs {
    /// How to sign in (default: the first configured, in the Azure SDK's order).
    #[arg(long, value_enum, env = "B2B_AUTH")]
    pub auth: Option<crate::graph::AuthMethod>,
    #[command(flatten)]
    pub endpoints: EndpointArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// Graph base URL (default from --cloud).
    #[arg(long, env = "B2B_GRAPH_URL", value_name = "URL")]
    pub graph_url: Option<String>,
    /// Token endpoint base URL (default from --cloud).
    #[arg(long, env = "B2B_LOGIN_URL", value_name = "URL")]
    pub login_url: Option<String>,
    /// National cloud whose endpoints are the defaults.
    #[arg(long, value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,
}

impl EndpointArgs {
    pub fn graph_url(&self) -> String {
        self.graph_url
            .clone()
            .unwrap_or_else(|| self.cloud.graph_url().to_string())
    }

    pub fn login_url(&self) -> String {
        self.login_url
            .clone()
            .unwrap_or_else(|| self.cloud.login_url().to_string())
    }
}

/// Options of `run` and `resume` that tune how the work is done.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Requests per second ceiling: the pace a run starts at; it settles just under 20 when
    /// Graph signals a bucket above 80% used.
    #[arg(long, value_name = "N", value_parser = config::parse_rate,
          help = config::with_default(
              &format!("Requests per second ceiling, {} to {}: the pace a run starts at (Graph's \
                        /invitations limit is 30); it settles at {} (at most N) when Graph signals \
                        a bucket above 80% used",
                       config::MIN_RATE, config::MAX_RATE, config::DEFAULT_SETTLE_RATE),
              config::DEFAULT_RATE))]
    pub rate: Option<f64>,
    /// The pace when Graph signals a bucket above 80% used.
    #[arg(long, value_name = "N", value_parser = config::parse_rate,
          help = config::with_default(
              &format!("Requests per second once Graph signals a bucket above 80% used \
                        (x-ms-throttle-limit-percentage), at most --rate: {} is 98% of the write \
                        bucket's refill; 30 where only the /invitations limit applies",
                       config::DEFAULT_SETTLE_RATE),
              config::DEFAULT_SETTLE_RATE))]
    pub settle_rate: Option<f64>,
    /// Resource units per 10 s the run's reads may spend (Graph's read limit).
    #[arg(long, value_name = "RU", value_parser = config::parse_read_budget,
          help = config::with_default(
              &format!("Resource units per 10 s that reads may spend, {} to {}: Graph's limit per \
                        app and tenant is 8,000 above 500 users (5,000 up to 500, 3,500 below 50); \
                        a look-up of 15 users costs 1; writes keep to --rate",
                       config::MIN_READ_BUDGET, config::MAX_READ_BUDGET),
              config::DEFAULT_READ_BUDGET))]
    pub read_budget: Option<f64>,
    /// A dry run looks users up by key, 15 a request, even where reading the tenant in pages
    /// would take fewer requests. Hidden: for tests and benchmarks of the look-ups.
    #[arg(long, hide = true)]
    pub read_by_key: bool,
    /// Users worked on at once.
    #[arg(long, value_name = "N", value_parser = config::ranged::<usize>(config::CONCURRENCY),
          help = config::with_default(
              &format!("Users worked on at once, {} to {}",
                       config::CONCURRENCY.start(), config::CONCURRENCY.end()),
              config::DEFAULT_CONCURRENCY))]
    pub concurrency: Option<usize>,
    /// Requests that may have reached Graph for one user before it ends `failed`.
    #[arg(long, value_name = "N", value_parser = config::ranged::<u32>(config::MAX_ATTEMPTS),
          help = config::with_default(
              &format!("Requests that may have reached Graph for one user before it ends `failed`, {} to {}",
                       config::MAX_ATTEMPTS.start(), config::MAX_ATTEMPTS.end()),
              config::DEFAULT_MAX_ATTEMPTS))]
    pub max_attempts: Option<u32>,
    /// Retries of one HTTP request inside the Graph client (5xx, not sent); 429s do not count.
    #[arg(long, value_name = "N", value_parser = config::ranged::<u32>(config::HTTP_RETRIES),
          help = config::with_default(
              &format!("Retries of one idempotent HTTP request inside the Graph client (5xx, timeout, reset), {} to {}; 429s wait for Retry-After and do not count",
                       config::HTTP_RETRIES.start(), config::HTTP_RETRIES.end()),
              config::DEFAULT_HTTP_RETRIES))]
    pub http_retries: Option<u32>,
    /// Seconds to wait for one answer from Graph or the token endpoint before giving up on that
    /// request. A connection that cannot even open is retried for about 45 s.
    #[arg(long, value_name = "SECONDS",
          value_parser = config::ranged::<u64>(config::HTTP_TIMEOUT_S),
          help = format!("Seconds to wait for one answer from Graph or the token endpoint, {} to {}; a connection that cannot even open is retried for about {} s [default: {}; not stored with the run]",
                         config::HTTP_TIMEOUT_S.start(), config::HTTP_TIMEOUT_S.end(),
                         config::DEFAULT_NOT_SENT_RETRY_FOR.as_secs(),
                         config::DEFAULT_HTTP_TIMEOUT.as_secs()))]
    pub http_timeout: Option<u64>,
    /// Seconds connections that cannot even open are retried, and seconds Graph and the token
    /// endpoint may go without answering anything, before the run stops resumable. Hidden: for
    /// tests and rehearsals against a stopped or silent emulator; the default suits Graph.
    #[arg(long, hide = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub unreachable_after: Option<u64>,
    /// Convert at most N users of this run (a pilot batch); 0 lifts the limit on resume.
    #[arg(long, value_name = "N", value_parser = config::ranged::<u64>(config::LIMIT))]
    pub limit: Option<u64>,
    /// Work only the run's users named in this file (object ids or UPNs, one a line, `#`
    /// comments): a pilot of named users; the others stay pending for a later `resume`.
    #[arg(long, value_name = "PATH")]
    pub only: Option<PathBuf>,
    /// Write a report at the end (format from the extension).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Do not ask for confirmation before a live run.
    #[arg(long)]
    pub yes: bool,
    /// Before inviting, set `mail` to the row's externalEmail for cloud-only users without a
    /// mailbox whose only obstacle is mail_missing/mail_mismatch (needs User.ReadWrite.All;
    /// the old value is kept in the snapshot).
    #[arg(long)]
    pub set_mail: bool,
    /// After the invitation is accepted, set `userType` to Guest (External ID MAU billing;
    /// needs User.ReadWrite.All).
    #[arg(long)]
    pub set_guest: bool,
    /// Store each invitation's redeem URL for `export-links` (off: no redeem URL is stored).
    /// Once on for a run, it stays on.
    #[arg(long)]
    pub keep_redeem_links: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PreflightArgs {
    /// The run will set `mail` to the external address (needs User.ReadWrite.All).
    #[arg(long)]
    pub set_mail: bool,
    /// The run will set `userType` to Guest (needs User.ReadWrite.All).
    #[arg(long)]
    pub set_guest: bool,
    /// The run's source is this group (needs GroupMember.Read.All).
    #[arg(long, value_name = "GROUP_ID")]
    pub group: Option<String>,
    /// Also check what `retire` needs: User-PasswordProfile.ReadWrite.All,
    /// User.RevokeSessions.All and, app-only, the User Administrator directory role.
    #[arg(long)]
    pub retire: bool,
    /// One JSON object for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// With --group: nested members too.
    #[arg(long)]
    pub transitive: bool,
    /// Validate only: send nothing; items end `would_convert`.
    #[arg(long)]
    pub dry_run: bool,
    /// sendInvitationMessage=false (a CSV column overrides it per row).
    #[arg(long)]
    pub silent: bool,
    /// Where the user lands after redeeming.
    #[arg(long, value_name = "URL", default_value = config::DEFAULT_REDIRECT_URL)]
    pub redirect_url: String,
    /// Language of the invitation message, e.g. en-US.
    #[arg(long, value_name = "TAG")]
    pub message_language: Option<String>,
    /// File with the customized message body.
    #[arg(long, value_name = "PATH")]
    pub message_file: Option<PathBuf>,
    /// One cc recipient of the invitation message (the API accepts one).
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Option<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The run to continue; default the latest.
    pub run_id: Option<i64>,
    /// Send options for the items not yet sent (recorded in the run's option history).
    #[command(flatten)]
    pub send: ResendOptions,
    /// How the work is done; the run keeps its stored mode and source.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// `resume`: the send options again. Each one given replaces the run's for the items not yet
/// sent; none given keeps the options in force.
#[derive(Debug, Clone, Default, Args)]
pub struct ResendOptions {
    /// From now on sendInvitationMessage=false.
    #[arg(long, conflicts_with = "no_silent")]
    pub silent: bool,
    /// From now on Microsoft's invitation email is sent.
    #[arg(long)]
    pub no_silent: bool,
    /// Where the user lands after redeeming.
    #[arg(long, value_name = "URL")]
    pub redirect_url: Option<String>,
    /// Language of the invitation message, e.g. en-US.
    #[arg(long, value_name = "TAG")]
    pub message_language: Option<String>,
    /// File with the customized message body.
    #[arg(long, value_name = "PATH")]
    pub message_file: Option<PathBuf>,
    /// One cc recipient of the invitation message.
    #[arg(long, value_name = "ADDRESS")]
    pub cc: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The finished dry run the change board approved (`runs` lists them).
    pub dry_run_id: i64,
    /// Refuse a dry run older than DAYS.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub max_age: u32,
    /// How the work is done; the plan's send options and follow-up steps are kept.
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// The run whose failed users are sent again.
    pub run_id: i64,
    #[command(flatten)]
    pub exec: ExecArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Default the latest run.
    pub run_id: Option<i64>,
    /// One JSON object for machines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunsArgs {
    /// Print one JSON object with the same figures instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TrackArgs {
    /// Default the latest live run (a dry run converted nobody).
    pub run_id: Option<i64>,
    /// Print one JSON object with the figures instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResendArgs {
    /// The live run whose pending users to re-invite (`runs` lists them).
    pub run_id: i64,
    /// Only users whose last invitation is at least DAYS old (per the last `track`).
    #[arg(long, value_name = "DAYS", default_value_t = 0)]
    pub older_than: u32,
    /// Re-invite at most N users in this invocation; the rest stay for the next `resend`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only the users named in PATH: object ids or UPNs, one a line, `#` comments; a name not
    /// pending in the pass is an error before anything is sent.
    #[arg(long, value_name = "PATH")]
    pub only: Option<PathBuf>,
    /// List who would be re-invited; send nothing, record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object on stdout with the figures, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

/// `restore RUN_ID`.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The live run whose follow-up writes to undo (`runs` lists them).
    pub run_id: i64,
    /// Only the users named in PATH: object ids or UPNs, one a line, `#` comments; a name not
    /// in the run is an error before anything is sent.
    #[arg(long, value_name = "PATH")]
    pub only: Option<PathBuf>,
    /// List what would be put back; send nothing, record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// One JSON object on stdout with the figures, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

/// `rollback RUN_ID --only PATH`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The live run whose users to convert back (`runs` lists them).
    pub run_id: i64,
    /// The users to convert back: object ids or UPNs, one a line, `#` comments (required: a
    /// rollback is never run over a whole run by accident).
    #[arg(long, value_name = "PATH")]
    pub only: PathBuf,
    /// A new file (created 0600, never overwritten) for the cloud users' new passwords;
    /// required when cloud users are named.
    #[arg(long, value_name = "PATH")]
    pub passwords_out: Option<PathBuf>,
    /// List who would be converted back and with which body; send nothing, record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// One JSON object on stdout with the figures, for scripts.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RetireArgs {
    /// The live run whose converted users to retire (`runs` lists them).
    pub run_id: i64,
    /// Take at most N users of the pass in this invocation; the rest stay for the next `retire`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only the users named in PATH: object ids or UPNs, one a line, `#` comments; a name that
    /// is not a converted user of the run left to retire is an error before anything is sent.
    #[arg(long, value_name = "PATH")]
    pub only: Option<PathBuf>,
    /// Re-read the users and say who would be retired; write nothing, record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object on stdout with the figures, for scripts.
    #[arg(long)]
    pub json: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub sign_in: SignInArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExportLinksArgs {
    /// The run started with --keep-redeem-links (`runs` lists them); default the latest live run.
    pub run_id: Option<i64>,
    /// The CSV file to create (never overwritten).
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ScriptsArgs {
    /// The run whose users the scripts cover (`runs` lists them).
    pub run_id: i64,
    /// A new directory to write the scripts into (refused if it exists; files created 0600).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The run to report on (`runs` lists them).
    pub run_id: i64,
    /// File to write (.md, .html, .csv or .json); written beside it first, then renamed.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Report format; default from the extension of --out.
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
}

#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Tenant file (JSON); default the shipped sample tenant.
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub tenant: Option<PathBuf>,
    /// A synthetic tenant of N users.
    #[arg(long, value_name = "N", value_parser = config::at_least_one_parser())]
    pub generate: Option<usize>,
    /// Seed of --generate.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub seed: u64,
    /// With --generate: also write an input CSV over the users.
    #[arg(long, value_name = "PATH", requires = "generate")]
    pub write_csv: Option<PathBuf>,
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// The tenant's id (a GUID); default: the tenant file's, or derived from --seed.
    #[arg(long, value_name = "GUID")]
    pub tenant_id: Option<String>,
    /// Serve HTTPS with a CA and certificate generated at start; the CA file's path is printed as
    /// SSL_CERT_FILE=… (Microsoft's SDKs and sign-in libraries refuse plain http).
    #[arg(long)]
    pub tls: bool,
    #[command(flatten)]
    pub knobs: EmulatorKnobs,
}

/// Limits and faults of the emulator (shared by `emulator`, `demo` and `bench`).
#[derive(Debug, Clone, Args)]
pub struct EmulatorKnobs {
    /// Added latency per request.
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = config::ranged::<u64>(config::EMULATOR_LATENCY_MS))]
    pub latency_ms: u64,
    /// Resource units per 10 s per app+tenant (0 = unlimited; default by tenant size).
    #[arg(long, value_name = "N")]
    pub ru_per_10s: Option<u64>,
    /// Writes per 150 s per app+tenant (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 3000)]
    pub writes_per_150s: u64,
    /// Invitations per 5 s per tenant (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = 150)]
    pub invitations_per_5s: u64,
    /// Share of requests answered 500/503/504 without being carried out.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = config::parse_share)]
    pub fault_rate: f64,
    /// Share of writes carried out whose answer is then lost (connection dropped).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = config::parse_share)]
    pub lost_response_rate: f64,
    /// Share of invitations answered 201 whose change never reaches the user.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub not_applied_rate: f64,
    /// Answer every invitation with 403 "Invitations are blocked for this directory…".
    #[arg(long)]
    pub block_invitations: bool,
    /// Lifetime of issued access tokens.
    #[arg(long, value_name = "S", default_value_t = 3599,
          value_parser = config::ranged::<u64>(config::EMULATOR_TOKEN_LIFETIME_S))]
    pub token_lifetime_s: u64,
    /// Application permissions granted to apps the tenant file says nothing about (comma-separated).
    #[arg(long, value_name = "LIST", default_value = crate::emulator::DEFAULT_APP_ROLES)]
    pub app_roles: String,
    /// The tenant's authorization policy: who may invite guests.
    #[arg(long, value_name = "VALUE", default_value = "everyone",
          value_parser = ["none", "adminsAndGuestInviters", "adminsGuestInvitersAndAllMembers", "everyone"])]
    pub allow_invites_from: String,
    /// The device code is approved after N polls (0 = never).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub device_code_approve_after: u32,
    /// Directory roles the app's service principal holds, by display name (comma-separated,
    /// e.g. "User Administrator"); carried in tokens' `wids` as role template ids.
    #[arg(long, value_name = "LIST", default_value = "")]
    pub app_directory_roles: String,
    /// Give throttled answers' Retry-After to the millisecond (e.g. 0.249), as Graph sometimes
    /// does, instead of whole seconds.
    #[arg(long)]
    pub fractional_retry_after: bool,
    /// Delegated permissions consented for the apps (comma-separated): a device-code token's
    /// `scp`, whatever the client asked, so a scope not listed is Graph's 403.
    #[arg(long, value_name = "LIST", default_value = crate::emulator::DEFAULT_DELEGATED_SCOPES)]
    pub delegated_scopes: String,
    /// Answer every Nth invitation request 429 with Retry-After: 1, whatever the buckets hold
    /// (0 = never): throttling a client's retry handler meets at once, by count.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub throttle_every_nth_invitation: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its queue and report (default: a fresh folder under ./demo-output).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[arg(value_enum)]
    pub kind: BenchKind,
    /// Users (or CSV rows) to use.
    #[arg(long, default_value_t = 20_000, value_parser = config::at_least_one_parser())]
    pub users: usize,
    /// Scale Graph's bucket sizes and refill rates by this factor so the run takes minutes.
    #[arg(long, default_value_t = 10.0, value_parser = config::parse_scale)]
    pub scale: f64,
    /// Where to keep the database and inputs (default a temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    /// Ingest a generated CSV and report rows/s and peak RSS.
    Ingest,
    /// Live conversion against Graph-shaped buckets: invitations/s vs the ceiling, 429 share.
    Convert,
    /// A 10-user pilot on a `--users` tenant: time to the first invitation once the tenant's
    /// address index exists, beside a full listing of every user's addresses.
    Pilot,
    /// Dry runs of `--users`/5 and `--users` CSV users at 0 and 80 ms latency, at the default
    /// limits and with them lifted, reading by key and by the tool's choice.
    DryRun,
    /// `resend` of `--users` pending users at 80 ms latency against the settle rate.
    Resend,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exactly_one_source_is_required() {
        assert!(Cli::try_parse_from(["b2b-convert", "run"]).is_err());
        assert!(
            Cli::try_parse_from(["b2b-convert", "run", "--csv", "a", "--filter", "x"]).is_err()
        );
        assert!(Cli::try_parse_from(["b2b-convert", "run", "--csv", "a"]).is_ok());
    }

    fn parses(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["b2b-convert"].iter().chain(args))
    }

    #[test]
    fn numeric_flags_are_bounded_by_their_parsers() {
        let run = ["run", "--csv", "a.csv"];
        let with = |extra: &[&str]| parses(&[&run[..], extra].concat());
        for bad in [
            &["--rate", "1e-20"][..],
            &["--rate", "0"],
            &["--rate=-5"],
            &["--rate", "10001"],
            &["--rate", "NaN"],
            &["--concurrency", "0"],
            &["--concurrency", "257"],
            &["--max-attempts", "0"],
            &["--max-attempts", "101"],
            &["--http-retries", "21"],
            &["--http-retries=-1"],
            &["--limit=-1"],
            &["--limit", "18446744073709551615"],
        ] {
            let e = with(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?} is a usage error");
            let flag = bad[0].split('=').next().unwrap();
            assert!(e.to_string().contains(flag), "{bad:?}: {e}");
        }
        let ok = with(&[
            "--rate",
            "0.5",
            "--concurrency",
            "256",
            "--max-attempts",
            "3",
            "--http-retries",
            "0",
            "--limit",
            "0",
        ])
        .unwrap();
        let Command::Run(args) = ok.command else {
            panic!("run")
        };
        assert_eq!(args.exec.rate, Some(0.5));
        assert_eq!(args.exec.concurrency, Some(256));
        assert_eq!(args.exec.max_attempts, Some(3));
        assert_eq!(args.exec.http_retries, Some(0));
        assert_eq!(args.exec.limit, Some(0));
        for bad in [
            &["emulator", "--fault-rate", "1.5"][..],
            &["emulator", "--lost-response-rate", "-0.1"],
            &["emulator", "--token-lifetime-s", "0"],
            &["emulator", "--generate", "0"],
            &["bench", "convert", "--scale", "0"],
        ] {
            assert!(parses(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn help_shows_the_defaults_from_config() {
        let help = Cli::command()
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for expected in [
            format!("[default: {}", config::DEFAULT_RATE),
            format!("[default: {}", config::DEFAULT_CONCURRENCY),
            format!("[default: {}", config::DEFAULT_MAX_ATTEMPTS),
            format!("[default: {}", config::DEFAULT_HTTP_RETRIES),
            format!("[default: {}]", config::DEFAULT_REDIRECT_URL),
        ] {
            assert!(help.contains(&expected), "{expected} missing from:\n{help}");
        }
    }
}
