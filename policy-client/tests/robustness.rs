//! Nothing in a resource file may panic the loader, `check` or `compile`:
//! the fixtures truncated, with lines dropped or rewritten, randomly
//! mutated, plus hand-made hostile inputs. This is the always-run companion
//! of the cargo-fuzz target `fuzz/fuzz_targets/resources.rs`, which needs a
//! nightly toolchain.

use std::panic::{catch_unwind, AssertUnwindSafe};

use portcullis_policy::{compile, PolicyConfig, Resources};

const FIXTURES: [&str; 4] = [
    "emojivoto.yaml",
    "walkthrough.yaml",
    "kubectl-pod.yaml",
    "kubectl-list.yaml",
];

fn fixture(name: &str) -> String {
    let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Loads, checks and compiles every pod; returns whether it loaded.
fn exercise(input: &str) -> bool {
    let run = || {
        let config = PolicyConfig::default();
        match Resources::from_yaml(input, "fuzz.yaml") {
            Ok(res) => {
                let _ = res.check(&config);
                for (ns, pod) in res.pods() {
                    compile(&res, &format!("{ns}/{pod}"), &config)
                        .unwrap_or_else(|e| panic!("a loaded pod must compile: {e}"));
                }
                true
            }
            Err(errors) => {
                assert!(!errors.0.is_empty(), "an error without errors");
                // Display must not panic either.
                let _ = errors.to_string();
                false
            }
        }
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(loaded) => loaded,
        Err(_) => panic!("panicked on input:\n-----\n{input}\n-----"),
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fixtures_load_whole() {
    for name in FIXTURES {
        assert!(exercise(&fixture(name)), "{name} must load");
    }
}

#[test]
fn truncated_fixtures() {
    for name in FIXTURES {
        let text = fixture(name);
        let mut loaded = 0;
        let cuts: Vec<usize> = (0..text.len())
            .filter(|i| text.is_char_boundary(*i))
            .filter(|i| i % 7 == 0 || text.as_bytes().get(*i) == Some(&b'\n'))
            .collect();
        for cut in cuts {
            if exercise(&text[..cut]) {
                loaded += 1;
            }
        }
        // Some prefixes are whole documents and load; most are not.
        assert!(loaded > 0, "{name}: no prefix loaded");
    }
}

#[test]
fn fixtures_with_lines_dropped_or_rewritten() {
    const VALUES: [&str; 16] = [
        "",
        "-1",
        "0",
        "65536",
        "99999999999999999999999",
        "[]",
        "{}",
        "null",
        "'*.'",
        "!!binary aGVsbG8=",
        "&a [*a, *a]",
        "1e400",
        ".nan",
        "\"\\u0000\"",
        "x\ty",
        "4000-4100,foo,-,1-65535",
    ];
    for name in FIXTURES {
        let text = fixture(name);
        let lines: Vec<&str> = text.lines().collect();
        let mut rejected = 0;
        for i in 0..lines.len() {
            let mut dropped = lines.clone();
            dropped.remove(i);
            if !exercise(&dropped.join("\n")) {
                rejected += 1;
            }
            let Some((key, _)) = lines[i].split_once(": ") else {
                continue;
            };
            // Three values per line, rotating, keep the test fast in debug
            // builds while every value meets every kind of field.
            for v in (0..3).map(|k| VALUES[(i + k * 5) % VALUES.len()]) {
                let mut changed = lines.clone();
                let line = format!("{key}: {v}");
                changed[i] = &line;
                exercise(&changed.join("\n"));
            }
        }
        assert!(rejected > 0, "{name}: dropping lines never mattered");
    }
}

#[test]
fn randomly_mutated_fixtures() {
    const BYTES: &[u8] = b"-:{}[],'\"&*!|>#%@`\n \t0123456789abcxyz/.";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for name in FIXTURES {
        let text = fixture(name).into_bytes();
        for _ in 0..300 {
            let mut bytes = text.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(bytes.len());
                match rng.below(4) {
                    0 => bytes.insert(at, BYTES[rng.below(BYTES.len())]),
                    1 => {
                        bytes.remove(at.min(bytes.len().saturating_sub(1)));
                    }
                    2 => {
                        let end = (at + rng.below(64)).min(bytes.len());
                        let chunk = bytes[at..end].to_vec();
                        let to = rng.below(bytes.len());
                        bytes.splice(to..to, chunk);
                    }
                    _ => {
                        if let Some(b) = bytes.get_mut(at) {
                            *b = BYTES[rng.below(BYTES.len())];
                        }
                    }
                }
            }
            exercise(&String::from_utf8_lossy(&bytes));
        }
    }
}

#[test]
fn hostile_inputs() {
    let deep_list = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_map = "a: {".repeat(5_000) + &"}".repeat(5_000);
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    let many_docs = "---\n".repeat(20_000);
    let wide_range = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {config.linkerd.io/opaque-ports: '1-65535'}}\nspec: {containers: [{name: c, ports: [{containerPort: 80}]}]}\n";
    let nested_lists = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: v1\n    kind: List\n    items: [{apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: []}}]\n";
    let long_name = format!(
        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {{name: {}}}\nspec: {{podSelector: {{}}, port: 1}}\n",
        "a".repeat(100_000)
    );
    let tagged =
        "!Pod\napiVersion: v1\nkind: !!str Pod\nmetadata: !x {name: p}\nspec: {containers: []}\n";
    let merge_cycle = "a: &a {<<: *a}\n";
    let merge_scalar = "apiVersion: v1\nkind: Pod\n<<: 3\n";
    let keys = "? [a, b]\n: c\napiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\nspec: {podSelector: {}, port: 1}\n";
    let bom = "\u{feff}apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n";
    for (name, input) in [
        ("deep list", deep_list.as_str()),
        ("deep map", deep_map.as_str()),
        ("billion laughs", laughs),
        ("many empty documents", many_docs.as_str()),
        ("wide opaque range", wide_range),
        ("nested lists", nested_lists),
        ("long name", long_name.as_str()),
        ("tags", tagged),
        ("merge cycle", merge_cycle),
        ("merge scalar", merge_scalar),
        ("non-string keys", keys),
        ("byte order mark", bom),
        ("NUL", "\0"),
        ("only dashes", "---"),
        ("document end", "...\n...\n"),
    ] {
        let started = std::time::Instant::now();
        exercise(input);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    assert!(exercise(nested_lists), "Lists inside Lists load");
    assert!(exercise(wide_range));
}

#[test]
fn unreadable_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("binary.yaml");
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x41]).expect("write");
    let err = Resources::load(&[&path]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.contains("cannot read"), "{err}");
}
