"""The scenario file: valid files parse to the records the runner needs; invalid ones get an
error naming the file and the line, and unknown fields are rejected."""

from __future__ import annotations

import os
import textwrap

import pytest

from dataplane.scenario import spec
from dataplane.scenario.schema import SpecError

SCENARIOS = os.path.join(os.path.dirname(__file__), "..", "..", "scenarios")

HEAD = """\
name: t
cluster:
  podNetwork: vxlan
traffic:
  - name: a
    from: pod/client
    to: {service: web, port: 80}
expect:
  - traffic: a
    reachable: true
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"""


def parse(text: str) -> spec.Scenario:
    return spec.parse(textwrap.dedent(text), "s.yaml")


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(text)
    return info.value


def test_minimal_file_parses_with_defaults():
    sc = parse(HEAD)
    assert sc.cluster.pod_network == "vxlan" and sc.cluster.proxy.mode == "iptables"
    assert [n.name for n in sc.nodes] == ["node-1"]          # one default node
    assert sc.services[0].ports[0].target_port == 80          # targetPort defaults to port
    assert sc.traffic[0].target == spec.Target(service="web", port=80, line=7)
    assert sc.expect[0].reachable is True


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(SCENARIOS) if n.endswith(".yaml")))
def test_every_shipped_scenario_parses(name):
    sc = spec.load(os.path.join(SCENARIOS, name))
    assert sc.traffic and sc.expect


def test_unknown_field_in_scenario_section_names_line():
    e = error(HEAD.replace("  podNetwork: vxlan", "  podNetwork: vxlan\n  colour: blue"))
    assert (e.file, e.line) == ("s.yaml", 4)
    assert "unknown field 'cluster.colour'" in str(e) and str(e).startswith("s.yaml:4:")


def test_unknown_field_in_manifest_is_rejected_on_its_line():
    e = error(HEAD + "  sessionAffinityy: ClientIP\n")
    assert e.line == 23 and "spec.sessionAffinityy" in e.message


def test_fields_of_real_manifests_we_do_not_model_are_accepted():
    sc = parse(HEAD.replace("containers: [{name: c, image: busybox}]",
                            "restartPolicy: Always, containers: [{name: c, image: busybox, resources: {}}]"))
    assert sc.pods[0].name == "client"


def test_bad_value_names_the_line_and_the_choices():
    e = error(HEAD.replace("podNetwork: vxlan", "podNetwork: mesh"))
    assert e.line == 3 and "'mesh' is not one of l2, host-gw, vxlan" in e.message


def test_yaml_syntax_error_has_a_line():
    e = error(HEAD.replace("    reachable: true", "    reachable: [true"))
    assert e.line >= 10 and "YAML syntax error" in e.message


def test_traffic_to_unknown_service_points_at_the_target():
    e = error(HEAD.replace("service: web, port: 80", "service: nope, port: 80"))
    assert e.line == 7 and "no Service default/nope" in e.message


def test_expectation_for_unknown_traffic():
    e = error(HEAD.replace("  - traffic: a", "  - traffic: b"))
    assert e.line == 9 and "unknown traffic 'b'" in e.message


def test_port_numbers_are_checked():
    e = error(HEAD.replace("ports: [{port: 80}]", "ports: [{port: 70000}]"))
    assert e.line == 22 and "out of range" in e.message


def test_node_outside_cluster_cidr_and_overlaps():
    node = ("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\nspec: {{podCIDR: {c}}}\n"
            "status: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n")
    e = error(HEAD + node.format(n="a", c="10.250.0.0/24", ip="192.168.100.11").replace("10.250", "10.99"))
    assert "outside clusterCIDR" in e.message and e.line == 24
    e = error(HEAD + node.format(n="a", c="10.244.1.0/24", ip="192.168.100.11")
              + node.format(n="b", c="10.244.1.0/25", ip="192.168.100.12"))
    assert "overlaps Node a" in e.message and e.line == 30


def test_selector_must_match_template_labels():
    dep = """---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: other}}
    spec: {containers: [{name: w}]}
"""
    e = error(HEAD + dep)
    assert e.line == 29 and "does not match template" in e.message


def test_clusterip_from_outside_is_refused_with_advice():
    e = error(HEAD.replace("from: pod/client", "from: external"))
    assert "use via: nodePort" in e.message


def test_unsupported_kind():
    e = error(HEAD + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert e.line == 25 and "unsupported kind 'ConfigMap'" in e.message


def test_missing_file_is_a_spec_error():
    with pytest.raises(SpecError, match="cannot read"):
        spec.load("/nonexistent/scenario.yaml")


def test_cli_reports_spec_error_without_traceback(tmp_path):
    from click.testing import CliRunner

    from dataplane.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD.replace("podNetwork: vxlan", "podNetwork: mesh"))
    res = CliRunner().invoke(main, ["scenario", "run", str(bad)])
    assert res.exit_code != 0
    if os.geteuid() == 0:
        assert f"{bad}:3:" in res.output
    assert "Traceback" not in res.output
