"""Line numbers for keys of a TOML document (tomllib gives none).

:class:`Locator` lexes a document that tomllib already accepted and records the
line of every table header and every ``key = value`` statement, under the
resolved path of the key: array-of-tables occurrences become indices, so the
``mtu`` key of the second ``[[interface]]`` is ``("interface", 1, "mtu")``.
Keys inside inline tables and array elements are not tracked; a lookup falls
back to the nearest enclosing key or table that is.
"""
from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r'\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)', re.S)
_SIMPLE_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(body: str) -> str:
    def repl(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] in "uU":
            return chr(int(code[1:], 16))
        return _SIMPLE_ESCAPES.get(code, code)
    return _ESCAPE.sub(repl, body)


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def advance(self, n: int = 1) -> str:
        chunk = self.text[self.pos:self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, comments and (when ``newlines``) line ends."""
        while not self.at_end():
            c = self.peek()
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    def string(self) -> str:
        """Consume one string token (any of the four kinds); return its value."""
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                self.advance(3)
                start = self.pos
                while True:
                    end = self.text.find(quote, self.pos)
                    if end < 0:
                        self.advance(len(self.text) - self.pos)
                        return self.text[start:]
                    # a backslash escapes the quote in basic strings
                    if quote == '"""' and _odd_backslashes(self.text, end):
                        self.advance(end + 1 - self.pos)
                        continue
                    # up to two extra quotes may close the string
                    while self.text[end + 3:end + 4] == quote[0]:
                        end += 1
                    body = self.text[start:end]
                    self.advance(end + 3 - self.pos)
                    return _unescape(body) if quote == '"""' else body
        quote = self.advance()
        start = self.pos
        while not self.at_end():
            c = self.advance()
            if c == "\\" and quote == '"':
                self.advance()
            elif c == quote or c == "\n":
                break
        body = self.text[start:self.pos - 1]
        return _unescape(body) if quote == '"' else body

    def key(self) -> list[str]:
        """A dotted key: bare or quoted parts separated by dots."""
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                m = _BARE.match(self.text, self.pos)
                if not m:
                    break
                parts.append(m.group())
                self.advance(m.end() - self.pos)
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                break
            self.advance()
        return parts

    def value(self) -> None:
        """Skip one value, including nested arrays, inline tables and strings."""
        depth = 0
        while not self.at_end():
            c = self.peek()
            if c in ('"', "'"):
                self.string()
            elif c in "[{":
                depth += 1
                self.advance()
            elif c in "]}":
                depth -= 1
                self.advance()
            elif c == "#":
                self.skip_blank(newlines=False)
            elif c == "\n" and depth <= 0:
                return
            else:
                self.advance()


def _odd_backslashes(text: str, end: int) -> bool:
    n = 0
    while end - n - 1 >= 0 and text[end - n - 1] == "\\":
        n += 1
    return n % 2 == 1


class Locator:
    """Maps resolved key paths of a TOML document to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        self._arrays: dict[tuple[str, ...], int] = {}
        try:
            self._scan(text)
        except (IndexError, ValueError):  # a locator must never hide the real error
            pass

    def _resolve(self, parts: list[str]) -> list[str | int]:
        """Insert the current index after every array-of-tables prefix."""
        resolved: list[str | int] = []
        for i, part in enumerate(parts):
            resolved.append(part)
            count = self._arrays.get(tuple(parts[:i + 1]))
            if count:
                resolved.append(count - 1)
        return resolved

    def _record(self, path: list[str | int], line: int) -> None:
        self.lines.setdefault(tuple(path), line)

    def _scan(self, text: str) -> None:
        lx = _Lexer(text)
        table: list[str | int] = []
        while True:
            lx.skip_blank(newlines=True)
            if lx.at_end():
                return
            line = lx.line
            if lx.peek(2) == "[[":
                lx.advance(2)
                parts = lx.key()
                lx.skip_blank(newlines=False)
                lx.advance(2)
                key = tuple(parts)
                self._arrays[key] = self._arrays.get(key, 0) + 1
                # nested arrays under this one restart with the new element
                for other in list(self._arrays):
                    if len(other) > len(key) and other[:len(key)] == key:
                        del self._arrays[other]
                table = self._resolve(parts)
                self._record(table, line)
            elif lx.peek() == "[":
                lx.advance()
                parts = lx.key()
                lx.skip_blank(newlines=False)
                lx.advance()
                table = self._resolve(parts)
                self._record(table, line)
            else:
                parts = lx.key()
                if not parts:  # not a statement we understand: skip the line
                    lx.value()
                    continue
                for i in range(1, len(parts)):  # dotted keys define their parents
                    self._record(table + list(parts[:i]), line)
                self._record(table + list(parts), line)
                lx.skip_blank(newlines=False)
                if lx.peek() == "=":
                    lx.advance()
                lx.skip_blank(newlines=False)
                if lx.peek() == "[":
                    self._array(lx, table + list(parts))
                lx.value()

    def _array(self, lx: _Lexer, path: list[str | int]) -> None:
        """Record the line of each element of an array value."""
        lx.advance()  # "["
        index = 0
        while True:
            lx.skip_blank(newlines=True)
            if lx.at_end() or lx.peek() == "]":
                if not lx.at_end():
                    lx.advance()
                return
            self._record(path + [index], lx.line)
            if lx.peek() == "[":
                self._array(lx, path + [index])
            else:
                self._element(lx)
            lx.skip_blank(newlines=True)
            if lx.peek() == ",":
                lx.advance()
            index += 1

    @staticmethod
    def _element(lx: _Lexer) -> None:
        """Skip one array element that is not an array."""
        depth = 0
        while not lx.at_end():
            c = lx.peek()
            if c in ('"', "'"):
                lx.string()
            elif c == "{":
                depth += 1
                lx.advance()
            elif c == "}":
                depth -= 1
                lx.advance()
            elif depth == 0 and (c in ",]" or c.isspace() or c == "#"):
                return
            else:
                lx.advance()

    def line_of(self, path: Path) -> int | None:
        """Line of ``path`` or of the closest recorded ancestor."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def line_of_flat(self, table: Path, dotted: str) -> int | None:
        """Line of a key under ``table`` whose parts joined by dots equal ``dotted``.

        Finds ``a.b.c = 1`` as well as ``"a.b.c" = 1``, ``"a.b".c = 1`` and
        ``[table.a.b]`` + ``c = 1``.
        """
        table = tuple(table)
        n = len(table)
        for path, line in self.lines.items():
            if path[:n] == table and len(path) > n and all(isinstance(p, str) for p in path[n:]):
                if ".".join(str(p) for p in path[n:]) == dotted:
                    return line
        return self.line_of(table)
