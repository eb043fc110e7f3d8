#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // FUZZ_LAST_INPUT=path keeps the input being run there: a crash that kills the process before
    // libFuzzer can save it (a stack overflow) leaves it behind.
    if let Some(path) = std::env::var_os("FUZZ_LAST_INPUT") {
        let _ = std::fs::write(path, data);
    }
    engine_fuzz::chat_template(data)
});
