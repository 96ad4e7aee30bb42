#![no_main]
// Request bodies and filters from the network never panic the decoders.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<coffer_core::api::SecretSpecRequest>(data);
    let _ = serde_json::from_slice::<coffer_core::api::UnlockRequest>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = coffer_manager::control::ListFilters::parse(s);
    }
});
