"""Static checks of deploy/: Dockerfile, compose file, Kubernetes manifests, alert rules.

No I/O other than reading the files under deploy/. The Kubernetes manifests are validated
against the schemas that `kubernetes-validate` ships, and the alert expressions are parsed by
`promql-parser`; both are dev dependencies: when one is missing its test fails (ImportError),
it is never skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"

# DESIGN.md, "Contracts": the environment the service reads.
DESIGN_ENV = frozenset(
    {
        "RECON_DATABASE_URL",
        "RECON_BROKER_URL",
        "RECON_REDIS_URL",
        "STRIPE_API_KEY",
        "STRIPE_WEBHOOK_SECRET",
        "RECON_STRIPE_API_BASE",
        "RECON_STRIPE_API_VERSION",
        "RECON_LEDGER",
        "BLNK_URL",
        "BLNK_API_KEY",
        "RECON_SWEEP_MIN_AGE",
        "RECON_FAILED_GRACE",
        "RECON_PROCESSING_SLA",
        "RECON_CREATE_MISSING",
        "RECON_TICKET_WEBHOOK_URL",
        "RECON_SLACK_WEBHOOK_URL",
    }
)
# Variables that belong to the platform or to third-party images, not to the service.
STANDARD_ENV = frozenset(
    {
        "HOME",
        "HOSTNAME",
        "PATH",
        "TZ",
        "LANG",
        "VIRTUAL_ENV",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "PIP_NO_CACHE_DIR",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "PGDATA",
    }
)
ALLOWED_ENV = DESIGN_ENV | STANDARD_ENV
SECRET_ENV = frozenset(
    {"STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "RECON_DATABASE_URL", "BLNK_API_KEY"}
)
# Ticket sinks are optional: absent means "store tickets only".
OPTIONAL_ENV = frozenset({"RECON_TICKET_WEBHOOK_URL", "RECON_SLACK_WEBHOOK_URL"})
DURATION_ENV = frozenset({"RECON_SWEEP_MIN_AGE", "RECON_FAILED_GRACE", "RECON_PROCESSING_SLA"})
DURATION = re.compile(r"^\d+[smhd]$")

# The metrics the application exposes (histograms also expose _bucket, _sum and _count).
COUNTERS_AND_GAUGES = frozenset(
    {
        "recon_webhooks_received_total",
        "recon_inbox_lag_seconds",
        "recon_inbox_unprocessed",
        "recon_actions_total",
        "recon_tickets_opened_total",
        "recon_stripe_requests_total",
        "recon_blnk_requests_total",
        "recon_runs_total",
    }
)
HISTOGRAMS = frozenset({"recon_task_duration_seconds"})
KNOWN_METRICS = (
    COUNTERS_AND_GAUGES
    | HISTOGRAMS
    | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
RUNBOOK_SECTIONS = (
    "Runbook: webhooks failing",
    "Runbook: inbox lag",
    "Runbook: stuck payment",
    "Runbook: partial run",
    "Runbook: ticket storm",
    "Runbook: rotating the webhook secret",
)
ENV_REF = re.compile(r"\$\$?\{?([A-Za-z_][A-Za-z0-9_]*)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return "README.md#" + slug.replace(" ", "-")


RUNBOOK_ANCHORS = frozenset(github_anchor(t) for t in RUNBOOK_SECTIONS)


# --- helpers -------------------------------------------------------------------------------


def load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def compose() -> dict[str, Any]:
    (doc,) = load_all(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, Any]:
    svcs = compose()["services"]
    assert isinstance(svcs, dict)
    return svcs


def k8s_resource_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in k8s_resource_files() for doc in load_all(path)]


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def workloads() -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] in {"Deployment", "Job", "StatefulSet"}]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(doc)["containers"]
    assert isinstance(only, dict)
    return only


def argv(c: dict[str, Any]) -> list[str]:
    """What the container runs after the image's ENTRYPOINT (tini --)."""
    assert "command" not in c, "use args: command would replace the image's tini entrypoint"
    return [str(a) for a in c["args"]]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def env_refs(text: str) -> set[str]:
    return {a or b for a, b in ENV_REF.findall(text)}


def env_file_names(path: Path, *, include_commented: bool) -> dict[str, str]:
    names: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if include_commented:
            line = re.sub(r"^#\s?(?=[A-Z_][A-Z0-9_]*=)", "", line)
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    out = []
    for line in logical:
        instr, _, rest = line.partition(" ")
        out.append((instr.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instrs = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instrs) if ins == "FROM")
    return instrs[last_from:]


