//! The one error type of this crate.
//!
//! The variants are chosen so a caller can tell the user what actually went wrong:
//! "nothing answers on that host" ([`PortmapError::Unreachable`]) is a different story
//! from "the mapper answered, but nobody by that name is registered"
//! ([`PortmapError::NoSuchName`]), and both differ from a mapper that speaks garbage.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use protocol::epmd::EpmdError;
use thiserror::Error;

/// Everything that can go wrong talking to, serving, or starting a port mapper.
#[derive(Debug, Error)]
pub enum PortmapError {
    /// No port mapper could be reached: the connection was refused, timed out, or the
    /// address is unreachable.
    #[error("no port mapper answering: {0}")]
    Unreachable(#[source] io::Error),

    /// The mapper refused the registration because the name is already registered.
    #[error("the name {0:?} is already registered with the port mapper")]
    NameTaken(String),

    /// The mapper answered, but has no node registered under this name.
    #[error("no node named {0:?} is registered with the port mapper")]
    NoSuchName(String),

    /// The mapper closed the connection without answering the request (a mapper refuses
    /// registrations from other hosts this way).
    #[error("the port mapper closed the connection without answering")]
    NoAnswer,

    /// The mapper took longer than the time limit to answer.
    #[error("the port mapper did not answer within {0} seconds")]
    Timeout(u64),

    /// The mapper's answer was larger than any valid answer can be.
    #[error("the port mapper's answer exceeds {0} bytes")]
    ResponseTooLarge(usize),

    /// The mapper's answer (or our request) broke the epmd wire format.
    #[error("port mapper protocol error: {0}")]
    Protocol(#[from] EpmdError),

    /// The connection to the mapper failed after it was established, or a socket call of
    /// the daemon failed.
    #[error("port mapper connection failed: {0}")]
    Io(#[from] io::Error),

    /// The port mapper program could not be started.
    #[error("could not start the port mapper {}: {source}", program.display())]
    Spawn {
        /// The program we tried to run.
        program: PathBuf,
        /// Why it did not start.
        #[source]
        source: io::Error,
    },

    /// The port mapper program was started but exited before it answered.
    #[error(
        "the port mapper {} exited ({status}) before answering on port {port}",
        program.display()
    )]
    MapperExited {
        /// The program we ran.
        program: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The port it was meant to answer on.
        port: u16,
    },

    /// The port mapper program was started but nothing answered in time.
    #[error(
        "started the port mapper {}, but nothing answered on 127.0.0.1:{port} within {secs} seconds",
        program.display()
    )]
    StartTimeout {
        /// The program we ran.
        program: PathBuf,
        /// The port it was meant to answer on.
        port: u16,
        /// How long we waited.
        secs: u64,
    },
}
