//! CPU pinning for the pinned runs: the target on one CPU, the generator on the others,
//! so the target's figures are those of one core with the generator out of its way.
//!
//! The target is pinned in its child process before `exec` (every thread it starts
//! inherits the mask); the bench pins every thread it has at the moment, and threads it
//! starts afterwards (the generator's) inherit the mask of the thread that starts them.
//! [`PinnedBench`] puts the bench back on all its CPUs when dropped.

use std::fs;
use std::io;

use anyhow::{Context, Result, bail};

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes inside `set`, and ignores CPUs past its size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: all zeroes is a valid empty cpu_set_t for the kernel to fill.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let size = 8 * std::mem::size_of_val(&set);
    // SAFETY: CPU_ISSET only reads inside `set` for indices below its size in bits.
    Ok((0..size)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins thread `tid` (0: the calling thread) to `cpus`. Async-signal-safe, so it may run
/// in a child between `fork` and `exec`.
pub fn pin_thread(tid: libc::pid_t, set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; sched_setaffinity only
    // reads it.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(set), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins every thread of this process to `cpus`.
fn pin_all_threads(cpus: &[usize]) -> Result<()> {
    let set = cpu_set(cpus);
    let tasks = fs::read_dir("/proc/self/task").context("cannot list this process's threads")?;
    for task in tasks {
        let task = task.context("cannot list this process's threads")?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        match pin_thread(tid, &set) {
            Ok(()) => {}
            // The thread ended since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot pin thread {tid}")),
        }
    }
    Ok(())
}

/// Which CPUs the target and the generator get in a pinned run.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Every CPU the bench may use.
    pub all: Vec<usize>,
    /// The target's CPU.
    pub target: Vec<usize>,
    /// The generator's CPUs.
    pub generator: Vec<usize>,
}

impl Pinning {
    /// The target on the first CPU the bench may use, the generator on the others.
    pub fn plan() -> Result<Self> {
        let all = allowed_cpus().context("cannot read this process's CPU affinity")?;
        if all.len() < 2 {
            bail!(
                "a pinned run needs two CPUs (one for the target, one for the generator); \
                 this process may use {}",
                all.len()
            );
        }
        Ok(Self {
            target: all[..1].to_vec(),
            generator: all[1..].to_vec(),
            all,
        })
    }

    /// The target's CPU set, for its child process.
    pub fn target_set(&self) -> libc::cpu_set_t {
        cpu_set(&self.target)
    }

    /// Pins the bench to the generator's CPUs until the guard drops.
    pub fn pin_bench(&self) -> Result<PinnedBench> {
        pin_all_threads(&self.generator)?;
        Ok(PinnedBench {
            all: self.all.clone(),
        })
    }
}

/// The bench, pinned; dropping it lets every thread run on all CPUs again.
pub struct PinnedBench {
    all: Vec<usize>,
}

impl Drop for PinnedBench {
    fn drop(&mut self) {
        if let Err(e) = pin_all_threads(&self.all) {
            tracing::warn!(error = %format!("{e:#}"), "cannot unpin the bench");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_has_cpus_and_can_be_pinned_to_them() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let handle = std::thread::spawn(move || {
            pin_thread(0, &cpu_set(&cpus[..1])).unwrap();
            allowed_cpus().unwrap()
        });
        assert_eq!(handle.join().unwrap().len(), 1);
    }
}
