"""Offline checks of the Kubernetes manifests in cluster/k8s/ (runbook: docs/cluster.md).

Every manifest is checked the way the cluster would check it: against the real KubeRay CRD
schemas (../shared/kuberay, OpenAPI v3 converted to JSON Schema, unknown fields rejected as
`kubectl apply`'s strict field validation does, and their CEL rules, x-kubernetes-validations,
evaluated with cel-python), Kubernetes' own schemas (kubernetes-validate) and
KubeRay's naming rules. Then against the code it launches: the RayJob entry points and configs
exist, each stage's Ray resource plan (``afmrl.plan.resource_plan``: the placements the code
creates its actors, workers and deployments with) fits the cluster its RayJob creates, and the
RayService's Serve config is the generator's output for configs/gpu.yaml, passes Ray's schema,
names the deployments the code defines and its plan fits its cluster. The manifests are
hand-written (the serve config generated); these checks are what keeps them true.
"""
from __future__ import annotations

import ast
import functools
import math
import re
import shlex
from decimal import Decimal
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from afmrl.config import load_config
from afmrl.layout import RunLayout
from afmrl.plan import resource_plan
from afmrl.serve.config_gen import SearchAppArgs
from afmrl.serve.config_gen import serve_config as generated_serve_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO.parent / "shared" / "kuberay"
CLUSTER = REPO / "cluster"
MANIFESTS = sorted((CLUSTER / "k8s").glob("*.yaml"))
DOCUMENTS = [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
RAY_DOCS = [(path, doc) for path, doc in DOCUMENTS if doc["kind"] in CRD_FILES]
RAY_JOBS = [(path, doc) for path, doc in RAY_DOCS if doc["kind"] == "RayJob"]
RAY_SERVICES = [(path, doc) for path, doc in RAY_DOCS if doc["kind"] == "RayService"]
LAUNCHERS = RAY_JOBS + RAY_SERVICES  # the manifests that run afmrl code with a config

# The pipeline stages each job runs (one after another; resource_plan splits them into steps).
STAGES_OF_JOB = {"extract_attributes": ("extract",), "stage1": ("train",), "stage2": ("rar",),
                 "cit": ("extract", "train", "rar")}
SERVE_DEPLOYMENTS = {"Embedder", "Retriever", "AttributeGenerator", "SearchIngress"}
IMAGES = {"afmrl:cpu", "afmrl:gpu"}
GPU = "nvidia.com/gpu"
# Service names must be DNS-1035 labels and KubeRay requires them for its own kinds; KubeRay
# appends suffixes to RayJob/RayService names when it names their clusters, hence the lengths.
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_NAME_LENGTH = {"RayCluster": 53, "RayJob": 47, "RayService": 47}


def ids(pairs):
    return [f"{path.name}:{doc['metadata']['name']}" for path, doc in pairs]


# ---------------------------------------------------------------------------------------------
# Helpers: schema dialect, quantities, the clusters a manifest creates, bin packing.


def openapi_to_json_schema(schema: dict) -> dict:
    """Kubernetes' structural OpenAPI v3 dialect -> JSON Schema (draft 7).

    int-or-string becomes anyOf integer/string, nullable adds "null", and objects with declared
    properties reject undeclared ones unless x-kubernetes-preserve-unknown-fields says otherwise
    (the API server's strict field validation, the default of `kubectl apply`).
    """
    out: dict = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: openapi_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = openapi_to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [openapi_to_json_schema(sub) for sub in value]
        elif key not in ("description", "nullable") and not key.startswith("x-kubernetes-"):
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(openapi_to_json_schema(_crd_schema(kind)))


@functools.cache
def _crd_schema(kind: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY / CRD_FILES[kind]).read_text(), Loader=loader)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"]


