"""Reading YAML while remembering where every key came from.

PyYAML's node tree carries the position of each mapping key and sequence item;
we walk it once to record the line of every key path and to catch duplicate
keys, which plain ``yaml.safe_load`` silently lets the last one win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from maitred.config.checks import Issue, Loc

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlSyntaxError(Exception):
    """The text is not YAML (or uses a tag safe loading refuses)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class YamlDocument:
    data: object
    # 1-based line of each key path (of the last occurrence of a duplicate key).
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicates: list[tuple[Issue, int]] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """The line of ``loc``, or of its nearest ancestor present in the file."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def read_yaml(text: str) -> YamlDocument:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        document = YamlDocument(data=None)
        if node is not None:
            _walk(node, (), document, active=set())
            document.data = loader.construct_document(node)
        return document
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        message = ": ".join(part for part in (error.context, error.problem) if part)
        raise YamlSyntaxError(message, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(str(error), None) from None
    finally:
        loader.dispose()


def _walk(node: Node, loc: Loc, document: YamlDocument, active: set[int]) -> None:
    # Aliases can make the tree a graph (even a cycle); never re-enter a node on the path.
    if id(node) in active:
        return
    active.add(id(node))
    if isinstance(node, MappingNode):
        keyed = [
            (key_node, value_node)
            for key_node, value_node in node.value
            if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG
        ]
        # The last of duplicate keys is the one whose value is used, so it owns the line.
        last_index = {(key.tag, key.value): index for index, (key, _) in enumerate(keyed)}
        seen: set[tuple[str, str]] = set()
        for index, (key_node, value_node) in enumerate(keyed):
            child = (*loc, key_node.value)
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key_node.value)
            if identity in seen:
                document.duplicates.append((Issue(child, "duplicate key"), line))
            seen.add(identity)
            if last_index[identity] == index:
                document.lines.setdefault(child, line)
                _walk(value_node, child, document, active)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            child = (*loc, index)
            document.lines.setdefault(child, item.start_mark.line + 1)
            _walk(item, child, document, active)
    active.discard(id(node))
