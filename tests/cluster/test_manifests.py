"""The cluster/ recipes are well-formed: the launcher config validates against the schema
that ships inside Ray, the KubeRay manifests have the shape the operator needs and run the
`lvmae` command with configs from the `lvmae-config` ConfigMap (a copy of configs/, mounted
at /etc/lvmae), every pod mounts the shared workdir, takes MLflow's URI from that ConfigMap,
shares one Hugging Face cache and has a bounded /tmp, and the image installs its pinned
dependencies before the code. (The RayCluster / RayJob CRD schemas: test_kuberay_schemas.py.)

Pure file parsing (plus Ray's own config and runtime-env validators and the `lvmae` CLI's own
option parser and run-config loader): no cluster, no Docker.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lvmae.config import ConfigError, load_run_config, parse_sets

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = sorted(CLUSTER.glob("launcher*.yaml"))
STAGES = ("extract", "pretrain", "probe", "tune", "report")
DRIVER_RESOURCE = "lvmae_driver"
# The run's workdir lives on a filesystem every node mounts here (KubeRay: this claim).
SHARED_MOUNT = PurePosixPath("/mnt/lvmae")
SHARED_CLAIM = "lvmae-shared"
RAY_KINDS = {"RayCluster", "RayJob"}
# Run configs and the MLflow URI: this ConfigMap (a copy of configs/), mounted here.
CONFIG_MAP = "lvmae-config"
CONFIG_MOUNT = PurePosixPath("/etc/lvmae")
MLFLOW_KEY = "MLFLOW_TRACKING_URI"
# The one Hugging Face cache, on the shared volume.
HF_HOME = SHARED_MOUNT / "hf"
CONSTRAINTS = CLUSTER / "constraints.txt"


# --- helpers -------------------------------------------------------------------------------


def ray_schema() -> dict:
    """The autoscaler's JSON schema from the installed ray package (found without importing
    ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None, "ray is not installed"
    path = Path(spec.origin).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@functools.cache
def load_kuberay() -> dict[str, list[dict]]:
    """Every document of every YAML file in cluster/kuberay, by file name (parsed once; do
    not mutate)."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(KUBERAY.glob("*.yaml"))
    }


def kuberay_docs(kind: str | None = None) -> list[tuple[str, dict]]:
    return [
        (name, doc)
        for name, docs in load_kuberay().items()
        for doc in docs
        if kind is None or doc.get("kind") == kind
    ]


def cluster_specs() -> list[tuple[str, dict]]:
    """(file, RayClusterSpec) of the RayCluster and of every RayJob that brings its own."""
    specs = [(name, doc["spec"]) for name, doc in kuberay_docs("RayCluster")]
    specs += [
        (name, doc["spec"]["rayClusterSpec"])
        for name, doc in kuberay_docs("RayJob")
        if "rayClusterSpec" in doc["spec"]
    ]
    return specs


def group_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def containers(spec: dict) -> list[dict]:
    return [c for group in group_specs(spec) for c in group["template"]["spec"]["containers"]]


def gpu_limit(group: dict) -> float:
    return sum(
        float(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for c in group["template"]["spec"]["containers"]
    )


def kuberay_custom_resources(ray_start_params: dict) -> dict:
    """KubeRay's `resources` start parameter: a JSON object quoted as a JSON string."""
    raw = ray_start_params.get("resources")
    if raw is None:
        return {}
    value = json.loads(raw)
    return json.loads(value) if isinstance(value, str) else value


def shared_volume_problems(spec: dict) -> list[str]:
    """What keeps a RayClusterSpec's pods from sharing the workdir: every group's pod must have
    a volume from the `lvmae-shared` claim, mounted read-write at /mnt/lvmae in its containers."""
    problems = []
    for group in group_specs(spec):
        where = group.get("groupName", "head")
        pod = group["template"]["spec"]
        claimed = {
            v["name"]
            for v in pod.get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName") == SHARED_CLAIM
            and not v["persistentVolumeClaim"].get("readOnly", False)
        }
        if not claimed:
            problems.append(f"{where}: no writable volume from the claim {SHARED_CLAIM}")
        for container in pod["containers"]:
            mounted = [
                m
                for m in container.get("volumeMounts") or []
                if m["name"] in claimed
                and PurePosixPath(m["mountPath"]) == SHARED_MOUNT
                and not m.get("readOnly", False)
                and not m.get("subPath")
            ]
            if not mounted:
                problems.append(
                    f"{where}/{container['name']}: {SHARED_CLAIM} not at {SHARED_MOUNT}"
                )
    return problems


_QUANTITY_FACTORS = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}  # fmt: skip


