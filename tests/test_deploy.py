"""The files under deploy/: valid offline, consistent with each other and with the code's defaults.

Kubernetes manifests are checked against the API schemas kubernetes-validate ships (no cluster);
the kustomize tree is rendered when kubectl or kustomize is installed. Every proxy.toml is
loaded with the project's own loader.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy.access import exposure_problem
from proxy.config import Config, ServerConfig, loads

from .conftest import StartProxy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
UNIT = DEPLOY / "systemd" / "ppproxy.service"
DASHBOARD = DEPLOY / "grafana" / "ppproxy-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Validate against the oldest Kubernetes minor version the manifests promise to support; the
# kubernetes-validate package ships its schemas, so no network is needed.
KUBERNETES_VERSION = "1.30.0"
DEFAULT_PORT = ServerConfig().port
CONFIG_PATH = "/etc/ppproxy/proxy.toml"
LIVEZ, READYZ = "/_proxy/livez", "/_proxy/readyz"
FEDERATED_TOKEN_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
# What the azure-workload-identity webhook sets in a pod labelled azure.workload.identity/use.
WORKLOAD_IDENTITY_ENV = {
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
}
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = {p.name: p for p in KUSTOMIZATIONS if p.parent.name == "overlays"}


def _id(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


# --- helpers ---------------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kustomization(kdir: Path) -> dict[str, Any]:
    data = yaml.safe_load((kdir / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def patch_files() -> set[Path]:
    return {
        (kdir / p["path"]).resolve()
        for kdir in KUSTOMIZATIONS
        for p in kustomization(kdir).get("patches", [])
        if "path" in p
    }


def full_manifests() -> list[Path]:
    """Every YAML file that is a whole object: all but kustomization files and patches."""
    patches = patch_files()
    return sorted(
        p
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.resolve() not in patches
    )


def generated_configs(kdir: Path) -> list[Path]:
    """The proxy.toml files a kustomization puts into ConfigMaps."""
    return [
        kdir / f
        for gen in kustomization(kdir).get("configMapGenerator", [])
        for f in gen.get("files", [])
        if PurePosixPath(f).name == "proxy.toml"
    ]


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a tool on files of this repository; argv is fixed by the tests, never user input."""
    return subprocess.run(  # noqa: S603 - see the docstring
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def renderer() -> list[str] | None:
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    return None


@functools.cache
def _render(kdir: Path) -> tuple[dict[str, Any], ...]:
    command = renderer()
    assert command is not None
    out = run(*command, str(kdir))
    assert out.returncode == 0, f"{' '.join(command)} {kdir} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d is not None)


def render(kdir: Path) -> tuple[dict[str, Any], ...]:
    """``kdir`` rendered by kustomize itself."""
    if renderer() is None:
        pytest.skip("neither kustomize nor kubectl is on PATH: the kustomize tree is not rendered")
    return _render(kdir)


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """A strategic merge patch, as far as these manifests use it: maps merge, and lists of
    named items (containers, env, volumes, volumeMounts) merge by name."""
    for key, value in patch.items():
        old = target.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            merge(old, value)
        elif isinstance(old, list) and value and all(isinstance(i, dict) for i in value):
            by_name = {i.get("name"): i for i in old if isinstance(i, dict)}
            for item in value:
                if item.get("name") in by_name:
                    merge(by_name[item["name"]], item)
                else:
                    old.append(json.loads(json.dumps(item)))
        else:
            target[key] = json.loads(json.dumps(value))


def mini_build(kdir: Path) -> tuple[dict[str, Any], ...]:
    """What kustomize renders for this tree, without kustomize: resources, configMapGenerator
    (with ``behavior: replace``), patches, namespace and images. No name hashes.
    ``test_mini_build_matches_kustomize`` holds it to kustomize's output where kustomize runs."""
    k = kustomization(kdir)
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        target = kdir / entry
        objects += mini_build(target) if target.is_dir() else yaml_docs(target)
    for gen in k.get("configMapGenerator", []):
        data = {PurePosixPath(f).name: (kdir / f).read_text(encoding="utf-8") for f in gen["files"]}
        made = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}}
        made["data"] = data
        same = [
            o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == gen["name"]
        ]
        assert len(same) == (1 if gen.get("behavior") == "replace" else 0), gen
        if same:  # a replaced ConfigMap keeps what the base gave it, such as its namespace
            made["metadata"] = same[0]["metadata"]
        objects = [o for o in objects if not any(o is x for x in same)] + [made]
    for entry in k.get("patches", []):
        for patch in yaml_docs(kdir / entry["path"]):
            (target,) = [
                o
                for o in objects
                if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            merge(target, patch)
    if namespace := k.get("namespace"):
        for o in objects:
            if o["kind"] != "Namespace":
                o["metadata"]["namespace"] = namespace
    for image in k.get("images", []):
        for o in objects:
            for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return tuple(objects)


def build(kdir: Path) -> tuple[dict[str, Any], ...]:
    """``kdir`` rendered by kustomize when it is installed, else by ``mini_build``."""
    return _render(kdir) if renderer() is not None else mini_build(kdir)


def canonical(node: Any) -> Any:
    """For comparing renderings: generated-name hashes dropped, named items sorted by name."""
    if isinstance(node, dict):
        return {k: canonical(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [canonical(i) for i in node]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    if isinstance(node, str):
        return re.sub(r"^(ppproxy-config)-[a-z0-9]{10}$", r"\1", node)
    return node


def one(objects: Iterator[dict[str, Any]] | tuple[dict[str, Any], ...], kind: str) -> Any:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def validate(obj: dict[str, Any], where: str) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")


def fake_env(text: str, tmp_path: Path) -> dict[str, str]:
    """A value for every ${NAME} in ``text``; directories point into ``tmp_path``."""
    env = {}
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)):
        if name.endswith("_DIRECTORY"):
            env[name] = str(tmp_path / name.lower())
        else:
            env[name] = f"fake-{name.lower().replace('_', '-')}"
    return env


def load_config(text: str, tmp_path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Load ``text`` with the project's loader, as the proxy would at start.

    Every ``*_file`` the configuration names is created first under ``tmp_path`` (absolute
    paths are moved there), so that a loader which checks that the file exists can: the paths
    themselves are checked against the manifests by other tests.
    """
    env = dict(fake_env(text, tmp_path) if env is None else env)
    raw = tomllib.loads(text)
    for table in raw.get("identities", {}).values():
        for key, value in table.items():
            if not key.endswith("_file") or not isinstance(value, str):
                continue
            resolved = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], value)
            target = Path(resolved)
            if not target.is_relative_to(tmp_path):
                target = tmp_path / "files" / target.relative_to(target.anchor)
                text = text.replace(f'"{value}"', json.dumps(str(target)))
            target.parent.mkdir(parents=True, exist_ok=True)
            # A secret's first line, or a JWT-shaped federated token.
            target.write_text("fake-eyJ0eXAiOiJKV1QifQ.e30.c2ln\n", encoding="utf-8")
    return loads(text, env, base_dir=tmp_path)


def pod_spec(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = pod_spec(objects)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def configmap_text(objects: tuple[dict[str, Any], ...]) -> str:
    text: str = one(objects, "ConfigMap")["data"]["proxy.toml"]
    return text


def base_objects() -> tuple[dict[str, Any], ...]:
    """The base's own manifests, unrendered."""
    base = K8S / "base"
    return tuple(d for r in kustomization(base)["resources"] for d in yaml_docs(base / r))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- Kubernetes: offline schema validation ----------------------------------------------------


def test_versions_pinned_are_shipped() -> None:
    """kubernetes-validate ships schemas for the pinned version: validation needs no network."""
    minor = KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert any(v.startswith(minor + ".") for v in kubernetes_validate.utils.all_versions())


@pytest.mark.parametrize("path", full_manifests(), ids=_id)
def test_manifest_is_valid(path: Path) -> None:
    """Every whole manifest passes strict schema validation (unknown fields are errors)."""
    docs = yaml_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, _id(path))


def test_strict_validation_rejects_a_misspelt_field() -> None:
    """The validation above would catch a typo: an unknown field fails."""
    deployment = one(base_objects(), "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=_id)
def test_kustomization_references_exist(kdir: Path) -> None:
    """Every resource, patch and generator file a kustomization lists exists."""
    k = kustomization(kdir)
    assert k["kind"] == "Kustomization"
    listed = [*k.get("resources", []), *(p["path"] for p in k.get("patches", []))]
    listed += [f for g in k.get("configMapGenerator", []) for f in g.get("files", [])]
    assert listed
    for entry in listed:
        target = kdir / entry
        assert target.exists(), f"{_id(kdir)}/kustomization.yaml lists missing {entry}"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{entry} is not a kustomization"


def test_every_manifest_file_is_used() -> None:
    """No YAML file lies around unused: each is listed somewhere or is an *.example.yaml."""
    used = patch_files()
    for kdir in KUSTOMIZATIONS:
        used |= {(kdir / r).resolve() for r in kustomization(kdir).get("resources", [])}
    for path in K8S.rglob("*.yaml"):
        if path.name == "kustomization.yaml" or path.name.endswith(".example.yaml"):
            continue
        assert path.resolve() in used, f"{_id(path)} is listed by no kustomization.yaml"


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=_id)
def test_rendered_manifests_are_valid(kdir: Path) -> None:
    """kustomize's rendering of the base and of each overlay passes strict validation."""
    objects = render(kdir)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    for obj in objects:
        validate(obj, f"rendered {_id(kdir)}")


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=_id)
def test_mini_build_is_valid(kdir: Path) -> None:
    """The same without kustomize: the overlays' patches applied here still give valid objects."""
    for obj in mini_build(kdir):
        validate(obj, f"built {_id(kdir)}")


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=_id)
def test_mini_build_matches_kustomize(kdir: Path) -> None:
    """The stand-in renders what kustomize renders, so the checks below mean the same without it."""
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731 - a sort key
    ours = sorted((canonical(o) for o in mini_build(kdir)), key=key)
    theirs = sorted((canonical(o) for o in render(kdir)), key=key)
    assert ours == theirs


