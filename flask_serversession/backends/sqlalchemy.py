# The import path that the docs of 0.1 and 0.2 show; the backend lives in backends/sql/.
from .sql import make_table as make_table
from .sql import SQLAlchemyBackend as SQLAlchemyBackend
