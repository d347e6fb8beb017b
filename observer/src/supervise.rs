//! Supervision: every task and thread the agent depends on is watched.
//! When one ends while the agent runs (it returned, failed or panicked),
//! `/healthz` answers 503 naming it, and the agent logs it, counts it and
//! exits non-zero: the DaemonSet restarts it, and with pins the programs
//! keep counting and dropping blocked payload meanwhile.

use std::{sync::Mutex, time::Duration};

use crate::agent_counters::{AgentCounters, Component};

/// How often the watched handles are looked at: the most a death waits
/// before it is noticed.
const POLL: Duration = Duration::from_millis(200);

/// A component that ended while the agent ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// Which one.
    pub component: Component,
    /// How it ended: its error, its panic message, or that it returned.
    pub reason: String,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} died: {}", self.component, self.reason)
    }
}

impl std::error::Error for Death {}

/// What `/healthz` reports: healthy until the first [`Death`].
#[derive(Debug, Default)]
pub struct Health {
    dead: Mutex<Option<Death>>,
}

impl Health {
    /// `Ok` while healthy, else the first death.
    pub fn report(&self) -> Result<(), Death> {
        match &*self
            .dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            None => Ok(()),
            Some(d) => Err(d.clone()),
        }
    }

    /// Records `death` (the first one stays).
    pub fn fail(&self, death: Death) {
        self.dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(death);
    }
}

/// A watched task or thread. A task's or thread's `Err` is its failure.
enum Handle {
    Task(tokio::task::JoinHandle<Result<(), String>>),
    Thread(Box<dyn Joinable>),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Task(_) => "Task",
            Self::Thread(_) => "Thread",
        })
    }
}

/// How a thread's return value reads: `()` returned, a `Result` may fail.
pub trait Ending: Send + 'static {
    /// `Err` with the failure, if it is one.
    fn outcome(self) -> Result<(), String>;
}

impl Ending for () {
    fn outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display + Send + 'static> Ending for Result<(), E> {
    fn outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A thread's join handle, whatever its [`Ending`].
trait Joinable: Send {
    fn is_finished(&self) -> bool;
    fn join(self: Box<Self>) -> std::thread::Result<Result<(), String>>;
}

impl<T: Ending> Joinable for std::thread::JoinHandle<T> {
    fn is_finished(&self) -> bool {
        std::thread::JoinHandle::is_finished(self)
    }

    fn join(self: Box<Self>) -> std::thread::Result<Result<(), String>> {
        std::thread::JoinHandle::join(*self).map(Ending::outcome)
    }
}

/// The set of watched components.
#[derive(Debug, Default)]
pub struct Watched {
    members: Vec<(Component, Handle)>,
}

impl Watched {
    /// Watches the task `handle` of `component`.
    pub fn task(
        &mut self,
        component: Component,
        handle: tokio::task::JoinHandle<Result<(), String>>,
    ) {
        self.members.push((component, Handle::Task(handle)));
    }

    /// Watches the thread `handle` of `component`.
    pub fn thread(&mut self, component: Component, handle: std::thread::JoinHandle<impl Ending>) {
        self.members
            .push((component, Handle::Thread(Box::new(handle))));
    }

