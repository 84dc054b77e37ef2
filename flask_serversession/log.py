from __future__ import annotations

import logging

#: The package's logger: damaged records, failed saves and purges are reported here.
logger = logging.getLogger("flask_serversession")