@functools.cache
def _cel_program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(schema: dict, value, where: str = "") -> list[str]:
    """The CRD's CEL rules (x-kubernetes-validations) evaluated with cel-python on every node
    of ``value`` that has them, as the API server does on create. Transition rules (those
    reading ``oldSelf``) only run on updates, so a create cannot break them."""
    import celpy

    errors = []
    for check in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in check["rule"]:
            continue
        if not _cel_program(check["rule"]).evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(f"{where or '<root>'}: {check.get('message', check['rule'])}")
    if isinstance(value, dict):
        for key, sub in value.items():
            child = schema.get("properties", {}).get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                errors += cel_errors(child, sub, f"{where}.{key}" if where else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += cel_errors(schema["items"], sub, f"{where}[{i}]")
    return errors


def crd_errors(doc: dict) -> list[str]:
    """Structural schema errors (jsonschema) plus the CRD's CEL rules (cel-python)."""
    if not KUBERAY.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY}: the shared/ folder beside the "
                    f"repository holds them")
    validator = _crd_validator(doc["kind"])
    return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message[:300]}"
            for error in validator.iter_errors(doc)] + cel_errors(_crd_schema(doc["kind"]), doc)


_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3,
           "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity ('500m', '28Gi', '1e3', 4) as a number."""
    match = _QUANTITY.fullmatch(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 28Gi)")
    number, suffix = match.groups()
    if suffix and suffix not in _SUFFIX:  # an exponent: 1e3
        return Decimal(number + suffix)
    return Decimal(number) * _SUFFIX.get(suffix, 1)


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a RayCluster, RayJob or RayService creates."""
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]


def groups(doc: dict) -> list[tuple[str, dict]]:
    """(name, group spec) of the head group and every worker group."""
    spec = cluster_spec(doc)
    return [("head", spec["headGroupSpec"]),
            *((group["groupName"], group) for group in spec.get("workerGroupSpecs", []))]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(group or deployment name, pod template) of every pod a document creates."""
    if doc["kind"] in CRD_FILES:
        return [(name, group["template"]) for name, group in groups(doc)]
    if doc["kind"] == "Deployment":
        return [(doc["metadata"]["name"], doc["spec"]["template"])]
    return []


def pod_ray_resources(group: dict) -> dict[str, float]:
    """What `ray start` advertises in a group's pods: rayStartParams, else what KubeRay derives
    from the Ray container's limits (CPUs rounded up; memory = the memory limit)."""
    params = group.get("rayStartParams", {})
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return {"CPU": float(params.get("num-cpus", math.ceil(quantity(limits["cpu"])))),
            "GPU": float(params.get("num-gpus", quantity(limits.get(GPU, 0)))),
            "memory": float(params.get("memory", quantity(limits["memory"])))}


def cluster_pods(doc: dict) -> list[dict[str, float]]:
    """Ray resources of every pod the cluster can have: the head plus maxReplicas per group."""
    return [pod_ray_resources(group) for name, group in groups(doc)
            for _ in range(1 if name == "head" else group["maxReplicas"])]


def fits(bundles: list[dict[str, float]], pods: list[dict[str, float]]) -> bool:
    """Whether every bundle (one actor or worker; it cannot span pods) finds a pod, packed first
    fit, largest first: enough to show the cluster can hold the request."""
    free = [dict(pod) for pod in pods]
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0)), reverse=True):
        pod = next((p for p in free if all(p.get(k, 0) >= v - 1e-9 for k, v in bundle.items())),
                   None)
        if pod is None:
            return False
        for key, amount in bundle.items():
            pod[key] -= amount
    return True


def step_bundles(plan) -> list[dict[str, float]]:
    """One Ray resource bundle per actor / worker / replica a step of ``afmrl plan`` creates."""
    return [placement.bundle() for placement in plan.placements
            for _ in range(placement.count)]


def describe(plan) -> str:
    return ", ".join(f"{p.count} x {p.component} {p.bundle()}" for p in plan.placements)


def parse_entrypoint(entrypoint: str) -> tuple[str, str, list[str]]:
    """'python jobs/x.py --config c.yaml k=v ...' -> (script, config, overrides)."""
    argv = shlex.split(entrypoint)
    assert len(argv) >= 4 and argv[0] == "python" and argv[2] == "--config", (
        f"entrypoint {entrypoint!r} must read 'python jobs/<x>.py --config <file> [key=value ...]'")
    return argv[1], argv[3], argv[4:]