    /// Waits until a watched component ends, stops watching it and
    /// returns how it ended. When several ended since the last look, the
    /// one that failed (an error or a panic) is the cause: one that merely
    /// returned may have followed it (the enforcer returns when the event
    /// reader, which feeds it, is gone); the others are logged. Pending
    /// forever when nothing is watched.
    pub async fn first_death(&mut self) -> Death {
        loop {
            let mut ended = Vec::new();
            let mut i = 0;
            while i < self.members.len() {
                let finished = match &self.members[i].1 {
                    Handle::Task(t) => t.is_finished(),
                    Handle::Thread(t) => t.is_finished(),
                };
                if finished {
                    ended.push(self.members.remove(i));
                } else {
                    i += 1;
                }
            }
            let mut deaths = Vec::with_capacity(ended.len());
            for (component, handle) in ended {
                let (failed, reason) = match handle {
                    Handle::Task(t) => match t.await {
                        Ok(Ok(())) => (false, "it returned".to_owned()),
                        Ok(Err(e)) => (true, e),
                        Err(e) if e.is_panic() => (true, panicked(&e.into_panic())),
                        Err(e) => (true, e.to_string()),
                    },
                    Handle::Thread(t) => match t.join() {
                        Ok(Ok(())) => (false, "it returned".to_owned()),
                        Ok(Err(e)) => (true, e),
                        Err(panic) => (true, panicked(&panic)),
                    },
                };
                deaths.push((failed, Death { component, reason }));
            }
            // The first failure, else the first that ended.
            if let Some(i) = deaths
                .iter()
                .position(|(failed, _)| *failed)
                .or(if deaths.is_empty() { None } else { Some(0) })
            {
                let (_, death) = deaths.swap_remove(i);
                for (_, other) in deaths {
                    tracing::warn!("{other} (after {} or with it)", death.component);
                }
                return death;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits up to `timeout` for the task of `component` to end (the
    /// caller told it to stop), and stops watching it; a task still
    /// running then is aborted, and that, an error or a panic is logged
    /// and counted.
    pub async fn finish_task(
        &mut self,
        component: Component,
        timeout: std::time::Duration,
        counters: &AgentCounters,
    ) {
        let Some(i) = self.members.iter().position(|(c, _)| *c == component) else {
            return;
        };
        let (_, Handle::Task(mut task)) = self.members.swap_remove(i) else {
            return;
        };
        let why = match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(Ok(()))) => return,
            Ok(Ok(Err(e))) => e,
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                task.abort();
                format!("did not stop within {timeout:?}: aborted")
            }
        };
        counters.error(component);
        tracing::error!(%component, "failed while stopping: {why}");
    }

    /// Aborts every watched task (the others hold nothing that needs an
    /// orderly stop); threads stay watched until [`Self::join`].
    pub fn abort_tasks(&mut self) {
        self.members.retain(|(_, h)| match h {
            Handle::Task(t) => {
                t.abort();
                false
            }
            Handle::Thread(_) => true,
        });
    }

    /// Waits for the thread of `component` (the caller told it to stop),
    /// if it is watched; a panic is logged and counted.
    pub fn join(&mut self, component: Component, counters: &AgentCounters) {
        let Some(i) = self.members.iter().position(|(c, _)| *c == component) else {
            return;
        };
        if let (_, Handle::Thread(t)) = self.members.swap_remove(i) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    counters.error(component);
                    tracing::error!(%component, "failed while stopping: {e}");
                }
                Err(panic) => {
                    counters.error(component);
                    tracing::error!(%component, "panicked while stopping: {}", panicked(&panic));
                }
            }
        }
    }
}

/// The message of a panic payload.
fn panicked(payload: &Box<dyn std::any::Any + Send>) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_death_is_reported_with_its_reason() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = Watched::default();
            w.task(
                Component::KernelLog,
                tokio::spawn(std::future::pending::<Result<(), String>>()),
            );
            w.thread(
                Component::Enforcer,
                std::thread::spawn(|| -> () { panic!("boom") }),
            );
            let death = w.first_death().await;
            assert_eq!(
                death,
                Death {
                    component: Component::Enforcer,
                    reason: "panicked: boom".into()
                }
            );
            // The enforcer returns because the event reader, its feeder,
            // failed: the failure is the cause.
            w.thread(Component::Enforcer, std::thread::spawn(|| {}));
            w.task(
                Component::EventReader,
                tokio::spawn(async { Err("the ring buffer's fd failed".to_owned()) }),
            );
            while !w.members.iter().all(|(c, h)| {
                *c == Component::KernelLog
                    || match h {
                        Handle::Task(t) => t.is_finished(),
                        Handle::Thread(t) => t.is_finished(),
                    }
            }) {
                tokio::task::yield_now().await;
            }
            let death = w.first_death().await;
            assert_eq!(
                death.to_string(),
                "event-reader died: the ring buffer's fd failed"
            );
            // A thread that ends with an error (the enforcer when it cannot
            // return to its own namespace) died of it.
            w.thread(
                Component::Enforcer,
                std::thread::spawn(|| Err::<(), _>("cannot return to the agent's namespace")),
            );
            assert_eq!(
                w.first_death().await.to_string(),
                "enforcer died: cannot return to the agent's namespace"
            );
            let health = Health::default();
            assert!(health.report().is_ok());
            health.fail(death.clone());
            health.fail(Death {
                component: Component::Discovery,
                reason: "later".into(),
            });
            assert_eq!(health.report(), Err(death), "the first death stays");
            w.abort_tasks();
            assert!(w.members.is_empty());
        });
    }
}
