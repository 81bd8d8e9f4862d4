"""The Helm chart, rendered offline for several value sets: lint --strict,
every manifest validated against the Kubernetes schemas, and assertions on
what a rollout depends on (probes, grace period, strategy, refusals).

Run: python -m unittest discover -s deploy/tests -v
Needs PyPI helm-python-sdk and kubernetes-validate, and a built
`switchboard` (SWITCHBOARD_BIN, else target/debug/switchboard): every
variable the chart sets is checked against the ones `serve --help` lists.
"""

import copy
import os
import re
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "switchboard"
OPENAPI = ROOT / "docs" / "openapi.yaml"
# The floor Chart.yaml's kubeVersion names, and the newest schema known.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
# Custom resources: no schema to validate them against.
CRD_KINDS = {"ServiceMonitor"}

CLUSTER = {
    "replicaCount": 3,
    "jwt": {"secret": "x" * 40},
    "database": {"url": "postgres://switchboard:pw@db:5432/switchboard"},
    "redis": {"url": "redis://redis:6379"},
    "clickhouse": {"url": "http://feed:pw@clickhouse:8123"},
    "s3": {
        "bucket": "chat-media",
        "region": "eu-west-1",
        "accessKeyId": "AKIAEXAMPLE",
        "secretAccessKey": "secret",
    },
    "publicUrl": "https://chat.example.com",
}

EVERYTHING = {
    "replicaCount": 3,
    "existingSecret": "switchboard-credentials",
    "database": {"fromExistingSecret": True},
    "redis": {"fromExistingSecret": True},
    "clickhouse": {"fromExistingSecret": True},
    "s3": {
        "bucket": "chat-media",
        "endpoint": "https://minio.storage:9000",
        "fromExistingSecret": True,
    },
    "publicUrl": "https://chat.example.com",
    "config": {"clientIpHeader": "x-forwarded-for", "drainTimeoutSecs": 20},
    "extraEnv": {"SWITCHBOARD_SSE_HEARTBEAT_SECS": "20"},
    "ingress": {
        "enabled": True,
        "tls": [{"secretName": "chat-tls", "hosts": ["chat.example.com"]}],
    },
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/chat"}},
    "podAnnotations": {"example.com/team": "chat"},
}

VALUE_SETS = {"defaults": {}, "cluster": CLUSTER, "everything": EVERYTHING}


