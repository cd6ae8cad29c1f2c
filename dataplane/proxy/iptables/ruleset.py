"""A generated iptables rule set: kube-proxy's four line buffers and their iptables-restore text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RuleSet:
    """What one sync writes. Rules are full restore lines ("-A CHAIN ..." or "-X CHAIN").

    `skipped_nat_rules` counts the rules of unchanged services left out by a partial sync (kube-proxy
    counts them for its iptables_rules_total metric); `active_nat_chains` are every per-service chain
    the state needs, written or not.
    """

    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[str] = field(default_factory=list)
    jump_rules: dict[str, list[str]] = field(default_factory=dict)  # table -> "-A INPUT ..." lines
    skipped_nat_rules: int = 0
    deleted_chains: int = 0
    partial: bool = False
    active_nat_chains: set[str] = field(default_factory=set)
    family: int = 4
    # per service port: its per-service chains and their rule count (reused by the next partial sync)
    per_service: dict[object, tuple[tuple[str, ...], int]] = field(default_factory=dict, repr=False)

    def text(self) -> str:
        """iptables-restore input, filter table then nat table, as kube-proxy passes it."""
        parts = ["*filter\n"]
        parts += [f":{c} - [0:0]\n" for c in self.filter_chains]
        parts += [r + "\n" for r in self.jump_rules.get("filter", ())]
        parts += [r + "\n" for r in self.filter_rules]
        parts.append("COMMIT\n*nat\n")
        parts += [f":{c} - [0:0]\n" for c in self.nat_chains]
        parts += [r + "\n" for r in self.jump_rules.get("nat", ())]
        parts += [r + "\n" for r in self.nat_rules]
        parts.append("COMMIT\n")
        return "".join(parts)

    def stats(self) -> dict[str, object]:
        """Rule and chain counts per table, plus kube-proxy's rules-total metric for nat."""
        nat_rules = sum(1 for r in self.nat_rules if not r.startswith("-X "))
        return {
            "family": f"IPv{self.family}",
            "partial": self.partial,
            "filter": {"chains": len(self.filter_chains), "rules": len(self.filter_rules)},
            "nat": {"chains": len(self.nat_chains), "rules": nat_rules,
                    "rules_total": nat_rules + self.skipped_nat_rules,
                    "deleted_chains": self.deleted_chains},
            "jump_rules": sum(len(v) for v in self.jump_rules.values()),
        }