# --- Kubernetes: the configuration in the ConfigMaps ------------------------------------------


@pytest.mark.parametrize("path", [p for k in KUSTOMIZATIONS for p in generated_configs(k)], ids=_id)
def test_configmap_config_loads(path: Path, tmp_path: Path) -> None:
    """Each proxy.toml that goes into a ConfigMap is accepted by the project's loader."""
    text = path.read_text(encoding="utf-8")
    env = fake_env(text, tmp_path)
    if "identities" not in tomllib.loads(text):  # the base: the identity from the environment
        env |= {"AZURE_TENANT_ID": "fake-tenant", "AZURE_CLIENT_ID": "fake-client"}
        env["AZURE_CLIENT_SECRET"] = "fake-secret"
    config = load_config(text, tmp_path, env)
    assert config.server.port == DEFAULT_PORT
    assert ipaddress.ip_address(config.server.host).is_unspecified  # every interface
    # The NetworkPolicy is the access control in the cluster: the config says so explicitly,
    # so the proxy agrees to listen there.
    assert config.server.allow_anonymous_remote
    assert exposure_problem(config) is None


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS, ids=_id)
def test_rendered_configmap_config_loads(kdir: Path, tmp_path: Path) -> None:
    """The proxy.toml in each rendered ConfigMap loads, with the variables the pod provides."""
    objects = build(kdir)
    text = configmap_text(objects)
    provided = {e["name"] for e in container(objects).get("env", [])}
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    if pod_labels.get("azure.workload.identity/use") == "true":
        provided |= WORKLOAD_IDENTITY_ENV
    if kdir.name == "base":  # the base alone leaves the identity to the environment
        provided |= {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"}
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert used <= provided, f"{_id(kdir)}: the pod does not set {sorted(used - provided)}"
    env = fake_env(text, tmp_path)
    if kdir.name == "base":
        env |= {k: f"fake-{k.lower()}" for k in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID")}
        env["AZURE_CLIENT_SECRET"] = "fake-secret"
    load_config(text, tmp_path, env)


def test_overlay_configs_differ_from_base_only_in_identity() -> None:
    """The overlays copy base/proxy.toml and change [identities] only."""
    (base,) = generated_configs(K8S / "base")
    base_raw = tomllib.loads(base.read_text(encoding="utf-8"))
    assert "identities" not in base_raw
    assert OVERLAYS, "no overlays found"
    for kdir in OVERLAYS.values():
        (path,) = generated_configs(kdir)
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        assert set(raw.pop("identities")) == {"default"}
        assert raw == base_raw, f"{_id(path)} drifted from base/proxy.toml outside [identities]"
        behaviours = [g.get("behavior") for g in kustomization(kdir)["configMapGenerator"]]
        assert behaviours == ["replace"]


# --- Kubernetes: the manifests agree with each other and with the configuration --------------


def test_deployment_matches_config() -> None:
    """Ports, config path, probes and shutdown timing in the base agree with proxy.toml."""
    objects = base_objects()
    (config_file,) = generated_configs(K8S / "base")
    server = tomllib.loads(config_file.read_text(encoding="utf-8"))["server"]
    c, spec = container(objects), pod_spec(objects)

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": DEFAULT_PORT}
    assert server.get("port", DEFAULT_PORT) == DEFAULT_PORT

    args = c["args"]
    assert args[:1] == ["serve"]
    config_path = args[args.index("--config") + 1]
    assert config_path == CONFIG_PATH
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_mount = mounts[str(PurePosixPath(config_path).parent)]
    assert "subPath" not in config_mount  # a subPath mount never sees ConfigMap updates
    generator = kustomization(K8S / "base")["configMapGenerator"][0]["name"]
    assert volumes[config_mount["name"]]["configMap"]["name"] == generator

    for probe, path in (("livenessProbe", LIVEZ), ("readinessProbe", READYZ)):
        http = c[probe]["httpGet"]
        assert http["path"] == path
        assert http["port"] in ("http", DEFAULT_PORT)
        assert {"name": "Host", "value": "localhost"} in http["httpHeaders"]

    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert PurePosixPath(sleep[0]).name == "sleep"
    assert float(sleep[1]) == server["drain_delay"] > 0
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > float(sleep[1]) + server["drain_delay"] + server["shutdown_timeout"]


def test_pod_is_locked_down() -> None:
    """Non-root, read-only root file system, no capabilities, seccomp, a writable /tmp only."""
    objects = base_objects()
    spec, c = pod_spec(objects), container(objects)
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]  # noqa: S108 - the pod's /tmp
    assert "emptyDir" in volumes[writable[0]["name"]]
    assert spec["automountServiceAccountToken"] is False
    # The image's user is the one the pod runs as.
    assert pod_sc["runAsUser"] == int(dockerfile_user().split(":")[0])
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]


