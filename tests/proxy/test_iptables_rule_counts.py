"""Rule-count regression against kube-proxy's number_generated_rules_test.go (TestNumberIptablesRules).

Upstream's table was written in June 2022 (PR #110503), just after PR #110289 made KUBE-FW-* end by
falling through. Since then kube-proxy (a) writes kubelet's "block incoming localnet connections"
rule into its own filter data when localhost NodePorts are on, and (b) ends every KUBE-FW-* chain
with a comment-only rule "other traffic to ... will be dropped by KUBE-PROXY-FIREWALL" (present in
today's TestOverallIPTablesRules, see test_generator_golden). We check upstream's numbers exactly
with localhost NodePorts off, and account for (b) explicitly: one extra nat rule per
LoadBalancer service that has endpoints.
"""

from __future__ import annotations

import pytest

from tests.proxy.helpers import rules_for, synthetic, upstream_context

# (services, endpoints per service, filter rules, nat rules) — copied from upstream.
CLUSTER_IP = [(0, 0, 3, 5), (1, 0, 4, 5), (1, 1, 3, 10), (1, 2, 3, 13), (1, 10, 3, 37),
              (10, 0, 13, 5), (10, 1, 3, 55), (10, 2, 3, 85), (10, 10, 3, 325)]
LOAD_BALANCER = [(0, 0, 3, 5), (1, 0, 7, 5), (1, 1, 4, 16), (1, 2, 4, 19), (1, 10, 4, 43),
                 (10, 0, 43, 5), (10, 1, 13, 115), (10, 2, 13, 145), (10, 10, 13, 385)]


@pytest.mark.parametrize("services,endpoints,filter_rules,nat_rules", CLUSTER_IP)
def test_clusterip_rule_counts_equal_upstream(services, endpoints, filter_rules, nat_rules):
    rs = rules_for(synthetic(services, endpoints), upstream_context(localhost_nodeports=False))
    assert (len(rs.filter_rules), len(rs.nat_rules)) == (filter_rules, nat_rules)


@pytest.mark.parametrize("services,endpoints,filter_rules,nat_rules", LOAD_BALANCER)
def test_loadbalancer_rule_counts_equal_upstream_plus_the_fw_comment_rule(services, endpoints, filter_rules,
                                                                          nat_rules):
    rs = rules_for(synthetic(services, endpoints, svc_type="LoadBalancer", lb=True),
                   upstream_context(localhost_nodeports=False))
    fw_comment_rules = services if endpoints else 0
    assert (len(rs.filter_rules), len(rs.nat_rules)) == (filter_rules, nat_rules + fw_comment_rules)
    assert sum("will be dropped by KUBE-PROXY-FIREWALL" in r for r in rs.nat_rules) == fw_comment_rules


def test_localhost_nodeports_add_exactly_the_localnet_filter_rule():
    on = rules_for(synthetic(10, 10), upstream_context())
    off = rules_for(synthetic(10, 10), upstream_context(localhost_nodeports=False))
    assert len(on.filter_rules) == len(off.filter_rules) + 1
    assert len(on.nat_rules) == len(off.nat_rules)


def test_rule_count_is_linear_in_services_and_endpoints():
    def nat(s: int, e: int) -> int:
        return len(rules_for(synthetic(s, e), upstream_context(localhost_nodeports=False)).nat_rules)
    # 5 fixed rules + per service (1 KUBE-SERVICES + 1 masq + e jumps + 2e SEP rules)
    for s, e in ((3, 4), (20, 1), (7, 9)):
        assert nat(s, e) == 5 + s * (2 + 3 * e)


def test_classic_layout_counts():
    rs = rules_for(synthetic(10, 10), upstream_context(localhost_nodeports=False), layout="classic")
    # KUBE-MARK-DROP 1 + POSTROUTING 3 + MARK-MASQ 1 + tail 1, and per service 2 + 10 + 20.
    assert len(rs.nat_rules) == 6 + 10 * 32
    assert len(rs.filter_rules) == 1 + 4
