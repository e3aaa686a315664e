"""Istio's sample manifests run unchanged in a lab (root): ``curl.yaml`` and ``httpbin.yaml`` as Istio
publishes them (images, no commands), ``curl http://httpbin:8000/get`` from the curl pod by Service
name through cluster DNS, with the ``default`` namespace in the mesh and outside it; and Bookinfo,
whose productpage renders details and the reviews of all three versions (no stars, black, red) as
the Service load-balances over them.

The files are copied from ``manifests/istio-samples/`` byte for byte; the only document the tests add
is the ``default`` Namespace, labelled ambient or not (as ``kubectl label namespace default
istio.io/dataplane-mode=ambient`` would).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.lab_driver import Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the lab creates network namespaces and cgroups"),
]

ISTIO_SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "istio-samples"
# curl retries a refused connection: the lab reports a pod without probes ready once its process runs,
# which can be before the app has bound its port.
CURL = ("curl", "-sS", "--max-time", "10", "--retry", "10", "--retry-connrefused", "--retry-delay", "1")
BOOKINFO_REQUESTS = 40  # round robin over three reviews pods: every version well within this many


def default_namespace(ambient: bool) -> str:
    labels = "{istio.io/dataplane-mode: ambient}" if ambient else "{}"
    return f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: default, labels: {labels}}}\n"


def sample_lab(make_lab, files: list[str], ambient: bool) -> Lab:
    lab = make_lab([default_namespace(ambient)])
    for name in files:
        shutil.copy(ISTIO_SAMPLES / name, lab.config_dir / name)
    return lab


def pod_of(lab: Lab, deployment: str) -> str:
    (name,) = [p["name"] for p in lab.status()["pods"]
               if p["namespace"] == "default" and p["name"].rsplit("-", 2)[0] == deployment]
    return f"default/{name}"


@pytest.mark.parametrize("ambient", [True, False], ids=["in-mesh", "outside-mesh"])
def test_curl_and_httpbin_samples_unchanged_by_service_name(make_lab, ambient):
    lab = sample_lab(make_lab, ["curl.yaml", "httpbin.yaml"], ambient)
    lab.up(nodes=2)
    status = lab.status()
    assert {p["state"] for p in status["pods"] if p["namespace"] == "default"} == {"Running"}, status["pods"]
    curl = pod_of(lab, "curl")
    for url in ("http://httpbin:8000/get", "http://httpbin.default.svc.cluster.local:8000/get"):
        got = json.loads(lab.exec(curl, *CURL, url).stdout)
        assert got["method"] == "GET" and got["url"] == url
        assert got["headers"]["Host"] == [url.split("/")[2]]
        assert got["origin"] == lab.pod(*curl.split("/"))["ip"]  # ztunnel keeps the client's address
    assert lab.exec(curl, *CURL, "-o", "/dev/null", "-w", "%{http_code}", "http://httpbin:8000/status/418").stdout \
        == "418"


def test_bookinfo_productpage_renders_reviews_of_the_three_versions(make_lab):
    lab = sample_lab(make_lab, ["bookinfo.yaml", "curl.yaml"], ambient=True)
    lab.up(nodes=2)
    curl = pod_of(lab, "curl")
    seen: dict[str, set[str]] = {}
    for _ in range(BOOKINFO_REQUESTS):
        page = lab.exec(curl, *CURL, "http://productpage:9080/productpage").stdout
        assert "<title>Simple Bookstore App</title>" in page and "<dd>PublisherA</dd>" in page, page
        served_by = page.split("Reviews served by:</dt><dd><u>", 1)[1].split("<", 1)[0]
        colour = ("red" if '<font color="red">' in page else "black" if '<font color="black">' in page
                  else "none")
        seen.setdefault(served_by.rsplit("-", 2)[0], set()).add(colour)
        if len(seen) == 3:
            break
    assert seen == {"reviews-v1": {"none"}, "reviews-v2": {"black"}, "reviews-v3": {"red"}}, seen
