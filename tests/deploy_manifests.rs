//! The Kubernetes manifests in `deploy/k8s/` and `deploy/linkerd/`, checked
//! without a cluster: the injected init container and sidecar agree with each
//! other, with the image (`Dockerfile`), with the flags the binaries and the
//! init script really accept, and with README's commands; the controller
//! serves the ConfigMap as kubelet mounts it (symlinks into `..data`), and
//! the policy it serves makes the walkthrough's decisions — the same ones
//! with the Linkerd-mode policy file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const FRONTEND_ID: &str = "frontend.demo.serviceaccount.identity.linkerd.cluster.local";
const BACKEND_ID: &str = "backend.demo.serviceaccount.identity.linkerd.cluster.local";

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

/// The documents of a multi-document YAML file (empty ones dropped).
fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut out = Vec::new();
    let mut doc = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let v: Value = serde_yaml_ng::from_str(&doc)
                .unwrap_or_else(|e| panic!("{rel}: document {}: {e}", out.len() + 1));
            if !v.is_null() {
                out.push(v);
            }
            doc.clear();
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    out
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

/// A container's literal env values (`value:`), by name.
fn env(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_owned(),
                        e["value"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(c: &Value, name: &str) -> String {
    env(c)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("container {} has no env {name}", c["name"]))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

fn container_ports(c: &Value) -> BTreeSet<u64> {
    c["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["containerPort"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// The UID of the Dockerfile's last `USER`.
fn image_uid() -> u64 {
    let text = std::fs::read_to_string(path("Dockerfile")).expect("Dockerfile");
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("Dockerfile has USER");
    user.split(':')
        .next()
        .and_then(|u| u.trim().parse().ok())
        .expect("numeric USER")
}

fn readme_section() -> String {
    let readme = std::fs::read_to_string(path("README.md")).expect("README.md");
    let start = readme
        .find("\n## Sidecar (Kubernetes)\n")
        .expect("README has a \"## Sidecar (Kubernetes)\" section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

const APPS: [&str; 2] = ["frontend", "backend"];

#[test]
fn injected_pods_are_wired_consistently() {
    let demo = docs("deploy/k8s/demo.yaml");
    let controller = docs("deploy/k8s/controller.yaml");
    let svc = kind(&controller, "Service", "portcullis-controller");
    let svc_port = &svc["spec"]["ports"][0];
    let ctl = kind(&controller, "Deployment", "portcullis-controller");
    let ctl_args: Vec<&str> = ctl["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("controller args")
        .iter()
        .map(str_of)
        .collect();
    let listen = ctl_args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1])
        .expect("controller --listen");
    assert_eq!(
        svc_port["targetPort"].as_u64(),
        Some(port_of(listen).into())
    );
    let controller_url = format!(
        "http://{}.{}.svc.cluster.local.:{}",
        str_of(&svc["metadata"]["name"]),
        str_of(&svc["metadata"]["namespace"]),
        svc_port["port"]
    );

    for app in APPS {
        let d = kind(&demo, "Deployment", app);
        let ns = str_of(&d["metadata"]["namespace"]);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["serviceAccountName"], app,
            "one identity per service account"
        );
        let init = container(&pod["initContainers"], "portcullis-init");
        let proxy = container(&pod["containers"], "portcullis");
        let app_c = container(&pod["containers"], app);

        // Images as README builds them.
        assert_eq!(init["image"], "portcullis-init:dev");
        assert_eq!(proxy["image"], "portcullis:dev");

        // The init container may write the nat table and nothing more.
        let sc = &init["securityContext"];
        assert_eq!(sc["runAsUser"], 0);
        let added: BTreeSet<&str> = sc["capabilities"]["add"]
            .as_array()
            .expect("capabilities.add")
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(added, BTreeSet::from(["NET_ADMIN", "NET_RAW"]), "{app}");
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

        // The sidecar: UID, ports and probes as in the image and the script.
        let sc = &proxy["securityContext"];
        assert_eq!(sc["runAsUser"].as_u64(), Some(image_uid()), "{app}");
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        let inbound = port_of(&env_value(proxy, "PORTCULLIS_INBOUND_ADDR"));
        let admin = port_of(&env_value(proxy, "PORTCULLIS_ADMIN_ADDR"));
        assert_eq!((inbound, admin), (4143, 4191));
        assert_eq!(
            container_ports(proxy),
            BTreeSet::from([inbound.into(), admin.into()])
        );
        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
            assert_eq!(proxy[probe]["httpGet"]["path"], path, "{app} {probe}");
            assert_eq!(proxy[probe]["httpGet"]["port"].as_u64(), Some(admin.into()));
        }
        for r in ["cpu", "memory"] {
            assert!(
                proxy["resources"]["requests"][r].is_string(),
                "{app}: no {r} request"
            );
        }
        assert_eq!(
            env_value(init, "PORTCULLIS_PROXY_INBOUND_PORT"),
            inbound.to_string()
        );
        assert_eq!(
            env_value(init, "PORTCULLIS_PROXY_ADMIN_PORT"),
            admin.to_string()
        );
        assert_eq!(
            env_value(init, "PORTCULLIS_PROXY_UID"),
            image_uid().to_string()
        );

        // The init container's settings produce the intended rules.
        let mut cmd = Command::new("sh");
        cmd.arg(path("deploy/portcullis-init.sh")).arg("--dry-run");
        cmd.envs(env(init));
        let out = cmd.output().expect("init --dry-run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rules = String::from_utf8_lossy(&out.stdout);
        for r in [
            format!("--dport {admin} "),
            format!("--to-ports {inbound}\n"),
            format!("--uid-owner {} ", image_uid()),
        ] {
            assert!(rules.contains(&r), "{app}: rules lack {r:?}:\n{rules}");
        }

        // Policy: our controller, this Deployment as the workload, the
        // app's ports fetched at startup.
        assert_eq!(
            env_value(proxy, "PORTCULLIS_POLICY_CONTROLLER"),
            controller_url
        );
        assert_eq!(
            env_value(proxy, "PORTCULLIS_WORKLOAD"),
            format!("{ns}/{app}")
        );
        let ports: BTreeSet<u64> = env_value(proxy, "PORTCULLIS_INBOUND_PORTS")
            .split(',')
            .map(|p| p.trim().parse().expect("port"))
            .collect();
        assert_eq!(ports, container_ports(app_c), "{app}");

        // Identity files come from the app's own secret.
        let mount = proxy["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == "portcullis-identity"))
            .expect("identity mount");
        let dir = str_of(&mount["mountPath"]);
        for (var, file) in [
            ("PORTCULLIS_IDENTITY_TRUST_ANCHORS", "ca.pem"),
            ("PORTCULLIS_IDENTITY_CERT", "cert.pem"),
            ("PORTCULLIS_IDENTITY_KEY", "key.pem"),
        ] {
            assert_eq!(env_value(proxy, var), format!("{dir}/{file}"));
        }
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "portcullis-identity"))
            .expect("identity volume");
        assert_eq!(volume["secret"]["secretName"], format!("{app}-identity"));
    }
}

/// `--help` of a binary or script.
fn help(program: &Path, args: &[&str]) -> String {
    let out = if program.extension().is_some_and(|e| e == "sh") {
        Command::new("sh").arg(program).args(args).output()
    } else {
        Command::new(program).args(args).output()
    }
    .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed",
        program.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_variable_and_flag_is_one_the_binaries_accept() {
    let proxy_help = help(&e2e::bin("portcullis"), &["--help"]);
    let serve_help = help(&e2e::bin("portcullis-controller"), &["serve", "--help"]);
    let init_help = help(&path("deploy/portcullis-init.sh"), &["--help"]);
    // PORTCULLIS_LOG is the log filter, not a flag; both binaries document it.
    for h in [&proxy_help, &serve_help] {
        assert!(h.contains("PORTCULLIS_LOG"));
    }

    let demo = docs("deploy/k8s/demo.yaml");
    for app in APPS {
        let pod = &kind(&demo, "Deployment", app)["spec"]["template"]["spec"];
        for (c, h) in [
            (container(&pod["containers"], "portcullis"), &proxy_help),
            (
                container(&pod["initContainers"], "portcullis-init"),
                &init_help,
            ),
        ] {
            let names: Vec<String> = c["env"]
                .as_array()
                .expect("env")
                .iter()
                .map(|e| str_of(&e["name"]).to_owned())
                .filter(|n| n.starts_with("PORTCULLIS_"))
                .collect();
            assert!(!names.is_empty());
            for n in names {
                assert!(
                    h.contains(&n),
                    "{app}/{}: {n} is not a variable it reads",
                    c["name"]
                );
            }
        }
    }

    let controller = docs("deploy/k8s/controller.yaml");
    let c = &kind(&controller, "Deployment", "portcullis-controller")["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(
        c["command"],
        serde_json::json!(["/usr/local/bin/portcullis-controller"])
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(args.first(), Some(&"serve"));
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(serve_help.contains(flag), "serve has no {flag}");
    }
}

/// Lays out `files` the way kubelet mounts a ConfigMap: the data in a
/// timestamped directory, `..data` pointing at it, and one symlink per key.
fn configmap_mount(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&data).expect("mkdir");
    for f in files {
        let name = Path::new(f).file_name().expect("file name");
        std::fs::copy(path(f), data.join(name)).expect("copy");
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.path().join(name))
            .expect("symlink");
    }
    std::os::unix::fs::symlink(data.file_name().expect("name"), dir.path().join("..data"))
        .expect("symlink ..data");
    dir
}

/// `portcullis-controller check` on `resources` -> (exit code, output).
fn check(resources: &[&Path], workload: &str, port: u16, client: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(e2e::bin("portcullis-controller"));
    cmd.arg("check");
    for r in resources {
        cmd.arg("--resources").arg(r);
    }
    cmd.args(["--workload", workload, "--port", &port.to_string()])
        .args(client);
    let out = cmd.output().expect("portcullis-controller check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_controller_serves_the_walkthrough_from_the_configmap() {
    // The controller reads the directory the ConfigMap is mounted at...
    let controller = docs("deploy/k8s/controller.yaml");
    let spec =
        &kind(&controller, "Deployment", "portcullis-controller")["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    let resources = args
        .windows(2)
        .find(|w| w[0] == "--resources")
        .map(|w| w[1])
        .expect("--resources");
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], resources);
    let volume = spec["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .expect("volume");
    let configmap = str_of(&volume["configMap"]["name"]);
    // ...which README creates from these files.
    let files = ["deploy/k8s/demo.yaml", "deploy/k8s/policy.yaml"];
    let readme = readme_section();
    let create = format!(
        "kubectl -n portcullis create configmap {configmap} \\\n  --from-file={} --from-file={}",
        files[0], files[1]
    );
    assert!(
        readme.contains(&create),
        "README does not create the ConfigMap as:\n{create}"
    );

    let mounted = configmap_mount(&files);
    let out = Command::new(e2e::bin("portcullis-controller"))
        .arg("validate")
        .arg(mounted.path())
        .output()
        .expect("validate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2 Deployments") && text.contains("NetworkAuthenticationPolicy"),
        "the mounted files were not all read: {text}"
    );

    // The walkthrough's decisions, then the same with the Linkerd-mode file.
    let demo = path("deploy/k8s/demo.yaml");
    let linkerd = path("deploy/linkerd/policy.yaml");
    let ours: [&Path; 1] = [mounted.path()];
    let theirs: [&Path; 2] = [&demo, &linkerd];
    let rows: [(&str, u16, &[&str], i32); 8] = [
        ("demo/backend", 8080, &["--client-id", FRONTEND_ID], 0),
        ("demo/backend", 8080, &["--client-id", BACKEND_ID], 3),
        ("demo/backend", 8080, &["--tls-no-identity"], 3),
        ("demo/backend", 8080, &["--client-ip", "10.244.1.7"], 3),
        // Ports no Server selects: the namespace's default, deny.
        ("demo/backend", 9090, &["--client-id", FRONTEND_ID], 3),
        ("demo/frontend", 80, &["--client-ip", "10.244.1.7"], 0),
        ("demo/frontend", 80, &["--client-id", BACKEND_ID], 0),
        // Outside the cluster networks.
        ("demo/frontend", 80, &["--client-ip", "203.0.113.7"], 3),
    ];
    for (workload, port, client, want) in rows {
        let (code, out) = check(&ours, workload, port, client);
        assert_eq!(code, want, "{workload}:{port} {client:?}: {out}");
        let (code, out) = check(&theirs, workload, port, client);
        assert_eq!(
            code, want,
            "Linkerd mode {workload}:{port} {client:?}: {out}"
        );
    }
    let (_, out) = check(&ours, "demo/backend", 8080, &["--client-id", FRONTEND_ID]);
    assert!(
        out.contains("networkauthenticationpolicy/frontend-can-talk-to-backend"),
        "{out}"
    );
}

#[test]
fn readme_commands_name_files_and_resources_that_exist() {
    let readme = readme_section();
    for needle in [
        "kubectl apply -f deploy/k8s/demo.yaml",
        "kubectl apply -f deploy/k8s/controller.yaml",
        "kubectl apply -f deploy/linkerd/policy.yaml",
        "kind load docker-image portcullis:dev portcullis-init:dev",
        "PORTCULLIS_POLICY_CONTROLLER=http://linkerd-policy.linkerd.svc.cluster.local.:8090",
        "'PORTCULLIS_WORKLOAD=$(POD_NAMESPACE)/$(POD_NAME)'",
        "create secret generic $app-identity",
        "--from-file=ca.pem=",
        "--from-file=cert.pem=",
        "--from-file=key.pem=",
    ] {
        assert!(
            readme.contains(needle),
            "README's sidecar section lacks {needle:?}"
        );
    }
    // Every repository path README mentions exists (files have an
    // extension, directories a trailing slash; `deploy/frontend` is a
    // kubectl resource, not a path).
    for word in readme.split(|c: char| c.is_whitespace() || "`()[],=".contains(c)) {
        let word = word.trim_end_matches(['.', ':']);
        let looks_like_path =
            word.ends_with('/') || word.rsplit('/').next().is_some_and(|f| f.contains('.'));
        if looks_like_path
            && (word.starts_with("deploy/")
                || word.starts_with("tests/")
                || word.starts_with("scripts/"))
        {
            assert!(
                path(word).exists(),
                "README names {word}, which does not exist"
            );
        }
    }
    // The downward-API variables the Linkerd-mode command relies on exist.
    let demo = docs("deploy/k8s/demo.yaml");
    for app in APPS {
        let pod = &kind(&demo, "Deployment", app)["spec"]["template"]["spec"];
        let proxy = container(&pod["containers"], "portcullis");
        let env = proxy["env"].as_array().expect("env");
        for (var, field) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            assert!(
                env.iter()
                    .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"]["fieldPath"] == field),
                "{app}: no {var} from {field}"
            );
        }
    }
}
