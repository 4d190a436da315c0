//! `completions` and `man`: what a packager installs beside the binary, generated from the
//! command line's own definition, so neither can drift from `--help`.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::{exit, Failure, Outcome};

/// The name the scripts complete and the page documents.
const BIN: &str = "database-locks";

pub fn completions(args: &CompletionsArgs) -> Outcome {
    let mut cli = Cli::command();
    // clap_complete panics on a failed write: it writes to memory, the tool to stdout.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, BIN, &mut script);
    print(&script, "the completion script")
}

pub fn man(args: &ManArgs) -> Outcome {
    // `help` has no page of its own; `build` gives subcommands their page names
    // (database-locks-run) and usage lines.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let page = match &args.subcommand {
        None => cli,
        Some(name) => cli
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| Failure::from(format!("internal error: no subcommand {name:?}")))?,
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .map_err(|err| Failure::caused("cannot render the manual page", &err))?;
    print(&roff, "the manual page")
}

fn print(bytes: &[u8], what: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|err| Failure::caused(format!("cannot write {what}"), &err))?;
    Ok(exit::OK)
}
