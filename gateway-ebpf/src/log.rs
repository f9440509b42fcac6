//! Debug events: aya-log with the `log` feature, nothing at all without it.

#[cfg(feature = "log")]
macro_rules! debug {
    ($($arg:tt)*) => { aya_log_ebpf::debug!($($arg)*) };
}

#[cfg(not(feature = "log"))]
macro_rules! debug {
    ($ctx:expr, $($arg:tt)*) => {
        let _ = $ctx;
    };
}

pub(crate) use debug;
