//! `--help` is the manual an operator reads at 2 a.m.: every command and every argument says what
//! it does, and the README's usage block is exactly what `b2b-convert --help` prints (as lychee
//! checks its own README), so the two cannot drift apart.

use std::process::Command;

use b2b_convert::cli::Cli;
use clap::builder::StyledStr;
use clap::CommandFactory;

/// Walks `cmd` and its subcommands, collecting every command or argument without a description.
fn undescribed(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if !described(arg.get_help(), arg.get_long_help()) {
            missing.push(format!("{path} {}", arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        let name = format!("{path} {}", sub.get_name());
        if !described(sub.get_about(), sub.get_long_about()) {
            missing.push(name.clone());
        }
        undescribed(sub, &name, missing);
    }
}

/// Whether a command or argument has a text to show, short or else long.
fn described(short: Option<&StyledStr>, long: Option<&StyledStr>) -> bool {
    short
        .or(long)
        .is_some_and(|text| !text.to_string().trim().is_empty())
}

#[test]
fn every_command_and_argument_is_described() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut missing = Vec::new();
    undescribed(&cmd, "b2b-convert", &mut missing);
    assert!(missing.is_empty(), "no description: {missing:#?}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_b2b-convert"))
        .args(args)
        .env_remove("B2B_DB")
        .env_remove("B2B_GRAPH_URL")
        .env_remove("B2B_LOGIN_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_states_credentials_exit_codes_defaults_and_examples() {
    let top = help(&["--help"]);
    for needle in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PATH",
        "B2B_ACCESS_TOKEN",
        "Exit codes:",
        "130",
        "Examples:",
        "Global options:",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}");
    }
    assert!(!top.contains("bench"), "bench is not a user command");
    let run = help(&["run", "--help"]);
    for needle in ["[default: 30", "[default: 8", "[default: 6"] {
        assert!(run.contains(needle), "run --help lacks {needle}");
    }
    let demo = help(&["demo", "--help"]);
    assert!(demo.contains("ignored by `emulator` and `demo`"));
}

#[test]
fn readme_usage_block_is_the_help_output() {
    let readme = include_str!("../../README.md");
    let start = "<!-- usage: b2b-convert --help -->\n```text\n";
    let begin = readme
        .find(start)
        .expect("README has a usage block marked `<!-- usage: b2b-convert --help -->`")
        + start.len();
    let end = begin
        + readme[begin..]
            .find("```\n")
            .expect("usage block is closed");
    let block = &readme[begin..end];
    let actual = help(&["--help"]);
    if block != actual {
        let first = block
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(block.lines().count().min(actual.lines().count()));
        panic!(
            "README usage block differs from `b2b-convert --help` at line {}: update README.md \
             with the output of `cargo run -q -- --help`",
            first + 1
        );
    }
}
