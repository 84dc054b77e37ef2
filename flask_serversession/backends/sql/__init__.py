from .backend import SQLAlchemyBackend as SQLAlchemyBackend
from .table import make_table as make_table
