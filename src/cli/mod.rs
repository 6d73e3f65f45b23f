//! Command-line front end. Each command module parses its flags, calls one library
//! function and prints the result. Exit codes: 0 ok, 1 problems found (verify), 2 error.

use std::cell::Cell;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod apply;
mod backup;
mod compress;
mod copy;
mod create;
mod docs;
mod explode;
mod inspect;
mod json;
mod list;
mod merge;
mod prune;
mod replay;
mod restore;
mod serve;
mod status;
mod sync;
mod verify;

/// Offline toolkit for Ceph RBD export-diff backup files.
///
/// Reads `rbd diff v1` (what `rbd export-diff` writes), `rbd diff v2` and the
/// `rbd export --export-format 2` image stream. `-` means stdin/stdout.
/// `backup`, `restore` and `prune` manage a directory of backups of one image, using the
/// `rbd` CLI for the cluster side (backup, restore).
#[derive(Parser, Debug)]
#[command(
    name = "rbddiff",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 ok, 1 problems found (verify), 2 error (the message names the file, byte offset and record).\nRun `rbddiff COMMAND --help` for each command."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: Common,
}

/// Flags every command takes (before or after the command's name).
#[derive(clap::Args, Debug)]
struct Common {
    /// Print nothing but errors (and the JSON asked for with --json): no progress bar, no
    /// report, no warnings. The exit status tells the result.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Show no progress bar (as rbd's --no-progress).
    #[arg(long, global = true)]
    no_progress: bool,
}

static QUIET: AtomicBool = AtomicBool::new(false);
static NO_PROGRESS: AtomicBool = AtomicBool::new(false);

/// True with `-q/--quiet`: print nothing but errors and asked-for JSON.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a warning on stderr, unless `--quiet`.
pub fn warn(w: impl std::fmt::Display) -> rbddiff::Result<()> {
    if !quiet() {
        writeln!(io::stderr().lock(), "rbddiff: warning: {w}")?;
    }
    Ok(())
}

/// Prints the one-line summary of a long command on stderr (unless `--quiet` or `--json`),
/// for commands whose stdout carries nothing else.
pub fn summary(line: std::fmt::Arguments<'_>) -> rbddiff::Result<()> {
    if !quiet() && !json::wanted() {
        writeln!(io::stderr().lock(), "rbddiff: {line}")?;
    }
    Ok(())
}