def quantity(value: str | int) -> float:
    """A Kubernetes resource quantity in bytes (units): `120Gi`, `500M`, `4`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?", str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * _QUANTITY_FACTORS[match.group(2) or ""]


def pod_settings_problems(spec: dict) -> list[str]:
    """What keeps a RayClusterSpec's containers from the settings every Ray pod needs:
    MLFLOW_TRACKING_URI from the `lvmae-config` ConfigMap, HF_HOME on the shared volume, that
    ConfigMap mounted at /etc/lvmae, /tmp a disk-backed emptyDir with a sizeLimit, and
    ephemeral-storage requests and limits (the limit above the /tmp size)."""
    problems = []
    for group in group_specs(spec):
        where = group.get("groupName", "head")
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for container in pod["containers"]:
            name = f"{where}/{container['name']}"
            env = {e["name"]: e for e in container.get("env") or []}
            ref = (env.get(MLFLOW_KEY, {}).get("valueFrom") or {}).get("configMapKeyRef") or {}
            if (ref.get("name"), ref.get("key")) != (CONFIG_MAP, MLFLOW_KEY) or ref.get("optional"):
                problems.append(f"{name}: {MLFLOW_KEY} not from the ConfigMap {CONFIG_MAP}")
            hf_home = env.get("HF_HOME", {}).get("value")
            if not (isinstance(hf_home, str) and is_shared_path(hf_home)):
                problems.append(f"{name}: HF_HOME {hf_home!r} is not on {SHARED_MOUNT}")
            mounts = {PurePosixPath(m["mountPath"]): m for m in container.get("volumeMounts") or []}
            config = mounts.get(CONFIG_MOUNT)
            config_volume = volumes.get(config["name"], {}) if config else {}
            if (config_volume.get("configMap") or {}).get("name") != CONFIG_MAP or config.get(
                "subPath"
            ):
                problems.append(f"{name}: the ConfigMap {CONFIG_MAP} is not at {CONFIG_MOUNT}")
            tmp = mounts.get(PurePosixPath("/tmp"))
            empty_dir = volumes.get(tmp["name"], {}).get("emptyDir") if tmp else None
            tmp_size = None
            if empty_dir is None or empty_dir.get("medium") or "sizeLimit" not in empty_dir:
                problems.append(f"{name}: /tmp is not a disk-backed emptyDir with a sizeLimit")
            else:
                tmp_size = quantity(empty_dir["sizeLimit"])
            resources = container.get("resources") or {}
            request = (resources.get("requests") or {}).get("ephemeral-storage")
            limit = (resources.get("limits") or {}).get("ephemeral-storage")
            if request is None or limit is None:
                problems.append(f"{name}: no ephemeral-storage request and limit")
            elif quantity(request) > quantity(limit):
                problems.append(f"{name}: ephemeral-storage request above its limit")
            elif tmp_size is not None and quantity(limit) <= tmp_size:
                problems.append(f"{name}: ephemeral-storage limit leaves no room beyond /tmp")
    return problems


@functools.cache
def config_map() -> dict:
    """The `lvmae-config` ConfigMap (do not mutate)."""
    maps = [doc for _, doc in kuberay_docs("ConfigMap") if doc["metadata"]["name"] == CONFIG_MAP]
    assert len(maps) == 1, f"one ConfigMap {CONFIG_MAP} in cluster/kuberay, found {len(maps)}"
    return maps[0]


def mounted_config(path: str, tmp_path: Path) -> Path:
    """The file a pod reads as `path` (/etc/lvmae/<key>: that key of the ConfigMap), written
    under tmp_path."""
    p = PurePosixPath(path)
    assert p.parent == CONFIG_MOUNT, f"--config {path} is not a file of {CONFIG_MOUNT}"
    data = config_map()["data"]
    assert p.name in data, f"--config {path}: the ConfigMap {CONFIG_MAP} has no key {p.name}"
    out = tmp_path / p.name
    out.write_text(data[p.name])
    return out


def repository_config(path: str) -> Path:
    """The repository file behind a command's --config: configs/X.yaml for the ConfigMap's
    /etc/lvmae/X.yaml, else the path relative to the repository root (a checkout shipped
    with `ray job submit --runtime-env`)."""
    p = PurePosixPath(path)
    if p.is_absolute():
        assert p.parent == CONFIG_MOUNT, f"--config {path} is neither configs/ nor {CONFIG_MOUNT}"
        return ROOT / "configs" / p.name
    return ROOT / path


def make_configmap_module():
    """cluster/make_configmap.py, which writes cluster/kuberay/configmap.yaml."""
    spec = importlib.util.spec_from_file_location("make_configmap", CLUSTER / "make_configmap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_shared_path(path: str) -> bool:
    """An absolute filesystem path under /mnt/lvmae (not a URI, no `..`)."""
    p = PurePosixPath(path)
    return (
        "://" not in path and p.is_absolute() and ".." not in p.parts and SHARED_MOUNT in p.parents
    )


def run_command_context(argv: list[str]):
    """`lvmae <command> ...` parsed by the real CLI (unknown or malformed options fail)."""
    from pipelines.cli import cli

    assert argv[0] == "lvmae" and argv[1] in cli.commands, f"not an lvmae command: {argv}"
    command = cli.commands[argv[1]]
    return command.make_context(argv[1], list(argv[2:]))


def entrypoint_args(job: dict) -> dict:
    """The `lvmae run` options of a RayJob entrypoint, e.g. {'--config': 'configs/x.yaml'}."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lvmae", "run"], f"entrypoint must be `lvmae run ...`: {argv}"
    options = {}
    rest = argv[2:]
    while rest:
        key = rest.pop(0)
        assert key.startswith("--"), f"unexpected argument {key!r} in {argv}"
        options[key] = rest.pop(0) if rest and not rest[0].startswith("--") else True
    return options


def check_runtime_env(env: dict) -> None:
    """Ray's own runtime-env type checks, plus no misspelled top-level field."""
    from ray.runtime_env import RuntimeEnv

    known = {"working_dir", "excludes", "env_vars", "pip", "uv", "py_modules", "config"}
    assert set(env) <= known, f"unknown runtime_env fields: {set(env) - known}"
    RuntimeEnv(**env)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def dockerfile_args() -> dict[str, str]:
    defaults = {}
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


# --- cluster launcher ----------------------------------------------------------------------