def test_service_pdb_hpa_and_policy_point_at_the_pods() -> None:
    """Service, PodDisruptionBudget, HPA and NetworkPolicy select the Deployment's pods."""
    objects = base_objects()
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"]  # the HPA owns the count

    service = one(objects, "Service")
    assert selects(service["spec"]["selector"], labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]

    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # With maxUnavailable 1, one pod always serves during a drain only if there are two.
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] == 1

    policy = one(objects, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"ppproxy-client": "true"}}}]
    assert [p["port"] for p in rule["ports"]] == [DEFAULT_PORT]

    account = one(objects, "ServiceAccount")
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (account["metadata"]["name"])
    )


def test_allowed_hosts_name_the_service() -> None:
    """The Host names the proxy accepts are the Service's DNS names in its namespace."""
    (config_file,) = generated_configs(K8S / "base")
    allowed = tomllib.loads(config_file.read_text(encoding="utf-8"))["server"]["allowed_hosts"]
    service = one(base_objects(), "Service")["metadata"]["name"]
    namespace = kustomization(K8S / "base")["namespace"]
    assert f"{service}.{namespace}.svc.cluster.local" in allowed
    assert all(h.startswith(f"{service}.{namespace}") for h in allowed)


def test_workload_identity_overlay_has_no_secret() -> None:
    """Workload identity: pod label, client-id annotation, federated token file, no secret."""
    objects = build(OVERLAYS["workload-identity"])
    template = one(objects, "Deployment")["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = one(objects, "ServiceAccount")
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}", client_id)
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert not [v for v in template["spec"]["volumes"] if "secret" in v]
    assert "secretKeyRef" not in json.dumps(template)
    identity = tomllib.loads(configmap_text(objects))["identities"]["default"]
    assert identity["federated_token_file"] == FEDERATED_TOKEN_FILE
    assert not [k for k in identity if "secret" in k or "password" in k or "certificate" in k]


