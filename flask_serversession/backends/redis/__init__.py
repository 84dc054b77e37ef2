from .backend import RedisBackend as RedisBackend
