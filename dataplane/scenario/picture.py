"""A picture of the cluster a run built: the underlay, each node with its bridge and pods, the
external client, and each Service's path (ClusterIP / NodePort -> endpoints), as plain SVG.

Drawn from the JSON report only (no live state), so a saved report can be drawn again.
"""

from __future__ import annotations

from html import escape

NODE_W, POD_H, GAP = 250, 34, 24
DESIGN_NOTE = {"host-gw": "routes to each podCIDR via the node IP", "vxlan": "vxlan0 overlay (VNI 1, UDP 4789)",
               "l2": "cni0 bridges joined in one L2 segment"}


def _text(x: float, y: float, s: str, size: int = 12, weight: str = "normal", anchor: str = "start") -> str:
    return (f'<text x="{x}" y="{y}" font-family="monospace" font-size="{size}" font-weight="{weight}" '
            f'text-anchor="{anchor}">{escape(s)}</text>')


def svg(report: dict) -> str:
    nodes, pods = report["nodes"], report["pods"]
    per_node = {n["name"]: [p for p in pods if p["node"] == n["name"]] for n in nodes}
    tallest = max((len(v) for v in per_node.values()), default=0)
    node_h = 90 + tallest * (POD_H + 6)
    services = report.get("services", [])
    slices = report.get("endpointSlices", [])
    width = max(len(nodes) * (NODE_W + GAP) + GAP + 200, 760)
    top = 70
    underlay_y = top + node_h + 50
    height = underlay_y + 70 + 18 * (len(services) + 2)
    design = report["settings"].get("podNetwork", "")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           '<rect width="100%" height="100%" fill="white"/>',
           _text(GAP, 28, f"scenario {report['scenario']}: {report['settings'].get('dataplane')} dataplane, proxy "
                 f"{report['settings'].get('proxyMode')}, pod network {design}", 15, "bold"),
           _text(GAP, 48, f"pod network: {DESIGN_NOTE.get(design, design)}", 12)]
    for i, n in enumerate(nodes):
        x = GAP + i * (NODE_W + GAP)
        out.append(f'<rect x="{x}" y="{top}" width="{NODE_W}" height="{node_h}" rx="8" fill="#eef4fb" stroke="#3b6ea5"/>')
        out.append(_text(x + 10, top + 20, f"{n['name']}  {n['ip']}", 13, "bold"))
        out.append(_text(x + 10, top + 38, f"cni0 {n['podCIDR']}", 11))
        for j, p in enumerate(per_node[n["name"]]):
            y = top + 50 + j * (POD_H + 6)
            fill = "#e6f4e6" if p["ready"] else "#fbe9e9"
            out.append(f'<rect x="{x + 16}" y="{y}" width="{NODE_W - 32}" height="{POD_H}" rx="5" fill="{fill}" stroke="#777"/>')
            out.append(_text(x + 24, y + 14, p["name"][:30], 11, "bold"))
            out.append(_text(x + 24, y + 28, f"{p['ip']}{'' if p['ready'] else '  (not ready)'}", 11))
        out.append(f'<line x1="{x + NODE_W / 2}" y1="{top + node_h}" x2="{x + NODE_W / 2}" y2="{underlay_y}" stroke="#3b6ea5" stroke-width="2"/>')
        out.append(_text(x + NODE_W / 2 + 6, underlay_y - 8, "eth0", 10))
    ext_x = GAP + len(nodes) * (NODE_W + GAP)
    out.append(f'<rect x="{ext_x}" y="{underlay_y - 70}" width="170" height="40" rx="6" fill="#fff6e0" stroke="#b07d10"/>')
    out.append(_text(ext_x + 10, underlay_y - 46, "external client 192.168.100.2", 10, "bold"))
    out.append(f'<line x1="{ext_x + 85}" y1="{underlay_y - 30}" x2="{ext_x + 85}" y2="{underlay_y}" stroke="#b07d10" stroke-width="2"/>')
    out.append(f'<line x1="{GAP}" y1="{underlay_y}" x2="{width - GAP}" y2="{underlay_y}" stroke="#333" stroke-width="4"/>')
    out.append(_text(GAP, underlay_y + 18, "underlay bridge ul0, 192.168.100.0/24", 11))
    y = underlay_y + 48
    out.append(_text(GAP, y, "services (the node rules send each VIP / NodePort to the ready endpoints):", 12, "bold"))
    for s in services:
        y += 18
        eps = [a for sl in slices if sl["metadata"]["labels"]["kubernetes.io/service-name"] == s["name"]
               and sl["metadata"]["namespace"] == s["namespace"]
               for e in sl["endpoints"] if e["conditions"]["ready"] for a in e["addresses"]]
        front = s["clusterIP"] or "headless"
        if s.get("nodePorts"):
            front += " | NodePort " + ",".join(map(str, s["nodePorts"]))
        out.append(_text(GAP, y, f"{s['namespace']}/{s['name']} ({s['type']}): {front} -> "
                         f"{', '.join(sorted(set(eps))) or 'no ready endpoints'}", 11))
    out.append("</svg>")
    return "\n".join(out) + "\n"
