"""Build hook for the one compiled piece: the physics worker of ``metarl.envs.vector.TaskVectorEnv``.

Everything else is in pyproject.toml. ``envs/_physics_worker.c`` is a plain C shared library (pthreads, no Python C
API) that ``metarl.envs.physics_worker`` loads with ctypes; it is optional: without a C compiler the build skips it
with a warning and the vector env steps its physics threads in Python instead (same results).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "metarl.envs._physics_worker",
            sources=["envs/_physics_worker.c"],
            extra_compile_args=["-O2", "-std=c11", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
