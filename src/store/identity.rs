//! This process as lease rows and outbox claims name it, and whether another
//! process on this node is still alive (a holder whose pid is gone can be
//! taken over at once).

use std::sync::OnceLock;

/// This process, as lease rows and outbox claims name it.
#[derive(Debug)]
pub(crate) struct Me {
    pub host: String,
    /// Kernel boot and pid namespace: pids are comparable only within one.
    pub node: String,
    pub pid: i64,
    /// Unique per process start (a pid is reused after a restart).
    pub instance: String,
}

/// This process's identity, computed once.
pub fn me() -> &'static Me {
    static ME: OnceLock<Me> = OnceLock::new();
    ME.get_or_init(|| {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let host = hostname().unwrap_or_else(|| "unknown-host".into());
        let node = node_id().unwrap_or_else(|| format!("unknown:{instance}"));
        Me {
            host,
            node,
            pid: i64::from(std::process::id()),
            instance,
        }
    })
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes and we read up to the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// `machine / pid namespace`: two processes with the same node id see the
/// same pids. Only what a hardened unit still shows is read
/// (`ProcSubset=pid` hides `/proc/sys`, so no boot id): the machine id
/// (`/etc/machine-id`, else the host name) and the pid namespace of this
/// process (`/proc/self`). A holder from before a reboot is dead whatever
/// its pid says now, so a reused namespace id costs nothing but a wait.
/// `None` where the namespace cannot be read: then no holder is ever judged
/// dead by its pid, only by its expiry (safe, slower).
fn node_id() -> Option<String> {
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let machine = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .or_else(hostname)?;
    Some(format!("{machine}/{}", ns.display()))
}

/// Whether `pid` names a live process on this node. The kernel decides
/// (`kill(pid, 0)`: ESRCH is gone, EPERM is another user's live process),
/// not `/proc`, which hides other users' processes on hardened hosts
/// (`hidepid`, systemd's `ProtectProc=invisible`). A zombie (killed, not
/// yet reaped by its parent) is dead: it will never write again; `/proc`
/// tells that where it shows the process.
pub fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// How this process signs its claims: `node|pid|instance`, so that
/// another process of the same node can tell a dead claimer.
pub(crate) fn claimer() -> String {
    let me = me();
    format!("{}|{}|{}", me.node, me.pid, me.instance)
}

/// Whether a claim was made by a process of this node that is gone.
pub(crate) fn claimer_is_dead(claimed_by: &str) -> bool {
    let me = me();
    let mut parts = claimed_by.rsplitn(3, '|');
    let (Some(instance), Some(pid), Some(node)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<i64>() else {
        return false;
    };
    node == me.node && instance != me.instance && !pid_alive(pid)
}
