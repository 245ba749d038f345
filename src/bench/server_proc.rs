//! The measured server's resident memory and CPU time, read from /proc (Linux).

use anyhow::Context;

/// Clock ticks per second of /proc's CPU times: USER_HZ, fixed at 100 by the Linux ABI.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuTimes {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.user_s + self.system_s
    }

    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes { user_s: self.user_s - earlier.user_s, system_s: self.system_s - earlier.system_s }
    }
}

/// A process the bench reads figures of; every process of a multi-process server (nginx's
/// master and workers) can be named, and their figures are summed.
#[derive(Debug, Clone)]
pub struct ServerProc {
    pids: Vec<u32>,
}

impl ServerProc {
    pub fn new(pids: Vec<u32>) -> anyhow::Result<Option<Self>> {
        if pids.is_empty() {
            return Ok(None);
        }
        let me = ServerProc { pids };
        me.cpu().context("read the server's /proc/PID/stat (is --server-pid right?)")?;
        Ok(Some(me))
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for pid in &self.pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
            total += kb * 1024;
        }
        Ok(total)
    }

    /// User and system CPU time so far, all threads.
    pub fn cpu(&self) -> anyhow::Result<CpuTimes> {
        let mut out = CpuTimes::default();
        for pid in &self.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
            // The command name may hold spaces; the fields after its closing parenthesis don't.
            let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("unexpected /proc/PID/stat")?;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("unexpected /proc/PID/stat");
            out.user_s += ticks(11)? as f64 / USER_HZ;
            out.system_s += ticks(12)? as f64 / USER_HZ;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = ServerProc::new(vec![std::process::id()]).unwrap().unwrap();
        assert!(me.rss().unwrap() > 0);
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(spin);
        assert!(me.cpu().unwrap().total() > 0.0);
    }
}
