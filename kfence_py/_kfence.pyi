# Types of kfence_py._kfence, the module cffi builds with build_ffi.py.
#
# `lib` holds every function, enum constant and size of csrc/kfence.h: cffi
# learns them from the preprocessed header at build time, so they are not
# written a second time here. `ffi` is cffi's FFI object; it stays Any because
# what it returns (CData) has no field types, so typing it (types-cffi) turns
# every read of a struct field into a false error.
from typing import Any

ffi: Any
lib: Any
