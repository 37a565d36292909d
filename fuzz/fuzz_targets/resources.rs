//! Fuzz target: arbitrary bytes through the resource loader, the
//! cross-resource check and the compiler of every pod that loads. Any panic
//! (or hang, or unbounded allocation) is a bug: resource files are
//! operator input, and the proxy reloads them while it runs.
//! Run: see fuzz/README.md. Its always-run companion is
//! policy-client/tests/robustness.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{compile, PolicyConfig, Resources};

fuzz_target!(|data: &[u8]| {
    // The loader reads text; invalid UTF-8 is rejected before YAML by the
    // file reader, so feed the lossy text to reach the parser either way.
    let text = String::from_utf8_lossy(data);
    let config = PolicyConfig::default();
    match Resources::from_yaml(&text, "fuzz.yaml") {
        Ok(res) => {
            let _ = res.check(&config);
            for (ns, pod) in res.pods() {
                // Every pod that loaded must compile.
                if let Err(e) = compile(&res, &format!("{ns}/{pod}"), &config) {
                    panic!("loaded pod {ns}/{pod} does not compile: {e}");
                }
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let _ = errors.to_string();
        }
    }
});
