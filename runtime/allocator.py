"""Opt-in: let glibc's malloc keep freed array memory for reuse instead of returning it to the OS.

With glibc's defaults every array of a few MB (a conv layer's output, an im2col block) is mmapped
and unmapped again, so each training step or large prediction pays for fresh zero pages. Measured on
the base experiment CNN (one Adam step on 64 images, 2 threads): 104-122 ms by default, 71-80 ms with
this. The cost: the process keeps up to `keep_bytes` of freed memory instead of shrinking. The setting
is process-wide, so it is never made on import; the kconvert CLIs make it.
"""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20                   # the largest value glibc accepts on 64-bit


def reuse_freed_memory(keep_bytes=1 << 30):
    """Serve arrays up to 32 MB from glibc's heap and keep up to `keep_bytes` freed; True if applied
    (False, changing nothing, where the C library is not glibc)."""
    import ctypes  # here, not at module level: ctypes.util costs import time
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(int(keep_bytes), 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))
