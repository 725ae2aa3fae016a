"""The compiled parts of cdc-tracker: optional, the same results either way.

Two small C modules take the hot path of a change: ``source/_rowparse.c`` reads
a wal2json change row in one pass, ``mapping/_writer.c`` writes a call's JSON
from its rule's plan. Each declines what it does not handle, which then takes
the Python path. Without a C compiler the build goes on without them, and every
row and call takes that path, at about twice the CPU per change.
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]

setup(
    ext_modules=[
        Extension(
            f"cdc_tracker.{name.replace('/', '.')}",
            sources=[f"cdc_tracker/{name}.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
        for name in ("source/_rowparse", "mapping/_writer")
    ]
)
