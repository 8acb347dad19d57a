//! Any bytes through the whole conversion: it must never panic, and must end in Ok or a
//! typed error. Run on stable with `cargo fuzz run convert -s none`, seeded with
//! `benches/mutate.py target/fuzz-short --short` (0.25 s inputs: more executions a second).
#![no_main]

use std::io::{Cursor, Seek, Write};

use libfuzzer_sys::fuzz_target;
use mp4tomp3_convert::{self as convert, ConvertOptions, Hooks};

fuzz_target!(
    init: {
        // The engine catches panics of the demuxer (symphonia; overflow checks are on in this
        // build) and reports them as `corrupt_media`, as the product does. libFuzzer's hook
        // would abort on those anyway; this one lets them unwind to where they are caught.
        // A panic nobody catches still ends in libfuzzer-sys's abort: a crash, found.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    // One file per process, rewritten for each input, in memory where /dev/shm is: a file
    // created and unlinked on ext4 for every input cost about a tenth of a long run in the
    // kernel's inode allocator (perf: `recently_deleted`, `find_inode_bit`).
    thread_local! {
        static FILE: Option<std::fs::File> =
            tempfile::tempfile_in("/dev/shm").or_else(|_| tempfile::tempfile()).ok();
    }
    let Some(mut file) = FILE.with(|f| f.as_ref().and_then(|f| f.try_clone().ok())) else {
        return;
    };
    let rewritten = file.set_len(0).and_then(|()| file.rewind());
    if rewritten.and_then(|()| file.write_all(data)).and_then(|()| file.rewind()).is_err() {
        return;
    }
    // Sequential, and refusing long claims early: an execution per input, not per thread,
    // and no more than 0.5 s of audio (twice the longest seed, so every seed still converts
    // whole): a forged duration costs a millisecond of encoding, not a second, so a run
    // makes millions of executions.
    let opts = ConvertOptions {
        max_duration: Some(std::time::Duration::from_millis(500)),
        threads: 1,
        ..Default::default()
    };
    let mut out = Cursor::new(Vec::new());
    if let Err(e) = convert::convert(file, &mut out, &opts, Hooks::default()) {
        assert!(!e.code().is_empty());
    }
    }
);