def test_there_is_a_launcher_config():
    assert LAUNCHERS, "cluster/launcher.yaml is missing"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_validates_against_rays_schema(path):
    jsonschema.validate(load_yaml(path), ray_schema())


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_passes_ray_up_validation(path):
    """What `ray up` runs: defaults filled in, then the schema and Ray's own checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load_yaml(path)))


def _drop_provider(cfg):
    del cfg["provider"]


def _misspell_setup_commands(cfg):
    cfg["setup_comands"] = cfg.pop("setup_commands")


def _gpu_count_as_text(cfg):
    node_type = next(iter(cfg["available_node_types"].values()))
    node_type["resources"]["GPU"] = "four"


def _node_type_without_node_config(cfg):
    del next(iter(cfg["available_node_types"].values()))["node_config"]


@pytest.mark.parametrize(
    "breakage",
    [_drop_provider, _misspell_setup_commands, _gpu_count_as_text, _node_type_without_node_config],
)
def test_schema_rejects_a_broken_launcher(breakage):
    """The validation above can fail: a broken copy of the config does not pass."""
    config = copy.deepcopy(load_yaml(LAUNCHERS[0]))
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())


@pytest.fixture(scope="module")
def launcher():
    return load_yaml(CLUSTER / "launcher.yaml")


def test_launcher_node_types(launcher):
    types = launcher["available_node_types"]
    head = launcher["head_node_type"]
    assert head in types
    workers = {name: t for name, t in types.items() if name != head}
    gpu = [n for n, t in workers.items() if t["resources"].get("GPU", 0) > 0]
    cpu = [
        n
        for n, t in workers.items()
        if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0
    ]
    assert gpu, "no GPU worker type (encoder actors, pre-training workers)"
    assert cpu, "no CPU-only worker type (decoding)"
    assert all(workers[n].get("max_workers", 0) > 0 for n in gpu + cpu)
    assert types[head].get("max_workers", 0) == 0
    # The job driver's resource lives on the head, which the autoscaler never removes.
    assert types[head]["resources"].get(DRIVER_RESOURCE, 0) >= 1
    assert sum(t.get("max_workers", 0) for t in workers.values()) <= launcher["max_workers"]


def test_launcher_installs_torch_then_the_checkout(launcher):
    commands = launcher["setup_commands"]
    checkout = [remote for remote, local in launcher["file_mounts"].items() if local == "."]
    assert checkout, "the checkout ('.') is not among the file_mounts"

    def first(predicate):
        return next((i for i, c in enumerate(commands) if predicate(c)), None)

    torch_at = first(lambda c: "pip install" in c and re.search(r"\btorch\b", c))
    project_at = first(lambda c: "pip install" in c and checkout[0] in c)
    assert torch_at is not None, "setup_commands do not install torch"
    assert project_at is not None, "setup_commands do not install the checkout"
    assert torch_at < project_at, "torch must be installed before the project"
    assert "download.pytorch.org/whl/cu" in commands[torch_at], "torch should be a CUDA build"
    every = " ".join(
        commands + launcher.get("head_setup_commands", []) + launcher["worker_setup_commands"]
    )
    assert "torchvision" not in every and "torchaudio" not in every
    assert {".venv", "work", ".git"} <= set(launcher["rsync_exclude"])


def test_launcher_mounts_the_shared_workdir(launcher):
    """/mnt/lvmae is prepared on each host before Docker starts (initialization_commands; the
    EFS mount itself is left for the user to fill in) and bound into every container."""
    options = " ".join(launcher["docker"]["run_options"])
    assert re.search(rf"(-v|--volume)[ =]{SHARED_MOUNT}:{SHARED_MOUNT}(\s|:|$)", options)
    assert not any(
        key in node_type.get("docker", {})
        for node_type in launcher["available_node_types"].values()
        for key in ("worker_run_options", "head_run_options")
    ), "per-node run options would need the volume too"
    init = launcher["initialization_commands"]
    assert any(f"mkdir -p {SHARED_MOUNT}" in c for c in init)
    # The container runs as `ray` (uid 1000, gid 100), which writes the workdir.
    assert any(f"chown 1000:100 {SHARED_MOUNT}" in c for c in init)
    text = (CLUSTER / "launcher.yaml").read_text()
    assert re.search(r"#.*mount -t nfs4", text) and re.search(rf"#.*\S+:/ {SHARED_MOUNT}", text)


def test_launcher_has_image_id_placeholders(launcher):
    """Ray's default AMI is end-of-life: every node type carries a commented `ImageId` in its
    node_config, and with the comments taken away the config still passes Ray's schema with
    an ImageId on every node type (so the lines sit where `ray up` reads them)."""
    text = (CLUSTER / "launcher.yaml").read_text()
    assert "end-of-life" in text, "say why the ImageId lines are there"
    assert not any("ImageId" in t["node_config"] for t in launcher["available_node_types"].values())
    uncommented = re.sub(r"^(\s*)#\s*(ImageId:\s*ami-)", r"\1\2", text, flags=re.M)
    config = yaml.safe_load(uncommented)
    for name, node_type in config["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", image), f"{name}: no ImageId placeholder"
    jsonschema.validate(config, ray_schema())


def test_launcher_starts_ray_with_token_auth(launcher):
    head = " ".join(launcher["head_start_ray_commands"])
    worker = " ".join(launcher["worker_start_ray_commands"])
    assert "ray start --head" in head and "--port=6379" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in worker
    # Ray's default token file, shipped to every node from the submitting machine.
    mounts = launcher["file_mounts"]
    assert mounts.get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"


# --- KubeRay -------------------------------------------------------------------------------


def test_kuberay_manifests_are_ray_io_v1():
    """Every document: apiVersion, kind and a valid metadata.name. The Ray resources are
    checked against KubeRay's CRD schemas in test_kuberay_schemas.py; the others (the shared
    volume's claim and the settings ConfigMap) are core v1 objects, checked for shape here."""
    manifests = load_kuberay()
    expected = {"raycluster.yaml", "raycluster-hetero.yaml", "pvc.yaml", "configmap.yaml"} | {
        f"rayjob-{job}.yaml" for job in ("extract", "pretrain", "probe", "tune", "run")
    }
    assert expected <= set(manifests)
    for name, docs in manifests.items():
        for doc in docs:
            assert isinstance(doc, dict) and isinstance(doc.get("metadata"), dict), name
            # A DNS-1123 subdomain, as the API server demands of these kinds.
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", doc["metadata"]["name"])
            labels = doc["metadata"].get("labels", {})
            assert isinstance(labels, dict), name
            assert all(isinstance(v, str) for v in labels.values()), name
            if doc["kind"] in RAY_KINDS:
                assert doc["apiVersion"] == "ray.io/v1", name
            else:
                # Besides the Ray resources, only the shared volume's claim and the ConfigMap.
                assert (doc["apiVersion"], doc["kind"]) in {
                    ("v1", "PersistentVolumeClaim"),
                    ("v1", "ConfigMap"),
                }, name
                assert set(doc) <= {"apiVersion", "kind", "metadata", "spec", "data"}, name


