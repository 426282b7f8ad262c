//! `config/kubernetes.yaml` without a cluster: what the manifest promises (the port, the
//! probes, the command, the user, the paths, the configuration) checked against the
//! binary's defaults, the Dockerfile, and the binary itself.

use std::collections::HashMap;

use serde::Deserialize as _;
use serde_json::Value;

use crate::helpers::*;

const MANIFEST: &str = include_str!("../../config/kubernetes.yaml");
const DOCKERFILE: &str = include_str!("../../Dockerfile");

/// The documents of a multi-document YAML text, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The PostgreSQL variant: the commented lines between `# BEGIN postgres` and
/// `# END postgres`, uncommented.
fn postgres_variant() -> String {
    let start = MANIFEST.find("# BEGIN postgres\n").expect("BEGIN marker");
    let end = MANIFEST.find("# END postgres").expect("END marker");
    MANIFEST[start..end]
        .lines()
        .skip(1)
        .map(|line| {
            line.strip_prefix("# ")
                .or_else(|| line.strip_prefix('#'))
                .unwrap_or_else(|| panic!("an uncommented line in the variant: {line:?}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the image's final stage says about running it.
#[derive(Debug, Default)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    workdir: String,
    env: HashMap<String, String>,
    expose: Vec<u16>,
    volumes: Vec<String>,
}

fn image() -> Image {
    // Continuation lines joined; comments dropped; only the last stage counts.
    let joined = DOCKERFILE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let last_stage = joined.rsplit_once("\nFROM ").expect("a FROM line").1;
    let mut image = Image::default();
    for line in last_stage.lines() {
        let Some((instruction, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        let rest = rest.trim();
        let list = || serde_json::from_str::<Vec<String>>(rest).expect("a JSON array");
        match instruction {
            "ENTRYPOINT" => image.entrypoint = list(),
            "CMD" => image.cmd = list(),
            "USER" => image.user = rest.to_owned(),
            "WORKDIR" => image.workdir = rest.to_owned(),
            "VOLUME" => image.volumes = list(),
            "EXPOSE" => image
                .expose
                .extend(rest.split_whitespace().map(|p| p.parse::<u16>().unwrap())),
            "ENV" => image.env.extend(rest.split_whitespace().map(|pair| {
                let (k, v) = pair.split_once('=').expect("ENV key=value");
                (k.to_owned(), v.to_owned())
            })),
            _ => {}
        }
    }
    image
}

/// The port `pushbot serve` listens on without a `server.listen`.
fn default_port() -> u16 {
    let toml = format!(
        "[server]\npublic_url = \"{PUBLIC_URL}\"\n[wecom]\ncorp_id = \"{CORP_ID}\"\n\
         agent_id = {AGENT_ID}\nsecret = \"{SECRET}\"\ncallback_token = \"{CALLBACK_TOKEN}\"\n\
         encoding_aes_key = \"{ENCODING_AES_KEY}\"\n"
    );
    pushbot::config::Settings::from_toml(&toml)
        .expect("minimal settings")
        .server
        .listen
        .port()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    match of_kind(docs, kind).as_slice() {
        [one] => one,
        other => panic!("expected one {kind}, found {}", other.len()),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The name of the Secret key a container's variable comes from, if it comes from one.
fn secret_key<'a>(container: &'a Value, variable: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == variable)?["valueFrom"]["secretKeyRef"]["key"]
        .as_str()
}

/// Checks one Deployment against the image and the binary; returns its pod spec.
fn check_deployment<'a>(deployment: &'a Value, image: &Image) -> &'a Value {
    assert_eq!(deployment["metadata"]["name"], "pushbot");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // The image's own command, spelt out.
    assert_eq!(
        strings(&c["command"]),
        image.entrypoint,
        "command = ENTRYPOINT"
    );
    assert_eq!(strings(&c["args"]), image.cmd, "args = CMD");

    // The port the binary listens on: its default, and the image's PUSHBOT_SERVER__LISTEN.
    let port = default_port();
    let image_listen = &image.env["PUSHBOT_SERVER__LISTEN"];
    assert!(
        image_listen.ends_with(&format!(":{port}")),
        "{image_listen}"
    );
    assert!(image.expose.contains(&port), "{:?}", image.expose);
    let ports = c["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["containerPort"], port);
    assert_eq!(ports[0]["name"], "http");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == "http" || get["port"] == port,
            "{probe} port {}",
            get["port"]
        );
    }

    // Non-root as the image's user, read-only root filesystem.
    let (uid, gid) = image.user.split_once(':').expect("USER uid:gid");
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"].to_string(), uid);
    assert_eq!(security["runAsGroup"].to_string(), gid);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

    // Credentials from the Secret, never written in the manifest.
    for variable in [
        "PUSHBOT_WECOM__SECRET",
        "PUSHBOT_WECOM__CALLBACK_TOKEN",
        "PUSHBOT_WECOM__ENCODING_AES_KEY",
    ] {
        assert!(
            secret_key(c, variable).is_some(),
            "{variable} from a Secret"
        );
    }
    // The configuration where the image reads it: ./pushbot.toml in its WORKDIR.
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let config = mounts
        .iter()
        .find(|m| m["mountPath"] == image.workdir.as_str())
        .unwrap_or_else(|| panic!("nothing mounted at {}", image.workdir));
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == config["name"]))
        .expect("the config volume");
    assert_eq!(volume["configMap"]["name"], "pushbot");
    pod
}

#[test]
fn the_manifest_matches_the_image_and_the_binary() {
    let image = image();
    assert_eq!(image.entrypoint, ["/pushbot"]);
    let docs = documents(MANIFEST);

    // The Service sends to the container's named port.
    let service = only(&docs, "Service");
    assert_eq!(service["metadata"]["name"], "pushbot");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    // SQLite: one pod, Recreate, the image's data directory on the claim.
    let deployment = only(&docs, "Deployment");
    let pod = check_deployment(deployment, &image);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let url = &image.env["PUSHBOT_STORAGE__URL"];
    let db = url.strip_prefix("sqlite://").expect("a SQLite URL");
    let data_dir = std::path::Path::new(db).parent().unwrap().to_str().unwrap();
    assert_eq!(image.volumes, [data_dir]);
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == data_dir)
        .unwrap_or_else(|| panic!("nothing mounted at {data_dir}"));
    let claim = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the data volume")["persistentVolumeClaim"]["claimName"]
        .clone();
    assert_eq!(
        only(&docs, "PersistentVolumeClaim")["metadata"]["name"],
        claim
    );
    // The volume is made writable for the image's user once, not re-chmodded each start.
    assert_eq!(
        pod["securityContext"]["fsGroupChangePolicy"],
        "OnRootMismatch"
    );

    // PostgreSQL: several pods, the URL (with its password) from the Secret.
    let variant = documents(&postgres_variant());
    let deployment = only(&variant, "Deployment");
    let pod = check_deployment(deployment, &image);
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert!(
        secret_key(&pod["containers"][0], "PUSHBOT_STORAGE__URL").is_some(),
        "storage.url from a Secret"
    );
    assert!(!postgres_variant().contains("persistentVolumeClaim"));
}

