//! The packaging under deploy/ agrees with the binary: the Dockerfile, the ECS task definition and
//! the Kubernetes manifests parse, and every image, port, path, probe and setting they name is one
//! the built meterd and the Dockerfile actually use. No Docker engine runs here; this is the check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meterd::ingest::http::EVENTS_PATH;
use meterd::telemetry::metrics::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions of the final stage, continuation lines joined.
struct Dockerfile {
    stages: Vec<String>,
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Self {
        let text = read("deploy/Dockerfile").replace("\\\n", " ");
        let mut stages = Vec::new();
        let mut instructions = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
            if word == "FROM" {
                stages.push(rest.to_string());
                instructions.clear();
            }
            instructions.push((word.to_string(), rest.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
        Dockerfile { stages, instructions }
    }

    fn all(&self, word: &str) -> Vec<&str> {
        self.instructions.iter().filter(|(w, _)| w == word).map(|(_, r)| r.as_str()).collect()
    }

    fn one(&self, word: &str) -> &str {
        let all = self.all(word);
        assert_eq!(all.len(), 1, "{word}: {all:?}");
        all[0]
    }

    /// An exec-form argument list (`["a", "b"]`).
    fn exec(&self, word: &str) -> Vec<String> {
        serde_json::from_str(self.one(word)).unwrap_or_else(|e| panic!("{word} must be exec form: {e}"))
    }

    fn env(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for rest in self.all("ENV") {
            for pair in rest.split_whitespace() {
                let (key, value) = pair.split_once('=').expect("ENV key=value");
                out.insert(key.to_string(), value.to_string());
            }
        }
        out
    }

    /// Where the binary lands in the image.
    fn binary(&self) -> String {
        let copy = self
            .all("COPY")
            .into_iter()
            .find(|c| c.contains("target/release/meterd"))
            .expect("COPY of meterd");
        copy.split_whitespace().last().unwrap().to_string()
    }
}

/// Runs `meterd check-config` with exactly these settings in the environment, as a container would.
fn check_config(env: &BTreeMap<String, String>, what: &str) {
    let output = check_config_output(env);
    assert!(
        output.status.success(),
        "{what}: check-config refused its settings:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn check_config_output(env: &BTreeMap<String, String>) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meterd")).arg("check-config").env_clear().envs(env).output().unwrap()
}

/// The app reaches meterd both ways: the socket on the shared volume, and HTTP ingest on the
/// task's or pod's loopback address.
fn assert_http_ingest(env: &BTreeMap<String, String>, app_env: &BTreeMap<String, String>, what: &str) {
    let listen: std::net::SocketAddr = env["METERD_INGEST__HTTP_LISTEN"].parse().unwrap();
    assert!(listen.ip().is_loopback(), "{what}: HTTP ingest stays on loopback: {listen}");
    assert!(!env.contains_key("METERD_INGEST__HTTP_ALLOW_NON_LOOPBACK"), "{what}");
    assert_eq!(app_env["METERD_URL"], format!("http://{listen}{EVENTS_PATH}"), "{what}");
}

fn metrics_port(env: &BTreeMap<String, String>) -> u16 {
    env["METERD_METRICS__LISTEN"].parse::<std::net::SocketAddr>().unwrap().port()
}

fn socket_dir(env: &BTreeMap<String, String>) -> String {
    Path::new(&env["METERD_INGEST__SOCKET"]).parent().unwrap().display().to_string()
}

/// The image every manifest must run: this version of meterd.
fn assert_meterd_image(image: &str, what: &str) {
    let (repository, tag) = image.rsplit_once(':').unwrap();
    assert!(repository.ends_with("/meterd"), "{what}: {image}");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "{what}: the image tag is the crate version");
}

#[test]
fn dockerfile_builds_meterd_and_runs_it_unprivileged_with_volumes_and_a_health_check() {
    let docker = Dockerfile::load();
    assert_eq!(docker.stages.len(), 2, "multi-stage: {:?}", docker.stages);
    assert!(docker.stages[0].ends_with(" AS build"), "{:?}", docker.stages);
    let bin = docker.binary();
    assert_eq!(docker.exec("ENTRYPOINT"), [bin.as_str()]);
    assert_eq!(docker.exec("CMD"), ["run"]);
    let user = docker.one("USER");
    assert!(!["root", "0", "0:0"].contains(&user) && !user.starts_with("0:"), "non-root: {user}");
    let health = docker.one("HEALTHCHECK");
    let probe = &health[health.find("CMD ").unwrap() + 4..];
    let probe: Vec<String> = serde_json::from_str(probe).unwrap();
    assert_eq!(probe, [bin.as_str(), "probe", "live"]);

    let mut env = docker.env();
    // The image names no product: a deployment must, and check-config says so (not a silent start).
    let refused = check_config_output(&env);
    assert_eq!(refused.status.code(), Some(64), "the image alone cannot bill");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("aws.product_code is not set"));
    env.insert("METERD_AWS__PRODUCT_CODE".into(), "example-product-code".into());
    check_config(&env, "Dockerfile ENV with a product code");
    let volumes: Vec<String> = serde_json::from_str(docker.one("VOLUME")).unwrap();
    assert!(volumes.contains(&env["METERD_STORAGE__DATA_DIR"]), "{volumes:?}");
    assert!(volumes.contains(&socket_dir(&env)), "{volumes:?}");
    assert_eq!(
        Path::new(&env["METERD_ADMIN__SOCKET"]).parent(),
        Path::new(&env["METERD_INGEST__SOCKET"]).parent()
    );
    assert_eq!(docker.one("EXPOSE").parse::<u16>().unwrap(), metrics_port(&env));
    // The volumes exist in the image, owned by the user meterd runs as.
    let owned =
        docker.all("COPY").into_iter().find(|c| c.contains("--chown=")).expect("COPY --chown of the volumes");
    assert!(owned.contains(&format!("--chown={user}")), "{owned}");
}

