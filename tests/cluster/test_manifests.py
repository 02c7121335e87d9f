"""The cluster/ recipes are well-formed: the launcher config validates against the schema
that ships inside Ray, the KubeRay manifests have the shape the operator needs and run the
`lvmae` command with configs from this repository, every node mounts the shared workdir,
and the image installs what the jobs need.

Pure file parsing (plus Ray's own config and runtime-env validators and the `lvmae` CLI's own
option parser and run-config loader): no cluster, no Docker.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from lvmae.config import load_run_config, parse_sets

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
    manifests = load_kuberay()
    expected = {"raycluster.yaml", "pvc.yaml"} | {
        f"rayjob-{job}.yaml" for job in ("extract", "pretrain", "probe", "tune", "run")
    }
    assert expected <= set(manifests)
    for name, docs in manifests.items():
        for doc in docs:
            assert doc["metadata"]["name"], name
            if doc["kind"] in RAY_KINDS:
                assert doc["apiVersion"] == "ray.io/v1", name
            else:
                # Besides the Ray resources, only the shared volume's claim.
                assert (doc["apiVersion"], doc["kind"]) == ("v1", "PersistentVolumeClaim"), name


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
    ((_, cluster),) = kuberay_docs("RayCluster")
    spec = cluster["spec"]
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


def test_raycluster_takes_mlflow_uri_from_a_configmap_or_secret():
    ((_, cluster),) = kuberay_docs("RayCluster")
    for container in containers(cluster["spec"]):
        env = {e["name"]: e for e in container.get("env", [])}
        source = env["MLFLOW_TRACKING_URI"]["valueFrom"]
        assert {"configMapKeyRef", "secretKeyRef"} & set(source)


def test_one_image_everywhere():
    images = {c["image"] for _, spec in cluster_specs() for c in containers(spec)}
    assert len(images) == 1, images


def test_ray_version_matches_the_image_base():
    base = expand(next(a for k, a in dockerfile_instructions() if k == "FROM"), dockerfile_args())
    for name, spec in cluster_specs():
        assert f":{spec['rayVersion']}-" in base, f"{name}: rayVersion vs {base}"


RAYJOBS = kuberay_docs("RayJob")


@pytest.mark.parametrize(("name", "job"), RAYJOBS, ids=[name for name, _ in RAYJOBS])
def test_rayjob_config_is_in_the_repository(name, job):
    """The image copies configs/ to /app/configs and runs from /app (test_dockerfile)."""
    config = entrypoint_args(job).get("--config")
    assert isinstance(config, str) and config.startswith("configs/"), name
    assert (ROOT / config).is_file(), f"{name}: {config} does not exist in the repository"


@pytest.mark.parametrize(("name", "job"), RAYJOBS, ids=[name for name, _ in RAYJOBS])
def test_rayjob_entrypoint_is_a_valid_lvmae_run(name, job):
    """The real `lvmae run` parses the entrypoint, and its config loads with the entrypoint's
    overrides (what the command does before any work): the workdir is on the shared volume."""
    ctx = run_command_context(shlex.split(job["spec"]["entrypoint"]))
    params = ctx.params
    workdir = params["workdir"]
    if workdir is not None:
        assert is_shared_path(workdir), f"{name}: --workdir {workdir} is not under {SHARED_MOUNT}"
    overrides = {"run.workdir": workdir, "run.address": params["address"]} | parse_sets(
        params["sets"]
    )
    config = load_run_config(ROOT / params["config_file"], overrides)
    assert is_shared_path(config.run.workdir), f"{name}: workdir {config.run.workdir}"
    if params["stages"]:
        chosen = {s.strip() for s in params["stages"].split(",") if s.strip()}
        assert chosen <= set(config.run.stages), f"{name}: {chosen} vs {config.run.stages}"


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

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "MLFLOW_TRACKING_URI" in runtime_env["env_vars"], name
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
    copied = [a.split() for k, a in instructions if k == "COPY"]
    sources = {s for args in copied for s in args[:-1] if not s.startswith("--")}
    assert "configs" in sources, "configs/ must be in the image for --config configs/..."
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"


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
        load_run_config(ROOT / params["config_file"], overrides)


def test_readme_refers_to_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    paths = set(re.findall(r"\bcluster/[\w./*-]*[\w*]", text))
    assert paths
    for path in paths:
        assert list(ROOT.glob(path)), f"cluster/README.md mentions missing {path}"
