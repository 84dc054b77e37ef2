"""Session statements compiled once, binding parameters as the driver takes them.

Building, compiling and executing a statement through SQLAlchemy Core costs
far more than the database takes to run a primary-key lookup; a statement
compiled once here runs on the backend's own connections (see
:mod:`.connections`) with new values each time.
"""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa


class Compiled:
    """One statement, compiled for a dialect, that binds parameters for the driver.

    :param statement: a statement whose variable parts are ``bindparam`` s.
    :param dialect: the dialect to compile for.
    """

    __slots__ = ("_template", "_variables", "text")

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = t.cast(sa.sql.compiler.SQLCompiler, statement.compile(dialect=dialect))
        if "__[POSTCOMPILE_" in compiled.string:
            raise ValueError("Statements with expanding parameters cannot be compiled once.")
        self.text = compiled.string
        positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if positional else list(compiled.binds)
        #: The parameters as the driver takes them, the statement's own
        #: literals (bound constants) converted once, the variables None.
        self._template: t.Any = [None] * len(names) if positional else dict.fromkeys(names)
        #: (index or name, parameter name, converter) of each variable.
        self._variables: list[tuple[t.Any, str, t.Callable[[t.Any], t.Any] | None]] = []
        for index, name in enumerate(names):
            bind = compiled.binds[name]
            processor: t.Callable[[t.Any], t.Any] | None
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            sqlite_time = dialect.name == "sqlite" and isinstance(bind.type, sa.DateTime)
            if processor is not None and sqlite_time:
                processor = _sqlite_datetime(processor)
            slot: t.Any = index if positional else name
            if bind.required:
                self._variables.append((slot, name, processor))
            else:
                value = bind.effective_value
                self._template[slot] = value if processor is None else processor(value)

    def parameters(self, values: t.Mapping[str, t.Any]) -> t.Any:
        """The driver's parameters: ``values`` by name, with the statement's constants."""
        bound = self._template.copy()
        for slot, name, processor in self._variables:
            value = values[name]
            bound[slot] = value if processor is None else processor(value)
        return bound


def _sqlite_datetime(processor: t.Callable[[t.Any], t.Any]) -> t.Callable[[t.Any], t.Any]:
    """SQLAlchemy's text for a datetime in SQLite, faster for the UTC ones the backend binds."""

    def process(value: t.Any) -> t.Any:
        if isinstance(value, datetime) and value.tzinfo is timezone.utc:
            # str() is isoformat(" "): the fields SQLAlchemy writes, then "+00:00".
            text = str(value)[:-6]
            return text if value.microsecond else f"{text}.000000"
        return processor(value)

    return process
