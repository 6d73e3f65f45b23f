//! The JSON envelope every command's `--json` document shares (docs/json.md): `schema`,
//! `command`, then the command's report fields, or an `error` object when the command failed.
//! The document goes to stdout, or to stderr when stdout carries the command's data (`-o -`).

use std::io::{self, Write};
use std::sync::OnceLock;

use serde::Serialize;

/// The schema name and version of every JSON document; bumped when a field changes meaning
/// or goes away (new fields may be added within a version).
pub const SCHEMA: &str = "rbddiff/1";

/// What the command line asked for, set once by [`init`].
struct Context {
    command: String,
    json: bool,
    to_stderr: bool,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();

/// Records the command's name, whether `--json` was given, and whether stdout carries the
/// command's data (`-o -`), so that reports go to stderr.
pub fn init(command: &str, json: bool, data_on_stdout: bool) {
    let _ = CONTEXT.set(Context {
        command: command.to_string(),
        json,
        to_stderr: data_on_stdout,
    });
}

fn context() -> &'static Context {
    CONTEXT.get_or_init(|| Context {
        command: String::new(),
        json: false,
        to_stderr: false,
    })
}

/// The command's name (`merge`, …).
pub fn command() -> &'static str {
    &context().command
}

/// True with `--json`.
pub fn wanted() -> bool {
    context().json
}

/// The stream reports go to: stdout, or stderr when stdout carries data.
pub fn report_stream() -> Box<dyn Write> {
    if context().to_stderr {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    schema: &'static str,
    command: &'a str,
    #[serde(flatten)]
    report: &'a T,
}

/// Writes `report` (a struct) in the envelope, as pretty JSON and a newline.
pub fn write(out: &mut dyn Write, report: &impl Serialize) -> rbddiff::Result<()> {
    let doc = Envelope {
        schema: SCHEMA,
        command: &context().command,
        report,
    };
    serde_json::to_writer_pretty(&mut *out, &doc)
        .map_err(|e| rbddiff::Error::from(io::Error::from(e)))?;
    writeln!(out)?;
    Ok(())
}

/// The `error` object of a failed command.
#[derive(Serialize)]
struct ErrorReport {
    error: ErrorObject,
}

#[derive(Serialize)]
struct ErrorObject {
    /// The whole message, as printed without `--json`.
    message: String,
    /// What kind of error (see [`rbddiff::ErrorKind::code`]).
    kind: &'static str,
    file: Option<String>,
    offset: Option<u64>,
    record: Option<u64>,
}

/// Writes `e` as the command's JSON document (`{"schema", "command", "error": {...}}`).
pub fn write_error(e: &rbddiff::Error) -> rbddiff::Result<()> {
    let doc = ErrorReport {
        error: ErrorObject {
            message: e.to_string(),
            kind: e.kind().code(),
            file: e.file().map(|f| f.display().to_string()),
            offset: e.offset(),
            record: e.record(),
        },
    };
    let mut out = report_stream();
    write(&mut out, &doc)?;
    out.flush()?;
    Ok(())
}
