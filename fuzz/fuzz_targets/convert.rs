//! Any bytes through the whole conversion: it must never panic, and must end in Ok or a
//! typed error. Run on stable with `cargo fuzz run convert -s none` (seed the corpus with
//! the test fixtures under target/tmp/fixtures for faster coverage).
#![no_main]

use std::io::{Cursor, Seek, Write};

use libfuzzer_sys::fuzz_target;
use mp4tomp3_convert::{self as convert, ConvertOptions, Hooks};

fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::tempfile() else { return };
    if file.write_all(data).and_then(|()| file.rewind()).is_err() {
        return;
    }
    let opts = ConvertOptions { max_duration: Some(std::time::Duration::from_secs(600)), ..Default::default() };
    let mut out = Cursor::new(Vec::new());
    if let Err(e) = convert::convert(file, &mut out, &opts, Hooks::default()) {
        assert!(!e.code().is_empty());
    }
});
