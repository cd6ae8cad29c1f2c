"""nftables: kube-proxy's nftables mode and the nft rulesets of real nodes.

- `parser.parse` / `parse_text` / `parse_json`: `nft list ruleset` text, `nft -f` scripts (block and
  command form) and `nft -j list ruleset` JSON -> `ast.Ruleset`; strict, errors carry a position.
- `render.render`: the AST back to text exactly as `nft list ruleset` prints it.
- `generator.generate` / `changes`: kube-proxy's nftables layout from the proxy model (full and
  partial sync), as the `nft -f` transaction kube-proxy runs.
- The evaluator is `dataplane.engine.nft_eval.NftEvaluator` (and `NftRuleset` for the pipeline).
"""