fn env_list(list: &[Value]) -> BTreeMap<String, String> {
    list.iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn ecs_task_definition_runs_meterd_as_a_healthy_sidecar_sharing_its_socket() {
    let docker = Dockerfile::load();
    let task: Value = serde_json::from_str(&read("deploy/ecs/task-definition.json")).unwrap();
    assert!(
        task["taskRoleArn"].as_str().unwrap().starts_with("arn:aws:iam::"),
        "a task role gives the credentials"
    );
    let containers = task["containerDefinitions"].as_array().unwrap();
    let by_name = |name: &str| containers.iter().find(|c| c["name"] == name).unwrap();
    let meterd = by_name("meterd");
    assert_meterd_image(meterd["image"].as_str().unwrap(), "ECS");
    assert_eq!(meterd["essential"], true);
    assert_eq!(meterd["command"], serde_json::json!(docker.exec("CMD")));
    let env = env_list(meterd["environment"].as_array().unwrap());
    check_config(&env, "ECS meterd environment");
    assert_eq!(env["METERD_AWS__MODE"], "meter_usage");
    assert_eq!(meterd["portMappings"][0]["containerPort"], metrics_port(&env));
    let health: Vec<String> = serde_json::from_value(meterd["healthCheck"]["command"].clone()).unwrap();
    assert_eq!(health, ["CMD", docker.binary().as_str(), "probe", "live"]);

    let volumes: Vec<&str> =
        task["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    let mounts = |c: &Value| -> BTreeMap<String, String> {
        c["mountPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let volume = m["sourceVolume"].as_str().unwrap();
                assert!(volumes.contains(&volume), "{volume} is a task volume");
                (m["containerPath"].as_str().unwrap().to_string(), volume.to_string())
            })
            .collect()
    };
    let meterd_mounts = mounts(meterd);
    let socket_volume = &meterd_mounts[&socket_dir(&env)];
    assert!(meterd_mounts.contains_key(&env["METERD_STORAGE__DATA_DIR"]));

    let app = by_name("app");
    assert_eq!(app["dependsOn"], serde_json::json!([{ "containerName": "meterd", "condition": "HEALTHY" }]));
    let app_env = env_list(app["environment"].as_array().unwrap());
    assert_eq!(app_env["METERD_SOCKET"], env["METERD_INGEST__SOCKET"]);
    assert_http_ingest(&env, &app_env, "ECS");
    assert_eq!(&mounts(app)[&socket_dir(&env)], socket_volume, "the app mounts meterd's socket volume");
}

fn yaml_env(container: &Yaml) -> BTreeMap<String, String> {
    container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string()))
        .collect()
}

fn yaml_mounts(container: &Yaml) -> BTreeMap<String, String> {
    container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m["name"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn kubernetes_manifests_run_meterd_as_a_native_sidecar_with_probes_irsa_and_scraping() {
    let docs = YamlLoader::load_from_str(&read("deploy/kubernetes/meterd-sidecar.yaml")).unwrap();
    let kind = |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k)).unwrap_or_else(|| panic!("{k}"));
    let account = kind("ServiceAccount");
    let role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str().unwrap();
    assert!(role.starts_with("arn:aws:iam::"), "IRSA: {role}");
    let template = &kind("Deployment")["spec"]["template"];
    let spec = &template["spec"];
    assert_eq!(spec["serviceAccountName"], account["metadata"]["name"]);

    let sidecars = spec["initContainers"].as_vec().unwrap();
    let meterd = sidecars.iter().find(|c| c["name"].as_str() == Some("meterd")).unwrap();
    assert_eq!(meterd["restartPolicy"].as_str(), Some("Always"), "a native sidecar");
    assert_meterd_image(meterd["image"].as_str().unwrap(), "Kubernetes");
    let args: Vec<&str> = meterd["args"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args, Dockerfile::load().exec("CMD"));
    let env = yaml_env(meterd);
    check_config(&env, "Kubernetes meterd env");
    assert_eq!(env["METERD_AWS__MODE"], "meter_usage");
    let port = metrics_port(&env);
    let ports = meterd["ports"].as_vec().unwrap();
    assert_eq!(ports[0]["containerPort"].as_i64(), Some(i64::from(port)));
    let port_name = ports[0]["name"].as_str().unwrap();
    for (probe, path) in
        [("startupProbe", READYZ_PATH), ("readinessProbe", READYZ_PATH), ("livenessProbe", HEALTHZ_PATH)]
    {
        let get = &meterd[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some(port_name), "{probe}");
    }
    let user = meterd["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(user > 0);
    assert_eq!(
        spec["securityContext"]["fsGroup"].as_i64().map(|g| g.to_string()),
        Some(env["METERD_INGEST__SOCKET_GROUP"].clone())
    );

    let volumes = spec["volumes"].as_vec().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"].as_str() == Some(name)).unwrap();
    let meterd_mounts = yaml_mounts(meterd);
    let socket_volume = &meterd_mounts[&socket_dir(&env)];
    assert!(!volume(socket_volume)["emptyDir"].is_badvalue(), "the socket lives in an emptyDir");
    assert!(meterd_mounts.contains_key(&env["METERD_STORAGE__DATA_DIR"]));
    let app = &spec["containers"][0];
    assert_eq!(&yaml_mounts(app)[&socket_dir(&env)], socket_volume);
    assert_eq!(yaml_env(app)["METERD_SOCKET"], env["METERD_INGEST__SOCKET"]);
    assert_http_ingest(&env, &yaml_env(app), "Kubernetes");

    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some(port.to_string().as_str()));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some(METRICS_PATH));
}