def test_settings_configmap_is_configs_dir():
    """The ConfigMap holds every configs/*.yaml unchanged (one key per file: the files the
    pods see under /etc/lvmae) and the MLflow URI, and is what cluster/make_configmap.py
    writes (after editing configs/, run `python cluster/make_configmap.py`)."""
    configmap = config_map()
    assert set(configmap) == {"apiVersion", "kind", "metadata", "data"}
    data = configmap["data"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) for key in data)
    files = {path.name: path.read_text() for path in sorted((ROOT / "configs").glob("*.yaml"))}
    assert {k: v for k, v in data.items() if k != MLFLOW_KEY} == files, (
        "cluster/kuberay/configmap.yaml differs from configs/: run python cluster/make_configmap.py"
    )
    assert re.fullmatch(r"https?://\S+", data[MLFLOW_KEY]), data[MLFLOW_KEY]
    # The whole file, comments included, is the generator's output.
    generator = make_configmap_module()
    assert (KUBERAY / "configmap.yaml").read_text() == generator.render(data[MLFLOW_KEY])
    # ConfigMaps are limited to 1 MiB.
    assert len((KUBERAY / "configmap.yaml").read_bytes()) < 2**20


def test_shared_volume_claim():
    claims = kuberay_docs("PersistentVolumeClaim")
    assert [(name, doc["metadata"]["name"]) for name, doc in claims] == [("pvc.yaml", SHARED_CLAIM)]
    ((_, claim),) = claims
    spec = claim["spec"]
    # Every pod of a cluster (on many nodes) mounts it read-write: a network filesystem.
    assert spec["accessModes"] == ["ReadWriteMany"]
    assert spec.get("volumeMode", "Filesystem") == "Filesystem"
    assert spec["resources"]["requests"]["storage"]
    assert spec.get("storageClassName"), "name a ReadWriteMany storage class (placeholder)"


def test_raycluster_head_and_worker_groups():
    clusters = dict(kuberay_docs("RayCluster"))
    assert set(clusters) == {"raycluster.yaml", "raycluster-hetero.yaml"}
    spec = clusters["raycluster.yaml"]["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(c.get("image") for c in head["template"]["spec"]["containers"])
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"gpu", "cpu"} <= set(groups)
    assert gpu_limit(groups["gpu"]) > 0
    assert gpu_limit(groups["cpu"]) == 0
    for group in groups.values():
        assert isinstance(group["rayStartParams"], dict)
        assert all(c.get("image") for c in group["template"]["spec"]["containers"])


DECODE_RESOURCE = "lvmae_decode"


def test_hetero_preset_decodes_on_cpu_pods_and_embeds_on_gpu_pods():
    """cluster/kuberay/raycluster-hetero.yaml: only the CPU-only `decode` group declares
    `lvmae_decode` (one per CPU of its pods, so a decode task's 1 CPU + 1 `lvmae_decode` fills
    the pod), the GPU group declares none, the head keeps the driver resource; the example
    job in its header asks decoding for that resource, and parses as a run config."""
    path = KUBERAY / "raycluster-hetero.yaml"
    (cluster,) = yaml.safe_load_all(path.read_text())
    spec = cluster["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "decode"}
    assert gpu_limit(groups["gpu"]) > 0 and gpu_limit(groups["decode"]) == 0
    assert DECODE_RESOURCE not in kuberay_custom_resources(groups["gpu"]["rayStartParams"])
    assert DECODE_RESOURCE not in kuberay_custom_resources(spec["headGroupSpec"]["rayStartParams"])
    (container,) = groups["decode"]["template"]["spec"]["containers"]
    cpus = quantity(container["resources"]["limits"]["cpu"])
    decode = kuberay_custom_resources(groups["decode"]["rayStartParams"])
    assert decode == {DECODE_RESOURCE: cpus}
    # the documented submission: --set extract.decode_resources={lvmae_decode: 1}
    header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines()
                      if line.startswith("#"))  # fmt: skip
    sets = re.findall(r"--set '([^']+)'", header)
    assert sets, "the header shows how to submit with the decode resource"
    config = load_run_config(ROOT / "configs" / "paper.yaml", parse_sets(sets))
    assert config.extract.decode_resources == {DECODE_RESOURCE: 1.0}
    # the sizing comment's ratio: decode pods per GPU pod cover 41 cores (exact mode)
    assert groups["decode"]["replicas"] * cpus >= 41 * groups["gpu"]["replicas"]


