//! The `rbddiff` command line: parses flags, calls the library, prints.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
