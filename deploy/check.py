"""The deploy files checked against each other, against Istio's schema, and
against the binary's own `--help`; scripts/check-deploy runs it in its venv
after kubernetes-validate and hadolint.

    python deploy/check.py SERVE_HELP_FILE TOP_HELP_FILE

Checks:
- Istio resources (deploy/istio/) parse as the Istio 1.24 networking/v1
  models of cloudcoil-models-istio (generated from Istio's CRDs), with no
  field those models do not know (a typo would otherwise pass unnoticed);
- the numbers that must agree: grace period > drain + shutdown timeout,
  probes are gRPC on the served port and on entries the server reports,
  retries only on conditions that are safe, per-try timeout longer than the
  server's deadline, ports, labels, image and user across the files;
- kustomization.yaml lists every manifest of deploy/kubernetes/;
- docs/operations.md's configuration table has exactly the options of
  `ccc-callcontrol --help` and `serve --help`, with the same environment
  variable and default; rows marked "planned" are the only ones allowed to
  be missing from the binary.

Prints one line per finding and exits 1 if there is any.
"""

import re
import sys
from pathlib import Path

import yaml
from cloudcoil.models.istio.networking import v1 as istio

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
ISTIO = ROOT / "deploy" / "istio"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"

# What the server reports on grpc.health.v1 (src/grpc/health.rs). Storage
# follows the database and must never gate readiness or liveness.
HEALTH_ENTRIES = {
    "",
    "ccc.v20200701.CallControl",
    "ccc.v20200701.Telephony",
    "ccc.v20200701.Admin",
}
# The only conditions a mesh may retry on (docs/operations.md, "Retries").
SAFE_RETRY_ON = {"unavailable", "connect-failure", "refused-stream"}
# Environment variables that are not options of the binary.
ENV_ONLY = {"RUST_LOG"}
# Defaults of the options the manifests rely on, when they leave them unset.
DEFAULTS_MS = {
    "CCC_DRAIN_MS": 5000,
    "CCC_SHUTDOWN_TIMEOUT_MS": 15000,
    "CCC_REQUEST_TIMEOUT_MS": 10000,
}
POOL_CLOSE_S = 1  # startup.rs: closing the pool waits at most 1 s
SPAN_FLUSH_S = 2  # telemetry.rs FLUSH_TIMEOUT: sending queued spans at exit

findings = []


def finding(where, message):
    findings.append(f"{where}: {message}")