SPECS = cluster_specs()


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[name for name, _ in SPECS])
def test_every_cluster_spec(name, spec):
    assert spec["rayVersion"]
    assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: no token auth"
    for group in group_specs(spec):
        # KubeRay passes rayStartParams to `ray start` and wants every value as a string.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), name
    assert any(gpu_limit(g) > 0 for g in spec["workerGroupSpecs"]), f"{name}: no GPU group"
    assert any(gpu_limit(g) == 0 for g in spec["workerGroupSpecs"]), f"{name}: no CPU group"
    head_resources = kuberay_custom_resources(spec["headGroupSpec"]["rayStartParams"])
    assert head_resources.get(DRIVER_RESOURCE, 0) >= 1, f"{name}: no driver resource on head"
    for container in containers(spec):
        env = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[key]["valueFrom"], f"{name}: {key} not from a Secret"


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[name for name, _ in SPECS])
def test_every_cluster_spec_mounts_the_shared_workdir(name, spec):
    """Head and every worker group: Ray Train workers write checkpoints into the workdir, the
    driver on the head writes the stage records and the report."""
    assert shared_volume_problems(spec) == [], name


def _drop_shared_volume_of_a_worker_group(spec):
    pod = spec["workerGroupSpecs"][-1]["template"]["spec"]
    pod["volumes"] = [v for v in pod["volumes"] if "persistentVolumeClaim" not in v]


def _mount_shared_volume_elsewhere(spec):
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"] = [
        {**m, "mountPath": "/data"} if m["mountPath"] == str(SHARED_MOUNT) else m
        for m in container["volumeMounts"]
    ]


def _claim_read_only(spec):
    pod = spec["workerGroupSpecs"][0]["template"]["spec"]
    pod["volumes"] = [
        {**v, "persistentVolumeClaim": {**v["persistentVolumeClaim"], "readOnly": True}}
        if "persistentVolumeClaim" in v
        else v
        for v in pod["volumes"]
    ]


@pytest.mark.parametrize(
    "breakage",
    [_drop_shared_volume_of_a_worker_group, _mount_shared_volume_elsewhere, _claim_read_only],
)
def test_shared_volume_check_rejects_a_broken_spec(breakage):
    spec = copy.deepcopy(SPECS[0][1])
    breakage(spec)
    assert shared_volume_problems(spec)


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=[name for name, _ in SPECS])
def test_every_cluster_spec_pod_settings(name, spec):
    """The RayCluster and every RayJob's cluster: MLflow's URI from the ConfigMap (the job
    driver runs in the head pod and sees the head container's env), one HF cache on the
    shared volume, the run configs at /etc/lvmae, a bounded /tmp and ephemeral-storage."""
    assert pod_settings_problems(spec) == [], name


def _hard_coded_mlflow_uri(spec):
    container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": MLFLOW_KEY, "value": "http://mlflow:5000"} if e["name"] == MLFLOW_KEY else e
        for e in container["env"]
    ]


def _mlflow_uri_from_another_configmap(spec):
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": MLFLOW_KEY, "valueFrom": {"configMapKeyRef": {"name": "x", "key": MLFLOW_KEY}}}
        if e["name"] == MLFLOW_KEY
        else e
        for e in container["env"]
    ]


def _no_hf_home(spec):
    container = spec["workerGroupSpecs"][-1]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "HF_HOME"]


def _hf_home_on_local_disk(spec):
    container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "HF_HOME", "value": "/tmp/hf"} if e["name"] == "HF_HOME" else e
        for e in container["env"]
    ]


def _config_not_mounted(spec):
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"] = [
        m for m in container["volumeMounts"] if m["mountPath"] != str(CONFIG_MOUNT)
    ]


def _tmp_without_size_limit(spec):
    pod = spec["workerGroupSpecs"][0]["template"]["spec"]
    pod["volumes"] = [
        {"name": v["name"], "emptyDir": {}} if v["name"] == "tmp" else v for v in pod["volumes"]
    ]


