"""The deploy/ manifests agree with each other and with the CLI.

There is no Kubernetes (and no machines to launch on) here, so these files are
checked the way a reviewer would: parse every YAML document; parse every nestvec
command in them with the real argparse parser of `nestvec`; check the image,
ports, volumes, namespaces and placement resources line up.
"""
from __future__ import annotations

import pathlib
import re
import shlex
import tomllib

import pytest
import yaml

from nestvec.cluster._ops.cli import _parser
from nestvec.cluster._distributed.placement import Placement

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
VERSION = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def nestvec_args(command: str):
    """Parse a shell command line that runs `nestvec ...` (or a deploy/jobs script) with the CLI's parser."""
    tokens = shlex.split(command)
    if tokens[0] == "nohup":
        tokens = tokens[1:]
    tokens = tokens[: next((i for i, t in enumerate(tokens) if t.startswith(">")), len(tokens))]
    if tokens[-1] == "&":
        tokens = tokens[:-1]
    if tokens[0] == "python":  # deploy/jobs/<name>.py runs `nestvec <name>`
        sub = {"ingest.py": "ingest", "batch_search.py": "batch-search"}[tokens[1]]
        tokens = ["nestvec", sub, *tokens[2:]]
    assert tokens[0] == "nestvec", command
    return _parser().parse_args(tokens[1:])  # argparse exits (SystemExit) on a bad flag


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def kuberay():
    cluster_docs = load("kuberay/raycluster.yaml")
    return {"cluster": by_kind(cluster_docs, "RayCluster")[0],
            "service": by_kind(cluster_docs, "Service")[0],
            "pvc": by_kind(cluster_docs, "PersistentVolumeClaim")[0],
            "serve": load("kuberay/rayjob-serve.yaml")[0],
            "ingest": load("kuberay/rayjob-ingest.yaml")[0]}


def _pods(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"]
                                                          for g in spec["workerGroupSpecs"]]


def test_every_pod_runs_the_image_the_dockerfile_builds(kuberay):
    images = {c["image"] for pod in _pods(kuberay["cluster"]) for c in pod["containers"]}
    assert images == {f"nestvec:{VERSION}"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"-t nestvec:{VERSION}" in dockerfile
    ray_version = re.search(r"FROM rayproject/ray:([\d.]+)", dockerfile).group(1)
    assert kuberay["cluster"]["spec"]["rayVersion"] == ray_version


def test_the_service_reaches_the_gateway_the_serve_job_starts(kuberay):
    serve = nestvec_args(kuberay["serve"]["spec"]["entrypoint"])
    assert serve.command == "serve" and serve.ray_address == "auto"
    head = kuberay["cluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    svc = kuberay["service"]
    assert svc["spec"]["selector"] == {"ray.io/cluster": kuberay["cluster"]["metadata"]["name"],
                                       "ray.io/node-type": "head"}
    (port,) = svc["spec"]["ports"]
    assert ports[port["targetPort"]] == serve.port == port["port"]
    # Exposed beyond loopback: the server's exposure rule wants keys and TLS, not --insecure.
    assert serve.host == "0.0.0.0" and not serve.insecure
    env = {e["name"] for e in head["containers"][0]["env"]}
    assert "NESTVEC_API_KEYS" in env or serve.api_keys_file
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert any(serve.tls_cert.startswith(m + "/") for m in mounts)
    assert any(serve.tls_key.startswith(m + "/") for m in mounts)


def test_shard_data_is_on_the_shared_volume_every_pod_mounts(kuberay):
    serve = nestvec_args(kuberay["serve"]["spec"]["entrypoint"])
    # spread placement restarts a shard on any pod: every pod must see its files
    assert Placement.parse(serve.placement).strategy == "spread"
    assert kuberay["pvc"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in _pods(kuberay["cluster"]):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        data = [name for name, claim in claims.items() if claim == kuberay["pvc"]["metadata"]["name"]]
        assert len(data) == 1 and serve.data_dir.startswith(mounts[data[0]] + "/")
    # the head reserves no CPUs, so shards (which ask for --shard-cpus) land on workers
    head = kuberay["cluster"]["spec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and serve.shard_cpus > 0


def test_jobs_target_the_cluster_and_namespace_of_the_service(kuberay):
    serve = nestvec_args(kuberay["serve"]["spec"]["entrypoint"])
    ingest = nestvec_args(kuberay["ingest"]["spec"]["entrypoint"])
    assert ingest.command == "ingest" and ingest.namespace == serve.namespace
    for job in (kuberay["serve"], kuberay["ingest"]):
        assert job["kind"] == "RayJob"
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": kuberay["cluster"]["metadata"]["name"]}


def test_cluster_launcher_pins_shards_to_its_machines():
    conf = load("cluster-launcher.yaml")[0]
    ips = [conf["provider"]["head_ip"], *conf["provider"]["worker_ips"]]
    serve_lines = [c for c in conf["head_start_ray_commands"] if "nestvec serve" in c]
    assert len(serve_lines) == 1
    serve = nestvec_args(serve_lines[0])
    assert serve.ray_address == "auto" and serve.gateways >= 1
    placement = Placement.parse(serve.placement)
    assert placement.strategy == "resources" and placement.resources == tuple(f"nv-{ip}" for ip in ips)
    # each node names its resource after its own IP, with the same prefix
    for cmd in (conf["head_start_ray_commands"][1], conf["worker_start_ray_commands"][1]):
        assert "ray start" in cmd and '{\\"nv-$(hostname -I' in cmd
    assert any(f"nestvec[data]=={VERSION}" in c for c in conf["setup_commands"])


def test_readme_job_submit_recipes_parse():
    """Every `ray job submit ... -- <entrypoint>` in deploy/README.md is a valid nestvec command."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    recipes = [line.split(" -- ", 1)[1] for line in text.splitlines()
               if "ray job submit" in line and " -- " in line]
    assert len(recipes) >= 3, recipes
    commands = {nestvec_args(r).command for r in recipes}
    assert commands == {"serve", "ingest", "batch-search"}
    for r in recipes:
        if r.startswith("python"):
            assert (DEPLOY / "jobs" / shlex.split(r)[1]).exists()


def test_a_bad_command_line_is_caught():
    with pytest.raises(SystemExit):
        nestvec_args("nestvec serve --ray-address auto --no-such-flag 1")
    with pytest.raises(SystemExit):
        nestvec_args("nestvec ingest /data")  # --collection is required
