"""deploy/validate.py: the offline checks of deploy/validate that need Python
(run by it inside its venv, with PyYAML, kubernetes-validate and dockerfile).

Usage: validate.py REPO_ROOT. Prints one line per check, exits 1 on the
first group of failures. Each check reads the files as they are: nothing here
talks to the network.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import dockerfile
import yaml

REPO = Path(sys.argv[1]).resolve()
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# Kubernetes versions to validate the manifests against, oldest and newest
# that kubernetes-validate bundles schemas for (1.27 is the oldest one still
# widely run; autoscaling/v2 and policy/v1 are GA in both).
K8S_VERSIONS = ["1.27.0", "1.37.0"]

failures = []


def ok(what):
    print(f"validate: ok  {what}")


def fail(what):
    print(f"validate: FAIL {what}")
    failures.append(what)


def check(cond, what):
    (ok if cond else fail)(what)
    return cond


def rel(path):
    return path.relative_to(REPO)


def parse_all():
    """Every YAML and JSON file under deploy/ and grafana/ parses."""
    docs = {}
    for top in ("deploy", "grafana"):
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix in (".yml", ".yaml"):
                try:
                    with path.open() as f:
                        docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
                    ok(f"YAML parses: {rel(path)}")
                except yaml.YAMLError as e:
                    fail(f"YAML {rel(path)}: {e}")
            elif path.suffix == ".json":
                try:
                    with path.open() as f:
                        docs[path] = [json.load(f)]
                    ok(f"JSON parses: {rel(path)}")
                except ValueError as e:
                    fail(f"JSON {rel(path)}: {e}")
    return docs


def k8s_docs(docs):
    """Kind -> the one manifest of that kind in deploy/k8s (kustomization aside)."""
    by_kind = {}
    for path, items in docs.items():
        if path.parent != K8S or path.name == "kustomization.yaml":
            continue
        for item in items:
            by_kind[item.get("kind")] = item
    return by_kind


def kubernetes_schemas():
    manifests = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    for version in K8S_VERSIONS:
        run = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
             "-k", version, *map(str, manifests)],
            capture_output=True, text=True, timeout=120,
        )
        names = " ".join(p.name for p in manifests)
        if run.returncode == 0:
            ok(f"Kubernetes {version} schemas (strict): {names}")
        else:
            fail(f"Kubernetes {version} schemas: {run.stdout.strip()} {run.stderr.strip()}")


def kustomization(docs):
    kust = docs[K8S / "kustomization.yaml"][0]
    listed = set(kust.get("resources", []))
    present = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    check(listed == present,
          f"kustomization.yaml lists every manifest in deploy/k8s ({len(present)})")
    for item in docs[K8S / "kustomization.yaml"]:
        check("namespace" not in item, "kustomization.yaml sets no namespace")
    for path, items in docs.items():
        if path.parent == K8S:
            for item in items:
                ns = (item.get("metadata") or {}).get("namespace")
                check(ns is None, f"{path.name}: no namespace in metadata")


def deployment_consistency(by_kind):
    dep, cm, secret = by_kind["Deployment"], by_kind["ConfigMap"], by_kind["Secret"]
    svc, hpa, pdb = by_kind["Service"], by_kind["HorizontalPodAutoscaler"], by_kind["PodDisruptionBudget"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (container,) = spec["containers"]

    env = {e["name"]: e for e in container.get("env", [])}
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    check(refs == [cm["metadata"]["name"]], "Deployment takes its settings from the ConfigMap")
    key_ref = env.get("AETHER_API_KEYS", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(key_ref.get("name") == secret["metadata"]["name"]
          and key_ref.get("key") in (secret.get("stringData") or secret.get("data") or {}),
          "AETHER_API_KEYS comes from the Secret's key (secretKeyRef)")
    field = env.get("AETHER_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    check(field.get("fieldPath") == "metadata.name", "AETHER_INSTANCE_ID is the pod name (downward API)")
    check("." not in dep["metadata"]["name"], "Deployment name has no dot (pod names are Vision IDs)")
    check(cm["data"].get("AETHER_REDIS_URL", "").startswith("redis://"), "ConfigMap sets AETHER_REDIS_URL")

    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readinessProbe is /readyz")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "livenessProbe is /healthz")

    grace = float(cm["data"].get("AETHER_SHUTDOWN_GRACE_SECS", "10"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = float(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0.0
    termination = spec.get("terminationGracePeriodSeconds", 30)
    check(termination > sleep + grace,
          f"terminationGracePeriodSeconds {termination} > preStop sleep {sleep:g} + "
          f"AETHER_SHUTDOWN_GRACE_SECS {grace:g}")

    pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
    check(pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) > 0
          and sc.get("readOnlyRootFilesystem") is True
          and sc.get("allowPrivilegeEscalation") is False,
          "non-root, read-only root filesystem, no privilege escalation")
    res = container.get("resources", {})
    check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
          "resources: cpu and memory requests, memory limit")

    selects = lambda sel: all(labels.get(k) == v for k, v in sel.items())  # noqa: E731
    check(selects(dep["spec"]["selector"]["matchLabels"]), "Deployment selector matches its pods")
    check(selects(svc["spec"]["selector"]), "Service selects the pods")
    ports = {p["name"] for p in container["ports"]}
    check(all(p["targetPort"] in ports for p in svc["spec"]["ports"]), "Service targets a named container port")
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "PodDisruptionBudget selects the pods")
    target = hpa["spec"]["scaleTargetRef"]
    check(target["kind"] == "Deployment" and target["name"] == dep["metadata"]["name"],
          "HorizontalPodAutoscaler scales the Deployment")
    check(hpa["spec"]["minReplicas"] >= 2 and dep["spec"]["replicas"] >= 2,
          "at least 2 replicas (Deployment and HPA minimum)")


def compose_consistency(docs):
    compose = docs[DEPLOY / "docker-compose.yml"][0]
    services = compose["services"]
    check({"redis", "hub1", "hub2", "nginx", "prometheus", "grafana"} <= set(services),
          "compose has redis, hub1, hub2, nginx, prometheus, grafana")

    template = (DEPLOY / "nginx.conf").read_text()
    placeholders = set(re.findall(r"\$\{(AETHER_\w+)\}", template))
    nginx_env = services["nginx"].get("environment", {})
    filter_ = nginx_env.get("NGINX_ENVSUBST_FILTER", "")
    check(placeholders <= set(nginx_env) and all(p.startswith(filter_) for p in placeholders)
          and filter_, f"nginx.conf placeholders {sorted(placeholders)} are set in compose's nginx "
          "and match NGINX_ENVSUBST_FILTER")
    local_run = (DEPLOY / "local" / "run").read_text()
    check(all("${" + p + "}" in local_run for p in placeholders),
          "deploy/local/run fills in every nginx.conf placeholder")
    check("ip_hash" not in template and "hash " not in template and "sticky" not in template,
          "nginx balances without stickiness")

    ids = {services[h]["environment"].get("AETHER_INSTANCE_ID") for h in ("hub1", "hub2")}
    check(len(ids) == 2 and None not in ids, "hubs have distinct AETHER_INSTANCE_IDs")
    check(all(services[h]["environment"].get("AETHER_REDIS_URL") == "redis://redis:6379/"
              for h in ("hub1", "hub2")), "hubs share redis://redis:6379/")

    prom = docs[DEPLOY / "prometheus.yml"][0]
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    check({"hub1:8080", "hub2:8080"} <= targets and prom["global"]["scrape_interval"] == "5s",
          "Prometheus scrapes hub1:8080 and hub2:8080 every 5s")

    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                check((DEPLOY / source).exists(), f"compose {name}: mount source {source} exists")
    grafana = services["grafana"].get("volumes", [])
    check("../grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
          and "../grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana,
          "Grafana mounts grafana/provisioning and grafana/dashboards")


def dockerfile_checks():
    path = DEPLOY / "Dockerfile"
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        fail(f"Dockerfile does not parse: {e}")
        return
    ok("Dockerfile parses (BuildKit's parser)")
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
             "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
    unknown = [c.cmd for c in commands if c.cmd.upper() not in known]
    check(not unknown, "Dockerfile instructions are all known" + (f": not {unknown}" if unknown else ""))

    by = lambda name: [c for c in commands if c.cmd.upper() == name]  # noqa: E731
    froms = [c.value[0] for c in by("FROM")]
    check(froms == ["rust:1-bookworm", "debian:bookworm-slim"],
          "Dockerfile stages: rust:1-bookworm, then debian:bookworm-slim")
    runs = " ".join(v for c in by("RUN") for v in c.value)
    check("cargo build --release --locked --bin aether-hub" in runs,
          "Dockerfile builds with cargo build --release --locked --bin aether-hub")

    last_stage = max(c.start_line for c in by("FROM"))
    final = [c for c in commands if c.start_line > last_stage]
    user = [c.value[0] for c in final if c.cmd.upper() == "USER"]
    check(bool(user) and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) > 0,
          f"runtime user is numeric and not root ({user[-1] if user else 'none'})")
    check(any("8080" in c.value[0] for c in final if c.cmd.upper() == "EXPOSE"), "EXPOSE 8080")
    check(any(c.value[:2] == ("AETHER_BIND", "0.0.0.0:8080") for c in final if c.cmd.upper() == "ENV"),
          "ENV AETHER_BIND=0.0.0.0:8080")
    check([c.value[0] for c in final if c.cmd.upper() == "STOPSIGNAL"] == ["SIGTERM"], "STOPSIGNAL SIGTERM")
    entry = [c for c in final if c.cmd.upper() == "ENTRYPOINT"]
    check(bool(entry) and entry[-1].json and entry[-1].value[0].endswith("/aether-hub"),
          "ENTRYPOINT is the hub binary (exec form: the hub is PID 1 and gets SIGTERM)")
    health = [c for c in final if c.cmd.upper() == "HEALTHCHECK"]
    copies = {c.value[-1]: c.value[:-1] for c in final if c.cmd.upper() == "COPY"}
    hc_args = health[-1].value[1:] if health else ()
    check(health and health[-1].value[0] == "CMD"
          and any(copies.get(a) == ("deploy/healthcheck",) for a in hc_args),
          "HEALTHCHECK runs deploy/healthcheck, copied into the image")

    # COPY sources from the build context exist there and are not ignored.
    ignored = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ignored.append(line.rstrip("/"))
    check({"target", ".git"} <= set(ignored), ".dockerignore excludes target/ and .git")
    for c in by("COPY"):
        if any(f.startswith("--from") for f in c.flags):
            continue
        for source in c.value[:-1]:
            top = source.split("/")[0]
            check((REPO / source).exists() and top not in ignored,
                  f"COPY {source}: in the build context")


if __name__ == "__main__":
    docs = parse_all()
    if not failures:
        kubernetes_schemas()
        kustomization(docs)
        deployment_consistency(k8s_docs(docs))
        compose_consistency(docs)
        dockerfile_checks()
    sys.exit(1 if failures else 0)
