from .backends.base import Backend as Backend
from .errors import BackendError as BackendError
from .errors import ConfigError as ConfigError
from .errors import ServerSessionError as ServerSessionError
from .errors import SessionExpiredError as SessionExpiredError
from .errors import SessionNotFoundError as SessionNotFoundError
from .errors import SessionTooLargeError as SessionTooLargeError
from .extension import ServerSession as ServerSession
from .interface import ServerSessionInterface as ServerSessionInterface
from .session import ServerSideSession as ServerSideSession
from .users import SessionInfo as SessionInfo

__version__ = "0.3.0"
