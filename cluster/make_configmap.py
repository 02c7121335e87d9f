"""Write cluster/kuberay/configmap.yaml: the ConfigMap `lvmae-config` with every run config
of configs/ (one key per file, mounted as /etc/lvmae/<file> in the Ray pods) and the MLflow
tracking URI the pods read as MLFLOW_TRACKING_URI.

    python cluster/make_configmap.py [--mlflow-uri URI]   # from the repository root

Run it after changing a file in configs/ (tests/cluster/test_manifests.py checks the two
agree). The same ConfigMap straight from a checkout, without this file:

    kubectl create configmap lvmae-config --from-file=configs/ \
      --from-literal=MLFLOW_TRACKING_URI=http://mlflow.mlflow.svc.cluster.local:5000 \
      --dry-run=client -o yaml | kubectl apply -f -
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OUT = ROOT / "cluster" / "kuberay" / "configmap.yaml"
NAME = "lvmae-config"
MLFLOW_KEY = "MLFLOW_TRACKING_URI"
DEFAULT_MLFLOW_URI = "http://mlflow.mlflow.svc.cluster.local:5000"

HEADER = f"""\
# The cluster's settings, outside the image: the run configs (configs/*.yaml, one key per
# file) and the MLflow tracking server. Every Ray pod of the RayCluster and of each RayJob
# mounts it at /etc/lvmae (so `lvmae run --config /etc/lvmae/paper.yaml`) and reads
# {MLFLOW_KEY} from it (configMapKeyRef). Changing a bucket is a change to this ConfigMap
# and a `kubectl apply`, not an image rebuild:
#
#   kubectl apply -f cluster/kuberay/configmap.yaml
#
# Generated from configs/ by `python cluster/make_configmap.py`: edit configs/*.yaml, not the
# copies below, and regenerate (tests/cluster/test_manifests.py checks they agree). Or build
# it from your own copy of configs/ (cluster/README.md):
#
#   kubectl create configmap {NAME} --from-file=configs/ \\
#     --from-literal={MLFLOW_KEY}={DEFAULT_MLFLOW_URI} \\
#     --dry-run=client -o yaml | kubectl apply -f -
#
# {MLFLOW_KEY} is a placeholder for your tracking server. Mounted files follow an update
# within a minute or so; environment variables only in pods started after it (RayJobs start
# new pods each time; restart a long-lived RayCluster's pods).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the configs read as they do in configs/."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def configmap(mlflow_uri: str = DEFAULT_MLFLOW_URI) -> dict:
    data = {path.name: path.read_text() for path in sorted(CONFIGS.glob("*.yaml"))}
    data[MLFLOW_KEY] = mlflow_uri
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": "lvmae"}},
        "data": data,
    }


def render(mlflow_uri: str = DEFAULT_MLFLOW_URI) -> str:
    body = yaml.dump(
        configmap(mlflow_uri), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000
    )
    return HEADER + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-uri", default=DEFAULT_MLFLOW_URI)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.write_text(render(args.mlflow_uri))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
