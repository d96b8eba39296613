//! `cargo xtask slurm-test`: a real one-node Slurm cluster (Debian's slurm-wlm with
//! munge; installed with apt when `sbatch` is missing), configured from a file written
//! here, its daemons started, then `crates/runtime/tests/slurm.rs` run against it.
//! Needs root (it writes /etc/slurm/slurm.conf and starts daemons); on a cluster,
//! `safetune run SPEC --slurm` needs none of this.

use std::path::Path;
use std::process::Command;

use crate::{cargo, fail, run};

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd} >/dev/null")]).status().is_ok_and(|s| s.success())
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// The configuration of a single-node cluster on this machine: every core and most of
/// the memory, no cgroups (containers rarely allow them), no accounting daemon.
fn config(host: &str, cpus: usize, mem_mb: u64) -> String {
    format!(
        "# Written by `cargo xtask slurm-test`: a one-node cluster for safetune's Slurm test.
ClusterName=safetune
SlurmctldHost={host}
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=60
KillWait=5
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"
    )
}

pub fn slurm_test() {
    if !have("sbatch") || !have("slurmctld") || !have("slurmd") || !have("munged") {
        eprintln!("[slurm-test] installing slurm-wlm and munge (apt)");
        run(Command::new("apt-get").args(["update", "-qq"]));
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"])
            .env("DEBIAN_FRONTEND", "noninteractive"));
    }
    let host = output("hostname", &["-s"]);
    if host.is_empty() {
        fail("slurm-test: cannot read the host name");
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(4 << 20);
    let conf = config(&host, cpus, mem_kb / 1024 * 9 / 10);
    for dir in ["/etc/slurm", "/var/spool/slurmctld", "/var/spool/slurmd", "/run/munge", "/var/log/munge", "/var/lib/munge"] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("slurm-test: {dir}: {e} (run as root)")));
    }
    std::fs::write("/etc/slurm/slurm.conf", conf)
        .unwrap_or_else(|e| fail(&format!("slurm-test: /etc/slurm/slurm.conf: {e} (run as root)")));
    if !Path::new("/etc/munge/munge.key").exists() {
        run(Command::new("mungekey").args(["--create"]));
    }
    let _ = Command::new("chown").args(["-R", "munge:munge", "/etc/munge", "/run/munge", "/var/log/munge", "/var/lib/munge"]).status();
    // Start what is not running (a second `slurm-test` reuses the daemons).
    if !have_process("munged") {
        run(Command::new("runuser").args(["-u", "munge", "--", "munged"]));
    }
    if !have_process("slurmctld") {
        run(Command::new("slurmctld").arg("-c"));
    }
    if !have_process("slurmd") {
        run(&mut Command::new("slurmd"));
    }
    // The node must be idle before jobs go in.
    let start = std::time::Instant::now();
    loop {
        let state = output("sinfo", &["-h", "-o", "%T"]);
        if state.contains("idle") || state.contains("mixed") || state.contains("allocated") {
            break;
        }
        if start.elapsed().as_secs() > 60 {
            fail(&format!("slurm-test: the node is `{state}` after 60 s (see /var/log/slurmctld.log, /var/log/slurmd.log)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!("[slurm-test] one-node cluster up ({host}, {cpus} CPUs): {}", output("sinfo", &["-h"]));
    run(cargo().args(["test", "-p", "safetune-runtime", "--test", "slurm", "--", "--ignored", "--nocapture"]));
}

fn have_process(name: &str) -> bool {
    Command::new("pgrep").args(["-x", name]).status().is_ok_and(|s| s.success())
}
