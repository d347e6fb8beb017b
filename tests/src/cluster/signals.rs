//! Ctrl-C and SIGTERM for the lab's programs: stop the agents and remove the
//! namespaces (`Drop` will not run), then exit.

use crate::cluster::{agent, netns};

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts
/// afterwards, and takes them on one waiting thread that stops every agent
/// this process started, removes every namespace it made, and exits with
/// 130. The cleanup runs outside signal-handler context. Call it first
/// thing in `main`, as `program` (named in the message).
pub fn cleanup_on_signals(program: &'static str) {
    // SAFETY: plain libc signal-set manipulation on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: waits on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("\n{program}: signal {sig}: stopping the agent and removing the namespaces");
        agent::terminate_all();
        netns::cleanup_all();
        std::process::exit(130);
    });
}