/// Notes on stderr the inputs passed over (unless `--quiet` or `--json`: the JSON report
/// lists them under `skipped`).
pub fn note_skipped(skipped: &[rbddiff::dirlist::Skipped]) -> rbddiff::Result<()> {
    if quiet() || json::wanted() {
        return Ok(());
    }
    let mut err = io::stderr().lock();
    for s in skipped {
        writeln!(err, "rbddiff: note: skipped {}: {}", s.file, s.reason)?;
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Command {
    Inspect(inspect::Args),
    Merge(merge::Args),
    Apply(apply::Args),
    Verify(verify::Args),
    Create(create::Args),
    Compress(compress::CompressArgs),
    Decompress(compress::DecompressArgs),
    Explode(explode::Args),
    Backup(backup::Args),
    Restore(restore::Args),
    Copy(copy::Args),
    Prune(prune::Args),
    Replay(replay::Args),
    Sync(sync::Args),
    List(list::Args),
    Status(status::Args),
    /// Serve snapshots read-only over NBD, without restoring them.
    Serve(serve::Args),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
}

/// How `backup` and `restore` reach the cluster: passed to every `rbd` call.
#[derive(clap::Args, Debug)]
pub struct RbdArgs {
    /// Ceph configuration file, passed to rbd as `-c`.
    #[arg(short = 'c', long = "conf", value_name = "CONF")]
    conf: Option<std::path::PathBuf>,
    /// Ceph user, passed to rbd as `--id`.
    #[arg(long, value_name = "USER")]
    id: Option<String>,
}

/// `--wait`, for the commands that lock an archive.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// When another run holds the archive's lock (sync and replay: or the destination
    /// image's), wait for it up to DURATION (e.g. 30s, 5m) instead of failing at once (exit
    /// 2, naming the holder).
    #[arg(long, value_name = "DURATION")]
    wait: Option<String>,
}

impl WaitArgs {
    /// The wait asked for.
    pub fn get(&self) -> rbddiff::Result<Option<std::time::Duration>> {
        self.wait
            .as_deref()
            .map(rbddiff::archive::listing::parse_duration)
            .transpose()
    }
}

/// How to reach an archive on object storage (`s3://BUCKET/PREFIX`), for the archive
/// commands. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
/// AWS_SESSION_TOKEN); the endpoint, region and plain-http permission from the flags, else
/// from AWS_ENDPOINT_URL, AWS_REGION and AWS_ALLOW_HTTP=true.
#[derive(clap::Args, Debug, Default)]
pub struct S3Args {
    /// With s3://: the endpoint URL, e.g. a Ceph RGW's http://HOST:7480 (default
    /// AWS_ENDPOINT_URL, else AWS).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// With s3://: the region (default AWS_REGION, else us-east-1).
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// With s3://: path-style requests (HOST/BUCKET/KEY; the default when an endpoint is
    /// given).
    #[arg(long, conflicts_with = "s3_virtual_hosted")]
    s3_path_style: bool,
    /// With s3://: virtual-hosted-style requests (BUCKET.HOST/KEY; the default for AWS).
    #[arg(long)]
    s3_virtual_hosted: bool,
    /// With s3://: allow a plain-http endpoint (as AWS_ALLOW_HTTP=true).
    #[arg(long)]
    s3_allow_http: bool,
}

impl S3Args {
    /// The store of the archive `loc` (a directory or `s3://…`), when it is on object
    /// storage.
    pub fn store(
        &self,
        loc: &std::path::Path,
    ) -> rbddiff::Result<Option<Box<dyn rbddiff::archive::store::Store>>> {
        use rbddiff::archive::store::{open, Location};
        let l = Location::parse(&loc.to_string_lossy())?;
        if !l.is_remote() {
            return Ok(None);
        }
        open(&l, &self.config()).map(Some)
    }

    /// The configuration these flags give (the rest from the `AWS_*` variables).
    pub fn config(&self) -> rbddiff::archive::store::S3Config {
        use rbddiff::archive::store::S3Config;
        S3Config {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: match (self.s3_path_style, self.s3_virtual_hosted) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            allow_http: self.s3_allow_http.then_some(true),
            ..S3Config::default()
        }
    }
}

impl From<RbdArgs> for rbddiff::workflow::Rbd {
    fn from(a: RbdArgs) -> Self {
        rbddiff::workflow::Rbd::connect(a.conf, a.id)
    }
}

/// Parses `--limit-rate RATE`: bytes per second, with size suffixes (`50M`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    match rbddiff::size::parse_size(s)? {
        0 => Err("the rate must be more than 0".to_string()),
        n => Ok(n),
    }
}

/// Prints a command's report: with `--json` as one JSON document in the shared envelope
/// (see [`json`]), else through `text` (nothing with `--quiet`); on stdout, or on stderr when
/// stdout carries the command's data (`-o -`).
pub fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> rbddiff::Result<()> {
    let mut out = io::BufWriter::new(json::report_stream());
    if json {
        json::write(&mut out, report)?;
    } else if !quiet() {
        text(&mut out)?;
    }
    out.flush()?;
    Ok(())
}

/// A progress display on stderr: a bar (a spinner while the total is unknown) labelled with
/// the command and the file it works on, when stderr is a terminal; nothing otherwise or
/// with `--quiet` or `--no-progress`. Cleared when finished or dropped (so that an error
/// message is printed on a clean line).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Whether the bar currently shows a known total.
    known: Cell<Option<bool>>,
}

/// Runs `f` with the callback of a progress display (see [`Progress`]) labelled with the
/// command's name, cleared afterwards.
pub fn with_progress<T>(f: impl FnOnce(&mut dyn FnMut(u64, u64)) -> T) -> T {
    with_progress_on("", f)
}

/// [`with_progress`], the label naming `file` too (the input, or the first of several).
pub fn with_progress_on<T>(file: &str, f: impl FnOnce(&mut dyn FnMut(u64, u64)) -> T) -> T {
    let progress = progress(&label(json::command(), file));
    let r = f(&mut progress.callback());
    progress.finish();
    r
}

/// The first of `files` (for a label), or nothing.
pub fn first(files: &[String]) -> &str {
    files.first().map_or("", String::as_str)
}

/// `COMMAND FILE`, the file's name shortened to its last 40 characters.
fn label(command: &str, file: &str) -> String {
    let file = match file {
        "" => String::new(),
        "-" => " stdin".into(),
        f => {
            let name = std::path::Path::new(f)
                .file_name()
                .map_or_else(|| f.to_string(), |n| n.to_string_lossy().into_owned());
            let n = name.chars().count();
            let short: String = name.chars().skip(n.saturating_sub(40)).collect();
            format!(" {}{short}", if n > 40 { "…" } else { "" })
        }
    };
    format!("{command}{file}")
}

