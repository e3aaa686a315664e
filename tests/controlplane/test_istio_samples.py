"""Istio's own kind of manifests (tests/fixtures/istio/: bookinfo, httpbin, curl, helloworld,
tcp-echo, authorization policies of every field, the classic networking kinds) are read without
a false error: what the mesh does not run is a warning that says so, never an error."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from controlplane.validate import validate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "istio"


def test_ambient_validate_reports_no_error_on_istio_samples():
    out = subprocess.run([sys.executable, "-m", "ambient", "validate", "-o", "json", str(FIXTURES)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    document = json.loads(out.stdout)
    assert document["errors"] == 0
    # Only the findings that say what the mesh does not run; no field of these manifests is
    # reported as unknown or unsupported, and no reference among them dangles.
    codes = Counter(f["code"] for f in document["findings"])
    assert set(codes) == {"AMB0006", "AMB0007", "AMB0008", "AMB0009", "AMB0103"}, document["findings"]
    assert codes["AMB0009"] == 1  # istio.io/ingress-use-waypoint: no ingress gateway runs
    assert codes["AMB0007"] == 1  # the ingress Gateway, once; not its HTTPRoute
    assert codes["AMB0008"] == 2  # CUSTOM and AUDIT


def test_every_kind_of_the_samples_is_accounted_for():
    resources, problems = validate([FIXTURES])
    kinds = Counter(type(res).__name__ for res in resources)
    assert kinds == {"Namespace": 6, "ServiceAccount": 6, "Service": 11, "Deployment": 13, "Gateway": 3,
                     "GatewayClass": 1, "HTTPRoute": 2, "AuthorizationPolicy": 11, "PeerAuthentication": 2}
    skipped = sorted(p.message.split(" ")[0] for p in problems if p.code == "AMB0006")
    assert skipped == ["DestinationRule", "EnvoyFilter", "Gateway", "RequestAuthentication", "ServiceEntry",
                       "Sidecar", "Telemetry", "VirtualService", "VirtualService"]
