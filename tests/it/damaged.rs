//! Damaged inputs: a sample of the box-aware mutator's corpus (benches/mutate.py, seeded)
//! through the real binary, classified by benches/damaged.py (the same runner the full
//! benchmark uses). No defect is allowed: an exit 0 with an empty or undecodable MP3, an
//! exit 1, a crash, a hang over 10 s, more than 128 MiB, or stderr that is not one line
//! starting with the error's code (or one warning line on success).

use std::process::Command;

#[test]
fn a_sample_of_damaged_files_has_no_defect() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/damaged.py"))
        .args([
            "--count",
            "240",
            "--seed",
            "7",
            "--no-ffmpeg",
            "--check",
            "--show",
            "40",
        ])
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_mp4tomp3"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "defects found:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("inputs: 240 damaged files"), "{report}");
    assert!(report.contains("defects: 0"), "{report}");
    // The sample exercises both outcomes: partial results kept, and refusals.
    assert!(report.contains("exit0 with warning"), "{report}");
    assert!(report.contains("exit2 corrupt_media"), "{report}");
}
