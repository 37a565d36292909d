//! The sidecar's iptables init script, `deploy/portcullis-init.sh`: its
//! flags, environment variables and input checks (`--dry-run`, which needs
//! no privileges), and, as root, the rules it really installs in a network
//! namespace created for the test: exactly the dry-run rules, once each,
//! after any number of runs, next to other rules it must not touch, and
//! gone after `--remove`. Whether the rules send traffic where they should
//! is `tests/pod_topology.rs`'s job.
//!
//! Runs the script with `sh` (dash on Debian), as the init container does.

use std::process::{Command, Output};
use std::time::Duration;

use e2e::netns::Netns;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/portcullis-init.sh");

/// Runs the script with `args` and a clean `PORTCULLIS_*` environment plus
/// `env`.
fn script(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(SCRIPT).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    e2e::netns::output_within(&mut cmd, Duration::from_secs(60))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What `--dry-run` prints with the defaults: the whole contract of the
/// script in one place (DESIGN.md's ports 4143 and 4191, UID 2102).
const DEFAULT_RULES: &str = r#"# iptables-restore --noflush
*nat
:PORTCULLIS_INBOUND - [0:0]
:PORTCULLIS_OUTPUT - [0:0]
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 4191 -m comment --comment "portcullis: proxy admin port" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m comment --comment "portcullis: redirect to proxy" -j REDIRECT --to-ports 4143
-A PORTCULLIS_OUTPUT -m owner --uid-owner 2102 -m comment --comment "portcullis: proxy uid" -j RETURN
-A PORTCULLIS_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m comment --comment "portcullis: to own pod address" -j PORTCULLIS_INBOUND
-A PREROUTING -p tcp -j PORTCULLIS_INBOUND
-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT
COMMIT
"#;

#[test]
fn help_documents_every_flag_and_variable() {
    let out = script(&["--help"], &[]);
    assert!(out.status.success(), "--help failed: {}", stderr(&out));
    let help = stdout(&out);
    for word in [
        "--proxy-inbound-port",
        "PORTCULLIS_PROXY_INBOUND_PORT",
        "default 4143",
        "--proxy-admin-port",
        "PORTCULLIS_PROXY_ADMIN_PORT",
        "default 4191",
        "--proxy-uid",
        "PORTCULLIS_PROXY_UID",
        "default 2102",
        "--skip-inbound-ports",
        "PORTCULLIS_SKIP_INBOUND_PORTS",
        "--iptables",
        "PORTCULLIS_IPTABLES",
        "--ipv6",
        "PORTCULLIS_IPV6",
        "--ip6tables",
        "PORTCULLIS_IP6TABLES",
        "--dry-run",
        "--remove",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    assert_eq!(stdout(&script(&["-h"], &[])), help);
}

#[test]
fn dry_run_prints_the_default_rules() {
    let out = script(&["--dry-run"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), DEFAULT_RULES);
}

#[test]
fn dry_run_with_every_option() {
    let expected = r#"# iptables-legacy-restore --noflush
*nat
:PORTCULLIS_INBOUND - [0:0]
:PORTCULLIS_OUTPUT - [0:0]
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 9901 -m comment --comment "portcullis: proxy admin port" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 22 -m comment --comment "portcullis: skip-inbound-ports" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 8000:8010 -m comment --comment "portcullis: skip-inbound-ports" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m comment --comment "portcullis: redirect to proxy" -j REDIRECT --to-ports 15006
-A PORTCULLIS_OUTPUT -m owner --uid-owner 1337 -m comment --comment "portcullis: proxy uid" -j RETURN
-A PORTCULLIS_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m comment --comment "portcullis: to own pod address" -j PORTCULLIS_INBOUND
-A PREROUTING -p tcp -j PORTCULLIS_INBOUND
-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT
COMMIT
# ip6tables-legacy-restore --noflush
*nat
:PORTCULLIS_INBOUND - [0:0]
:PORTCULLIS_OUTPUT - [0:0]
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 9901 -m comment --comment "portcullis: proxy admin port" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 22 -m comment --comment "portcullis: skip-inbound-ports" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 8000:8010 -m comment --comment "portcullis: skip-inbound-ports" -j RETURN
-A PORTCULLIS_INBOUND -p tcp -m comment --comment "portcullis: redirect to proxy" -j REDIRECT --to-ports 15006
-A PORTCULLIS_OUTPUT -m owner --uid-owner 1337 -m comment --comment "portcullis: proxy uid" -j RETURN
-A PORTCULLIS_OUTPUT ! -d ::1/128 -o lo -p tcp -m comment --comment "portcullis: to own pod address" -j PORTCULLIS_INBOUND
-A PREROUTING -p tcp -j PORTCULLIS_INBOUND
-A OUTPUT -p tcp -j PORTCULLIS_OUTPUT
COMMIT
"#;
    let flags = script(
        &[
            "--dry-run",
            "--proxy-inbound-port",
            "15006",
            "--proxy-admin-port=9901",
            "--proxy-uid",
            "1337",
            "--skip-inbound-ports",
            "22, 8000-8010",
            "--iptables",
            "iptables-legacy",
            "--ip6tables=ip6tables-legacy",
            "--ipv6",
        ],
        &[],
    );
    assert!(flags.status.success(), "{}", stderr(&flags));
    assert_eq!(stdout(&flags), expected);

    let env = script(
        &["--dry-run"],
        &[
            ("PORTCULLIS_PROXY_INBOUND_PORT", "15006"),
            ("PORTCULLIS_PROXY_ADMIN_PORT", "9901"),
            ("PORTCULLIS_PROXY_UID", "1337"),
            ("PORTCULLIS_SKIP_INBOUND_PORTS", "22,8000-8010"),
            ("PORTCULLIS_IPTABLES", "iptables-legacy"),
            ("PORTCULLIS_IP6TABLES", "ip6tables-legacy"),
            ("PORTCULLIS_IPV6", "true"),
        ],
    );
    assert!(env.status.success(), "{}", stderr(&env));
    assert_eq!(
        stdout(&env),
        expected,
        "environment variables differ from flags"
    );

    // A flag wins over its variable.
    let both = script(
        &["--dry-run", "--proxy-inbound-port", "4143"],
        &[("PORTCULLIS_PROXY_INBOUND_PORT", "15006")],
    );
    assert!(
        stdout(&both).contains("--to-ports 4143\n"),
        "{}",
        stdout(&both)
    );
    // Leading zeros are not octal.
    let zeros = script(&["--dry-run", "--skip-inbound-ports", "0080"], &[]);
    assert!(stdout(&zeros).contains("--dport 80 "), "{}", stdout(&zeros));
}

#[test]
fn bad_usage_exits_2_and_names_the_problem() {
    // Every value lands in an iptables rule: anything but digits, ranges and
    // known words must be refused before iptables sees it.
    // (arguments after --dry-run, environment, what stderr must say)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--proxy-inbound-port", "0"], &[], "--proxy-inbound-port"),
        (
            &["--proxy-inbound-port", "65536"],
            &[],
            "--proxy-inbound-port",
        ),
        (
            &["--proxy-inbound-port", "4143 -j ACCEPT"],
            &[],
            "--proxy-inbound-port",
        ),
        (&["--proxy-admin-port", "x"], &[], "--proxy-admin-port"),
        (&["--proxy-admin-port", "4143"], &[], "both 4143"),
        (&["--proxy-uid", "-1"], &[], "--proxy-uid"),
        (&["--proxy-uid", "12345678901"], &[], "--proxy-uid"),
        (&["--skip-inbound-ports", "22,"], &[], "empty entry"),
        (&["--skip-inbound-ports", "22,,80"], &[], "empty entry"),
        (&["--skip-inbound-ports", ",22"], &[], "empty entry"),
        (&["--skip-inbound-ports", "9-3"], &[], "backwards"),
        (
            &["--skip-inbound-ports", "1-2-3"],
            &[],
            "--skip-inbound-ports",
        ),
        (&["--skip-inbound-ports", "*"], &[], "--skip-inbound-ports"),
        (
            &["--skip-inbound-ports", "22;reboot"],
            &[],
            "--skip-inbound-ports",
        ),
        (&["--skip-inbound-ports"], &[], "needs a value"),
        (
            &[],
            &[("PORTCULLIS_SKIP_INBOUND_PORTS", "ssh")],
            "--skip-inbound-ports",
        ),
        (&[], &[("PORTCULLIS_PROXY_UID", "nobody")], "--proxy-uid"),
        (&[], &[("PORTCULLIS_IPV6", "maybe")], "PORTCULLIS_IPV6"),
        (&["--remove"], &[], "cannot be combined"),
        (&["--bogus"], &[], "unknown argument '--bogus'"),
    ];
    for (args, env, needle) in cases {
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        let out = script(&all, env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{all:?} {env:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(needle),
            "{all:?} {env:?}: stderr does not say {needle:?}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "{all:?} {env:?} printed rules anyway");
    }
}

fn ns_or_skip(tag: &str) -> Option<Netns> {
    match Netns::create(tag) {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({why})");
            None
        }
    }
}

/// The `-A` lines of an iptables-save dump (the live rules).
fn appends(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

/// The IPv4 rules `--dry-run` says the script installs, for these options.
fn dry_run_appends(args: &[&str]) -> Vec<String> {
    dry_run_sections(args).0
}

/// The IPv4 and IPv6 (empty without `--ipv6`) rules of a dry run.
fn dry_run_sections(args: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut all = vec!["--dry-run"];
    all.extend_from_slice(args);
    let out = script(&all, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let (v4, v6) = text.split_once("# ip6tables").unwrap_or((&text, ""));
    (appends(v4), appends(v6))
}

/// Runs the script inside `ns` and returns the nat table as `save` prints it.
fn apply_in(ns: &Netns, args: &[&str], save: &str) -> String {
    let mut cmd = ns.command("sh");
    cmd.arg(SCRIPT).args(args);
    e2e::netns::check(&mut cmd);
    ns.run(save, &["-t", "nat"])
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

#[test]
fn installs_the_dry_run_rules_once_however_often_it_runs() {
    let Some(ns) = ns_or_skip("init") else { return };
    // Rules that belong to someone else (a CNI, another mesh) must survive.
    let foreign = [
        "-A PREROUTING -p udp -m udp --dport 53 -j RETURN",
        "-A OUTPUT -d 198.18.9.9/32 -p tcp -j RETURN",
    ];
    for rule in foreign {
        let mut args = vec!["-t", "nat"];
        args.extend(rule.split(' '));
        ns.run("iptables", &args);
    }

    let opts = ["--skip-inbound-ports", "22,8000-8010", "--ipv6"];
    let expected = dry_run_appends(&opts);
    assert_eq!(expected.len(), 8, "{expected:#?}");
    assert!(
        expected.iter().all(|r| r.starts_with("-A PORTCULLIS_")
            || r.ends_with("-j PORTCULLIS_INBOUND")
            || r.ends_with("-j PORTCULLIS_OUTPUT")),
        "dry run shows rules outside its own chains and jumps: {expected:#?}"
    );

    let first = apply_in(&ns, &opts, "iptables-save");
    for _ in 0..2 {
        apply_in(&ns, &opts, "iptables-save");
    }
    let third = ns.run("iptables-save", &["-t", "nat"]);
    let live = appends(&third);
    for rule in &expected {
        assert_eq!(
            count(&live, rule),
            1,
            "{rule} not exactly once in:\n{third}"
        );
    }
    for rule in foreign {
        assert_eq!(count(&live, rule), 1, "foreign rule {rule} lost:\n{third}");
    }
    assert_eq!(live.len(), expected.len() + foreign.len(), "{third}");
    assert_eq!(appends(&first), live, "a re-run changed the table");
    // The jump comes after the foreign PREROUTING rule: appended, not
    // inserted ahead of rules the pod already had.
    let pre: Vec<_> = live
        .iter()
        .filter(|l| l.starts_with("-A PREROUTING"))
        .collect();
    assert_eq!(
        pre.last().map(|s| s.as_str()),
        Some("-A PREROUTING -p tcp -j PORTCULLIS_INBOUND")
    );

    // IPv6 got the same rules with ::1 as the loopback exception.
    let v6 = appends(&ns.run("ip6tables-save", &["-t", "nat"]));
    let (_, v6_expected) = dry_run_sections(&opts);
    assert_eq!(v6_expected.len(), 8, "{v6_expected:#?}");
    assert!(v6_expected.iter().any(|r| r.contains("! -d ::1/128 -o lo")));
    let mut v6_sorted = v6.clone();
    v6_sorted.sort();
    let mut v6_expected = v6_expected;
    v6_expected.sort();
    assert_eq!(v6_sorted, v6_expected);

    // Changing an option replaces the rules instead of adding to them.
    let changed = [
        "--skip-inbound-ports",
        "2222",
        "--proxy-inbound-port",
        "5000",
    ];
    let live = appends(&apply_in(&ns, &changed, "iptables-save"));
    let expected_changed = dry_run_appends(&changed);
    for rule in &expected_changed {
        assert_eq!(
            count(&live, rule),
            1,
            "{rule} missing after an option change"
        );
    }
    assert!(
        !live
            .iter()
            .any(|r| r.contains("8000:8010") || r.contains("--to-ports 4143")),
        "old rules left behind: {live:#?}"
    );

    // --remove takes away exactly what the script added.
    let mut cmd = ns.command("sh");
    cmd.args([SCRIPT, "--remove", "--ipv6"]);
    e2e::netns::check(&mut cmd);
    let after = ns.run("iptables-save", &["-t", "nat"]);
    assert!(!after.contains("PORTCULLIS"), "{after}");
    assert_eq!(appends(&after), foreign.map(str::to_owned).to_vec());
    let after6 = ns.run("ip6tables-save", &["-t", "nat"]);
    assert!(!after6.contains("PORTCULLIS"), "{after6}");
    // ... and removing twice is fine.
    let mut cmd = ns.command("sh");
    cmd.args([SCRIPT, "--remove"]);
    e2e::netns::check(&mut cmd);
}

#[test]
fn works_with_the_legacy_backend() {
    // Nodes differ in which iptables backend the kernel offers; the script
    // must not care. Debian's iptables package ships both.
    let Some(ns) = ns_or_skip("legacy") else {
        return;
    };
    let opts = [
        "--iptables",
        "iptables-legacy",
        "--skip-inbound-ports",
        "22",
    ];
    let mut expected = dry_run_appends(&opts);
    for _ in 0..2 {
        apply_in(&ns, &opts, "iptables-legacy-save");
    }
    let mut live = appends(&ns.run("iptables-legacy-save", &["-t", "nat"]));
    expected.sort();
    live.sort();
    assert_eq!(live, expected);
}

#[test]
fn fails_clearly_without_iptables() {
    let out = script(&["--iptables", "no-such-iptables"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'no-such-iptables' not found"),
        "{}",
        stderr(&out)
    );
}
