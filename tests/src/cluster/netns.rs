//! Network namespaces with a `Drop` guard, and running code inside them.

use std::{fs::File, os::fd::AsRawFd as _, process::Command, sync::Mutex};

/// Names of namespaces alive in this process, so a signal handler can
/// remove them (see [`cleanup_all`]).
static ALIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace with `lo` up. Panics with the `ip` error.
    pub fn new(name: &str) -> Self {
        // A leftover from a killed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ALIVE.lock().expect("lock").push(name.to_owned());
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A handle on an existing namespace that this value will not delete.
    pub fn existing(name: &str) -> Borrowed {
        Borrowed(Self {
            name: name.to_owned(),
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs the command `argv` inside the namespace (`ip netns exec`),
    /// panicking with its stderr; returns its stdout.
    pub fn exec(&self, argv: &[&str]) -> Vec<u8> {
        super::checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run(|| {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("cannot set {key}: {e}"));
        });
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets `f`
    /// creates stay in the namespace wherever they are used afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: a valid namespace fd; only this thread changes namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        ALIVE.lock().expect("lock").retain(|n| n != &self.name);
    }
}

/// Removes every namespace this process created and still holds. For signal
/// handlers, where `Drop` will not run.
pub fn cleanup_all() {
    let names = std::mem::take(
        &mut *ALIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for name in names {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}

/// Runs `ip ARGS` in the current namespace, panicking with its stderr.
pub fn ip(args: &[&str]) {
    super::checked(Command::new("ip").args(args));
}

/// A [`NetNs`] that is not deleted on drop (see [`NetNs::existing`]).
#[derive(Debug)]
pub struct Borrowed(NetNs);

impl std::ops::Deref for Borrowed {
    type Target = NetNs;
    fn deref(&self) -> &NetNs {
        &self.0
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        // Leave the namespace alone: take the name out so NetNs::drop
        // deletes nothing.
        self.0.name.clear();
    }
}
