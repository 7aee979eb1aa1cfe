"""Exception hierarchy shared by the whole package."""


class Fit3dmmError(Exception):
    """Base class of every error fit3dmm raises on purpose."""


class NoFaceError(Fit3dmmError):
    """No face (or no confident face) was found in the photo."""


class InputError(Fit3dmmError):
    """The caller passed something unusable (wrong shape, dtype, missing file...)."""


class ModelError(Fit3dmmError):
    """A model file is missing or inconsistent."""


def error_text(error: BaseException) -> str:
    """An error in words: OSError's '[Errno 17] File exists: ...' as 'PATH: File exists'."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)
