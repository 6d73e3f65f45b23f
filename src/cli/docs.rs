//! `rbddiff completions` and `rbddiff man`: shell completions and manual pages, generated
//! from the command line's own definition.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::CommandFactory;
use rbddiff::output::AtomicFile;
use rbddiff::{Error, Result};

use super::{Cli, Status};

/// Print a shell completion script on stdout.
///
/// bash: `rbddiff completions bash > /etc/bash_completion.d/rbddiff`;
/// zsh: `rbddiff completions zsh > "${fpath[1]}/_rbddiff"`;
/// fish: `rbddiff completions fish > ~/.config/fish/completions/rbddiff.fish`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Write the manual pages: rbddiff.1 and one rbddiff-COMMAND.1 per command.
///
/// Without `-o`, prints one page on stdout (rbddiff's, or COMMAND's).
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// The command whose page to print (without `-o`).
    #[arg(conflicts_with = "output")]
    command: Option<String>,
    /// Directory to write every page to (replacing pages already there).
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
}

pub fn run_completions(a: CompletionsArgs) -> Result<Status> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "rbddiff", &mut out);
    out.flush()?;
    Ok(Status::Ok)
}

/// The top-level command and each of its commands (`help` excepted), named as their pages.
fn pages() -> Vec<clap::Command> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut all = vec![cmd.clone()];
    all.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    all
}

fn render(cmd: clap::Command, out: &mut dyn Write) -> Result<String> {
    let man = clap_mangen::Man::new(cmd).source(concat!("rbddiff ", env!("CARGO_PKG_VERSION")));
    man.render(out)?;
    Ok(man.get_filename())
}

pub fn run_man(a: ManArgs) -> Result<Status> {
    let pages = pages();
    let Some(dir) = a.output else {
        let page = match &a.command {
            None => pages.into_iter().next(),
            Some(c) => pages.into_iter().skip(1).find(|p| p.get_name() == c),
        };
        let page = page.ok_or_else(|| {
            Error::invalid(format!(
                "no command '{}' (see rbddiff --help)",
                a.command.unwrap_or_default()
            ))
        })?;
        let mut out = io::stdout().lock();
        render(page, &mut out)?;
        out.flush()?;
        return Ok(Status::Ok);
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::from(e).with_file(&dir))?;
    for page in pages {
        let mut text = Vec::new();
        let name = render(page, &mut text)?;
        let path = dir.join(name);
        let mut f = AtomicFile::create_like(&path, true, None)?;
        f.file()
            .write_all(&text)
            .map_err(|e| Error::from(e).with_file(&path))?;
        // Manual pages are for everyone to read.
        rbddiff::output::set_mode(f.file(), 0o644).map_err(|e| e.with_file(&path))?;
        f.commit()?;
    }
    Ok(Status::Ok)
}