def cluster_file(name: str) -> str:
    return (CLUSTER / name).read_text()


def image_repo() -> PurePosixPath:
    """Where the Dockerfiles put the repository (their WORKDIR)."""
    return PurePosixPath(re.search(r"^WORKDIR\s+(\S+)", cluster_file("Dockerfile.cpu"), re.M)[1])


def in_image(path: Path) -> PurePosixPath:
    """A path the config resolved in this checkout, as the image lays it out."""
    for local, image in ((REPO, image_repo()), (REPO.parent, image_repo().parent)):
        if path.is_relative_to(local):
            return image / path.relative_to(local)
    return PurePosixPath(path)


def serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


def ignored_keys(raw, parsed, where: str = "") -> list[str]:
    """Keys of `raw` a lenient schema dropped while parsing it into `parsed`."""
    if isinstance(raw, dict) and isinstance(parsed, dict):
        found = []
        for key, value in raw.items():
            path = f"{where}.{key}" if where else key
            found += [path] if key not in parsed else ignored_keys(value, parsed[key], path)
        return found
    if isinstance(raw, list) and isinstance(parsed, list):
        return [path for i, (r, p) in enumerate(zip(raw, parsed))
                for path in ignored_keys(r, p, f"{where}[{i}]")]
    return []


def serve_ignored_keys(raw: dict) -> list[str]:
    """Keys Ray Serve accepts and silently ignores (typos such as num_gpu): its deploy schema drops
    them, and keeps autoscaling_config a plain dict for AutoscalingConfig, which drops them too."""
    found = ignored_keys(raw, ServeDeploySchema.model_validate(raw).model_dump(exclude_unset=True))
    for i, app in enumerate(raw["applications"]):
        for j, deployment in enumerate(app.get("deployments", [])):
            scaling = deployment.get("autoscaling_config", {})
            parsed = AutoscalingConfig(**scaling).model_dump(exclude_unset=True)
            found += ignored_keys(scaling, parsed,
                                  f"applications[{i}].deployments[{j}].autoscaling_config")
    return found


SERVE_DECORATORS = ("serve.deployment", "deployment")


def _deployment_name(call: ast.Call, default: str) -> str:
    renamed = [kw.value.value for kw in call.keywords
               if kw.arg == "name" and isinstance(kw.value, ast.Constant)]
    return renamed[0] if renamed else default


