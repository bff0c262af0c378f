//! Operating-system tuning at start: the open-file limit.
#![allow(unsafe_code)]

/// Raises the open-file soft limit to the hard limit; warns when `max_connections`
/// (plus room for the listener and friends) cannot fit. Returns the soft limit now in force.
pub fn raise_fd_limit(max_connections: usize) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("cannot read the open-file limit");
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising soft up to hard is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let needed = max_connections as u64 + 64;
    if lim.rlim_cur < needed {
        tracing::warn!(
            soft_limit = lim.rlim_cur,
            hard_limit = lim.rlim_max,
            max_connections,
            "server.max_connections does not fit in the open-file limit; connections beyond it will fail to accept"
        );
    }
    lim.rlim_cur
}
