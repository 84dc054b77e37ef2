from .backend import FileSystemBackend as FileSystemBackend
