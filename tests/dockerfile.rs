//! Static checks of the `Dockerfile` and `.dockerignore`, for a machine
//! without a container engine (this one): the binaries the build stage
//! copies out are the ones cargo builds for the packages it names; the
//! runtime stage is the default, has no shell step, runs as UID 2102,
//! exposes 4143 and 4191 and enters `/usr/local/bin/portcullis`; the init
//! stage ships `deploy/portcullis-init.sh`; the build context keeps what
//! `cargo build --locked` needs; README's "Sidecar (Kubernetes)" section
//! states the same facts. The manifests are checked in
//! `tests/deploy_manifests.rs`.

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One instruction: keyword (upper case) and its arguments, continuation
/// lines joined.
#[derive(Debug, Clone)]
struct Instr {
    keyword: String,
    args: String,
}

/// One build stage: `FROM image [AS name]` and its instructions.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&str> {
        self.instrs
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    }

    fn one(&self, keyword: &str) -> &str {
        let all = self.all(keyword);
        assert_eq!(all.len(), 1, "stage {:?}: {keyword} {all:?}", self.name);
        all[0]
    }
}

/// A small Dockerfile reader: comments and blank lines dropped (also inside
/// continued instructions, as Docker does), `\` continuations joined.
fn parse(text: &str) -> Vec<Stage> {
    let mut instrs = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body.trim());
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let full = std::mem::take(&mut current);
        let (keyword, args) = full.split_once(' ').unwrap_or((&full, ""));
        instrs.push(Instr {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    assert!(
        current.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    let mut stages: Vec<Stage> = Vec::new();
    for i in instrs {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let (image, name) = match words.as_slice() {
                [image] => (*image, None),
                [image, as_, name] if as_.eq_ignore_ascii_case("as") => (*image, Some(*name)),
                _ => panic!("cannot read FROM {}", i.args),
            };
            stages.push(Stage {
                image: image.to_owned(),
                name: name.map(str::to_owned),
                instrs: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("{} before the first FROM", i.keyword))
                .instrs
                .push(i);
        }
    }
    stages
}

fn dockerfile() -> Vec<Stage> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    parse(&text)
}

fn stage<'a>(stages: &'a [Stage], name: &str) -> &'a Stage {
    stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no stage named {name}"))
}

/// An exec-form (`["a", "b"]`) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{args} is not exec form: {e}"))
}

/// `COPY [--flags] SRC... DEST` -> (flags, sources, destination).
fn copy_parts(args: &str) -> (Vec<&str>, Vec<&str>, &str) {
    let words: Vec<&str> = args.split_whitespace().collect();
    let (flags, rest): (Vec<&str>, Vec<&str>) = words.iter().partition(|w| w.starts_with("--"));
    let (dest, srcs) = rest.split_last().expect("COPY has a destination");
    (flags, srcs.to_vec(), dest)
}

/// The files a path-list copy puts at `dest`.
fn copied_to(dest: &str, srcs: &[&str]) -> Vec<String> {
    srcs.iter()
        .map(|s| {
            let file = s.rsplit('/').next().unwrap_or(s);
            if dest.ends_with('/') {
                format!("{dest}{file}")
            } else {
                dest.to_owned()
            }
        })
        .collect()
}

#[test]
fn build_stage_compiles_the_binaries_the_image_copies() {
    let stages = dockerfile();
    let build = stage(&stages, "build");
    assert_eq!(build.image, "docker.io/library/rust:1-bookworm");
    let run = build.one("RUN");
    assert!(
        run.contains("cargo build --release --locked -p portcullis-proxy -p portcullis-controller"),
        "{run}"
    );
    // Debug line tables (most of the release binaries' size) are dropped.
    assert_eq!(build.one("ARG"), "CARGO_PROFILE_RELEASE_STRIP=debuginfo");
    // Dependencies and the target directory are cached between builds.
    for cache in [
        "type=cache,target=/usr/local/cargo/registry",
        "type=cache,target=/src/target",
    ] {
        assert!(run.contains(cache), "no {cache} in {run}");
    }

    // Every binary taken from target/release is one cargo builds for those
    // packages (e2e::bin builds the same packages and finds it).
    let built: BTreeSet<String> = run
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        built,
        BTreeSet::from(["portcullis".to_owned(), "portcullis-controller".to_owned()])
    );
    for name in &built {
        let path = e2e::bin(name);
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{name}: cargo built no {}: {e}", path.display()));
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.is_file() && meta.permissions().mode() & 0o111 != 0,
            "{name} not executable"
        );
    }
    assert!(run.contains("install -D -m 0755 -t /out"), "{run}");

    // ... and the runtime stage copies exactly those out of /out.
    let proxy = stages.last().expect("stages");
    let (flags, srcs, dest) = copy_parts(proxy.one("COPY"));
    assert_eq!(flags, ["--from=build"]);
    let copied: BTreeSet<String> = srcs
        .iter()
        .map(|s| {
            s.strip_prefix("/out/")
                .unwrap_or_else(|| panic!("{s} not from /out"))
                .to_owned()
        })
        .collect();
    assert_eq!(copied, built);
    assert_eq!(dest, "/usr/local/bin/");
}

