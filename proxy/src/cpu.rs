//! The CPU scheduling policy of the proxy's threads (`--cpu-scheduling`).
//!
//! A sidecar shares its cores with its app. Under the kernel's default
//! policy every wake-up of the proxy (a response written by the app, a
//! request arriving) preempts whatever runs on the core; with the app on the
//! same core that is a switch per response: the app writes one response, the
//! proxy preempts it, relays that one response and sleeps, the app resumes
//! for the next. `SCHED_BATCH` threads do not preempt on wake-up (the tick
//! does, after the running task's slice), so the app finishes its batch and
//! the proxy then relays all of it in one pass. On an idle core, or with an
//! idle core elsewhere, a batch thread runs at once, as before; the cost is
//! up to one scheduler slice of delay when every core is busy. Measured in
//! benches/RESULTS.md (performance pass 4).
//!
//! Called once by `main.rs` before the runtime starts, so every thread the
//! runtime spawns inherits the policy. Holds the project's second audited
//! `unsafe` call (the first is in `memory.rs`).

#![allow(unsafe_code)]

use std::io;

use crate::config::CpuScheduling;

/// Sets the calling thread's policy (threads it spawns later inherit it).
/// Without Linux this is a no-op.
pub fn set_policy(policy: CpuScheduling) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = match policy {
            CpuScheduling::Batch => libc::SCHED_BATCH,
            CpuScheduling::Normal => libc::SCHED_OTHER,
        };
        // Both policies take priority 0.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a live, initialised
        // sched_param for the duration of the call.
        let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = policy;
    Ok(())
}

/// The calling thread's policy, as `--cpu-scheduling` names it (`None` for
/// any other policy, e.g. a real-time one set from outside).
pub fn current_policy() -> io::Result<Option<CpuScheduling>> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: no arguments; reads the calling thread's policy.
        let rc = unsafe { libc::sched_getscheduler(0) };
        match rc {
            -1 => Err(io::Error::last_os_error()),
            libc::SCHED_BATCH => Ok(Some(CpuScheduling::Batch)),
            libc::SCHED_OTHER => Ok(Some(CpuScheduling::Normal)),
            _ => Ok(None),
        }
    }
    #[cfg(not(target_os = "linux"))]
    Ok(Some(CpuScheduling::Normal))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// On a thread of its own: the policy is per thread and the test
    /// harness's other threads must keep theirs.
    #[test]
    fn sets_and_reads_back_both_policies() {
        std::thread::spawn(|| {
            assert_eq!(current_policy().unwrap(), Some(CpuScheduling::Normal));
            set_policy(CpuScheduling::Batch).unwrap();
            assert_eq!(current_policy().unwrap(), Some(CpuScheduling::Batch));
            // Inherited by threads spawned afterwards (the runtime's workers).
            let child = std::thread::spawn(current_policy).join().unwrap();
            assert_eq!(child.unwrap(), Some(CpuScheduling::Batch));
            set_policy(CpuScheduling::Normal).unwrap();
            assert_eq!(current_policy().unwrap(), Some(CpuScheduling::Normal));
        })
        .join()
        .unwrap();
    }
}
