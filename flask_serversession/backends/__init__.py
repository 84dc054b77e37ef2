from .base import Backend as Backend
from .base import CorruptRecordError as CorruptRecordError
from .base import Delta as Delta
from .base import Record as Record
