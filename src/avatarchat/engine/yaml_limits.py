"""Safe YAML with limits, for files that may come from anyone (configs).

``load(text)`` is ``yaml.safe_load`` plus three limits checked on the composed node graph,
before construction builds any Python structure from it:

- nesting: at most ``MAX_DEPTH`` levels, checked while composing (PyYAML composes
  recursively, so a deep file would otherwise end in a raw ``RecursionError``);
- size: at most ``MAX_NODES`` nodes, counted as composed and again with every alias expanded
  (a "billion laughs": nine aliases of nine aliases of ... multiply by nine a level);
- no alias inside its own anchor (an infinite expansion).

Composing is linear in the text: an alias is a reference to its anchor's node. The expanded
size is computed on that graph, memoized per node, so the check also costs the text's size,
never the expansion's. Scanning and parsing use libyaml when PyYAML has it (about ten times
faster than the pure-Python scanner, which is the fallback); composing is always PyYAML's
Python composer, which is where the limits live.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

#: Deepest nesting of mappings and sequences, aliases expanded (the default config uses 4).
MAX_DEPTH = 32
#: Nodes (scalars, mappings, sequences), aliases expanded: a real config has a few hundred.
MAX_NODES = 20_000


class YamlTooComplex(ValueError):
    """The document breaks a limit. ``line`` (1-based) is where the offending node starts."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else 1


def load(text: str) -> Any:
    """Parse one YAML document with the safe loader's types, within the limits above.

    Raises ``YamlTooComplex`` for a limit and ``yaml.YAMLError`` for bad YAML."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeConstructor loader)


class _Limits(Composer):
    """PyYAML's composer, counting depth and nodes as it goes."""

    def __init__(self) -> None:
        Composer.__init__(self)  # not super(): the next class in a loader's MRO is the parser
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlTooComplex(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            node: Node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1  # an alias counts too: a flood of them costs like a flood of values
        if self._nodes > MAX_NODES:
            raise YamlTooComplex(f"more than {MAX_NODES} values (a config has a few hundred)", node.start_mark)
        return node

    def compose_document(self) -> Node | None:
        node: Node | None = super().compose_document()
        if node is not None:
            _Expansion().measure(node, 1)
        return node


class _Expansion:
    """Size and height of a node graph as if every alias were copied out."""

    def __init__(self) -> None:
        self._done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, height)
        self._open: set[int] = set()

    def measure(self, node: Node, depth: int) -> tuple[int, int]:
        """(nodes, height) of ``node`` expanded, found at ``depth`` (the root is 1)."""
        key = id(node)
        if key in self._open:
            raise YamlTooComplex("an alias inside its own anchor (an endless expansion)", node.start_mark)
        if key not in self._done:
            self._open.add(key)
            self._done[key] = self._children(node, depth)
            self._open.discard(key)
        size, height = self._done[key]
        if depth + height - 1 > MAX_DEPTH:
            raise YamlTooComplex(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                                 node.start_mark)
        return size, height

    def _children(self, node: Node, depth: int) -> tuple[int, int]:
        if isinstance(node, ScalarNode):
            return 1, 1
        children = [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else node.value
        size, height = 1, 1
        for child in children:
            child_size, child_height = self.measure(child, depth + 1)
            size += child_size
            height = max(height, child_height + 1)
            if size > MAX_NODES:
                raise YamlTooComplex(
                    f"its aliases expand to more than {MAX_NODES} values (aliases of aliases multiply)",
                    node.start_mark)
        return size, height


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Loader(_Limits, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's scanner and parser; the Python composer with limits (first in the MRO,
        so its compose_* and get_single_node win over CParser's own composer)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Limits.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover (PyYAML wheels ship libyaml)
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(_Limits, Reader, Scanner, Parser, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            _Limits.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
