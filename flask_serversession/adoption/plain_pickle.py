from __future__ import annotations

import pickletools
import typing as t

#: The largest input read; a session's data is far smaller.
MAX_BYTES = 8 * 1024 * 1024
#: The most values (shared ones counted at each use) one result may hold.
MAX_VALUES = 1_000_000


class Unreadable(ValueError):
    """The bytes are not a pickle of plain data."""


class PickledObject:
    """Stands for an object that only unpickling could rebuild; it is never built."""

    def __repr__(self) -> str:
        return "<object that only unpickling could rebuild>"


# Design: cachelib's FileSystemCache, which Flask-Session's "cachelib" and
# "filesystem" types write through, frames every value as a pickle. Loading a
# pickle runs whatever callables it names, so these bytes are never given to
# the pickle module. Their opcodes are read with pickletools (a disassembler
# that builds nothing) and only the opcodes of plain values are carried out:
# dict, list, tuple, str, bytes, int, float, bool and None. An opcode that
# would import or call something yields a PickledObject placeholder instead, so a
# caller can leave that one value out; nothing named in the bytes is ever
# imported, called or looked up.

_CONSTANTS: dict[str, t.Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_SCALARS = frozenset(
    {
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "FLOAT", "BINFLOAT",
        "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
        "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
    }
)  # fmt: skip
# Each pushes one object that is not plain data, taking what it consumes.
_OBJECT_POPS = {
    "GLOBAL": 0,
    "STACK_GLOBAL": 2,
    "REDUCE": 2,
    "NEWOBJ": 2,
    "NEWOBJ_EX": 3,
    "EXT1": 0,
    "EXT2": 0,
    "EXT4": 0,
    "EMPTY_SET": 0,
    "BYTEARRAY8": 0,
    "STRING": 0,
    "BINSTRING": 0,
    "SHORT_BINSTRING": 0,
}
_OBJECT_FROM_MARK = frozenset({"OBJ", "INST", "FROZENSET"})
_IGNORED = frozenset({"PROTO", "FRAME"})


class _Machine:
    def __init__(self) -> None:
        self.stack: list[t.Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, t.Any] = {}

    def pop(self, n: int) -> list[t.Any]:
        if n > len(self.stack) - (self.marks[-1] if self.marks else 0):
            raise Unreadable("an opcode takes more values than there are")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_mark(self) -> list[t.Any]:
        if not self.marks:
            raise Unreadable("an opcode needs a mark that is not there")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> t.Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise Unreadable("an opcode needs a value that is not there")
        return self.stack[-1]

    def run(self, name: str, arg: t.Any) -> None:
        stack = self.stack
        if name in _SCALARS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in _IGNORED:
            pass
        elif name in _OBJECT_POPS:
            self.pop(_OBJECT_POPS[name])
            stack.append(PickledObject())
        elif name in _OBJECT_FROM_MARK:
            self.pop_mark()
            stack.append(PickledObject())
        elif name == "MARK":
            self.marks.append(len(stack))
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            stack.append(tuple(self.pop(int(name[-1]))))
        elif name == "TUPLE":
            stack.append(tuple(self.pop_mark()))
        elif name == "LIST":
            stack.append(self.pop_mark())
        elif name == "DICT":
            items = self.pop_mark()
            stack.append({})
            self._set_items(items)
        elif name == "APPEND":
            self._append(self.pop(1))
        elif name == "APPENDS":
            self._append(self.pop_mark())
        elif name == "SETITEM":
            self._set_items(self.pop(2))
        elif name == "SETITEMS":
            self._set_items(self.pop_mark())
        elif name == "ADDITEMS":
            self.pop_mark()
            self.top()
        elif name == "BUILD":
            self.pop(1)
            self.pop(1)
            stack.append(PickledObject())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise Unreadable("a memo reference names nothing")
            stack.append(self.memo[int(arg)])
        elif name == "POP":
            self.pop(1)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            stack.append(self.top())
        else:
            # Persistent ids and out-of-band buffers need the unpickler's
            # callbacks: the whole input is refused.
            raise Unreadable(f"it holds the {name} opcode")

    def _append(self, items: list[t.Any]) -> None:
        target = self.top()
        if type(target) is list:
            target.extend(items)
        elif type(target) is not PickledObject:
            raise Unreadable("items are appended to something that is not a list")

    def _set_items(self, items: list[t.Any]) -> None:
        if len(items) % 2:
            raise Unreadable("a dict is given a key without a value")
        target = self.top()
        if type(target) is PickledObject:
            return
        if type(target) is not dict:
            raise Unreadable("items are set on something that is not a dict")
        for i in range(0, len(items), 2):
            try:
                target[items[i]] = items[i + 1]
            except TypeError:
                raise Unreadable("a dict key cannot be a key") from None


def loads(data: bytes) -> t.Any:
    """Return the plain data that the pickle ``data`` holds, without unpickling it.

    Values that only unpickling could rebuild (instances, sets, datetimes)
    come back as :class:`PickledObject` placeholders.

    :raises Unreadable: ``data`` is malformed, too large, holds too many
        values, or needs the unpickler's callbacks.
    """
    if len(data) > MAX_BYTES:
        raise Unreadable(f"it is larger than {MAX_BYTES} bytes")
    machine = _Machine()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "STOP":
                break
            machine.run(opcode.name, arg)
        else:
            raise Unreadable("it ends before its STOP opcode")
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
        if isinstance(e, Unreadable):
            raise
        raise Unreadable(f"it is malformed ({type(e).__name__})") from None
    if len(machine.stack) != 1 or machine.marks:
        raise Unreadable("it does not leave exactly one value")
    result = machine.stack[0]
    _check_size(result)
    return result


def _check_size(value: t.Any) -> None:
    # Memo references can make a few bytes stand for a huge (or endless)
    # tree; whoever walks the result later must not meet one.
    for count, _ in enumerate(_walk(value), 1):
        if count > MAX_VALUES:
            raise Unreadable(f"it holds more than {MAX_VALUES} values, or refers to itself")


def holds_pickled_object(value: t.Any) -> bool:
    """Whether ``value`` (a result of :func:`loads`) holds a :class:`PickledObject` anywhere."""
    return any(type(item) is PickledObject for item in _walk(value))


def _walk(value: t.Any) -> t.Iterator[t.Any]:
    # Every value in the tree, containers and keys included, shared ones at each use.
    pending = [value]
    while pending:
        item = pending.pop()
        yield item
        kind = type(item)
        if kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