#[test]
fn runtime_stage_is_the_default_minimal_and_non_root() {
    let stages = dockerfile();
    // The last stage is what `docker build .` produces.
    let proxy = stages.last().expect("stages");
    assert_eq!(proxy.name.as_deref(), Some("proxy"));
    assert_eq!(proxy.image, "gcr.io/distroless/cc-debian12");
    assert!(
        proxy.all("RUN").is_empty(),
        "distroless has no shell to RUN with"
    );
    assert_eq!(proxy.one("USER"), "2102:2102");
    let exposed: BTreeSet<&str> = proxy.one("EXPOSE").split_whitespace().collect();
    assert_eq!(exposed, BTreeSet::from(["4143", "4191"]));
    let entry = exec_form(proxy.one("ENTRYPOINT"));
    assert_eq!(entry, ["/usr/local/bin/portcullis"]);
    let (_, srcs, dest) = copy_parts(proxy.one("COPY"));
    assert!(
        copied_to(dest, &srcs).contains(&entry[0]),
        "entrypoint is not copied in"
    );
    assert!(
        stages.iter().all(|s| s.all("HEALTHCHECK").is_empty()),
        "Kubernetes probes /ready and /live; the image has no HEALTHCHECK"
    );

    // The admin server listens where EXPOSE says, through a variable the
    // binary really reads.
    assert_eq!(proxy.one("ENV"), "PORTCULLIS_ADMIN_ADDR=0.0.0.0:4191");
    let help = std::process::Command::new(e2e::bin("portcullis"))
        .arg("--help")
        .output()
        .expect("portcullis --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("PORTCULLIS_ADMIN_ADDR"), "{help}");
    assert!(
        help.contains("--inbound-addr") && help.contains("0.0.0.0:4143"),
        "{help}"
    );
}

#[test]
fn init_stage_ships_the_script_with_iptables() {
    let stages = dockerfile();
    let init = stage(&stages, "init");
    assert_eq!(init.image, "docker.io/library/debian:bookworm-slim");
    assert!(init
        .one("RUN")
        .contains("apt-get install -y --no-install-recommends iptables"));
    let (flags, srcs, dest) = copy_parts(init.one("COPY"));
    assert_eq!(flags, ["--chmod=0755"]);
    assert_eq!(srcs, ["deploy/portcullis-init.sh"]);
    assert!(Path::new(ROOT).join(srcs[0]).is_file());
    assert_eq!(exec_form(init.one("ENTRYPOINT")), [dest]);
    assert_eq!(init.one("USER"), "0");
}

/// Whether a `.dockerignore` pattern excludes `path`. Only the pattern forms
/// the file uses: a path (and everything below it) and `**/NAME`.
fn ignored(patterns: &[String], path: &str) -> bool {
    patterns.iter().any(|p| {
        if let Some(name) = p.strip_prefix("**/") {
            let name = name.trim_start_matches('*');
            path.split('/').any(|c| c.ends_with(name))
        } else {
            path == p || path.starts_with(&format!("{p}/"))
        }
    })
}

#[test]
fn build_context_keeps_what_cargo_needs() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for p in &patterns {
        assert!(!p.starts_with('!'), "negations are not expected here: {p}");
        assert!(
            !p.contains('*') || (p.starts_with("**/") && !p[3..].contains('/')),
            "pattern {p} is beyond what this test understands"
        );
    }
    for out in ["target", "target/release/portcullis", ".git", "fuzz/target"] {
        assert!(
            ignored(&patterns, out),
            "{out} should not be sent to the builder"
        );
    }
    // Everything cargo reads for the workspace (all member manifests and
    // sources, the lock file for --locked, the root package's tests/ which
    // hold its lib), and every file a COPY names.
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "tests/support/lib.rs".to_owned(),
    ];
    for member in ["policy-client", "proxy", "controller"] {
        needed.push(format!("{member}/Cargo.toml"));
        needed.push(format!("{member}/src/lib.rs"));
    }
    for s in dockerfile().iter() {
        for copy in s.all("COPY") {
            let (flags, srcs, _) = copy_parts(copy);
            if !flags.iter().any(|f| f.starts_with("--from=")) {
                needed.extend(srcs.iter().filter(|s| **s != ".").map(|s| s.to_string()));
            }
        }
    }
    for path in &needed {
        assert!(Path::new(ROOT).join(path).exists(), "{path} does not exist");
        assert!(
            !ignored(&patterns, path),
            "{path} is excluded by .dockerignore"
        );
    }
}

/// README's "Sidecar (Kubernetes)" section.
fn readme_section() -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Sidecar (Kubernetes)\n")
        .expect("README has a \"## Sidecar (Kubernetes)\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn readme_states_what_the_dockerfile_does() {
    let section = readme_section();
    for fact in [
        "docker build -t portcullis:dev .",
        "docker build --target init -t portcullis-init:dev .",
        "gcr.io/distroless/cc-debian12",
        "UID 2102",
        "4143",
        "4191",
        "/usr/local/bin/portcullis",
        "/usr/local/bin/portcullis-controller",
        "/usr/local/bin/portcullis-init",
        "NET_ADMIN",
        "NET_RAW",
    ] {
        assert!(
            section.contains(fact),
            "README's sidecar section does not say {fact:?}"
        );
    }
    // The image size estimate is stated, in MB.
    assert!(
        section
            .lines()
            .any(|l| l.contains("image size") && l.contains("MB")),
        "README's sidecar section gives no image size estimate"
    );
}