def load_all(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    return found[0] if len(found) == 1 else None


def seconds(duration, where):
    """An Istio/protobuf duration ("11s", "500ms", "1m") in seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    if not m:
        finding(where, f"cannot read the duration {duration!r}")
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def ms_setting(env, name):
    value = env.get(name)
    return int(value) if value is not None else DEFAULTS_MS[name]


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def check_kustomization():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for name in sorted(present - listed):
        finding("deploy/kubernetes/kustomization.yaml", f"does not list {name}")
    for name in sorted(listed - present):
        finding("deploy/kubernetes/kustomization.yaml", f"lists {name}, which is missing")


def check_pod_security(where, pod_spec, container):
    pod_sc = pod_spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    if not pod_sc.get("runAsNonRoot"):
        finding(where, "the pod must set runAsNonRoot: true")
    if pod_sc.get("runAsUser", 0) == 0:
        finding(where, "the pod must run as a non-zero runAsUser")
    if sc.get("allowPrivilegeEscalation") is not False:
        finding(where, "the container must set allowPrivilegeEscalation: false")
    if not sc.get("readOnlyRootFilesystem"):
        finding(where, "the container must set readOnlyRootFilesystem: true")
    for kind in ("requests", "limits"):
        if "memory" not in container.get("resources", {}).get(kind, {}):
            finding(where, f"the container must set a memory {kind[:-1]}")


def check_kubernetes(docs, env_names):
    where = "deploy/kubernetes/deployment.yaml"
    deployment = by_kind(docs, "Deployment")
    service = by_kind(docs, "Service")
    pdb = by_kind(docs, "PodDisruptionBudget")
    job = by_kind(docs, "Job")
    for kind, doc in [("Deployment", deployment), ("Service", service),
                      ("PodDisruptionBudget", pdb), ("Job", job)]:
        if doc is None:
            finding("deploy/kubernetes", f"needs exactly one {kind}")
    if None in (deployment, service, pdb, job):
        return None

    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    env = env_of(container)
    env_names.update((n, where) for n in env)
    check_pod_security(where, spec, container)

    # The listener and the ports.
    listen = env.get("CCC_LISTEN", "")
    if not listen.startswith("0.0.0.0:"):
        finding(where, f"CCC_LISTEN must be 0.0.0.0:PORT in a pod, not {listen!r}")
        return None
    grpc_port = port_of(listen)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if ports.get("grpc") != grpc_port:
        finding(where, f"containerPort 'grpc' must be the listener's port {grpc_port}")

    # Shutdown: drain, then in-flight work, then the pool, then the span
    # flush, all inside the grace.
    drain_ms = ms_setting(env, "CCC_DRAIN_MS")
    shutdown_ms = ms_setting(env, "CCC_SHUTDOWN_TIMEOUT_MS")
    # Counted whether or not the manifests turn span export on: turning it
    # on later must not need a new grace period.
    need = (drain_ms + shutdown_ms) / 1000 + POOL_CLOSE_S + SPAN_FLUSH_S
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= need:
        finding(where, f"terminationGracePeriodSeconds {grace} must exceed drain "
                f"{drain_ms} ms + shutdown {shutdown_ms} ms + pool close 1 s "
                f"+ span flush 2 s = {need:g} s")

    # Probes: native gRPC health checks on the listener, on entries we report.
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(name)
        if probe is None:
            finding(where, f"needs a {name}")
            continue
        grpc = probe.get("grpc")
        if grpc is None:
            finding(where, f"{name} must be a gRPC health probe")
            continue
        if grpc.get("port") != grpc_port:
            finding(where, f"{name} must probe the gRPC port {grpc_port}")
        if grpc.get("service", "") not in HEALTH_ENTRIES:
            finding(where, f"{name} probes {grpc.get('service')!r}, which the server "
                    f"does not report as a service (one of {sorted(HEALTH_ENTRIES)})")
    readiness = container.get("readinessProbe", {})
    noticed = readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3)
    if noticed >= drain_ms / 1000:
        finding(where, f"readinessProbe notices NOT_SERVING only after {noticed} s, not "
                f"within the drain ({drain_ms} ms)")
    liveness = container.get("livenessProbe", {})
    patience = liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3)
    if patience <= drain_ms / 1000:
        finding(where, f"livenessProbe gives up after {patience} s, within the drain "
                f"({drain_ms} ms, NOT_SERVING on purpose): a draining pod would be killed")

    # Metrics: the scrape annotations name the metrics listener's port.
    annotations = pod["metadata"].get("annotations", {})
    metrics = env.get("CCC_METRICS_LISTEN")
    if annotations.get("prometheus.io/scrape") == "true":
        if not metrics:
            finding(where, "prometheus.io/scrape is set but CCC_METRICS_LISTEN is not")
        elif annotations.get("prometheus.io/port") != str(port_of(metrics)):
            finding(where, "prometheus.io/port must be CCC_METRICS_LISTEN's port")
        if annotations.get("prometheus.io/path") != "/metrics":
            finding(where, "prometheus.io/path must be /metrics")
    else:
        finding(where, "needs the prometheus.io/scrape annotation (or a ServiceMonitor)")

    # The Service: gRPC by appProtocol, onto the listener.
    labels = pod["metadata"]["labels"]
    where_svc = "deploy/kubernetes/service.yaml"
    grpc_ports = [p for p in service["spec"]["ports"] if p.get("appProtocol") == "grpc"]
    if len(grpc_ports) != 1:
        finding(where_svc, "needs exactly one port with appProtocol: grpc")
    elif grpc_ports[0].get("targetPort") not in ("grpc", grpc_port):
        finding(where_svc, "the grpc port must target the container's grpc port")
    for name, doc, selector in [
        ("service.yaml", service, service["spec"]["selector"]),
        ("poddisruptionbudget.yaml", pdb, pdb["spec"]["selector"]["matchLabels"]),
        ("deployment.yaml", deployment, deployment["spec"]["selector"]["matchLabels"]),
    ]:
        if any(labels.get(k) != v for k, v in selector.items()):
            finding(f"deploy/kubernetes/{name}", "its selector does not match the pod's labels")
    if "maxUnavailable" not in pdb["spec"] and "minAvailable" not in pdb["spec"]:
        finding("deploy/kubernetes/poddisruptionbudget.yaml", "sets no budget")

    # The migration Job: the same image, `migrate`, the same database.
    where_job = "deploy/kubernetes/migrate-job.yaml"
    job_spec = job["spec"]["template"]["spec"]
    (migrate,) = job_spec["containers"]
    env_names.update((n, where_job) for n in env_of(migrate))
    check_pod_security(where_job, job_spec, migrate)
    if migrate.get("args") != ["migrate"]:
        finding(where_job, "must run `ccc-callcontrol migrate` (args: [migrate])")
    if migrate.get("image") != container.get("image"):
        finding(where_job, "must use the Deployment's image")
    db = [e for e in migrate.get("env", []) if e["name"] == "DATABASE_URL"]
    db_serve = [e for e in container.get("env", []) if e["name"] == "DATABASE_URL"]
    if db != db_serve:
        finding(where_job, "must take DATABASE_URL from where the Deployment does")
    if any("value" in e for e in db_serve):
        finding(where, "DATABASE_URL must come from a Secret, not a literal value")

    return {
        "grpc_port": grpc_port,
        "service": service["metadata"]["name"],
        "service_port": grpc_ports[0]["port"] if len(grpc_ports) == 1 else None,
        "request_timeout_s": ms_setting(env, "CCC_REQUEST_TIMEOUT_MS") / 1000,
        "user": spec.get("securityContext", {}).get("runAsUser"),
    }


def check_istio_schema(path, doc):
    model = {"DestinationRule": istio.DestinationRule,
             "VirtualService": istio.VirtualService}.get(doc.get("kind"))
    where = f"deploy/istio/{path.name}"
    if model is None or doc.get("apiVersion") != "networking.istio.io/v1":
        finding(where, f"unexpected {doc.get('apiVersion')} {doc.get('kind')}")
        return
    try:
        parsed = model.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError: each bad field
        finding(where, f"does not match Istio's schema: {e}")
        return
    # The models ignore unknown fields; a round trip shows them.
    unknown = unknown_fields(doc, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    for field in unknown:
        finding(where, f"unknown field {field}")


def unknown_fields(given, parsed, at=""):
    if isinstance(given, dict) and isinstance(parsed, dict):
        out = []
        for key, value in given.items():
            if key not in parsed:
                out.append(f"{at}.{key}".lstrip("."))
            else:
                out += unknown_fields(value, parsed[key], f"{at}.{key}")
        return out
    if isinstance(given, list) and isinstance(parsed, list):
        return [f for g, p in zip(given, parsed) for f in unknown_fields(g, p, at + "[]")]
    return []


def check_istio(k8s):
    docs = {p: load_all(p) for p in sorted(ISTIO.glob("*.yaml"))}
    for path, items in docs.items():
        for doc in items:
            check_istio_schema(path, doc)
    everything = [d for items in docs.values() for d in items]
    dr = by_kind(everything, "DestinationRule")
    vs = by_kind(everything, "VirtualService")
    if dr is None or vs is None:
        finding("deploy/istio", "needs one DestinationRule and one VirtualService")
        return
    where = "deploy/istio/virtualservice.yaml"
    if k8s and dr["spec"]["host"] != k8s["service"]:
        finding("deploy/istio/destinationrule.yaml", "host must be the Service's name")
    if k8s and k8s["service"] not in vs["spec"].get("hosts", []):
        finding(where, "hosts must include the Service's name")
    for route in vs["spec"].get("http", []):
        name = route.get("name", "?")
        for dest in route.get("route", []):
            d = dest["destination"]
            if k8s and (d.get("host") != k8s["service"]
                        or d.get("port", {}).get("number") != k8s["service_port"]):
                finding(where, f"route {name} must go to the Service's gRPC port")
        retries = route.get("retries")
        if retries is None:
            # Istio's default retries on `cancelled` too: never leave it implicit.
            finding(where, f"route {name} must set retries explicitly")
            continue
        retry_on = {c.strip() for c in retries.get("retryOn", "").split(",") if c.strip()}
        if not retry_on:
            finding(where, f"route {name}: retryOn must be set (the default includes cancelled)")
        for condition in sorted(retry_on - SAFE_RETRY_ON):
            finding(where, f"route {name} retries on {condition}: only "
                    f"{', '.join(sorted(SAFE_RETRY_ON))} are safe (docs/operations.md)")
        attempts = retries.get("attempts", 2)
        per_try = seconds(retries.get("perTryTimeout", "0s"), where)
        timeout = seconds(route.get("timeout", "0s"), where)
        if per_try is None or timeout is None:
            continue
        if k8s and per_try <= k8s["request_timeout_s"]:
            finding(where, f"route {name}: perTryTimeout {per_try:g} s must be longer than "
                    f"the server's deadline ({k8s['request_timeout_s']:g} s), so the "
                    "server answers first")
        if timeout and timeout < (attempts + 1) * per_try:
            finding(where, f"route {name}: timeout {timeout:g} s must cover "
                    f"{attempts + 1} tries of {per_try:g} s")


def check_dockerfile(k8s):
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        finding("deploy/Dockerfile", "the last USER must be a numeric non-root uid "
                "(runAsNonRoot can only verify a number)")
    elif k8s and int(users[-1].split(":")[0]) != k8s["user"]:
        finding("deploy/Dockerfile", "USER must match the pods' runAsUser")
    if k8s and not re.search(rf"^EXPOSE\b.*\b{k8s['grpc_port']}\b", text, re.M):
        finding("deploy/Dockerfile", f"must EXPOSE {k8s['grpc_port']}")
    if "--locked" not in text:
        finding("deploy/Dockerfile", "must build with --locked")


def help_options(text):
    """{flag: (env, default)} from clap's long help."""
    options = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+(?:-\w, )?(--[a-z0-9-]+)", line)
        if not m or m.group(1) in ("--help", "--version"):
            continue
        rest = line[m.end():]
        if "[env:" not in rest and "[default:" not in rest and i + 1 < len(lines):
            rest = lines[i + 1]
        env = re.search(r"\[env: ([A-Z0-9_]+)=", rest)
        default = re.search(r"\[default: ([^\]]*)\]", rest)
        options[m.group(1)] = (env and env.group(1), default and default.group(1))
    return options


def table_rows():
    """{flag: (env, default cell, planned)} from docs/operations.md."""
    rows = {}
    for line in OPERATIONS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`--[a-z0-9-]+`", cells[0]):
            continue
        flag = cells[0].strip("`")
        env = re.fullmatch(r"`([A-Z0-9_]+)`", cells[1])
        planned = "planned" in line.lower()
        rows[flag] = (env and env.group(1), cells[2], planned)
    return rows


def check_table(serve_help, top_help, env_names):
    where = "docs/operations.md"
    options = help_options(top_help) | help_options(serve_help)
    rows = table_rows()
    for flag, (env, default) in options.items():
        if flag not in rows:
            finding(where, f"the table lacks {flag} (ccc-callcontrol serve --help has it)")
            continue
        row_env, row_default, planned = rows[flag]
        if planned:
            finding(where, f"{flag} exists now: drop 'planned' from its row")
        if row_env != env:
            finding(where, f"{flag}: the table says {row_env}, --help says {env}")
        want = f"`{default}`" if default is not None else None
        if want is not None and row_default != want:
            finding(where, f"{flag}: the table's default is {row_default}, --help says {want}")
        if want is None and "`" in row_default:
            finding(where, f"{flag}: --help shows no default, the table shows {row_default}")
    for flag, (_, _, planned) in rows.items():
        if flag not in options and not planned:
            finding(where, f"the table has {flag}, which ccc-callcontrol serve --help lacks "
                    "(mark it planned, or remove it)")
    known = {env for env, _, _ in rows.values() if env} | ENV_ONLY
    for name, file in sorted(env_names):
        if name not in known:
            finding(file, f"sets {name}, which is no option in docs/operations.md's table")
    planned_used = sorted({n for n, _ in env_names
                           for f, (e, _, p) in rows.items() if p and e == n})
    for name in planned_used:
        print(f"note: the manifests set {name}, planned and not yet in --help "
              "(clap ignores an unknown variable, so this is harmless until it lands)")


def main():
    serve_help = Path(sys.argv[1]).read_text()
    top_help = Path(sys.argv[2]).read_text()
    check_kustomization()
    env_names = set()
    k8s_docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
                for d in load_all(p)]
    k8s = check_kubernetes(k8s_docs, env_names)
    check_istio(k8s)
    check_dockerfile(k8s)
    check_table(serve_help, top_help, env_names)
    for line in findings:
        print(f"FINDING {line}")
    print(f"deploy/check.py: {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
