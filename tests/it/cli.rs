//! `mp4tomp3 convert` as a user runs it: the real binary, real files, exit codes and stderr.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mp4tomp3"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Runs with `input` on stdin, capturing stdout and stderr.
fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 2 with exactly one line on stderr that contains `needle`.
fn assert_bad_input(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr: {err:?}");
    assert!(err.contains(needle), "{err:?} mentions {needle:?}");
}

/// A file committed in `tests/fixtures` (inputs found by fuzzing).
fn committed_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Converts each `tests/fixtures` file and expects `corrupt_media` with its detail.
fn assert_fixtures_corrupt(cases: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.mp3");
    for (name, detail) in cases {
        let input = committed_fixture(name);
        let out = run(&["convert", &input, "-o", out_path.to_str().unwrap(), "--force"]);
        assert_bad_input(&out, "corrupt_media: ");
        assert!(stderr(&out).contains(detail), "{name}: {}", stderr(&out));
        assert!(!out_path.exists(), "{name}: no MP3 is left behind");
    }
}

fn copy_fixture(dir: &Path, name: &str) -> std::path::PathBuf {
    let to = dir.join(name);
    std::fs::copy(crate::common::stereo_tagged(), &to).unwrap();
    to
}

#[test]
fn converts_next_to_the_input_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = copy_fixture(dir.path(), "song.m4a");
    let out = run(&["convert", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "quiet when stderr is not a terminal: {:?}",
        stderr(&out)
    );
    let mp3 = dir.path().join("song.mp3");
    let decoded = crate::common::decode(&mp3, 2);
    assert!((decoded.secs() - 5.0).abs() < 0.05);

    let before = std::fs::read(&mp3).unwrap();
    std::fs::write(&mp3, b"keep me").unwrap();
    let again = run(&["convert", input.to_str().unwrap()]);
    assert_bad_input(&again, "--force");
    assert_eq!(
        std::fs::read(&mp3).unwrap(),
        b"keep me",
        "the existing file is untouched"
    );

    let forced = run(&["convert", input.to_str().unwrap(), "--force", "--bitrate", "128"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let after = std::fs::read(&mp3).unwrap();
    assert!(
        after.len() < before.len(),
        "128 kbps is smaller than the default 192 kbps"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

#[test]
fn bad_input_is_one_line_and_exit_2_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "hello, this is text, not a movie at all.............").unwrap();
    let out_path = dir.path().join("notes.mp3");
    let refused = run(&["convert", text.to_str().unwrap()]);
    assert_bad_input(&refused, "not an MP4");
    assert!(
        stderr(&refused).starts_with("mp4tomp3: not_mp4: "),
        "the line starts with the code: {}",
        stderr(&refused)
    );
    assert!(!out_path.exists(), "no MP3 for a failed conversion");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "and no temp file");

    let input = copy_fixture(dir.path(), "song.m4a");
    let input = input.to_str().unwrap();
    assert_bad_input(
        &run(&["convert", input, "--bitrate", "100"]),
        "not a standard MP3 bitrate",
    );
    assert_bad_input(&run(&["convert", input, "--vbr", "12"]), "12");
    assert_bad_input(
        &run(&["convert", input, "--vbr", "2", "--bitrate", "128"]),
        "cannot be used with",
    );
    assert_bad_input(
        &run(&["convert", input, "--track", "3"]),
        "audio track 3 does not exist",
    );
    assert_bad_input(&run(&["convert", input, "--max-duration", "2"]), "limit");
    assert_bad_input(&run(&["convert", "/nonexistent/in.mp4"]), "cannot read");
    assert_bad_input(
        &run(&["convert", input, "-o", "/nonexistent/dir/out.mp3"]),
        "cannot write",
    );
    assert_bad_input(&run(&["convert"]), "required");
    let ac3 = crate::common::tone("ac3.mp4", 440, 48_000, 1.0, 2, &["-c:a", "ac3"]);
    assert_bad_input(
        &run(&[
            "convert",
            ac3.to_str().unwrap(),
            "-o",
            dir.path().join("x.mp3").to_str().unwrap(),
        ]),
        "AC-3",
    );
}

#[test]
fn a_damaged_input_gives_a_partial_mp3_with_one_warning_or_exit_2_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(crate::common::fragmented("cli_cut_frag_10s.m4a", 10.0)).unwrap();
    // Cut short (a download that stopped): what is there converts, and stderr says how much.
    let cut = dir.path().join("cut.m4a");
    std::fs::write(&cut, &whole[..whole.len() * 6 / 10]).unwrap();
    let out = run(&["convert", cut.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.starts_with("mp4tomp3: warning: recovered ") && err.ends_with(" s (the file ends early)\n"),
        "{err:?}"
    );
    let secs = crate::common::duration(&dir.path().join("cut.mp3"));
    assert!((4.5..7.0).contains(&secs), "about 60 % of 10 s: {secs}");
    let stated: f64 = err["mp4tomp3: warning: recovered ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (stated - secs).abs() < 0.1,
        "the warning says {stated} s, the MP3 lasts {secs} s"
    );

    // With --strict the same input is refused, and no MP3 is left.
    let strict_out = dir.path().join("strict.mp3");
    let out = run(&[
        "convert",
        cut.to_str().unwrap(),
        "--strict",
        "-o",
        strict_out.to_str().unwrap(),
    ]);
    assert_bad_input(&out, "--strict refuses a partial result");
    assert!(
        stderr(&out).starts_with("mp4tomp3: corrupt_media: "),
        "{}",
        stderr(&out)
    );
    assert!(!strict_out.exists());

    // A whole input has no warning, strict or not.
    let ok = dir.path().join("whole.m4a");
    std::fs::write(&ok, &whole).unwrap();
    let out = run(&["convert", ok.to_str().unwrap(), "--strict"]);
    assert!(out.status.success() && stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn a_file_with_its_index_at_the_end_cut_a_few_bytes_short_converts_whole() {
    // A download that lost its last bytes: the moov at the end is cut inside its last
    // box's payload (the encoder tag), its sample tables whole. The missing bytes read as
    // zeros (as ffmpeg does), so every sample converts; a deep cut stays `truncated_media`.
    let dir = tempfile::tempdir().unwrap();
    let input = crate::common::tone("cli_moov_at_end_30s.m4a", 440, 44100, 30.0, 2, &[]);
    let whole = std::fs::read(&input).unwrap();
    let moov_at = whole.windows(4).rposition(|w| w == b"moov").unwrap() - 4;
    let mdat_at = whole.windows(4).position(|w| w == b"mdat").unwrap() - 4;
    assert!(mdat_at < moov_at, "the fixture keeps its moov at the end");
    for cut_by in [1usize, 8] {
        let cut = dir.path().join(format!("cut{cut_by}.m4a"));
        std::fs::write(&cut, &whole[..whole.len() - cut_by]).unwrap();
        let out = run(&["convert", cut.to_str().unwrap(), "--strict"]);
        assert!(out.status.success(), "cut by {cut_by}: {}", stderr(&out));
        let secs = crate::common::duration(&dir.path().join(format!("cut{cut_by}.mp3")));
        assert!((secs - 30.0).abs() < 0.06, "cut by {cut_by}: {secs} s");
    }
    let deep = dir.path().join("deep.m4a");
    std::fs::write(&deep, &whole[..moov_at + 16]).unwrap();
    let out = run(&["convert", deep.to_str().unwrap()]);
    assert_bad_input(&out, "truncated");
}

#[test]
fn an_input_that_made_lame_abort_ends_in_an_exit_code_not_a_signal() {
    // Found by the fuzz target: damaged AAC decoded to samples that tripped an assertion
    // in LAME's quantizer, aborting the process (a whole node, in the service).
    let dir = tempfile::tempdir().unwrap();
    let input = committed_fixture("lame_assertion.mp4");
    let out_path = dir.path().join("out.mp3");
    for extra in [&[][..], &["--sequential"][..]] {
        let mut args = vec!["convert", &input, "-o", out_path.to_str().unwrap(), "--force"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let err = stderr(&out);
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{:?} ({extra:?}): {err}",
            out.status
        );
        assert!(err.lines().count() <= 1, "{err}");
    }
}

#[test]
fn a_fragment_run_claiming_more_samples_than_the_file_holds_is_refused() {
    // Found by the fuzz run: a 1 KiB file whose `trun` claims 476 million samples of
    // 1 KiB each. The demuxer walked them one by one (~2 s of CPU; one run passed the fuzz
    // timeout); the box walk now refuses the claim before the demuxer starts.
    assert_fixtures_corrupt(&[
        ("trun_count_forged.mp4", "476476537 samples"),
        ("trun_count_forged_2.mp4", "476476537 samples"),
    ]);
}

#[test]
fn a_forged_fragment_run_behind_leading_junk_ends_in_corrupt_media() {
    // Found by the 10-million-execution fuzz run (10-12 s each): 36 bytes that are no box
    // before the ftyp hid the moof from the box walk, which started at offset 0, while
    // symphonia's probe skipped to the ftyp and walked a run of 3.2 billion samples. The
    // walk now starts where the probe does, and the run is refused before the demuxer.
    assert_fixtures_corrupt(&[
        ("trun_count_forged_after_junk.mp4", "3204448260 samples"),
        ("trun_count_forged_after_junk_2.mp4", "3204448260 samples"),
    ]);
}

#[test]
fn chunks_the_tables_place_outside_the_file_are_skipped_at_once() {
    // Found by the fuzz run (timeouts under load; 4 s of CPU in the fuzz target, 0.6 s in
    // this CLI, for 6-7 KB): damaged tables put chunks of hundreds of millions of samples
    // outside the file, and the forgiving reader added up their durations one sample at
    // a time. It now advances an `stts` entry at a time (milliseconds); same result.
    assert_fixtures_corrupt(&[
        ("chunks_outside_billions.mp4", "none of the 39 audio packets decoded"),
        ("chunks_outside_billions_2.mp4", "none of the 54 audio packets decoded"),
    ]);
}

#[test]
fn damaged_packets_with_forged_timing_end_in_corrupt_media_without_hours_of_silence() {
    // Found by fuzzing: ALAC whose first packets do not decode and claim ~10 s each at a
    // forged rate. Their silence was made whole when the first good packet came: 11 GB.
    let name = "forged_timing_damaged_alac.mp4";
    assert_fixtures_corrupt(&[(name, "3429 of 3971 audio packets did not decode")]);
    let input = committed_fixture(name);
    let dir = tempfile::tempdir().unwrap();
    let (code, kib) = exit_and_peak_rss_kib(Path::new(&input), &dir.path().join("out.mp3"));
    assert_eq!(code, 2);
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB is under 64 MiB");
}

#[test]
fn a_table_of_billions_of_constant_size_samples_ends_in_corrupt_media() {
    // Found by the fuzz run: an stsz hidden in a damaged box says 4 billion samples of
    // 4 GB each. The forgiving reader summed their sizes one by one (28 s of CPU); it now
    // multiplies, and refuses the samples as larger than any codec's.
    assert_fixtures_corrupt(&[("constant_size_billions.mp4", "a sample larger than any audio codec's")]);
}

#[test]
fn stdin_and_stdout_work() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(crate::common::stereo_tagged()).unwrap();
    let out_path = dir.path().join("piped.mp3");

    let out = run_with_stdin(&["convert", "-", "-o", out_path.to_str().unwrap()], &bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!((crate::common::decode(&out_path, 2).secs() - 5.0).abs() < 0.05);

    let out = run_with_stdin(&["convert", "-", "-o", "-"], &bytes);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(&out.stdout[..3], b"ID3", "the MP3 comes out on stdout");
    assert_eq!(
        out.stdout,
        std::fs::read(&out_path).unwrap(),
        "same bytes as the file output"
    );

    let no_output = bin().args(["convert", "-"]).stdin(Stdio::null()).output().unwrap();
    assert_bad_input(&no_output, "-o");
}

/// The exit code and peak RSS (KiB) of one conversion by the real binary, from wait4.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by libc::wait4, which std cannot do"
)]
fn exit_and_peak_rss_kib(input: &Path, out: &Path) -> (i32, i64) {
    let child = bin()
        .args([
            "convert",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--force",
        ])
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into locals that outlive the call.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    assert!(libc::WIFEXITED(status), "the conversion exits, not killed by a signal");
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

/// Peak RSS (KiB) of one successful conversion.
fn peak_rss_kib(input: &Path, out: &Path) -> i64 {
    let (code, kib) = exit_and_peak_rss_kib(input, out);
    assert_eq!(code, 0, "conversion failed");
    kib
}

#[test]
fn memory_does_not_grow_with_the_input_length() {
    let short = crate::common::tone("rss_20s.m4a", 440, 44_100, 20.0, 2, &["-c:a", "aac"]);
    let long = crate::common::tone("rss_600s.m4a", 440, 44_100, 600.0, 2, &["-c:a", "aac"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp3");
    let short_kib = peak_rss_kib(&short, &out);
    let long_kib = peak_rss_kib(&long, &out);
    assert!(long_kib < 64 * 1024, "peak RSS {long_kib} KiB is under 64 MiB");
    assert!(
        long_kib < short_kib + 4 * 1024,
        "30x longer input, peak RSS {short_kib} KiB → {long_kib} KiB: must not grow with length"
    );
}

#[test]
fn bad_cluster_tls_settings_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--cluster-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        bin()
            .args(&args)
            .env("MP4TOMP3_CLUSTER_COOKIE", "cookie")
            .output()
            .unwrap()
    };
    let m = missing.to_str().unwrap();
    let j = junk.to_str().unwrap();
    assert_bad_input(&serve(&["--cluster-tls-cert", j]), "go together");
    assert_bad_input(
        &serve(&["--cluster-tls-cert", m, "--cluster-tls-key", m, "--cluster-tls-ca", m]),
        "missing.pem",
    );
    assert_bad_input(
        &serve(&["--cluster-tls-cert", j, "--cluster-tls-key", j, "--cluster-tls-ca", j]),
        "junk.pem",
    );
    // Kube discovery (the manifests' mode) will not run a clear-text mesh unless told to.
    assert_bad_input(&serve(&["--discovery", "kube"]), "--cluster-insecure");
    assert!(!data.join("meta.db").exists(), "refused before opening anything");
}

#[test]
fn serve_logs_json_lines_when_asked() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["--log-format", "json", "serve", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MP4TOMP3_JWT_SECRET", "json-log-secret-json-log-secret-0123")
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut serving = None;
    for line in stderr.lines() {
        let line = line.unwrap();
        // Every line is one JSON object (the generated admin password is printed on stdout).
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        if v["message"] == "mp4tomp3 serving" {
            serving = Some(v);
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let serving = serving.expect("a serving line");
    assert_eq!(serving["level"], "INFO");
    assert!(
        serving["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{serving}"
    );
}

#[test]
fn a_recovery_of_nothing_but_silence_is_corrupt_media_and_genuine_silence_converts() {
    // From an outside corpus: ALAC whose magic cookie says frameLength 1 made 0.05 s of
    // silence with exit 0 ("recovered 0.0 s of 2.0 s"); ffmpeg refuses it too.
    assert_fixtures_corrupt(&[(
        "alac_frame_length_1.m4a",
        "the damaged audio track gave less than half a second",
    )]);
    // An undamaged track of digital silence is audio like any other.
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent.m4a");
    crate::common::ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "anullsrc=r=44100:cl=stereo",
        "-t",
        "2",
        "-c:a",
        "aac",
        silent.to_str().unwrap(),
    ]);
    let out_path = dir.path().join("silent.mp3");
    let out = run(&["convert", silent.to_str().unwrap(), "-o", out_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_path.metadata().unwrap().len() > 1000);
}

#[test]
fn a_panic_inside_symphonia_is_one_line_and_exit_2() {
    // The input of the engine's hostile::a_panic_inside_symphonia_becomes_corrupt_media
    // (symphonia's MediaSourceStream asserts on it), committed; the engine's test checks the
    // typed error, this one the CLI's answer.
    let out = bin()
        .args(["convert", &committed_fixture("symphonia_assertion.mp4")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
}

#[test]
fn convert_threads_encodes_segments_into_the_stream_one_thread_writes() {
    // A 50 s input on 1 and on 3 threads (20 s segments): the same length as ffprobe reads
    // it from the info frame's delay and padding, and VBR V5 audio bit-identical (the
    // engine's `nway` tests widen this).
    let input = crate::common::tone(
        "threads-50s.m4a",
        440,
        44_100,
        50.0,
        2,
        &["-c:a", "aac", "-aac_pns", "0"],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut decoded = Vec::new();
    for threads in ["1", "3"] {
        let out_path = dir.path().join(format!("out-{threads}.mp3"));
        let out = run(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
            "--vbr",
            "5",
            "--threads",
            threads,
            "--segment-secs",
            "20",
        ]);
        assert!(out.status.success(), "--threads {threads}: {}", stderr(&out));
        // Hashed by ffmpeg, not held here: this process's size would be charged to the
        // children forked beside it (the peak-RSS tests).
        let md5 = Command::new("ffmpeg")
            .args(["-v", "error", "-i", out_path.to_str().unwrap(), "-f", "md5", "-"])
            .output()
            .unwrap();
        decoded.push((
            String::from_utf8_lossy(&md5.stdout).into_owned(),
            crate::common::duration(&out_path),
        ));
    }
    assert!((decoded[0].1 - 50.0).abs() < 0.1, "{} s", decoded[0].1);
    assert_eq!(decoded[0], decoded[1], "segments change the audio");
    let out = run(&["convert", input.to_str().unwrap(), "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