def test_client_secret_overlay_mounts_the_secret_the_config_reads() -> None:
    """Client secret: the Secret's key is mounted as the file client_secret_file names."""
    kdir = OVERLAYS["client-secret"]
    objects = build(kdir)
    c, spec = container(objects), pod_spec(objects)
    identity = tomllib.loads(configmap_text(objects))["identities"]["default"]
    assert "client_secret" not in identity  # a file, never the value in the ConfigMap
    secret_file = PurePosixPath(identity["client_secret_file"])

    (example,) = yaml_docs(kdir / "secret.example.yaml")
    name, keys = example["metadata"]["name"], set(example["stringData"])
    assert example["metadata"]["namespace"] == kustomization(K8S / "base")["namespace"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(secret_file.parent))
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # rotation reaches the file only without subPath
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    assert volume["secretName"] == name
    assert {"key": "client-secret", "path": secret_file.name} in volume["items"]
    assert volume["defaultMode"] & 0o007 == 0  # not readable by others
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    for var in c["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == name
        assert ref["key"] in keys
    assert "client-secret" in keys


# --- Docker ------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def dockerfile_user() -> str:
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the final stage sets no USER"
    return users[-1]


def exec_form(word: str) -> list[str]:
    (rest,) = [rest for w, rest in final_stage() if w == word]
    value = json.loads(rest)
    assert isinstance(value, list)
    return value


def healthcheck_command() -> list[str]:
    (rest,) = [rest for w, rest in final_stage() if w == "HEALTHCHECK"]
    _, _, command = rest.partition("CMD ")
    value = json.loads(command)
    assert isinstance(value, list)
    return value


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    instructions = dockerfile()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert image.startswith("python:3.11-slim"), image
    assert any("--from=" in rest for word, rest in final_stage() if word == "COPY")


def test_dockerfile_runs_as_non_root() -> None:
    user, _, group = dockerfile_user().partition(":")
    assert user.isdigit(), "runAsNonRoot can only verify a numeric user"
    assert int(user) > 0
    if group:
        assert group.isdigit()
        assert int(group) > 0


def test_dockerfile_port_config_and_command_match_the_code() -> None:
    stage = final_stage()
    assert [rest for word, rest in stage if word == "EXPOSE"] == [str(DEFAULT_PORT)]
    entrypoint, cmd = exec_form("ENTRYPOINT"), exec_form("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert entrypoint == ["ppproxy"]
    assert scripts["ppproxy"] == "proxy.cli:main"
    argv = entrypoint[1:] + cmd
    assert argv[0] == "serve"
    assert argv[argv.index("--config") + 1] == CONFIG_PATH
    assert "--port" not in argv  # the port is the configuration's, the same the image exposes
    command = healthcheck_command()
    assert command[0] == "python"
    assert f"http://127.0.0.1:{DEFAULT_PORT}{LIVEZ}" in command[-1]


def test_dockerfile_suits_a_read_only_root() -> None:
    """Bytecode is compiled at build time, never written at run time; HOME and TMPDIR are /tmp."""
    env = " ".join(rest for word, rest in final_stage() if word == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp", "TMPDIR=/tmp"):
        assert setting in env
    build = " ".join(rest for word, rest in dockerfile() if word == "RUN")
    assert "compileall" in build
    final = " ".join(rest for word, rest in final_stage() if word == "RUN")
    assert not re.search(r"\b(curl|wget|apt-get)\b", final), "no HTTP client in the image"


def test_dockerfile_copies_existing_paths_not_ignored() -> None:
    """What the build copies from the context exists and is not excluded by .dockerignore."""
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    included = {
        line[1:].strip().rstrip("/") for line in ignore.splitlines() if line.startswith("!")
    }
    copies = [rest for word, rest in dockerfile() if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in included, f"{source} is excluded by .dockerignore"


def test_docker_config_loads(tmp_path: Path) -> None:
    """The sample config for the image loads, serves the exposed port and may bind 0.0.0.0."""
    text = (DEPLOY / "docker" / "proxy.toml").read_text(encoding="utf-8")
    config = load_config(text, tmp_path)
    assert config.server.port == DEFAULT_PORT
    cmd = exec_form("CMD")
    host = cmd[cmd.index("--host") + 1]
    # The proxy agrees to start on the address the image passes.
    listening = replace(config, server=replace(config.server, host=host))
    assert exposure_problem(listening) is None


async def test_dockerfile_healthcheck_works(start_proxy: StartProxy, unused_port: int) -> None:
    """The HEALTHCHECK command exits 0 against a live proxy, non-zero when nothing listens,
    and ignores an HTTP_PROXY set for the outbound side."""
    command = healthcheck_command()
    target = f"127.0.0.1:{DEFAULT_PORT}"
    assert target in command[-1]
    proxy = await start_proxy()
    live = proxy.url.removeprefix("http://")
    # An HTTP proxy that does not exist: the check must not try to use it.
    env = {**os.environ, "HTTP_PROXY": f"http://127.0.0.1:{unused_port}", "NO_PROXY": ""}

    async def run(address: str) -> int:
        argv = [sys.executable, *command[1:-1], command[-1].replace(target, address)]
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(process.wait(), 30)

    assert await run(live) == 0
    assert await run(f"127.0.0.1:{unused_port}") != 0


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- systemd -----------------------------------------------------------------------------------


def unit() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every assignment, in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        stripped, pending = (pending + stripped).strip(), ""
        if stripped.startswith("["):
            current = sections.setdefault(stripped.strip("[]"), {})
            continue
        assert current is not None, f"{stripped!r} before any section"
        key, _, value = stripped.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize(("key", "value"), HARDENING.items())
def test_unit_is_hardened(key: str, value: str) -> None:
    service = unit()["Service"]
    assert key in service, f"{key}= is missing"
    assert service[key][-1] == value  # the last assignment is the one that counts


def test_unit_filters_system_calls() -> None:
    filters = unit()["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:])  # later lines only take away


def test_unit_starts_the_proxy_with_the_config() -> None:
    (exec_start,) = unit()["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert PurePosixPath(argv[0]).is_absolute()
    assert PurePosixPath(argv[0]).name == "ppproxy"
    assert argv[1] == "serve"
    assert argv[argv.index("--config") + 1] == CONFIG_PATH
    assert "--port" not in argv  # the configuration decides
    assert "--host" not in argv


def test_unit_reloads_with_sighup() -> None:
    """docs/operations.md says `systemctl reload ppproxy`: the unit must define it as SIGHUP."""
    (reload,) = unit()["Service"]["ExecReload"]
    assert shlex.split(reload) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_unit_and_its_config_agree(tmp_path: Path) -> None:
    """The sample config loads, keeps the default port on loopback, and reads the secret from
    the credential the unit loads; the stop timeout covers drain and shutdown."""
    text = (DEPLOY / "systemd" / "proxy.toml").read_text(encoding="utf-8")
    credentials = tmp_path / "credentials"
    config = load_config(text, tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.server.port == DEFAULT_PORT
    assert config.server.host == ServerConfig().host

    identity = tomllib.loads(text)["identities"]["default"]
    assert "client_secret" not in identity
    secret_file = identity["client_secret_file"]
    assert secret_file.startswith("${CREDENTIALS_DIRECTORY}/")
    (credential,) = unit()["Service"]["LoadCredential"]
    name, _, source = credential.partition(":")
    assert name == PurePosixPath(secret_file).name
    assert PurePosixPath(source).is_absolute()

    stop = float(unit()["Service"]["TimeoutStopSec"][-1].removesuffix("s"))
    assert stop > config.server.drain_delay + config.server.shutdown_timeout


def executable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's program replaced by one that exists on this machine, since
    `systemd-analyze verify` checks that it does; everything else is verified as written."""
    program = shlex.split(unit()["Service"]["ExecStart"][0])[0]
    here = shutil.which("ppproxy") or sys.executable
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text(encoding="utf-8").replace(program, here), encoding="utf-8")
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if not (analyze := shutil.which("systemd-analyze")):
        pytest.skip("systemd-analyze is not installed: the unit is only parsed, not verified")
    out = run(analyze, "verify", "--man=no", str(executable_unit(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert "ppproxy.service" not in out.stderr, out.stderr


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the sandbox's exposure 2.0 or lower ("OK")."""
    if not (analyze := shutil.which("systemd-analyze")):
        pytest.skip("systemd-analyze is not installed: the sandbox is not rated")
    out = run(analyze, "security", "--offline=yes", str(executable_unit(tmp_path)))
    if "--offline" in out.stderr and out.returncode != 0:
        pytest.skip("this systemd-analyze cannot rate a unit file offline (needs systemd 250+)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0


# The proxy end to end with writable+executable memory forbidden, as MemoryDenyWriteExecute=yes
# forbids it. PR_SET_MDWE (Linux 6.3+) is the kernel's own form of that systemd setting.
MDWE_SCRIPT = r"""
import asyncio, ctypes, sys, tempfile
from pathlib import Path

libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
import cffi
try:
    cffi.FFI().callback("int(int)", lambda x: x)
except MemoryError:
    pass  # the sandbox is in force: cffi callbacks need writable+executable memory
else:
    sys.exit("writable and executable memory is still allowed")

import aiohttp
from aiohttp import web
from proxy.app import create_app
from proxy.config import from_dict
from proxy.testing import EchoUpstream, IdentityProvider, LocalCA

async def main():
    ca = LocalCA()
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = ca.write_ca_file(Path(tmp) / "ca.pem")
        async with IdentityProvider(ca, clients={"c": "s"}) as idp, EchoUpstream(
            ssl_context=ca.server_context()
        ) as echo:
            config = from_dict({
                "outbound": {"ca_file": str(ca_file)},
                "identities": {"default": {"tenant_id": idp.tenant, "client_id": "c",
                    "client_secret": "s", "authority_host": idp.authority_host}},
                "routes": [{"name": "echo", "prefix": "/echo", "upstream": echo.url}],
            }, {}, base_dir=Path(tmp))
            runner = web.AppRunner(create_app(config))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{port}/echo/x") as response:
                        assert response.status == 200, response.status
            finally:
                await runner.cleanup()
            headers = {k.lower(): v for k, v in echo.requests[-1].headers}
            assert headers["authorization"].startswith("Bearer "), headers
    print("proxied with a token")

asyncio.run(main())
"""


def test_proxy_runs_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes in the unit does not break a proxied, token-bearing request."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_MDWE is Linux-only")
    out = run(sys.executable, "-c", MDWE_SCRIPT, timeout=120)
    if out.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "proxied with a token" in out.stdout


# --- Grafana and the alert rules in docs/operations.md ----------------------------------------

METRICS = {
    "ppproxy_requests_total": {"route", "method", "status_class"},
    "ppproxy_request_duration_seconds": {"route"},
    "ppproxy_upstream_duration_seconds": {"route"},
    "ppproxy_request_bytes_total": {"route"},
    "ppproxy_response_bytes_total": {"route"},
    "ppproxy_requests_in_flight": {"route"},
    "ppproxy_requests_queued": {"route"},
    "ppproxy_token_requests_total": {"identity", "scope", "result"},
    "ppproxy_token_expiry_seconds": {"identity", "scope"},
    "ppproxy_identity_errors_total": {"code"},
    "ppproxy_upstream_throttled_total": {"route"},
    "ppproxy_throttle_wait_seconds": {"route"},
    "ppproxy_rate_limited_total": {"route", "client"},
}
HISTOGRAMS = {
    "ppproxy_request_duration_seconds",
    "ppproxy_upstream_duration_seconds",
    "ppproxy_throttle_wait_seconds",
}
# Labels Prometheus adds to every series it scrapes (and Kubernetes service discovery adds).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}


def check_promql(expr: str) -> set[str]:
    """The ppproxy metric names ``expr`` uses; fails on an unknown name or label."""
    names = set()
    for m in re.finditer(r"\b(ppproxy_[a-z_]+)(\{[^}]*\})?", expr):
        name = m.group(1)
        for suffix in ("_bucket", "_sum", "_count"):
            if name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
                labels = METRICS[name] | ({"le"} if suffix == "_bucket" else set())
                break
        else:
            assert name in METRICS, f"unknown metric {name} in {expr}"
            labels = METRICS[name]
        names.add(name)
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2) or ""):
            assert label in labels | TARGET_LABELS, f"{name} has no label {label}: {expr}"
    if not names:  # another exporter's metrics (kube-state-metrics): not ours to check
        return names
    known = set().union(*(METRICS[n] for n in names), {"le"}, TARGET_LABELS)
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (s.strip() for s in group.split(","))):
            assert label in known, f"no metric in {expr!r} has the label {label}"
    return names


def test_check_promql_rejects_unknown_names() -> None:
    """The dashboard check below would catch a wrong metric or label name."""
    with pytest.raises(AssertionError):
        check_promql("rate(ppproxy_request_total[5m])")
    with pytest.raises(AssertionError):
        check_promql('sum by (status) (rate(ppproxy_requests_total{route="x"}[5m]))')
    assert check_promql("rate(ppproxy_request_duration_seconds_bucket[5m])") == {
        "ppproxy_request_duration_seconds"
    }


def strings_under(node: Any, keys: set[str]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            else:
                yield from strings_under(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from strings_under(item, keys)


def test_grafana_dashboard_uses_only_the_proxy_metrics() -> None:
    """The dashboard parses, and its queries name only the metrics and labels the proxy exports;
    every metric has a panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["panels"]
    exprs = list(strings_under(dashboard, {"expr", "definition"}))
    assert exprs
    used = set().union(*(check_promql(e) for e in exprs))
    assert used == set(METRICS)
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]


def alert_rules() -> list[dict[str, Any]]:
    text = OPERATIONS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    rules = [
        rule
        for block in blocks
        if (doc := yaml.safe_load(block)) and "groups" in doc
        for group in doc["groups"]
        for rule in group["rules"]
    ]
    assert rules, "docs/operations.md has no Prometheus rule group"
    return rules


def test_documented_alerts_use_the_proxy_metrics() -> None:
    rules = alert_rules()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        check_promql(rule["expr"])
    exprs = " ".join(r["expr"] for r in rules)
    for needed in ("ppproxy_token_expiry_seconds", "ppproxy_identity_errors_total", '"5xx"'):
        assert needed in exprs


def test_docs_name_only_existing_deploy_files() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    paths = set(re.findall(r"\bdeploy/[\w./-]+[\w/]", text))
    assert paths
    for path in paths:
        assert (ROOT / path).exists(), f"docs/operations.md names missing {path}"