def deployment_names_in_code(source: str) -> set[str]:
    """Deployment names in the source: classes decorated with @serve.deployment(...), and
    ``X = serve.deployment(name=...)(SomeClass)`` assignments."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                call = decorator if isinstance(decorator, ast.Call) else None
                if ast.unparse(call.func if call else decorator) in SERVE_DECORATORS:
                    names.add(_deployment_name(call, node.name) if call else node.name)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Call)
              and ast.unparse(node.value.func.func) in SERVE_DECORATORS):
            target = node.targets[0].id if isinstance(node.targets[0], ast.Name) else ""
            names.add(_deployment_name(node.value.func, target))
    return names


# ---------------------------------------------------------------------------------------------
# The manifest set and the images.


def test_every_manifest_of_the_runbook_exists():
    names = {path.name for path in MANIFESTS}
    expected = {"raycluster.autoscaling.yaml", "rayjob.extract.yaml", "rayjob.stage1.yaml",
                "rayjob.stage2.yaml", "rayjob.cit.yaml", "rayservice.search.yaml",
                "persistentvolumeclaim.storage.yaml", "deployment.mlflow.yaml",
                "service.mlflow.yaml"}
    assert expected <= names, f"missing manifests: {sorted(expected - names)}"


@pytest.mark.parametrize(("path", "doc"), DOCUMENTS, ids=ids(DOCUMENTS))
def test_file_named_kind_dot_purpose(path, doc):
    match = re.fullmatch(r"([a-z]+)\.([a-z0-9-]+)\.yaml", path.name)
    assert match and match[1] == doc["kind"].lower(), (
        f"{path.name} holds a {doc['kind']}: name it {doc['kind'].lower()}.<purpose>.yaml")


def test_one_ray_version_across_pins_images_and_manifests():
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    ray = re.search(r"^ray==(\S+)", constraints, re.M)[1]
    for name, suffix in (("Dockerfile.cpu", ""), ("Dockerfile.gpu", "-gpu")):
        base = f"rayproject/ray:{ray}-py311{suffix}"
        assert f"ARG RAY_IMAGE={base}\n" in cluster_file(name), f"{name}: base it on {base}"
    for path, doc in RAY_DOCS:
        assert cluster_spec(doc)["rayVersion"] == ray, f"{path.name}: rayVersion must be {ray}"


def test_both_images_put_the_repository_in_the_same_place():
    assert re.findall(r"^WORKDIR\s+(\S+)", cluster_file("Dockerfile.gpu"), re.M) == [
        str(image_repo())]


def test_dockerignore_files_agree_and_keep_runs_venv_git_and_data_out():
    def patterns(name):
        return [line for line in cluster_file(name).splitlines()
                if line.strip() and not line.startswith("#")]

    cpu = patterns("Dockerfile.cpu.dockerignore")
    assert cpu == patterns("Dockerfile.gpu.dockerignore")
    assert {".git", ".venv", "runs", "data"} <= set(cpu)


# ---------------------------------------------------------------------------------------------
# Schemas: the KubeRay CRDs and Kubernetes' own.


@pytest.mark.parametrize(("path", "doc"), RAY_DOCS, ids=ids(RAY_DOCS))
def test_ray_manifest_matches_kuberay_crd(path, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    errors = crd_errors(doc)
    assert not errors, f"{path.name} breaks the {doc['kind']} CRD:\n" + "\n".join(errors)


def test_openapi_dialect_becomes_json_schema():
    validator = jsonschema.Draft7Validator(openapi_to_json_schema({
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True},
            "note": {"type": "string", "nullable": True},
            "free": {"type": "object", "properties": {"a": {"type": "integer"}},
                     "x-kubernetes-preserve-unknown-fields": True}}}))
    assert validator.is_valid({"port": 8000, "note": None, "free": {"a": 1, "b": 2}})
    assert validator.is_valid({"port": "http"})
    for wrong in ({"port": 1.5}, {"note": 3}, {"free": {"a": "1"}}, {"prot": 8000}):
        assert not validator.is_valid(wrong), wrong


BROKEN = {  # what goes wrong: (where in a valid RayCluster, the bad value)
    "rayStartParams value not a string": (("spec", "headGroupSpec", "rayStartParams", "num-cpus"),
                                          0),
    "misspelt field": (("spec", "workerGroupSpecs", 0, "minReplica"), 0),
    "replicas as a string": (("spec", "workerGroupSpecs", 0, "maxReplicas"), "8"),
    "unknown top-level field": (("spek",), {}),
}


CEL_BROKEN = {  # what a CEL rule of the CRDs forbids: (RayJob path, value, the rule's message)
    "managedBy not a known controller": (("spec", "managedBy"), "someone-else",
                                         "managedBy field value must be either"),
    "deletion rule with both conditions": (
        ("spec", "deletionStrategy"),
        {"deletionRules": [{"policy": "DeleteCluster", "condition": {
            "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}}]},
        "cannot be used together within the same deletion condition"),
    "legacy policy without its pair": (
        ("spec", "deletionStrategy"), {"onSuccess": {"policy": "DeleteCluster"}},
        "requires either BOTH onSuccess and onFailure"),
}


@pytest.mark.parametrize(("keys", "value", "message"), CEL_BROKEN.values(),
                         ids=CEL_BROKEN.keys())
def test_crd_cel_rules_reject_what_they_guard(keys, value, message):
    doc = yaml.safe_load((CLUSTER / "k8s" / "rayjob.stage1.yaml").read_text())
    assert crd_errors(doc) == []
    doc[keys[0]][keys[1]] = value
    assert any(message in error for error in crd_errors(doc)), crd_errors(doc)


@pytest.mark.parametrize(("keys", "value"), BROKEN.values(), ids=BROKEN.keys())
def test_crd_validation_rejects_broken_manifests(keys, value):
    doc = yaml.safe_load((CLUSTER / "k8s" / "raycluster.autoscaling.yaml").read_text())
    assert crd_errors(doc) == []
    node = doc
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    errors = crd_errors(doc)
    assert any(str(keys[-1]) in error for error in errors), errors


def core_objects(doc: dict) -> list[tuple[str, dict]]:
    """Objects Kubernetes itself defines: the document, or the pods/services a Ray kind embeds."""
    if doc["kind"] not in CRD_FILES:
        return [(doc["kind"], doc)]
    pods = [(f"pod {name}", {"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": name, **template.get("metadata", {})},
                             "spec": template["spec"]}) for name, template in pod_templates(doc)]
    service = doc["spec"].get("serveService")
    return pods + ([("serveService", {"apiVersion": "v1", "kind": "Service", **service})]
                   if service else [])


@pytest.mark.parametrize(("path", "doc"), DOCUMENTS, ids=ids(DOCUMENTS))
def test_core_objects_match_kubernetes_schemas(path, doc):
    version = kubernetes_validate.latest_version()
    for what, obj in core_objects(doc):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {what}: {'.'.join(map(str, error.path))}: {error.message}")


def test_kubernetes_validation_rejects_a_misspelt_pod_field():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "x", "image": "afmrl:cpu", "resource": {}}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


# ---------------------------------------------------------------------------------------------
# Plain Kubernetes and KubeRay rules the schemas do not express.


def test_everything_lives_in_one_explicit_namespace():
    """Services are addressed as <name>.<namespace>.svc (the config's MLflow URI, for one)."""
    namespaces = {f"{path.name}:{doc['metadata']['name']}": doc["metadata"].get("namespace")
                  for path, doc in DOCUMENTS}
    assert None not in namespaces.values() and len(set(namespaces.values())) == 1, namespaces


@pytest.mark.parametrize(("path", "doc"), DOCUMENTS, ids=ids(DOCUMENTS))
def test_names_are_valid(path, doc):
    name, longest = doc["metadata"]["name"], MAX_NAME_LENGTH.get(doc["kind"], 63)
    assert DNS_1035.fullmatch(name) and len(name) <= longest, (
        f"{path.name}: {name!r} must be a DNS-1035 label of at most {longest} characters")
    if doc["kind"] in CRD_FILES:
        group_names = [group_name for group_name, _ in groups(doc)]
        assert len(set(group_names)) == len(group_names), f"{path.name}: duplicate groupName"
    for where, template in pod_templates(doc):
        for label in [where] + [c["name"] for c in template["spec"]["containers"]]:
            assert DNS_1123_LABEL.fullmatch(label) and len(label) <= 63, (
                f"{path.name}: {label!r} must be a DNS-1123 label")


@pytest.mark.parametrize("value, expected", [("500m", Decimal("0.5")), ("7", 7), (4, 4),
                                             ("28Gi", 28 * 2**30), ("1e3", 1000),
                                             ("2E", 2 * 10**18), ("1.5k", 1500)])
def test_quantity_parses_kubernetes_notation(value, expected):
    assert quantity(value) == expected


@pytest.mark.parametrize("value", ["1.5 Gi", "2GB", "one", "", "Gi"])
def test_quantity_rejects_malformed_values(value):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity(value)


@pytest.mark.parametrize(("path", "doc"), DOCUMENTS, ids=ids(DOCUMENTS))
def test_container_requests_do_not_exceed_limits(path, doc):
    for where, template in pod_templates(doc):
        for container in template["spec"]["containers"]:
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            for key in requests.keys() & limits.keys():
                assert quantity(requests[key]) <= quantity(limits[key]), (
                    f"{path.name} {where}/{container['name']}: {key} request > limit")
            if GPU in requests:  # extended resources cannot be overcommitted
                assert requests[GPU] == limits.get(GPU), (
                    f"{path.name} {where}: GPU requests must equal limits")


@pytest.mark.parametrize(("path", "doc"), RAY_DOCS, ids=ids(RAY_DOCS))
def test_ray_pods_advertise_what_they_are_given(path, doc):
    """KubeRay passes the Ray container's limits to `ray start`: without limits Ray sees the whole
    node, fractional CPUs are rounded up (oversubscribed), and a GPU count other than the pod's
    breaks CUDA device assignment. The image must be the CUDA one wherever a GPU is attached."""
    for name, group in groups(doc):
        container = group["template"]["spec"]["containers"][0]
        limits = container.get("resources", {}).get("limits", {})
        where = f"{path.name} group {name}"
        assert {"cpu", "memory"} <= limits.keys(), f"{where}: set cpu and memory limits"
        cpus, gpus = quantity(limits["cpu"]), quantity(limits.get(GPU, 0))
        assert name == "head" or cpus == int(cpus), f"{where}: use whole CPUs, not {cpus}"
        advertised = pod_ray_resources(group)
        assert advertised["CPU"] <= cpus and advertised["GPU"] == gpus, (
            f"{where}: Ray advertises {advertised}, the pod has {cpus} CPUs and {gpus} GPUs")
        assert container["image"] in IMAGES, f"{where}: use a placeholder image of {IMAGES}"
        assert not gpus or container["image"] == "afmrl:gpu", f"{where}: GPUs need afmrl:gpu"
    assert groups(doc)[0][1]["rayStartParams"].get("num-cpus") == "0", (
        f"{path.name}: the head runs no tasks or actors (rayStartParams num-cpus: \"0\")")


def test_autoscaling_cluster_scales_cpu_and_gpu_groups_from_zero():
    doc = yaml.safe_load((CLUSTER / "k8s" / "raycluster.autoscaling.yaml").read_text())
    assert doc["spec"]["enableInTreeAutoscaling"] is True and doc["spec"]["autoscalerOptions"]
    workers = {name: group for name, group in groups(doc) if name != "head"}
    assert {pod_ray_resources(group)["GPU"] > 0 for group in workers.values()} == {False, True}
    assert all(group["minReplicas"] == 0 < group["maxReplicas"] for group in workers.values())


@pytest.mark.parametrize(("path", "doc"), RAY_JOBS, ids=ids(RAY_JOBS))
def test_rayjob_cleans_up_after_itself(path, doc):
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True, f"{path.name}: shutdownAfterJobFinishes"
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0, (
        f"{path.name}: set ttlSecondsAfterFinished and activeDeadlineSeconds")


# ---------------------------------------------------------------------------------------------
# Consistency with the code and configs.


def test_fit_check_rejects_what_does_not_fit():
    pods = [{"CPU": 0, "GPU": 0}, {"CPU": 7, "GPU": 1}, {"CPU": 7, "GPU": 1}]
    assert fits([{"CPU": 4, "GPU": 1}] * 2 + [{"CPU": 3, "GPU": 0}] * 2, pods)
    assert not fits([{"CPU": 4, "GPU": 1}] * 3, pods)  # a third GPU
    assert not fits([{"CPU": 8, "GPU": 0}], pods)  # a bundle cannot span pods


@pytest.mark.parametrize(("path", "doc"), RAY_JOBS, ids=ids(RAY_JOBS))
def test_rayjob_entrypoint_and_config_exist(path, doc):
    script, config_path, _ = parse_entrypoint(doc["spec"]["entrypoint"])
    assert PurePosixPath(script).parent == PurePosixPath("jobs"), f"{path.name}: run jobs/*.py"
    assert (REPO / script).is_file(), f"{path.name}: entry point {script} is not in the repo"
    assert (REPO / config_path).is_file(), f"{path.name}: config {config_path} is not in the repo"


@pytest.mark.parametrize(("path", "doc"), RAY_JOBS, ids=ids(RAY_JOBS))
def test_rayjob_stages_fit_their_cluster(path, doc):
    script, _, _ = parse_entrypoint(doc["spec"]["entrypoint"])
    config = manifest_config(doc)
    job = PurePosixPath(script).stem
    assert job in STAGES_OF_JOB, f"add the stages of {script} to STAGES_OF_JOB"
    pods = cluster_pods(doc)
    for plan in resource_plan(config, STAGES_OF_JOB[job]):
        assert fits(step_bundles(plan), pods), (
            f"{path.name}: step {plan.stage} of `afmrl plan` creates {describe(plan)} but the "
            f"cluster's pods offer at most {pods}; resize the worker groups or the entrypoint "
            f"overrides together")


def test_autoscaling_cluster_holds_every_step_of_the_gpu_plan():
    """The long-lived cluster's groups at maxReplicas hold each step of `afmrl plan` for
    configs/gpu.yaml (the steps run one after another), GPU workers included."""
    doc = yaml.safe_load((CLUSTER / "k8s" / "raycluster.autoscaling.yaml").read_text())
    pods = cluster_pods(doc)
    plans = resource_plan(load_config(REPO / "configs" / "gpu.yaml"))
    assert max(plan.total["GPU"] for plan in plans) > 0
    for plan in plans:
        assert fits(step_bundles(plan), pods), (
            f"raycluster.autoscaling.yaml: step {plan.stage} creates {describe(plan)}; raise "
            f"the maxReplicas of its worker groups")


@pytest.mark.parametrize(("path", "doc"), LAUNCHERS, ids=ids(LAUNCHERS))
def test_run_dir_and_data_are_on_shared_storage_in_every_pod(path, doc):
    """Stages hand models, attributes and checkpoints to each other through run_dir, and Ray Train
    workers on different pods write one checkpoint: it must be the same volume everywhere."""
    config = manifest_config(doc)
    # Relative data roots resolve against the repository, like run_dir.
    for needed in (in_image(config.run_path), in_image(REPO / config.data.root)):
        for name, template in pod_templates(doc):
            volumes = {v["name"] for v in template["spec"].get("volumes", [])
                       if "persistentVolumeClaim" in v}
            mounts = [PurePosixPath(m["mountPath"]) for m in
                      template["spec"]["containers"][0].get("volumeMounts", [])
                      if m["name"] in volumes]
            assert any(needed.is_relative_to(mount) for mount in mounts), (
                f"{path.name} group {name}: {needed} is not on a mounted volume claim")


@pytest.mark.parametrize(("path", "doc"), LAUNCHERS, ids=ids(LAUNCHERS))
def test_tracking_uri_is_the_mlflow_service(path, doc):
    """Pods must log to the MLflow server: the fallback, SQLite in run_dir, would put one SQLite
    file on a network volume under writers from several pods."""
    uri = manifest_config(doc).tracking.tracking_uri
    assert uri, f"{path.name}: set tracking.tracking_uri to the service of service.mlflow.yaml"
    parts = urlsplit(uri)
    name, namespace = (parts.hostname.split(".") + [doc["metadata"]["namespace"]])[:2]
    services = [d for _, d in DOCUMENTS if d["kind"] == "Service"
                and (d["metadata"]["name"], d["metadata"]["namespace"]) == (name, namespace)]
    assert services, f"{path.name}: {uri} names no Service of cluster/k8s/"
    assert parts.port in {p["port"] for p in services[0]["spec"]["ports"]}, (
        f"{path.name}: {uri} uses a port the {name} Service does not expose")


@pytest.mark.parametrize(("path", "doc"), RAY_SERVICES, ids=ids(RAY_SERVICES))
def test_serve_config_passes_rays_schema_without_ignored_keys(path, doc):
    raw = serve_config(doc)
    assert serve_ignored_keys(raw) == [], f"{path.name}: keys Ray Serve would ignore"
    app, = raw["applications"]
    assert app["import_path"] == "serve_apps.search_app:build_app"
    assert {d["name"] for d in app["deployments"]} == SERVE_DEPLOYMENTS
    ports = doc["spec"]["serveService"]["spec"]["ports"]
    assert raw["http_options"]["port"] in {p.get("targetPort", p["port"]) for p in ports}, (
        f"{path.name}: the serveService must target Serve's HTTP port")


def test_serve_schema_check_reports_misspelt_keys():
    raw = serve_config(RAY_SERVICES[0][1])
    deployment = raw["applications"][0]["deployments"][0]
    deployment["ray_actor_options"]["num_gpu"] = 1
    deployment["autoscaling_config"]["max_replica"] = 9
    assert serve_ignored_keys(raw) == [
        "applications[0].deployments[0].ray_actor_options.num_gpu",
        "applications[0].deployments[0].autoscaling_config.max_replica"]


@pytest.mark.parametrize(("path", "doc"), RAY_SERVICES, ids=ids(RAY_SERVICES))
def test_serve_deployments_exist_in_the_code(path, doc):
    app, = serve_config(doc)["applications"]
    module, builder = app["import_path"].split(":")
    source_file = REPO / (module.replace(".", "/") + ".py")
    if not source_file.is_file():
        pytest.skip(f"{source_file.relative_to(REPO)} is not written yet: deployment names are "
                    f"checked against it once it exists")
    source = source_file.read_text()
    functions = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert builder in functions, f"{source_file.name} defines no {builder}()"
    assert deployment_names_in_code(source) == {d["name"] for d in app["deployments"]}


def test_deployment_names_are_read_from_decorators():
    source = ("from ray import serve\n@serve.deployment\nclass A: pass\n"
              "@serve.deployment(name='B', num_replicas=2)\nclass Impl: pass\n"
              "@dataclass\nclass C: pass\nD = serve.deployment(name='E')(Impl)\n")
    assert deployment_names_in_code(source) == {"A", "B", "E"}


def app_args(doc: dict) -> SearchAppArgs:
    app, = serve_config(doc)["applications"]
    return SearchAppArgs.model_validate(app["args"])


def manifest_config(doc: dict):
    """The afmrl config a RayJob's entrypoint (overrides applied) or a RayService's app loads."""
    if doc["kind"] == "RayJob":
        _, config_path, overrides = parse_entrypoint(doc["spec"]["entrypoint"])
        return load_config(REPO / config_path, overrides)
    args = app_args(doc)
    return load_config(REPO / args.config_path, args.overrides)


@pytest.mark.parametrize(("path", "doc"), RAY_SERVICES, ids=ids(RAY_SERVICES))
def test_serve_config_is_the_generators_output(path, doc):
    """serveConfigV2 is what afmrl.serve.config_gen writes for its args: the deployments the app
    builder creates (AttributeGenerator only with a generator) with the resources of
    afmrl.utils.device. Regenerate it with the command in the manifest's comment."""
    args = app_args(doc)
    assert serve_config(doc) == generated_serve_config(manifest_config(doc), args), (
        f"{path.name}: serveConfigV2 is stale; regenerate it with `python -m "
        f"afmrl.serve.config_gen --config {args.config_path} --generator {args.generator}`")
    assert args.generator == str(in_image(RunLayout.of(manifest_config(doc)).generator_rar)), (
        f"{path.name}: serve the RAR generator the pipeline writes")


@pytest.mark.parametrize(("path", "doc"), RAY_SERVICES, ids=ids(RAY_SERVICES))
def test_serve_plan_fits_the_cluster(path, doc):
    """Every deployment at max_replicas plus each Retriever replica's index shards (the serve
    step of `afmrl plan`) fits the worker groups at maxReplicas; the minimum fits minReplicas."""
    config = manifest_config(doc)
    plan, = resource_plan(config, ["serve"], with_generator=app_args(doc).generator is not None)
    assert fits(step_bundles(plan), cluster_pods(doc)), (
        f"{path.name}: the serve step creates {describe(plan)}; the worker groups' maxReplicas "
        f"cannot hold it")
    floor = config.serve.embed_replicas / config.serve.max_replicas
    minimum = [dict(b) for p in plan.placements for b in [p.bundle()]
               for _ in range(math.ceil(p.count * floor))]
    min_pods = [pod_ray_resources(group) for name, group in groups(doc)
                for _ in range(1 if name == "head" else group["minReplicas"])]
    assert fits(minimum, min_pods), f"{path.name}: minReplicas cannot hold one of each replica"
