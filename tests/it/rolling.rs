//! Availability through a rolling restart and through a lost pod: three nodes under a
//! steady client (keyed and unkeyed uploads, status reads, downloads of done jobs), sent
//! only to nodes that are up and ready, while `benches/rolling.py` restarts each node in
//! turn (SIGTERM, away 5 s), kills one (`kill -9`, away 15 s) or cuts one off from the two
//! others for 15 s (nftables on its cluster port; needs root, as in CI). The script judges:
//! no submission refused, no status read failed, ≥ 99.9 % of downloads served, every keyed
//! retry answered with its key's job, every accepted job done and listed; on the cut-off
//! node, a keyed upload is accepted or refused with `503 unavailable`, never a second job.

use std::process::Command;

fn rolling(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.txt");
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/rolling.py"))
        .args(["--mode", mode, "--bin", env!("CARGO_BIN_EXE_mp4tomp3")])
        .arg("--work")
        .arg(dir.path().join("work"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the {mode} run found violations:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The run happened as planned: every class of request was sent, and answered.
    let figures = std::fs::read_to_string(&report).unwrap();
    for class in ["keyed", "unkeyed", "status", "download"] {
        let line = figures
            .lines()
            .find(|l| l.starts_with(&format!("{class}:")))
            .unwrap_or_else(|| panic!("no {class} line: {figures}"));
        let answered: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(answered >= 50, "too few {class} requests to judge: {figures}");
    }
    assert!(figures.contains(", lost 0;"), "{figures}");
    assert!(figures.contains("answered another job 0"), "{figures}");
}

#[test]
fn a_rolling_restart_refuses_nothing() {
    rolling("term");
}

#[test]
fn a_pod_killed_for_15_s_refuses_nothing() {
    rolling("kill");
}

#[test]
fn a_pod_cut_off_for_15_s_never_makes_a_second_job_and_the_others_refuse_nothing() {
    rolling("split");
}
