//! This process as the bench measures it: CPU time, peak resident memory, the machine
//! it runs on, and `perf` control around the measured phases.

use std::io::Write;

/// The machine, as the report names it: cores, memory and CPU model.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores, {memory_gb:.0} GiB, {cpu}")
}

/// With `RESYNC_PERF_CTL=<fifo>`, tells `perf record --control fifo:<fifo> -D -1` to
/// sample only the pipeline run, or with `RESYNC_PERF_PHASE=ceiling` only the ceiling's
/// samples (to compare where a row's and a message's CPU go).
pub(super) fn perf_control(phase: &str, command: &str) {
    let sampled = std::env::var("RESYNC_PERF_PHASE").unwrap_or_else(|_| "pipeline".into());
    if sampled != phase {
        return;
    }
    if let Some(path) = std::env::var_os("RESYNC_PERF_CTL") {
        if let Err(err) = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut fifo| writeln!(fifo, "{command}"))
        {
            eprintln!("RESYNC_PERF_CTL: {err}");
        }
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds.
pub fn process_cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat, counted after the parenthesised command name
    // (which may contain spaces), in clock ticks of 1/100 s on Linux.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime = fields.get(11)?.parse::<f64>().ok()?;
            let stime = fields.get(12)?.parse::<f64>().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident memory of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
