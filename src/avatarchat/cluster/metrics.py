"""Merging the nodes' Prometheus text into one exposition, each sample labelled ``node``."""

from __future__ import annotations


def merge_metrics(parts: dict[str, str]) -> str:
    """``parts``: node label -> that node's text (``server.metrics.Metrics.render``). Each
    family's HELP and TYPE lines appear once, followed by every node's samples of it."""
    order: list[str] = []
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for node, text in parts.items():
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                fields = line.split(maxsplit=3)
                if len(fields) >= 3 and fields[1] in ("HELP", "TYPE"):
                    family = fields[2]
                    if family not in headers:
                        order.append(family)
                        headers[family], samples[family] = [], []
                    if line not in headers[family]:
                        headers[family].append(line)
                continue
            if line.strip() and family:
                samples[family].append(_labelled(line, node))
    out = [line for family in order for line in (*headers[family], *samples[family])]
    return "\n".join(out) + "\n" if out else ""


def _labelled(sample: str, node: str) -> str:
    """``name{a="b"} v`` -> ``name{node="N",a="b"} v``; ``name v`` -> ``name{node="N"} v``."""
    name, brace, rest = sample.partition("{")
    if brace:
        return f'{name}{{node="{node}",{rest}'
    name, _, value = sample.partition(" ")
    return f'{name}{{node="{node}"}} {value}'