def _tmp_in_memory(spec):
    pod = spec["headGroupSpec"]["template"]["spec"]
    pod["volumes"] = [
        {"name": v["name"], "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
        if v["name"] == "tmp"
        else v
        for v in pod["volumes"]
    ]


def _no_ephemeral_storage_limit(spec):
    container = spec["workerGroupSpecs"][-1]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    container["resources"]["limits"] = {k: v for k, v in limits.items() if k != "ephemeral-storage"}


def _ephemeral_storage_below_tmp(spec):
    container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["ephemeral-storage"] = "1Gi"
    container["resources"]["requests"]["ephemeral-storage"] = "1Gi"


@pytest.mark.parametrize(
    "breakage",
    [
        _hard_coded_mlflow_uri,
        _mlflow_uri_from_another_configmap,
        _no_hf_home,
        _hf_home_on_local_disk,
        _config_not_mounted,
        _tmp_without_size_limit,
        _tmp_in_memory,
        _no_ephemeral_storage_limit,
        _ephemeral_storage_below_tmp,
    ],
)
@pytest.mark.parametrize("index", [0, len(SPECS) - 1], ids=["raycluster", "rayjob"])
def test_pod_settings_check_rejects_a_broken_spec(breakage, index):
    spec = copy.deepcopy(SPECS[index][1])
    breakage(spec)
    assert pod_settings_problems(spec)


@pytest.mark.parametrize(
    ("text", "expected"), [("120Gi", 120 * 2**30), ("500M", 5e8), ("4", 4), ("1.5Ti", 1.5 * 2**40)]
)
def test_quantity(text, expected):
    assert quantity(text) == expected


def test_one_image_everywhere():
    images = {c["image"] for _, spec in cluster_specs() for c in containers(spec)}
    assert len(images) == 1, images


def test_ray_version_matches_the_image_base():
    base = expand(next(a for k, a in dockerfile_instructions() if k == "FROM"), dockerfile_args())
    for name, spec in cluster_specs():
        assert f":{spec['rayVersion']}-" in base, f"{name}: rayVersion vs {base}"


RAYJOBS = kuberay_docs("RayJob")


@pytest.mark.parametrize(("name", "job"), RAYJOBS, ids=[name for name, _ in RAYJOBS])
def test_rayjob_config_is_in_the_configmap(name, job):
    """The image holds no configs (test_dockerfile): --config names a file of the mounted
    ConfigMap, /etc/lvmae/X.yaml, which is configs/X.yaml of this repository."""
    config = entrypoint_args(job).get("--config")
    assert isinstance(config, str), name
    assert PurePosixPath(config).parent == CONFIG_MOUNT, f"{name}: --config {config}"
    assert PurePosixPath(config).name in config_map()["data"], f"{name}: {config}"
    assert repository_config(config).is_file(), f"{name}: no configs/ file for {config}"


def lvmae_run_config(argv: list[str], config_file: Path):
    """What `lvmae run` does with argv before any work: parse it with the real CLI, then load
    its config (read from config_file, the file the pod would see) with its overrides."""
    params = run_command_context(argv).params
    overrides = {"run.workdir": params["workdir"], "run.address": params["address"]} | parse_sets(
        params["sets"]
    )
    return params, load_run_config(config_file, overrides)


@pytest.mark.parametrize(("name", "job"), RAYJOBS, ids=[name for name, _ in RAYJOBS])
def test_rayjob_entrypoint_is_a_valid_lvmae_run(name, job, tmp_path):
    """The real `lvmae run` parses the entrypoint, and its config — the ConfigMap's copy at
    /etc/lvmae — loads with the entrypoint's overrides: the workdir is on the shared volume."""
    argv = shlex.split(job["spec"]["entrypoint"])
    config_file = mounted_config(run_command_context(argv).params["config_file"], tmp_path)
    params, config = lvmae_run_config(argv, config_file)
    workdir = params["workdir"]
    if workdir is not None:
        assert is_shared_path(workdir), f"{name}: --workdir {workdir} is not under {SHARED_MOUNT}"
    assert is_shared_path(config.run.workdir), f"{name}: workdir {config.run.workdir}"
    if params["stages"]:
        chosen = {s.strip() for s in params["stages"].split(",") if s.strip()}
        assert chosen <= set(config.run.stages), f"{name}: {chosen} vs {config.run.stages}"


def test_rayjob_entrypoint_takes_bucket_overrides(tmp_path):
    """The README's other way to change a bucket without a rebuild: `--set` in the
    entrypoint overrides the mounted config; a misspelt field is refused, naming --set."""
    (name, job) = next((n, j) for n, j in RAYJOBS if n == "rayjob-run.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    config_file = mounted_config(run_command_context(argv).params["config_file"], tmp_path)
    sets = [
        "--set",
        "run.input=s3://other-bucket/videos/**/*.mp4",
        "--set",
        "run.embeddings=s3://other-bucket/lvmae/paper/extract",
        "--set",
        "pretrain.epochs=300",
    ]
    _, config = lvmae_run_config([*argv, *sets], config_file)
    assert config.run.input == "s3://other-bucket/videos/**/*.mp4", name
    assert config.run.embeddings == "s3://other-bucket/lvmae/paper/extract", name
    assert config.pretrain.epochs == 300
    with pytest.raises(ConfigError, match="--set"):
        lvmae_run_config([*argv, "--set", "run.inptu=s3://other-bucket/x"], config_file)


@pytest.mark.parametrize(
    "workdir",
    [
        "s3://your-bucket/lvmae/paper",
        "/mnt/other/paper",
        "work/paper",
        "/mnt/lvmae/../x",
        "/mnt/lvmae",
    ],
)
def test_workdir_check_rejects_paths_off_the_shared_volume(workdir):
    assert not is_shared_path(workdir)
    assert is_shared_path("/mnt/lvmae/paper")


@pytest.mark.parametrize(("name", "job"), RAYJOBS, ids=[name for name, _ in RAYJOBS])
def test_rayjob(name, job):
    spec = job["spec"]
    options = entrypoint_args(job)
    stages = options.get("--stages")
    if stages is not None:
        assert set(stages.split(",")) <= set(STAGES), f"{name}: unknown stage in {stages}"

    # MLflow's URI comes from the ConfigMap through the pods' env (test_every_cluster_spec_pod_
    # settings), never hard-coded in a runtime env; no working_dir (the code is in the image).
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert MLFLOW_KEY not in (runtime_env.get("env_vars") or {}), name
    assert "working_dir" not in runtime_env, name
    check_runtime_env(runtime_env)

    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), name
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    assert spec["entrypointNumCpus"] >= 1
    wanted = json.loads(spec.get("entrypointResources", "{}"))
    if "rayClusterSpec" in spec:
        head = spec["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
        offered = kuberay_custom_resources(head)
        assert all(offered.get(k, 0) >= v for k, v in wanted.items()), name


def test_rayjobs_cover_every_stage_on_one_workdir():
    options = {name: entrypoint_args(job) for name, job in RAYJOBS}
    main = [name for name, o in options.items() if "--stages" not in o]
    assert main == ["rayjob-run.yaml"], "exactly one job runs the whole pipeline"
    covered = {s for o in options.values() if "--stages" in o for s in o["--stages"].split(",")}
    assert covered == set(STAGES)
    # Same config and workdir everywhere, so each stage finds the previous stages' outputs
    # and reruns skip what is done.
    assert len({o["--config"] for o in options.values()}) == 1
    assert len({o.get("--workdir") for o in options.values()}) == 1
    for name, o in options.items():
        workdir = o.get("--workdir")
        assert workdir is None or is_shared_path(workdir), f"{name}: --workdir {workdir}"


# --- runtime env, image, README ---------------------------------------------------------------


def test_runtime_env_file():
    env = load_yaml(CLUSTER / "runtime_env.yaml")
    assert env["working_dir"] == "."
    excluded = {e.strip("/") for e in env["excludes"]}
    assert {".venv", "work", ".git", "*.mp4"} <= excluded
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]
    check_runtime_env(env)


def test_dockerfile():
    instructions = dockerfile_instructions()
    variables = dockerfile_args()
    runs = [expand(a, variables) for k, a in instructions if k == "RUN"]

    base = expand(next(a for k, a in instructions if k == "FROM"), variables)
    assert re.search(r"cuda|gpu|-cu\d+", base), f"not a CUDA base image: {base}"
    assert any("apt-get install" in r and re.search(r"\bffmpeg\b", r) for r in runs)

    def first(predicate):
        return next((i for i, r in enumerate(runs) if predicate(r)), None)

    torch_at = first(lambda r: "pip install" in r and re.search(r"\btorch==", r))
    project_at = first(lambda r: re.search(r"pip install[^&]*\s/app(\s|$)", r))
    assert torch_at is not None and project_at is not None
    assert torch_at < project_at, "torch must be installed before the project"
    assert "download.pytorch.org/whl/cu" in runs[torch_at], "torch should be a CUDA build"
    for run in runs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "torchvision" not in command and "torchaudio" not in command

    assert ("WORKDIR", "/app") in instructions
    # NVDEC (extract.decoder nvdec / auto): the package, and the driver's video library
    assert any("pip install" in r and re.search(r"\bPyNvVideoCodec\b", r) for r in runs)
    envs = [a for k, a in instructions if k == "ENV"]
    caps = [e.split("=", 1)[1] for e in envs if e.startswith("NVIDIA_DRIVER_CAPABILITIES=")]
    assert caps and "video" in caps[-1].split(","), "libnvcuvid needs the `video` capability"
    sources = {s for args in dockerfile_copies() for s in args}
    # Images hold code, not buckets: the run configs come from the ConfigMap.
    assert "configs" not in sources, "configs/ must not be baked into the image"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"


def dockerfile_copies() -> list[list[str]]:
    """The sources of each COPY, in order (flags and the destination dropped)."""
    copies = [a.split() for k, a in dockerfile_instructions() if k == "COPY"]
    return [[s for s in args[:-1] if not s.startswith("--")] for args in copies]


def test_dockerfile_installs_dependencies_before_the_source():
    """A layer with the pinned dependencies (pyproject.toml's list, cluster/constraints.txt's
    versions) comes before any source COPY, and the project itself is then installed without
    dependencies: a code edit rebuilds only the last layers."""
    steps = [(k, a) for k, a in dockerfile_instructions() if k in {"COPY", "RUN"}]
    source_dirs = {"lvmae", "pipelines", "tune"}
    copies = [
        (i, [s for s in args.split()[:-1] if not s.startswith("--")])
        for i, (keyword, args) in enumerate(steps)
        if keyword == "COPY"
    ]
    first_source = min(i for i, sources in copies if source_dirs & set(sources))
    manifests = {"pyproject.toml", "cluster/constraints.txt"}
    manifest_copy = [i for i, sources in copies if manifests <= set(sources)]
    assert manifest_copy and manifest_copy[0] < first_source, "copy pyproject + constraints first"
    deps = [
        i
        for i, (keyword, args) in enumerate(steps)
        if keyword == "RUN" and re.search(r"pip install[^&]*\s-c\s+\S*constraints\.txt", args)
    ]
    assert deps and manifest_copy[0] < deps[0] < first_source, "dependency layer"
    # Nothing but the dependency manifests is copied before the dependency install.
    for i, sources in copies:
        if i < deps[0]:
            assert set(sources) <= manifests, sources
    dep_run = steps[deps[0]][1]
    assert "pyproject.toml" in dep_run and "-r " in dep_run, "install pyproject's dependencies"
    assert re.search(r"\bs3fs\b", dep_run) and re.search(r"\bgcsfs\b", dep_run)
    project = [
        i
        for i, (k, a) in enumerate(steps)
        if k == "RUN" and re.search(r"pip install[^&]*\s/app(\s|$)", a)
    ]
    assert project and project[0] > max(i for i, s in copies if source_dirs & set(s))
    assert "--no-deps" in steps[project[0]][1], "the project layer must not install dependencies"


def constraint_pins() -> dict[str, str]:
    pins = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
            assert match, f"cluster/constraints.txt: not NAME==VERSION: {line!r}"
            name = canonicalize_name(match.group(1))
            assert name not in pins, f"cluster/constraints.txt: {name} twice"
            pins[name] = match.group(2)
    return pins


def test_constraints_pin_every_dependency():
    """Every dependency in pyproject.toml is pinned in cluster/constraints.txt at a version
    its range allows; torch and ray are the versions of the image; fsspec and its s3 / gcs
    drivers are one release; nothing pulls in torchvision / torchaudio or CUDA libraries."""
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11 (tomllib)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraint_pins()
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"cluster/constraints.txt does not pin {name} ({text})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"cluster/constraints.txt: {name}=={pins[name]} is outside pyproject's {text}"
        )
    variables = dockerfile_args()
    assert pins["torch"] == variables["TORCH_VERSION"]
    assert f":{pins['ray']}-" in variables["RAY_IMAGE"]
    assert pins["fsspec"] == pins["s3fs"] == pins["gcsfs"]
    assert not {"torchvision", "torchaudio", "triton"} & set(pins)
    assert not [n for n in pins if n.startswith("nvidia-")]


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), ".dockerignore is missing at the repository root"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder above it) out of the build context
    (Docker's rules, for the patterns used here: root-relative globs, `**/` for any depth;
    no `!` exceptions)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        assert not raw.startswith("!"), "exceptions are not handled by this check"
        pattern = raw.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(
                prefix.rsplit("/", 1)[-1], pattern[3:]
            ):
                return True
    return False