# --- every YAML file -----------------------------------------------------------------------


def test_deploy_has_the_expected_files() -> None:
    for path in (DOCKERFILE, COMPOSE, ENV_EXAMPLE, ALERTS, K8S / "kustomization.yaml"):
        assert path.is_file(), path


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    instrs = dockerfile_instructions()
    froms = [args for ins, args in instrs if ins == "FROM"]
    assert len(froms) >= 2, "build stage + runtime stage"
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"python:3\.11[\w.-]*", text)
    assert bases, "base image must be python:3.11-*"
    assert all("slim" in b for b in bases), bases
    build = " ".join(args for ins, args in instrs if ins == "RUN" and "wheel" in args)
    assert re.search(r"pip wheel\b.*\s\.(\s|$)", build), "the build stage builds the wheel"
    runtime_runs = " ".join(args for ins, args in final_stage() if ins == "RUN")
    assert "python -m venv" in runtime_runs
    assert re.search(r"pip\"?\s+install\s+--no-index", runtime_runs), "only the built wheels"
    assert "from=build" in runtime_runs or any(
        ins == "COPY" and "--from=" in args for ins, args in final_stage()
    )


def test_dockerfile_runs_as_non_root_user() -> None:
    users = [args for ins, args in final_stage() if ins == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "numeric UID, so Kubernetes' runAsNonRoot can verify it"
    uids = {
        int(c["securityContext"]["runAsUser"])
        for d in workloads()
        for c in (pod_spec(d), container(d))
        if "runAsUser" in c.get("securityContext", {})
    }
    assert uids <= {int(user)}, "k8s runAsUser matches the image's USER"


def test_dockerfile_installs_no_dev_dependencies() -> None:
    for ins, args in dockerfile_instructions():
        if ins != "RUN":
            continue
        assert "[dev]" not in args, args
        assert not re.search(r"\b(pytest|ruff|mypy|hypothesis|responses)\b", args), args
        assert not re.search(r"pip install\s.*(-e|--editable)\b", args), args


def test_dockerfile_copies_only_what_the_wheel_needs() -> None:
    copied = " ".join(args for ins, args in dockerfile_instructions() if ins == "COPY")
    assert "pyproject.toml" in copied
    for pkg in ("worker", "reconcile", "ledger"):
        assert re.search(rf"\b{pkg}\b", copied), pkg
    assert not re.search(r"COPY\s+\.\s", "COPY " + copied), "no COPY of the whole context"
    assert "tests" not in copied


def test_dockerfile_entrypoint_lets_any_command_run() -> None:
    instrs = dict(final_stage())
    # An exec-form ENTRYPOINT that ends with "--" (tini) passes `recon ...` / `celery ...` on.
    entry = instrs.get("ENTRYPOINT")
    if entry is not None:
        assert entry.startswith("[") and entry.rstrip("]").rstrip().endswith('"--"'), entry
    cmd = instrs["CMD"]
    assert cmd.startswith('["recon", "serve"'), cmd
    assert "/healthz" in instrs["HEALTHCHECK"]


# --- compose -------------------------------------------------------------------------------


def test_compose_has_every_service() -> None:
    assert {"postgres", "redis", "migrate", "intake", "worker", "beat"} <= set(services())


def test_compose_infrastructure_images_and_healthchecks() -> None:
    svcs = services()
    assert re.match(r"^postgres:16(\b|$)", svcs["postgres"]["image"])
    assert re.match(r"^redis:7(\b|$)", svcs["redis"]["image"])
    for name in ("postgres", "redis"):
        assert svcs[name]["healthcheck"]["test"], name


def test_compose_app_services_build_the_one_image() -> None:
    svcs = services()
    app = ("migrate", "intake", "worker", "beat")
    assert len({svcs[s]["image"] for s in app}) == 1
    for name in app:
        build = svcs[name]["build"]
        assert build["context"] == ".."
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == (
            DOCKERFILE.resolve()
        )
        env_files = svcs[name]["env_file"]
        env_files = [env_files] if isinstance(env_files, str) else env_files
        assert "env.example" in env_files
        for f in env_files:
            assert (COMPOSE.parent / f).is_file(), f


def test_compose_commands() -> None:
    svcs = services()
    assert svcs["migrate"]["command"] == ["recon", "db", "upgrade"]
    intake = svcs["intake"]["command"]
    assert intake[:2] == ["recon", "serve"]
    assert intake[intake.index("--host") + 1] == "0.0.0.0"
    assert intake[intake.index("--port") + 1] == "8000"
    assert "--workers" in intake
    assert svcs["worker"]["command"][:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert svcs["beat"]["command"][:4] == ["celery", "-A", "worker.celery_app", "beat"]
    assert "--loglevel=INFO" in svcs["worker"]["command"]
    assert "--loglevel=INFO" in svcs["beat"]["command"]
    assert any(p.split(":")[-1] == "8000" for p in map(str, svcs["intake"]["ports"]))


def test_compose_ordering() -> None:
    svcs = services()
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert svcs["migrate"].get("restart") == "no", "a one-shot must not be restarted"
    for name in ("intake", "worker", "beat"):
        deps = svcs[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_compose_beat_is_single_and_health_checks_fit_the_role() -> None:
    svcs = services()
    assert svcs["beat"].get("deploy", {}).get("replicas", 1) == 1
    # The image's HEALTHCHECK probes /healthz, which only intake serves.
    for name in ("migrate", "beat"):
        assert svcs[name]["healthcheck"] == {"disable": True}, name
    assert "inspect ping" in " ".join(svcs["worker"]["healthcheck"]["test"])


# --- environment ---------------------------------------------------------------------------


def service_env() -> set[str]:
    from worker.settings import Settings

    return {f.validation_alias.choices[0] for f in Settings.model_fields.values()}  # type: ignore[union-attr]


def test_env_example_lists_every_contract_variable_and_only_real_ones() -> None:
    listed = set(env_file_names(ENV_EXAMPLE, include_commented=True))
    assert listed >= DESIGN_ENV, "env.example lists every variable of DESIGN.md"
    assert listed <= service_env(), f"not read by the service: {listed - service_env()}"
    # Its header promises every variable the service reads.
    assert listed >= service_env(), f"not in env.example: {sorted(service_env() - listed)}"


def test_the_readme_documents_every_variable_the_service_reads() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    missing = sorted(name for name in service_env() if f"`{name}`" not in readme)
    assert not missing, f"not in the README: {missing}"


def test_env_example_values() -> None:
    active = env_file_names(ENV_EXAMPLE, include_commented=False)
    assert set(active) <= service_env()
    for name, value in active.items():
        assert value, f"{name} is set to an empty value: comment it out instead"
        assert not value.startswith(("'", '"')), f"{name}: env files take no quotes"
    for name in DURATION_ENV:
        assert DURATION.match(active[name]), name
    assert active["RECON_LEDGER"] in {"sql", "blnk"}
    assert active["RECON_CREATE_MISSING"] in {"true", "false"}
    assert active["RECON_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in active["RECON_DATABASE_URL"]
    assert active["RECON_BROKER_URL"].startswith("redis://redis:6379/")
    assert active["RECON_REDIS_URL"].startswith("redis://redis:6379/")
    assert active["RECON_BROKER_URL"] != active["RECON_REDIS_URL"]
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET"):
        assert "REPLACE_ME" in active[name], f"{name} must be a placeholder"


def test_compose_mentions_only_known_variables() -> None:
    mentioned: set[str] = set()
    for svc in services().values():
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        mentioned |= set(env)
    for text in strings(compose()):
        mentioned |= env_refs(text)
    unknown = mentioned - ALLOWED_ENV
    assert not unknown, f"not in DESIGN.md nor standard: {sorted(unknown)}"


def test_k8s_mentions_only_known_variables() -> None:
    mentioned: set[str] = set()
    for doc in k8s_docs():
        if doc["kind"] in {"ConfigMap", "Secret"}:
            mentioned |= set(doc.get("data", {})) | set(doc.get("stringData", {}))
    for doc in workloads():
        for c in pod_spec(doc)["containers"] + pod_spec(doc).get("initContainers", []):
            mentioned |= {e["name"] for e in c.get("env", [])}
            for text in strings({k: v for k, v in c.items() if k != "env"}):
                mentioned |= env_refs(text)
    unknown = mentioned - ALLOWED_ENV
    assert not unknown, f"not in DESIGN.md nor standard: {sorted(unknown)}"


def test_dockerfile_sets_only_known_variables() -> None:
    names: set[str] = set()
    for ins, args in dockerfile_instructions():
        if ins == "ENV":
            names |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args))
    assert names <= ALLOWED_ENV, sorted(names - ALLOWED_ENV)


def test_k8s_config_and_secret_cover_the_settings() -> None:
    config = k8s("ConfigMap", "recon-config")["data"]
    secret = k8s("Secret", "recon-secrets")["stringData"]
    assert set(secret) >= SECRET_ENV, "secrets belong in the Secret"
    assert not (set(config) & (SECRET_ENV | OPTIONAL_ENV)), "no secret in the ConfigMap"
    assert set(config) | set(secret) >= DESIGN_ENV - OPTIONAL_ENV
    for name, value in secret.items():
        assert "REPLACE_ME" in value, f"Secret template: {name} must be a placeholder"
    for name in DURATION_ENV:
        assert DURATION.match(config[name]), name
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values are strings"


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = load_all(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(p.name for p in k8s_resource_files())
    assert "namespace" not in kust, "namespace-agnostic"
    for doc in k8s_docs():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]


def test_k8s_has_every_resource() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s_docs()}
    assert kinds >= {
        ("ConfigMap", "recon-config"),
        ("Secret", "recon-secrets"),
        ("Job", "recon-migrate"),
        ("Deployment", "recon-intake"),
        ("Service", "recon-intake"),
        ("PodDisruptionBudget", "recon-intake"),
        ("Deployment", "recon-worker"),
        ("Deployment", "recon-beat"),
    }


@pytest.mark.parametrize("path", k8s_resource_files(), ids=lambda p: p.name)
def test_k8s_manifests_match_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate  # dev dependency: a missing package fails this test
    from kubernetes_validate.utils import latest_version

    for version in ("1.29", latest_version()):
        for doc in load_all(path):
            kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_schema_validation_is_not_vacuous() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    bad = k8s("Deployment", "recon-intake")
    bad = yaml.safe_load(yaml.safe_dump(bad))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(bad, "1.29", strict=True)
    typo = yaml.safe_load(yaml.safe_dump(k8s("Deployment", "recon-intake")))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(typo, "1.29", strict=True)


def test_migration_job() -> None:
    job = k8s("Job", "recon-migrate")
    assert argv(container(job)) == ["recon", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] in {"Never", "OnFailure"}


def test_intake_deployment_probes_and_replicas() -> None:
    dep = k8s("Deployment", "recon-intake")
    assert dep["spec"]["replicas"] == 2
    c = container(dep)
    args = argv(c)
    assert args[:2] == ["recon", "serve"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in ports.values()

    def probe_port(probe: dict[str, Any]) -> int:
        p = probe["httpGet"]["port"]
        return ports[p] if isinstance(p, str) else int(p)

    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probe_port(c["readinessProbe"]) == port
    assert probe_port(c["livenessProbe"]) == port
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_intake_service_and_pdb_select_the_intake_pods() -> None:
    dep = k8s("Deployment", "recon-intake")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    svc = k8s("Service", "recon-intake")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    names = {p["name"] for p in container(dep)["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in names or p["targetPort"] == 8000
    pdb = k8s("PodDisruptionBudget", "recon-intake")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"].get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb["spec"]
    # Selectors must not also catch worker or beat pods.
    for other in ("recon-worker", "recon-beat"):
        labels = k8s("Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not svc["spec"]["selector"].items() <= labels.items(), other


def test_worker_deployment() -> None:
    dep = k8s("Deployment", "recon-worker")
    assert dep["spec"]["replicas"] == 2
    c = container(dep)
    assert argv(c)[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert any(a.startswith("--concurrency") for a in argv(c)), "default = node's CPUs"
    probe = " ".join(c["livenessProbe"]["exec"]["command"])
    assert "celery -A worker.celery_app inspect ping" in probe
    assert "celery@$HOSTNAME" in probe
    assert c["livenessProbe"]["exec"]["command"][:2] == ["sh", "-c"], "$HOSTNAME needs a shell"


def test_a_dead_worker_is_restarted_and_a_hung_one_is_probed() -> None:
    # Compose starts an exited worker again; Kubernetes restarts an exited container
    # (restartPolicy Always, the only one a Deployment allows) and one that stops answering
    # the liveness probe.
    svcs = services()
    for name in ("intake", "worker", "beat"):
        assert svcs[name].get("restart") in ("always", "unless-stopped"), name
    dep = k8s("Deployment", "recon-worker")
    assert pod_spec(dep).get("restartPolicy", "Always") == "Always"
    probe = container(dep)["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 300, "a hung worker waits <5m"
    assert probe["timeoutSeconds"] >= 10, "the probe imports the app and connects"


def test_workers_run_without_gossip_mingle_and_heartbeat() -> None:
    flags = {"--without-gossip", "--without-mingle", "--without-heartbeat"}
    assert flags <= set(services()["worker"]["command"])
    assert flags <= set(argv(container(k8s("Deployment", "recon-worker"))))
    from tests.procs import WORKER_FLAGS

    assert set(WORKER_FLAGS) == flags, "the fault tests run the worker as deployed"


def test_beat_is_a_singleton() -> None:
    dep = k8s("Deployment", "recon-beat")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    args = argv(container(dep))
    assert args[:4] == ["celery", "-A", "worker.celery_app", "beat"]
    schedule = [a for a in args if a.startswith("--schedule=")]
    assert schedule and schedule[0].startswith("--schedule=/tmp/"), "writable schedule file"


@pytest.mark.parametrize("name", ["recon-migrate", "recon-intake", "recon-worker", "recon-beat"])
def test_pods_are_locked_down(name: str) -> None:
    (doc,) = [d for d in workloads() if d["metadata"]["name"] == name]
    spec = pod_spec(doc)
    c = container(doc)
    pod_sc = spec.get("securityContext", {})
    c_sc = c.get("securityContext", {})
    assert c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert c_sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
    assert c_sc["allowPrivilegeEscalation"] is False
    assert c_sc["readOnlyRootFilesystem"] is True
    assert "ALL" in c_sc["capabilities"]["drop"]
    assert spec.get("automountServiceAccountToken") is False
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    assert "/tmp" in mounts, "read-only root: /tmp must be a writable volume"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]]
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"])
    assert "memory" in res["limits"]
    assert c["image"] == "stripe-recon", "one image, tag set in kustomization.yaml"
    refs = {
        (k, v["name"])
        for src in c["envFrom"]
        for k, v in src.items()
        if k in {"configMapRef", "secretRef"}
    }
    assert refs == {("configMapRef", "recon-config"), ("secretRef", "recon-secrets")}


# --- Prometheus rules ----------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_all(ALERTS)
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules
    return rules


def _strip_promql_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _strip_promql_strings(expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_runbook_anchor_slugs() -> None:
    assert github_anchor("Runbook: inbox lag") == "README.md#runbook-inbox-lag"
    assert (
        github_anchor("Runbook: rotating the webhook secret")
        == "README.md#runbook-rotating-the-webhook-secret"
    )


def test_every_alert_is_complete() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["runbook"] in RUNBOOK_ANCHORS, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.match(r"^\d+[smhd]$", rule["for"]), rule["alert"]


def test_alert_expressions_are_balanced_and_use_known_metrics() -> None:
    keywords = {
        "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
        "and", "or", "unless", "inf", "nan",
    }  # fmt: skip
    for rule in alert_rules():
        expr = rule["expr"]
        assert balanced(expr), rule["alert"]
        # Identifiers outside strings, label matchers, grouping lists and ranges.
        bare = _strip_promql_strings(expr)
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
        idents = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare))
        idents -= keywords
        idents = {i for i in idents if not re.fullmatch(r"\d+[smhdwy]", i)}
        assert idents, rule["alert"]
        assert idents <= KNOWN_METRICS, (rule["alert"], sorted(idents - KNOWN_METRICS))


def test_alert_expressions_parse_as_promql() -> None:
    import promql_parser  # dev dependency: a missing package fails this test

    for rule in alert_rules():
        ast = promql_parser.parse(rule["expr"])
        found: set[str] = set()

        def visit(node: Any, found: set[str] = found) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                found.add(node.name)

        promql_parser.walk(ast, visit)
        assert found, rule["alert"]
        assert found <= KNOWN_METRICS, (rule["alert"], sorted(found - KNOWN_METRICS))


def test_the_required_alerts_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}

    def having(*needles: str) -> list[str]:
        return [a for a, e in exprs.items() if all(n in e for n in needles)]

    assert having("recon_inbox_lag_seconds", "> 300")
    assert having("recon_webhooks_received_total", "bad_signature|error")
    assert having("recon_tickets_opened_total[1h]", "offset")
    assert having("recon_tickets_opened_total", 'severity="critical"')
    assert having("recon_stripe_requests_total", 'outcome="rate_limited"')
    assert having("recon_runs_total", 'status="failed"')
    assert having("recon_runs_total", 'status="partial"')
    inbox_lag = next(r for r in alert_rules() if r["alert"] in having("> 300"))
    assert inbox_lag["for"] == "10m"
    used = {r["annotations"]["runbook"] for r in alert_rules()}
    assert used == RUNBOOK_ANCHORS, "every runbook section is reached by some alert"
