//! Shell completions and man pages, generated from a binary's clap definition so they
//! can never disagree with the flags it really takes (`--completions`, `--manpage`).

use std::io::{self, Write};

use clap::Command;
pub use clap_complete::Shell;

/// Writes the completion script for `shell` to standard output.
pub fn print_completions(mut command: Command, shell: Shell) -> io::Result<()> {
    let name = command.get_name().to_string();
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut command, name, &mut out);
    out.flush()
}

/// Writes the man page (roff) to standard output.
pub fn print_manpage(command: Command) -> io::Result<()> {
    let mut out = io::stdout().lock();
    clap_mangen::Man::new(command).render(&mut out)?;
    out.flush()
}