def test_dockerignore():
    """The build context leaves out the virtualenv, run outputs, git, caches and videos, but
    keeps everything the Dockerfile copies."""
    patterns = dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        "work/demo/mlflow.db",
        "mlflow.db",
        ".git/HEAD",
        "lvmae/__pycache__/config.cpython-311.pyc",
        "work/demo/videos/a.mp4",
        "data/lvu/videos/b.mp4",
        "c.mp4",
        "work/bench/x.json",
        "mlruns/0/meta.yaml",
        ".pytest_cache/v/cache",
        "lvmae.egg-info/PKG-INFO",
        "configs/paper.yaml",
    ]:
        assert dockerignored(path, patterns), f".dockerignore does not exclude {path}"
    for args in dockerfile_copies():
        for source in args:
            assert not dockerignored(source, patterns), f".dockerignore excludes COPY {source}"
            for child in (ROOT / source).rglob("*.py") if (ROOT / source).is_dir() else []:
                if "__pycache__" not in child.parts:
                    relative = child.relative_to(ROOT).as_posix()
                    assert not dockerignored(relative, patterns), relative


def test_launcher_and_image_share_ray_base_and_torch():
    launcher = load_yaml(CLUSTER / "launcher.yaml")
    variables = dockerfile_args()
    assert launcher["docker"]["image"] == variables["RAY_IMAGE"]
    assert f"torch=={variables['TORCH_VERSION']}" in " ".join(launcher["setup_commands"])


