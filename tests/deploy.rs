//! The deploy files (issue 23) are read and checked here: `deploy/compose.yaml` and
//! `deploy/k8s/tsbridge.yaml` parsed as YAML (Python's `yaml`, Debian `python3-yaml`; its
//! anchors and merge keys resolved), `deploy/systemd/tsbridge.service` by
//! `systemd-analyze verify`; each `TSBRIDGE_*` variable they set must be one the binary reads
//! (its `--help`), and the things an operator relies on must be there (host networking for
//! WebRTC, probes on /readyz and /healthz, a drain before SIGTERM, a sandbox). The container
//! image itself runs in `tests/container.rs`. Starting the compose file is not done: Debian 12's
//! podman-compose (1.0.3) adds its default network to `network_mode: host` services, which
//! podman refuses (and its `--dry-run` creates networks); Kubernetes is not here to apply the
//! manifest to, and `podman kube play` takes neither DaemonSets nor Services.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The YAML documents of `file`, as JSON; `None` (said loudly) without Python's yaml.
fn yaml(test: &str, file: &str) -> Option<Vec<Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(root().join(file))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) if !String::from_utf8_lossy(&o.stderr).contains("No module named") => {
            panic!(
                "{file} is not valid YAML: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        }
        _ => {
            assert!(
                std::env::var_os("TSBRIDGE_REQUIRE_PEERS").is_none(),
                "{test}: python3 with yaml is required here (apt-get install python3-yaml)"
            );
            eprintln!("\n*** SKIPPED {test}: no python3 yaml (apt-get install python3-yaml) ***\n");
            None
        }
    }
}

/// Every `TSBRIDGE_*` variable the binary reads, from its subcommands' `--help`.
fn known_variables() -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for cmd in ["serve", "health"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tsbridge"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            vars.insert(name);
        }
    }
    assert!(vars.contains("TSBRIDGE_LISTEN"), "{vars:?}");
    vars
}

fn check_variables(file: &str, names: impl IntoIterator<Item = String>) {
    let known = known_variables();
    for n in names.into_iter().filter(|n| n.starts_with("TSBRIDGE_")) {
        assert!(
            known.contains(&n),
            "{file} sets {n}, which tsbridge does not read"
        );
    }
}

#[test]
fn the_compose_file_is_a_cluster_of_an_origin_and_two_edges() {
    let test = "the_compose_file_is_a_cluster_of_an_origin_and_two_edges";
    let Some(docs) = yaml(test, "deploy/compose.yaml") else {
        return;
    };
    let services = &docs[0]["services"];
    let mut ports = BTreeSet::new();
    for node in ["origin", "edge1", "edge2"] {
        let s = &services[node];
        assert_eq!(s["network_mode"], "host", "{node}: WebRTC needs host ports");
        let env = s["environment"].as_object().expect("environment");
        for key in [
            "TSBRIDGE_CLUSTER",
            "TSBRIDGE_CLUSTER_TOKEN",
            "TSBRIDGE_PUBLIC_URL",
            "TSBRIDGE_LISTEN",
            "TSBRIDGE_ICE_UDP",
        ] {
            assert!(env.contains_key(key), "{node} lacks {key}");
        }
        assert!(ports.insert(env["TSBRIDGE_LISTEN"].as_str().unwrap().to_owned()));
        assert!(ports.insert(env["TSBRIDGE_ICE_UDP"].as_str().unwrap().to_owned()));
        check_variables("deploy/compose.yaml", env.keys().cloned());
    }
    assert!(services["redis"]["image"].is_string());
}

#[test]
fn the_kubernetes_nodes_use_host_ports_probes_and_a_drain() {
    let test = "the_kubernetes_nodes_use_host_ports_probes_and_a_drain";
    let Some(docs) = yaml(test, "deploy/k8s/tsbridge.yaml") else {
        return;
    };
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Deployment", "Service", "DaemonSet", "Service"]);
    let pod = &docs[2]["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["lifecycle"]["preStop"].is_object());
    let env = c["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    assert_eq!(
        value("HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert_eq!(value("TSBRIDGE_ICE_HOST")["value"], "$(HOST_IP)");
    assert!(value("TSBRIDGE_PUBLIC_URL")["value"]
        .as_str()
        .unwrap()
        .contains("$(HOST_IP)"));
    assert!(value("TSBRIDGE_CLUSTER_TOKEN")["valueFrom"]["secretKeyRef"].is_object());
    let names = env.iter().map(|e| e["name"].as_str().unwrap().to_owned());
    check_variables("deploy/k8s/tsbridge.yaml", names);
    let ports: Vec<(u64, &str)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["containerPort"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [(8889, "TCP"), (8189, "UDP")]);
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let test = "the_systemd_unit_verifies_and_is_sandboxed";
    let unit = std::fs::read_to_string(root().join("deploy/systemd/tsbridge.service")).unwrap();
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=tsbridge",
        "ExecStart=/usr/local/bin/tsbridge serve",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?}");
    }
    if !common::tools::have(test, "systemd-analyze", "--version", "systemd") {
        return;
    }
    // Verified as installed, with this build's binary where the unit expects it.
    let dir = std::env::temp_dir().join(format!("tsbridge-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tsbridge.service");
    let exe = env!("CARGO_BIN_EXE_tsbridge");
    std::fs::write(&file, unit.replace("/usr/local/bin/tsbridge", exe)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