def render(values):
    """The rendered objects, by kind (each kind once in this chart)."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(copy.deepcopy(values), name="chat", namespace="chat", is_install=True)
    objects = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']}s"
                objects[doc["kind"]] = doc
    return objects


def binary():
    path = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / "target" / "debug" / "switchboard"))
    assert path.is_file(), f"{path}: build it first (cargo build -p switchboard)"
    return path


def container(objects):
    return objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def env_names(objects):
    names = set(objects["ConfigMap"]["data"])
    names |= {e["name"] for e in container(objects).get("env", [])}
    return names


class Chart(unittest.TestCase):
    def test_lint_strict_passes_for_every_value_set(self):
        for name, values in VALUE_SETS.items():
            with self.subTest(values=name):
                report = helm.lint(str(CHART), copy.deepcopy(values), strict=True)
                self.assertEqual(report["errors"], [])
                problems = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(problems, [])

    def test_every_manifest_is_valid_for_the_supported_kubernetes_versions(self):
        for name, values in VALUE_SETS.items():
            for kind, obj in render(values).items():
                if kind in CRD_KINDS:
                    continue
                for version in KUBE_VERSIONS:
                    with self.subTest(values=name, kind=kind, kubernetes=version):
                        kubernetes_validate.validate(obj, version, strict=True)

    def test_defaults_are_one_embedded_node_on_a_volume_recreated_not_rolled(self):
        objects = render({})
        deployment = objects["Deployment"]
        self.assertEqual(deployment["spec"]["replicas"], 1)
        self.assertEqual(deployment["spec"]["strategy"], {"type": "Recreate"})
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        self.assertEqual(claim, objects["PersistentVolumeClaim"]["metadata"]["name"])
        self.assertNotIn("SWITCHBOARD_DATABASE_URL", env_names(objects))
        self.assertNotIn("SWITCHBOARD_REDIS_URL", env_names(objects))
        secret = objects["Secret"]["data"]
        self.assertEqual(set(secret), {"jwt-secret"})

    def test_cluster_mode_rolls_one_pod_at_a_time_with_no_volume(self):
        for name in ("cluster", "everything"):
            with self.subTest(values=name):
                objects = render(VALUE_SETS[name])
                strategy = objects["Deployment"]["spec"]["strategy"]
                self.assertEqual(strategy["type"], "RollingUpdate")
                self.assertEqual(strategy["rollingUpdate"]["maxUnavailable"], 0)
                self.assertEqual(strategy["rollingUpdate"]["maxSurge"], 1)
                self.assertNotIn("PersistentVolumeClaim", objects)
                names = env_names(objects)
                for var in ("SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_REDIS_URL", "S3_BUCKET"):
                    self.assertIn(var, names)

    def test_probes_name_the_binarys_health_paths_on_its_port(self):
        documented = yaml.safe_load(OPENAPI.read_text())["paths"]
        for name, values in VALUE_SETS.items():
            with self.subTest(values=name):
                objects = render(values)
                c = container(objects)
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                listen = objects["ConfigMap"]["data"]["SWITCHBOARD_LISTEN"]
                self.assertEqual(int(listen.rsplit(":", 1)[1]), ports["http"])
                probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
                self.assertEqual(probes["livenessProbe"]["path"], "/health/live")
                self.assertEqual(probes["startupProbe"]["path"], "/health/live")
                self.assertEqual(probes["readinessProbe"]["path"], "/health/ready")
                for probe in probes.values():
                    self.assertIn(probe["path"], documented)
                    self.assertIn(probe["port"], ports)
                # The readiness check waits up to 2 s on the database.
                self.assertGreater(c["readinessProbe"]["timeoutSeconds"], 2)
                service = objects["Service"]["spec"]["ports"][0]
                self.assertIn(service["targetPort"], ports)

    def test_grace_period_outlasts_the_pause_and_the_drain(self):
        for name, values in VALUE_SETS.items():
            with self.subTest(values=name):
                objects = render(values)
                pod = objects["Deployment"]["spec"]["template"]["spec"]
                pause = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
                drain = int(objects["ConfigMap"]["data"]["SWITCHBOARD_DRAIN_TIMEOUT_SECS"])
                self.assertGreater(pause, 0)
                self.assertGreater(pod["terminationGracePeriodSeconds"], pause + drain)

    def test_pods_run_as_non_root_on_a_read_only_root(self):
        objects = render({})
        pod = objects["Deployment"]["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        context = container(objects)["securityContext"]
        self.assertTrue(context["readOnlyRootFilesystem"])
        self.assertFalse(context["allowPrivilegeEscalation"])
        mounts = {m["mountPath"] for m in container(objects)["volumeMounts"]}
        self.assertEqual(mounts, {"/data", "/tmp"})

    def test_the_disruption_budget_and_spread_select_the_pods(self):
        objects = render(CLUSTER)
        labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
        pdb = objects["PodDisruptionBudget"]["spec"]
        self.assertEqual(pdb["maxUnavailable"], 1)
        self.assertLessEqual(pdb["selector"]["matchLabels"].items(), labels.items())
        self.assertLessEqual(objects["Service"]["spec"]["selector"].items(), labels.items())
        spread = objects["Deployment"]["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
        self.assertLessEqual(spread["labelSelector"]["matchLabels"].items(), labels.items())

    def test_a_config_change_rolls_the_pods(self):
        def checksum(values):
            annotations = render(values)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
            return annotations["checksum/config"]

        changed = copy.deepcopy(CLUSTER)
        changed["config"] = {"log": "debug"}
        self.assertEqual(checksum(CLUSTER), checksum(CLUSTER))
        self.assertNotEqual(checksum(CLUSTER), checksum(changed))

    def test_everything_optional_renders_its_objects(self):
        objects = render(EVERYTHING)
        for kind in ("Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "ServiceAccount"):
            self.assertIn(kind, objects)
        self.assertNotIn("Secret", objects)
        self.assertNotIn("replicas", objects["Deployment"]["spec"])
        annotations = objects["Ingress"]["metadata"]["annotations"]
        self.assertEqual(annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off")
        self.assertGreaterEqual(int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]), 3600)
        refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in container(objects)["env"]]
        self.assertEqual(set(refs), {"switchboard-credentials"})

    def test_refuses_what_would_break_the_deployment(self):
        refusals = {
            "replicaCount > 1 needs": {"replicaCount": 2},
            "replicaCount > 1 needs database.url": {**CLUSTER, "s3": {"bucket": ""}},
            "autoscaling needs cluster mode": {"autoscaling": {"enabled": True}},
            "must be a postgres:// URL": {"database": {"url": "mysql://db/x"}},
            "at least 32 bytes": {"jwt": {"secret": "short"}},
            "terminationGracePeriodSeconds must exceed": {"terminationGracePeriodSeconds": 15},
            "fromExistingSecret needs existingSecret": {"redis": {"fromExistingSecret": True}},
        }
        for message, values in refusals.items():
            with self.subTest(refusal=message):
                with self.assertRaises(Exception) as refused:
                    render(values)
                self.assertIn(message, str(refused.exception))

    def test_the_binary_serves_its_probes_with_the_charts_configuration(self):
        objects = render({"publicUrl": "https://chat.example.com", "config": {"clientIpHeader": "x-forwarded-for"}})
        env = dict(objects["ConfigMap"]["data"])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        # The pod's address and volume, moved to loopback and a temp folder.
        with tempfile.TemporaryDirectory() as data:
            env.update(
                SWITCHBOARD_LISTEN=f"127.0.0.1:{port}",
                SWITCHBOARD_DATA_DIR=data,
                SWITCHBOARD_JWT_SECRET="chart test secret, long enough for hs256",
                PATH=os.environ.get("PATH", ""),
            )
            server = subprocess.Popen([str(binary()), "serve"], env=env, stderr=subprocess.DEVNULL)
            try:
                c = container(objects)
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    url = f"http://127.0.0.1:{port}{c[probe]['httpGet']['path']}"
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            with urllib.request.urlopen(url, timeout=3) as answer:
                                self.assertEqual(answer.status, 200, probe)
                                break
                        except (urllib.error.URLError, ConnectionError):
                            self.assertLess(time.monotonic(), deadline, f"{probe} never answered")
                            time.sleep(0.05)
            finally:
                server.terminate()
                self.assertEqual(server.wait(timeout=30), 0, "a clean stop on SIGTERM")

    def test_every_variable_the_chart_sets_is_one_the_binary_reads(self):
        help_text = subprocess.run(
            [str(binary()), "serve", "--help"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        known = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", help_text))
        self.assertIn("SWITCHBOARD_LISTEN", known)
        # Read by the AWS SDK's credential chain, not by a flag.
        aws_chain = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        for name, values in VALUE_SETS.items():
            with self.subTest(values=name):
                self.assertLessEqual(env_names(render(values)) - aws_chain, known)


if __name__ == "__main__":
    unittest.main()
