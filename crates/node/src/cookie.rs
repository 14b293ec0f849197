//! Where the cookie comes from, in order: `--cookie`, `CHAT_COOKIE`, `--cookie-file`,
//! then `~/.erlang.cookie`, created with a random cookie and mode 0400 if missing, as
//! Erlang does, so that chat nodes and BEAM nodes on one host share it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::Cookie;

/// The environment variable read when `--cookie` is not given.
pub const COOKIE_ENV: &str = "CHAT_COOKIE";

/// Where a cookie was found; printed at start-up so users know which one is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieSource {
    /// `--cookie` on the command line.
    Flag,
    /// The `CHAT_COOKIE` environment variable.
    Env,
    /// A file, given or default.
    File(PathBuf),
    /// The default file, created just now.
    Created(PathBuf),
}

impl std::fmt::Display for CookieSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag => f.write_str("--cookie"),
            Self::Env => write!(f, "${COOKIE_ENV}"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Created(p) => write!(f, "{} (created)", p.display()),
        }
    }
}

/// Why no cookie could be had.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    /// The given cookie is empty or only whitespace.
    #[error("the cookie from {0} is empty")]
    Empty(String),
    /// A cookie file could not be read.
    #[error("cannot read cookie file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The default cookie file could not be created.
    #[error("cannot create cookie file {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No `--cookie`, `CHAT_COOKIE`, `--cookie-file`, and no home directory.
    /// The cookie file can be read or written by others than its owner (Erlang refuses
    /// such a file too, with the same advice).
    #[error(
        "cookie file {} must be accessible by owner only (its mode is {mode:03o}); fix it with: chmod 400 {}",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    #[error("no cookie given and $HOME is not set; use --cookie, CHAT_COOKIE or --cookie-file")]
    NoHome,
}

/// Resolves the cookie from the flag, the environment, a file, or `~/.erlang.cookie`.
///
/// `flag` and `file` are the command-line values; `env` is the value of `CHAT_COOKIE`
/// (passed in so callers and tests control the environment).
pub fn resolve(
    flag: Option<&str>,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<(Cookie, CookieSource), CookieError> {
    if let Some(value) = flag {
        let cookie = Cookie::new(value).ok_or_else(|| CookieError::Empty("--cookie".into()))?;
        return Ok((cookie, CookieSource::Flag));
    }
    if let Some(value) = env {
        let cookie = Cookie::new(value).ok_or_else(|| CookieError::Empty(COOKIE_ENV.into()))?;
        return Ok((cookie, CookieSource::Env));
    }
    if let Some(path) = file {
        return read_file(path).map(|c| (c, CookieSource::File(path.to_path_buf())));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(CookieError::NoHome)?;
    let path = Path::new(&home).join(".erlang.cookie");
    match read_file(&path) {
        Ok(cookie) => Ok((cookie, CookieSource::File(path))),
        Err(CookieError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            create_default(&path).map(|c| (c, CookieSource::Created(path)))
        }
        Err(e) => Err(e),
    }
}

fn read_file(path: &Path) -> Result<Cookie, CookieError> {
    let read_error = |source| CookieError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_error)?;
    // Checked on the file we read, not on the path, so it cannot change in between.
    let mode = file.metadata().map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(CookieError::TooOpen {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text).map_err(read_error)?;
    Cookie::new(&text).ok_or_else(|| CookieError::Empty(path.display().to_string()))
}

/// Writes a fresh random cookie (20 upper-case letters, as Erlang makes them), readable
/// by the owner only. `create_new` means two nodes starting at once cannot both write it;
/// the loser reads the winner's cookie.
fn create_default(path: &Path) -> Result<Cookie, CookieError> {
    let secret: String = (0..20)
        .map(|_| char::from(b'A' + rand::random_range(0..26u8)))
        .collect();
    let created = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path);
    match created {
        Ok(mut file) => {
            let written = file
                .write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o400)));
            written.map_err(|source| CookieError::Create {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(Cookie::new(&secret).expect("a generated cookie is never empty"))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_file(path),
        Err(source) => Err(CookieError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = std::env::temp_dir().join(format!("cookie-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c");
        fs::write(&file, "from-file\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let (_, src) = resolve(Some("f"), Some("e"), Some(&file)).unwrap();
        assert_eq!(src, CookieSource::Flag);
        let (_, src) = resolve(None, Some("e"), Some(&file)).unwrap();
        assert_eq!(src, CookieSource::Env);
        let (_, src) = resolve(None, None, Some(&file)).unwrap();
        assert_eq!(src, CookieSource::File(file.clone()));
        assert!(matches!(
            resolve(Some("  "), None, None),
            Err(CookieError::Empty(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_erlangs_advice() {
        let dir = std::env::temp_dir().join(format!("cookie-open-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c");
        fs::write(&file, "secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            let err = resolve(None, None, Some(&file)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("must be accessible by owner only"), "{text}");
            assert!(text.contains("chmod 400"), "{text}");
        }
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(resolve(None, None, Some(&file)).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_file_is_created_private_then_reused() {
        let path = std::env::temp_dir().join(format!("erlang-cookie-{}", std::process::id()));
        let _ = fs::remove_file(&path);
        let first = create_default(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let again = create_default(&path).unwrap();
        assert_eq!(format!("{first:?}"), format!("{again:?}"));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 20);
        assert!(text.chars().all(|c| c.is_ascii_uppercase()));
        fs::remove_file(&path).unwrap();
    }
}