def readme_lvmae_commands() -> list[list[str]]:
    """Every `lvmae ...` command line in the README's code blocks (continuations joined)."""
    text = (CLUSTER / "README.md").read_text()
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if "lvmae" in words:
                commands.append(words[words.index("lvmae") :])
    return commands


README_COMMANDS = readme_lvmae_commands()


def test_readme_shows_lvmae_commands():
    shown = {argv[1] for argv in README_COMMANDS if len(argv) > 1}
    assert {"run", "extract"} <= shown


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda argv: " ".join(argv[:2]))
def test_readme_commands_parse_with_the_real_cli(argv):
    ctx = run_command_context(argv)
    if argv[1] == "run":
        params = ctx.params
        # The README's cluster commands use the shared filesystem.
        assert params["workdir"] is None or is_shared_path(params["workdir"]), " ".join(argv)
        # ... and their config loads with their overrides, as `lvmae run` would load it.
        overrides = {"run.workdir": params["workdir"]} | parse_sets(params["sets"])
        load_run_config(repository_config(params["config_file"]), overrides)


def test_readme_kuberay_version_and_configmap_recipe():
    """The README asks for the KubeRay the manifests need (authOptions.secretName: v1.6) and
    shows the ConfigMap recipe: create / update it from configs/, and change a bucket without
    a rebuild."""
    text = (CLUSTER / "README.md").read_text()
    kuberay = re.findall(r"KubeRay[^.\n]*?v?(\d+\.\d+(?:\.\d+)?)", text)
    assert "1.6" in kuberay, kuberay
    assert not [v for v in kuberay if tuple(map(int, v.split(".")))[:2] < (1, 6)], kuberay
    assert "KubeRay ≥ 1.6" in text or "KubeRay >= 1.6" in text
    assert re.search(rf"kubectl create configmap {CONFIG_MAP} --from-file=configs/", text)
    assert "kubectl apply -f cluster/kuberay/configmap.yaml" in text
    assert f"--config {CONFIG_MOUNT}/paper.yaml" in text
    assert "--set run.input=" in text
    assert "rebuild" in text


def test_readme_refers_to_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    paths = set(re.findall(r"\bcluster/[\w./*-]*[\w*]", text))
    assert paths
    for path in paths:
        assert list(ROOT.glob(path)), f"cluster/README.md mentions missing {path}"
