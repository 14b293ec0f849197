//! Shell completions and man pages, generated from a binary's clap definition so they
//! can never disagree with the flags it really takes (`--completions`, `--manpage`).
//!
//! A man page is clap's NAME, DESCRIPTION and OPTIONS, with the binary's own SYNOPSIS
//! (with the values every flag takes), the sections it adds (the commands typed in the
//! chat, the port mapper) and ENVIRONMENT and FILES from [`Page`]; `--help` ends with the
//! same environment and files ([`Page::help_footer`]).

use std::io::{self, Write};

use clap::Command;
pub use clap_complete::Shell;

/// An environment variable and what it does.
pub type Variable = (&'static str, &'static str);

/// `CHAT_COOKIE`, as both binaries read it.
pub const CHAT_COOKIE: Variable = (
    "CHAT_COOKIE",
    "the cookie, when --cookie is not given (before --cookie-file and ~/.erlang.cookie)",
);
/// `ERL_EPMD_PORT`, as both binaries read it.
pub const ERL_EPMD_PORT: Variable = (
    "ERL_EPMD_PORT",
    "the port mapper's TCP port (default 4369), as in Erlang",
);
/// `RUST_LOG`, as both binaries read it.
pub const RUST_LOG: Variable = (
    "RUST_LOG",
    "how much is logged on standard error (e.g. debug; default warn for the client, info for the server)",
);
/// The cookie file, for FILES.
pub const COOKIE_FILE: Variable = (
    "~/.erlang.cookie",
    "the cookie (unless --cookie, CHAT_COOKIE or --cookie-file); created with a random cookie, mode 0400, if missing; refused if group or others can read or write it",
);

/// What a binary's man page and `--help` add to clap's own text.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The SYNOPSIS, one usage per line (continuation lines indented).
    pub synopsis: &'static str,
    /// Sections of their own, as (title, lines of text shown as they are).
    pub sections: &'static [(&'static str, &'static [&'static str])],
    /// The environment variables the binary reads.
    pub environment: &'static [Variable],
    /// The files it reads.
    pub files: &'static [Variable],
}

impl Page {
    /// The end of `--help`: the environment variables and files, in plain text.
    pub fn help_footer(&self) -> String {
        let mut text = String::from("Environment:\n");
        for (name, what) in self.environment {
            text.push_str(&format!("  {name}\n          {what}\n"));
        }
        text.push_str("\nFiles:\n");
        for (name, what) in self.files {
            text.push_str(&format!("  {name}\n          {what}\n"));
        }
        text.push_str("\nThe man page (--manpage) says more.");
        text
    }
}

/// Writes the completion script for `shell` to standard output.
pub fn print_completions(mut command: Command, shell: Shell) -> io::Result<()> {
    let name = command.get_name().to_string();
    let mut out = io::stdout().lock();
    clap_complete::generate(shell, &mut command, name, &mut out);
    out.flush()
}

/// Writes the man page (roff) of `command`, completed by `page`, to standard output.
pub fn print_manpage(command: Command, page: &Page) -> io::Result<()> {
    let mut out = io::stdout().lock();
    render_manpage(command, page, &mut out)?;
    out.flush()
}

/// The man page of `command`, completed by `page`. No SUBCOMMANDS section: clap's would
/// refer to pages nothing generates (a subcommand is described in `page`'s sections).
pub fn render_manpage(command: Command, page: &Page, out: &mut dyn Write) -> io::Result<()> {
    let versioned = command.get_version().is_some() || command.get_long_version().is_some();
    let man = clap_mangen::Man::new(command);
    man.render_title(out)?;
    man.render_name_section(out)?;
    writeln!(out, ".SH SYNOPSIS\n.nf")?;
    for line in page.synopsis.lines() {
        writeln!(out, "{}", roff_text(line))?;
    }
    writeln!(out, ".fi")?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    for (title, lines) in page.sections {
        writeln!(out, ".SH \"{}\"\n.nf", title.to_uppercase())?;
        for line in *lines {
            writeln!(out, "{}", roff_text(line))?;
        }
        writeln!(out, ".fi")?;
    }
    write_list(out, "ENVIRONMENT", page.environment)?;
    write_list(out, "FILES", page.files)?;
    if versioned {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// A section of tagged paragraphs: each name in bold, then what it is.
fn write_list(out: &mut dyn Write, title: &str, items: &[Variable]) -> io::Result<()> {
    writeln!(out, ".SH {title}")?;
    for (name, what) in items {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_text(name), roff_text(what))?;
    }
    Ok(())
}

/// `text` safe as a roff text line: backslashes and hyphens escaped, and a leading
/// control character (`.` or `'`) made literal.
pub fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: Page = Page {
        synopsis: "demo [--flag VALUE]",
        sections: &[("In the chat", &["/help  show this list", ".dot"])],
        environment: &[CHAT_COOKIE, RUST_LOG],
        files: &[COOKIE_FILE],
    };

    #[test]
    fn the_page_has_synopsis_sections_environment_and_files() {
        let command = Command::new("demo")
            .about("A demo.")
            .subcommand(Command::new("sub"));
        let mut out = Vec::new();
        render_manpage(command, &PAGE, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        for needle in [
            ".SH SYNOPSIS",
            "demo [\\-\\-flag VALUE]",
            ".SH \"IN THE CHAT\"",
            "\\&.dot",
            ".SH ENVIRONMENT",
            "\\fBCHAT_COOKIE\\fR",
            ".SH FILES",
            "~/.erlang.cookie",
        ] {
            assert!(page.contains(needle), "{needle:?} not in\n{page}");
        }
        assert!(!page.contains("demo-sub(1)"), "{page}");
    }

    #[test]
    fn help_ends_with_environment_and_files() {
        let footer = PAGE.help_footer();
        assert!(footer.contains("CHAT_COOKIE"));
        assert!(footer.contains("RUST_LOG"));
        assert!(footer.contains("~/.erlang.cookie"));
    }
}