/// The probes' path answers 200 on a running pushbot; the ConfigMap's pushbot.toml with the
/// Secret's variables and the image's environment is a configuration `pushbot` accepts.
#[tokio::test]
async fn the_probes_answer_and_the_configuration_loads() {
    let docs = documents(MANIFEST);
    let deployment = only(&docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let app = spawn_app().await;
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        let resp = http_client().get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{probe} {path}");
    }

    let dir = tempfile::tempdir().unwrap();
    let toml = only(&docs, "ConfigMap")["data"]["pushbot.toml"]
        .as_str()
        .expect("pushbot.toml in the ConfigMap");
    let file = dir.path().join("pushbot.toml");
    std::fs::write(&file, toml).unwrap();
    let image = image();
    let mut env: Vec<(&str, &str)> = image
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (variable, value) in [
        ("PUSHBOT_WECOM__SECRET", SECRET),
        ("PUSHBOT_WECOM__CALLBACK_TOKEN", "k8sOwnToken1"),
        ("PUSHBOT_WECOM__ENCODING_AES_KEY", ENCODING_AES_KEY),
    ] {
        assert!(secret_key(container, variable).is_some(), "{variable}");
        env.push((variable, value));
    }
    let file = file.to_str().unwrap();
    env.push(("PUSHBOT_CONFIG", file));
    let out = pushbot_command(&env)
        .current_dir(dir.path())
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("push.example.com"), "{stdout}");
}
