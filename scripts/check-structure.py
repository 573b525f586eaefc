#!/usr/bin/env python3
"""The structure rules of a crate's modules (run by `make check` on `shared/src`):

1. No import circle. Every module (a file) is a node; a path in it that names another module
   (`use crate::…`, `super::…`, `self::…`, or a child module's name) is an arrow to the module
   that defines the item, following `pub use` re-exports. A circle of arrows is an error:
   modules that need each other are one concept split in two, or a lower layer calling up.
2. Files of at most MAX_LINES lines, unless their first comment says why in a line that
   starts with `//! Longer than`.

`--graph` prints the arrows instead, one `from -> to` per line (what docs/architecture.md
draws). Usage: scripts/check-structure.py [--graph] [SRC_DIR]   (default: shared/src)
"""

import pathlib
import re
import sys

MAX_LINES = 400
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_path(src, file):
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def blank_comments_and_strings(text):
    """The code without comments and with empty string literals, so that neither is read as a
    path (a lexer of just what that needs: line and nested block comments, strings, raw
    strings, byte strings, and char literals told apart from lifetimes)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and not re.match(r"\w", text[i - 1 : i] or " "):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i:]).group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_tests_and_comments(text):
    # The unit tests of a module sit at its end, in `mod tests`: they may use anything.
    cut = re.search(r"\n#\[cfg\(test\)\]\s*\nmod tests\b", text)
    if cut:
        text = text[: cut.start()]
    return blank_comments_and_strings(text)


def use_paths(tree, prefix=()):
    """Expands a use tree (`a::{b, c::{d, e}}`) into its paths."""
    tree = tree.strip()
    if not tree:
        return []
    depth, split = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0 and split is None:
                split = i
            depth += 1
        elif ch == "}":
            depth -= 1
    if split is None:
        head = tree.split(" as ")[0].strip()
        return [prefix + tuple(p for p in head.split("::") if p)]
    head = tuple(p for p in tree[:split].split("::") if p)
    inner, parts, depth, cur = tree[split + 1 : tree.rindex("}")], [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        out.extend(use_paths(p, prefix + head))
    return out


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}
        for f in sorted(src.rglob("*.rs")):
            self.files[module_path(src, f)] = f
        self.text = {m: strip_tests_and_comments(f.read_text()) for m, f in self.files.items()}
        self.children = {m: set(re.findall(rf"\bmod ({IDENT});", t)) for m, t in self.text.items()}
        self.uses = {m: self._uses(t) for m, t in self.text.items()}

    def _uses(self, text):
        out = []
        for m in re.finditer(r"\b(?:pub(?:\([a-z]+\))? )?use ([^;]+);", text):
            out.extend((p, m.group(0).lstrip().startswith("pub")) for p in use_paths(m.group(1)))
        return out

    def absolute(self, here, path):
        """A path as written in module `here`, from the crate root; None if outside the crate."""
        if not path:
            return None
        if path[0] == "crate":
            return path[1:]
        if path[0] == "self":
            return here + path[1:]
        if path[0] == "super":
            base, rest = here, path
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
            return base + rest
        if path[0] in self.children.get(here, ()):
            return here + path
        for used, _ in self.uses[here]:
            if used and used[-1] == path[0] and used[0] in ("crate", "super", "self"):
                full = self.absolute(here, used)
                return full + path[1:] if full is not None else None
        return None

    def resolve(self, path, seen=()):
        """The module that defines what `path` (from the root) names, following re-exports."""
        if path is None:
            return None
        n = len(path)
        while n > 0 and path[:n] not in self.files:
            n -= 1
        module, rest = path[:n], path[n:]
        if rest and module not in seen:
            for used, public in self.uses[module]:
                if public and used and used[-1] == rest[0]:
                    target = self.absolute(module, used)
                    if target is not None:
                        return self.resolve(target + rest[1:], seen + (module,))
        return module

    def arrows(self):
        edges = set()
        for here, text in self.text.items():
            paths = [p for p, _ in self.uses[here]]
            heads = ["crate", "super", "self", *sorted(self.children.get(here, ()))]
            pattern = rf"\b((?:{'|'.join(heads)})(?:::{IDENT})+)"
            for m in re.finditer(pattern, re.sub(r"\buse [^;]+;", "", text)):
                paths.append(tuple(m.group(1).split("::")))
            for p in paths:
                target = self.resolve(self.absolute(here, p))
                if target is None or target == here:
                    continue
                # A module's own submodule declarations are not arrows; its uses of them are.
                edges.add((here, target))
        return edges


def circles(nodes, edges):
    graph = {n: sorted(t for f, t in edges if f == n) for n in nodes}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "crate::" + "::".join(m) if m else "crate"


def main(argv):
    graph = "--graph" in argv
    args = [a for a in argv if a != "--graph"]
    src = pathlib.Path(args[0] if args else "shared/src")
    crate = Crate(src)
    edges = crate.arrows()
    if graph:
        for f, t in sorted(edges):
            print(f"{name(f)} -> {name(t)}")
        return 0
    problems = []
    for comp in circles(list(crate.files), edges):
        inside = sorted((f, t) for f, t in edges if f in comp and t in comp)
        problems.append(
            "import circle: "
            + ", ".join(name(m) for m in comp)
            + "\n    "
            + "\n    ".join(f"{name(f)} -> {name(t)}" for f, t in inside)
        )
    for m, f in crate.files.items():
        lines = f.read_text().count("\n")
        if lines > MAX_LINES:
            head = f.read_text().split("\n\n", 1)[0]
            if not any(l.startswith("//! Longer than") for l in head.splitlines()):
                problems.append(
                    f"{f}: {lines} lines (over {MAX_LINES}, and no `//! Longer than …` line says why)"
                )
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{src}: {len(crate.files)} modules, {len(edges)} arrows, no circle, no file over {MAX_LINES} lines without its reason")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
