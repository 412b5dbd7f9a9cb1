"""A stricter ``yaml.safe_load`` for files people hand us (build specs).

Built on ``yaml.CSafeLoader`` (``yaml.SafeLoader`` without libyaml), so it constructs only
plain data, and adds two checks on the composed node graph before anything is constructed:

- a key repeated in one mapping is an error naming the key and both lines (PyYAML keeps the
  last one silently, so a typo'd override would go unnoticed);
- aliases may add at most :data:`MAX_ALIAS_NODES` nodes once expanded, and may not contain
  themselves. PyYAML shares an aliased node instead of copying it, so a "billion laughs"
  document loads cheaply, but every consumer that walks the result (environment expansion,
  validation, JSON dumps) pays for the full expansion: hundreds of MB from a few hundred
  bytes. A real spec uses a handful of aliases, if any.
- collections may nest at most :data:`MAX_DEPTH` deep, checked on the event stream before
  anything is composed: libyaml composes recursively in C, and a 100 kB file of nested
  ``[`` crashes the interpreter (a segmentation fault, not an exception); a spec nests about 5 deep.

The graph walk is linear in the size of the document, not of its expansion.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ALIAS_NODES = 10_000
MAX_DEPTH = 100
MERGE_TAG = "tag:yaml.org,2002:merge"

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML was built with it


class YAMLLimitError(yaml.YAMLError):
    """A document whose aliases expand too far, or contain themselves."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice."""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_duplicate_keys(node: MappingNode) -> None:
    first: dict[tuple[str, str], int] = {}
    for key, _value in node.value:
        # merge keys (<<) are YAML's own syntax; non-scalar keys do not occur in specs
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        ident = (key.tag, key.value)  # the resolved tag keeps 1 and "1" apart, as the loaded dict does
        if ident in first:
            raise DuplicateKeyError(f"duplicate key {key.value!r} at line {_line(key)} "
                                    f"(first at line {first[ident]})")
        first[ident] = _line(key)


def check_node_graph(root: Node, max_alias_nodes: int = MAX_ALIAS_NODES) -> None:
    """Raise :class:`DuplicateKeyError` or :class:`YAMLLimitError` for the composed document
    ``root`` (see the module docstring). Iterative: deep documents do not hit the recursion limit."""
    expanded: dict[int, int] = {}  # id(node) -> nodes in its full expansion
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        nid = id(node)
        if leaving:
            expanded[nid] = 1 + sum(expanded[id(c)] for c in _children(node))
            on_path.discard(nid)
            continue
        if nid in expanded:
            continue  # an alias of a node already measured
        if nid in on_path:  # only an ancestor can still be open when it comes round again
            raise YAMLLimitError(f"recursive alias: the node at line {_line(node)} contains itself")
        on_path.add(nid)
        if isinstance(node, MappingNode):
            _check_duplicate_keys(node)
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(_children(node)))
    from_aliases = expanded[id(root)] - len(expanded)
    if from_aliases > max_alias_nodes:
        raise YAMLLimitError(f"aliases in this document expand to more than {max_alias_nodes} nodes "
                             f"({from_aliases:,} beyond its own {len(expanded):,}); refused as an alias bomb "
                             "(a spec needs few aliases, if any)")


def check_depth(text: str | bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`YAMLLimitError` where collections in ``text`` nest deeper than ``max_depth``.
    Reads only the event stream (libyaml's parser keeps its own stack, so this cannot crash);
    a syntax error is raised here as the load itself would raise it."""
    parser = _Base(text)
    try:
        depth = 0
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > max_depth:
                    raise YAMLLimitError(f"collections nested more than {max_depth} deep at line "
                                         f"{event.start_mark.line + 1}; refused (a spec nests a few levels)")
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
    finally:
        parser.dispose()


class StrictSafeLoader(_Base):
    """``CSafeLoader``/``SafeLoader`` that checks the node graph before constructing it."""

    max_alias_nodes = MAX_ALIAS_NODES

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_node_graph(node, self.max_alias_nodes)
        return self.construct_document(node)


def safe_load(text: str | bytes) -> Any:
    """Like ``yaml.safe_load(text)``, with duplicate keys, alias bombs and deep nesting refused; every error
    is a ``yaml.YAMLError``."""
    check_depth(text)
    loader = StrictSafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