/// Starts a progress display for a long command (see [`Progress`]).
fn progress(label: &str) -> Progress {
    let bar = (io::stderr().is_terminal() && !quiet() && !NO_PROGRESS.load(Ordering::Relaxed))
        .then(|| {
            let b = indicatif::ProgressBar::new(0).with_prefix(label.to_string());
            // The rate is the average over the run so far, steadier than indicatif's
            // short-window estimate when progress arrives in bursts.
            b.set_style(style(false));
            b
        });
    Progress {
        bar,
        known: Cell::new(None),
    }
}

fn style(known: bool) -> indicatif::ProgressStyle {
    let template = if known {
        "{prefix} {bar:30} {bytes}/{total_bytes} {avg_rate} eta {eta}"
    } else {
        "{prefix} {spinner} {bytes} {avg_rate}"
    };
    indicatif::ProgressStyle::with_template(template)
        .map(|s| {
            s.with_key(
                "avg_rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let secs = st.elapsed().as_secs_f64();
                    let rate = if secs > 0.5 {
                        (st.pos() as f64 / secs) as u64
                    } else {
                        0
                    };
                    let _ = if rate == 0 {
                        write!(w, "")
                    } else {
                        write!(w, "{}/s", indicatif::BinaryBytes(rate))
                    };
                },
            )
        })
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

impl Progress {
    /// The callback to hand to a library function: `(done, total)` in bytes, `total` 0 when
    /// unknown.
    pub fn callback(&self) -> impl FnMut(u64, u64) + '_ {
        move |done, total| {
            let Some(b) = &self.bar else { return };
            let known = total != 0;
            if self.known.get() != Some(known) {
                self.known.set(Some(known));
                b.set_style(style(known));
            }
            if known {
                b.set_length(total);
            }
            b.set_position(done);
        }
    }

    /// Clears the display.
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Exit status of a command.
pub enum Status {
    /// Everything fine.
    Ok,
    /// The command ran and found problems (exit 1).
    Problems,
    /// The command failed after printing its report, which names the error (exit 2; the
    /// error is also printed on stderr, unless `--json`).
    Failed(rbddiff::Error),
}

/// On SIGINT/SIGTERM, removes the temporary files of uncommitted outputs and exits with
/// 128 + the signal (installed when the first output is opened).
fn install_interrupt_cleanup() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                rbddiff::output::remove_pending();
                std::process::exit(128 + sig);
            }
        });
    }
}

/// Runs the command line.
pub fn run() -> ExitCode {
    rbddiff::output::set_interrupt_cleanup(install_interrupt_cleanup);
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some((name, sub)) = matches.subcommand() {
        let flag = |id: &str| sub.try_get_one::<bool>(id).ok().flatten().copied();
        let output = sub.try_get_one::<String>("output").ok().flatten();
        json::init(
            name,
            flag("json").unwrap_or(false),
            output.is_some_and(|o| o == "-"),
        );
    }
    QUIET.store(cli.common.quiet, Ordering::Relaxed);
    NO_PROGRESS.store(cli.common.no_progress, Ordering::Relaxed);
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Create(a) => create::run(a),
        Command::Compress(a) => compress::run_compress(a),
        Command::Decompress(a) => compress::run_decompress(a),
        Command::Explode(a) => explode::run(a),
        Command::Backup(a) => backup::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Copy(a) => copy::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Sync(a) => sync::run(a),
        Command::List(a) => list::run(a),
        Command::Status(a) => status::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Completions(a) => docs::run_completions(a),
        Command::Man(a) => docs::run_man(a),
    };
    match result {
        Ok(Status::Ok) => ExitCode::SUCCESS,
        Ok(Status::Problems) => ExitCode::from(1),
        Ok(Status::Failed(e)) => {
            if !json::wanted() {
                let _ = writeln!(io::stderr(), "rbddiff: {e}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            // A closed pipe on stdout (e.g. `| head`) is not an error.
            if let rbddiff::ErrorKind::Io(io) = e.kind() {
                if io.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            // Under --json the error is the command's JSON document (docs/json.md).
            if !json::wanted() || json::write_error(&e).is_err() {
                let _ = writeln!(io::stderr(), "rbddiff: {e}");
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
