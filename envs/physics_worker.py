"""Physics threads for :class:`~metarl.envs.vector.TaskVectorEnv`: the compiled worker, its Python-thread fallback.

The vector env steps the MuJoCo physics of its sub-envs (``mj_step`` on each sub-env's own ``MjModel``/``MjData``)
and runs all of their Python itself. This module gives it extra threads for the physics: the calling thread steps a
share of the sub-envs while each extra thread steps a block of the others, and the split adapts step by step so
that they finish together. Two kinds of extra thread, with the same results (each sub-env's physics is the very
``mj_step`` of the same libmujoco the Python bindings call, on its own ``MjData``):

* **The compiled worker** (:class:`NativePhysicsThreads`): a plain C thread (``envs/_physics_worker.c``, a shared
  library without the Python C API, built at install by ``setup.py`` as an optional extension and loaded with
  ctypes) that takes its block of (``mjModel*``, ``mjData*``, ``nstep``) in one call and steps it without touching
  Python or the GIL. Between blocks it spins for a short while (:attr:`NativeWorker.SPIN_NS`) before sleeping,
  so that a running sampler does not pay a kernel wake-up per vector step. The calling thread finishes each of
  the worker's sub-envs (observation, reward, info) as soon as the worker's progress counter says it is stepped.
* **Python threads** (:class:`PythonPhysicsThreads`): a ``ThreadPoolExecutor`` whose threads call
  ``mujoco.mj_step`` (it releases the GIL while it runs).

:func:`physics_threads` makes the choice: the compiled worker when it is available, else Python threads. It is
not available when it was not built (no C compiler at install), when ``METARL_NATIVE_WORKER=0`` is set (to compare
the two), or when the installed libmujoco lacks the thread-local error hook the worker needs
(:data:`MUJOCO_ERROR_HOOK`, a private MuJoCo symbol: ``tests/test_vector_env.py`` fails loudly when a MuJoCo
release drops it, and the vector env then falls back to Python threads, slower, with a warning). With that hook a
MuJoCo error (``mju_error``) inside the worker's ``mj_step`` is raised as ``mujoco.FatalError``, as a direct call
does, instead of ending the process.

``auto`` mode (the vector env's default) times the threads against the calling thread alone for a few steps now and
then and uses the faster, since the machine's load decides which wins.

Figures (speed against Gymnasium's ``SyncVectorEnv``, the physics ceiling on two cores, the cost of a hand-off to
each kind of thread): experiments/RESULTS.md, section "Environments: step cost and vectorised stepping"
(commands: ``experiments/bench_envs.py --only vector``, ``experiments/bench_parallel_physics.py``).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import os
import warnings
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

import mujoco
import numpy as np

MUJOCO_ERROR_HOOK = "_mjPRIVATE__set_tls_error_fn"
"""The libmujoco symbol that installs a thread-local error handler (private to MuJoCo: its Python bindings use it
for their own calls). The compiled worker needs it; without it the vector env uses Python threads."""

NOT_BUILT = ("the compiled physics worker (envs/_physics_worker.c) is not built: reinstall metarl with a C compiler "
             "(pip install -e .)")


def _open_mujoco() -> ctypes.CDLL:
    """The libmujoco that the ``mujoco`` Python bindings loaded (the same file, so the same loaded library)."""
    found = glob.glob(os.path.join(os.path.dirname(mujoco.__file__), "libmujoco.so*"))
    if not found:
        raise OSError(f"no libmujoco.so* next to {mujoco.__file__}")
    return ctypes.CDLL(found[0])


def _worker_path() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_physics_worker" + suffix)
        if os.path.exists(path):
            return path
    return None


class NativeLibrary:
    """The compiled worker's shared library with its ctypes signatures, and the addresses of MuJoCo's ``mj_step``
    and :data:`MUJOCO_ERROR_HOOK` in the loaded libmujoco. Get it with :meth:`load`."""

    _cache: NativeLibrary | None | bool = False
    """``False``: not looked for yet; ``None``: not available (``unavailable_reason`` says why)."""
    unavailable_reason: str = NOT_BUILT

    def __init__(self, worker: ctypes.CDLL, mujoco_lib: Any) -> None:
        self.lib = worker
        worker.metarl_worker_new.restype = ctypes.c_void_p
        worker.metarl_worker_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]
        worker.metarl_worker_submit.restype = None
        worker.metarl_worker_submit.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 3
        worker.metarl_worker_wait.restype = ctypes.c_int
        worker.metarl_worker_wait.argtypes = [ctypes.c_void_p]
        worker.metarl_worker_wait_entry.restype = ctypes.c_int
        worker.metarl_worker_wait_entry.argtypes = [ctypes.c_void_p, ctypes.c_int]
        worker.metarl_worker_message.restype = ctypes.c_char_p
        worker.metarl_worker_message.argtypes = [ctypes.c_void_p]
        worker.metarl_worker_free.restype = None
        worker.metarl_worker_free.argtypes = [ctypes.c_void_p]
        # the very mj_step the Python bindings call (the same loaded libmujoco), and its thread-local error hook
        self.mj_step = ctypes.cast(mujoco_lib.mj_step, ctypes.c_void_p).value
        self.set_error_handler = ctypes.cast(getattr(mujoco_lib, MUJOCO_ERROR_HOOK), ctypes.c_void_p).value

    @classmethod
    def load(cls) -> NativeLibrary | None:
        """The library, or ``None`` when it is not available (the reason in ``NativeLibrary.unavailable_reason``;
        a missing :data:`MUJOCO_ERROR_HOOK` also warns). Looked for once per process."""
        if cls._cache is False:
            cls._cache = None
            path = _worker_path()
            if os.environ.get("METARL_NATIVE_WORKER", "1") == "0":
                cls.unavailable_reason = "METARL_NATIVE_WORKER=0 is set (unset it)"
            elif path is None:
                cls.unavailable_reason = NOT_BUILT
            else:
                try:
                    mujoco_lib = _open_mujoco()
                    if not hasattr(mujoco_lib, MUJOCO_ERROR_HOOK):
                        cls.unavailable_reason = (
                            f"MuJoCo {mujoco.__version__} has no {MUJOCO_ERROR_HOOK}, which the compiled physics "
                            "worker needs; install the MuJoCo version in constraints.txt")
                        warnings.warn(f"{cls.unavailable_reason}. Physics threads run as Python threads (slower, "
                                      "same results).", RuntimeWarning, stacklevel=2)
                    else:
                        cls._cache = cls(ctypes.CDLL(path), mujoco_lib)
                except (OSError, AttributeError) as err:
                    cls.unavailable_reason = f"the compiled physics worker could not be loaded: {err}"
        return cls._cache  # type: ignore[return-value]


class NativeWorker:
    """One C worker thread stepping blocks of (model, data, nstep) with ``mj_step``, GIL released (see the .c file).

    Fill the first ``count`` entries of ``models``/``datas`` (``MjModel._address``/``MjData._address``) and
    ``nsteps``, :meth:`submit` them, then :meth:`wait` before touching those ``MjData`` or submitting again.
    """

    SPIN_NS = 500_000
    """How long the worker (and a caller waiting for it) spins before sleeping: longer than a policy's forward pass
    between two vector steps, so a running sampler never waits for a sleeping thread to be woken."""

    def __init__(self, library: NativeLibrary, capacity: int) -> None:
        self._lib = library.lib
        handle = self._lib.metarl_worker_new(library.mj_step, library.set_error_handler, self.SPIN_NS)
        if not handle:
            raise OSError("could not start the physics worker thread")
        self._handle = handle
        self.models = np.zeros(capacity, dtype=np.uintp)
        self.datas = np.zeros(capacity, dtype=np.uintp)
        self.nsteps = np.zeros(capacity, dtype=np.int32)
        self._pointers = (self.models.ctypes.data, self.datas.ctypes.data, self.nsteps.ctypes.data)

    def submit(self, count: int) -> None:
        """Step the first ``count`` entries of ``models``/``datas``/``nsteps``; returns at once."""
        self._lib.metarl_worker_submit(self._handle, count, *self._pointers)

    def wait_entry(self, index: int) -> int:
        """Wait until entry ``index`` of the block has been stepped. Bit 0: it was not (the block failed before it;
        ``wait`` raises the error); bit 1: it was not ready yet when asked."""
        return self._lib.metarl_worker_wait_entry(self._handle, index)

    def wait(self) -> None:
        """Wait for the whole block; ``mujoco.FatalError`` if MuJoCo raised an error inside it."""
        if self._lib.metarl_worker_wait(self._handle) & 1:
            message = self._lib.metarl_worker_message(self._handle).decode(errors="replace")
            raise mujoco.FatalError(f"MuJoCo error in the physics worker: {message}")

    def close(self) -> None:
        if self._handle:
            self._lib.metarl_worker_free(self._handle)
            self._handle = None


# --- extra threads for a vector env's physics ------------------------------------------------------------------
Prepare = Callable[[int], int]
"""``prepare(row) -> nstep``: on the calling thread, before row ``row`` is handed to an extra thread: set its
control (and note what ``finish`` needs); return how many ``mj_step``s to take."""
Here = Callable[[int], None]
"""``here(count)``: step rows ``0 .. count - 1`` entirely on the calling thread."""
Finish = Callable[[int], None]
"""``finish(row)``: on the calling thread, once the physics of row ``row`` (handed to an extra thread) is done."""


class PhysicsThreads:
    """Extra threads for the physics of up to ``capacity`` sub-envs; ``extra`` of them (one job each at a time).

    The vector env :meth:`bind`\\ s each sub-env's ``MjModel``/``MjData`` (again whenever they change) and calls
    :meth:`step` for each vector step of two or more sub-envs. ``auto``: also time the calling thread alone against
    the threads now and then and use the faster (``using_threads`` says which).
    """

    native = False
    """Whether the threads are the compiled worker."""
    TUNE_SAMPLES = 16
    """Auto mode: steps timed per path in each tuning round."""
    TUNE_EVERY = 2000
    """Auto mode: steps between tuning rounds (the machine's load changes)."""
    THREADS_MARGIN = 0.95
    """Auto mode: threads are used only when their median step time is below this fraction of the loop's."""

    def __init__(self, extra: int, capacity: int, *, auto: bool) -> None:
        self.extra, self.auto = extra, auto
        self.using_threads = True
        self._main_share = capacity // (extra + 1)
        self._calls = 0
        self._timings: dict[bool, list[float]] = {False: [], True: []}

    def bind(self, i: int, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        raise NotImplementedError

    def step(self, indices: list[int], prepare: Prepare, here: Here, finish: Finish) -> None:
        """Step the physics of sub-envs ``indices`` (row ``r`` is sub-env ``indices[r]``, at least two rows).

        The calling thread takes rows ``0 .. main - 1`` with ``here(main)``, the extra threads the rest, in blocks;
        ``main`` adapts step by step so that both finish together. In auto mode some steps are timed and the
        calling thread may take every row (``here(len(indices))``).
        """
        use_threads, tuning = self.using_threads, False
        if self.auto:
            phase = self._calls % self.TUNE_EVERY
            self._calls += 1
            tuning = phase < 2 * self.TUNE_SAMPLES
            if tuning:
                use_threads = bool(phase % 2)
        start = perf_counter() if tuning else 0.0
        if use_threads:
            self._step_split(indices, prepare, here, finish)
        else:
            here(len(indices))
        if tuning:
            self._timings[use_threads].append(perf_counter() - start)
            if phase == 2 * self.TUNE_SAMPLES - 1:
                loop, threads = (float(np.median(self._timings[k])) for k in (False, True))
                # threads must win clearly: on a loaded machine a near tie is noise, and the loop leaves the other
                # core to whoever else needs it
                self.using_threads = threads < self.THREADS_MARGIN * loop
                self._timings = {False: [], True: []}

    def _split(self, n: int) -> tuple[int, list[int]]:
        """The calling thread's share and the row where each extra thread's block starts (and the last ends)."""
        main = min(max(1, self._main_share), n - 1)
        return main, np.linspace(main, n, self.extra + 1).round().astype(int).tolist()

    def _step_split(self, indices: list[int], prepare: Prepare, here: Here, finish: Finish) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PythonPhysicsThreads(PhysicsThreads):
    """Python threads (a ``ThreadPoolExecutor``) calling ``mujoco.mj_step``, which releases the GIL.

    The extra threads get their rows first, so their physics overlaps the calling thread's own share, which it steps
    one sub-env at a time (Python, physics, Python): each ``mj_step`` there releases the GIL, which the extra threads
    need for a moment between their ``mj_step`` calls.
    """

    def __init__(self, extra: int, capacity: int, *, auto: bool) -> None:
        super().__init__(extra, capacity, auto=auto)
        self.pool: ThreadPoolExecutor | None = ThreadPoolExecutor(extra, thread_name_prefix="metarl-physics")
        self._models: dict[int, mujoco.MjModel] = {}
        self._datas: dict[int, mujoco.MjData] = {}

    def bind(self, i: int, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self._models[i], self._datas[i] = model, data

    def _step_split(self, indices: list[int], prepare: Prepare, here: Here, finish: Finish) -> None:
        n = len(indices)
        main, cuts = self._split(n)
        models, datas = self._models, self._datas
        futures = []
        for w in range(self.extra):
            jobs = []
            for row in range(cuts[w], cuts[w + 1]):
                nstep = prepare(row)
                i = indices[row]
                jobs.append((models[i], datas[i], nstep))
            futures.append(self.pool.submit(_run_physics, jobs))
        here(main)
        waiting = perf_counter()
        workers_done = max(future.result() for future in futures)
        # balance: if the workers were done before we needed them, take fewer rows here next time, else more
        self._main_share = main - 1 if workers_done < waiting else main + 1
        for row in range(main, n):
            finish(row)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def _run_physics(jobs: list[tuple[mujoco.MjModel, mujoco.MjData, int]]) -> float:
    """An extra thread's block: ``mj_step`` (GIL released while it runs) on each job; return the finishing time."""
    step = mujoco.mj_step
    for model, data, nstep in jobs:
        step(model, data, nstep)
    return perf_counter()


class NativePhysicsThreads(PhysicsThreads):
    """The compiled worker: each :class:`NativeWorker` gets its block in one hand-off and steps it in C, without the
    GIL, while the calling thread steps its own share and finishes each worker row as soon as it is stepped."""

    native = True

    def __init__(self, library: NativeLibrary, extra: int, capacity: int, *, auto: bool) -> None:
        super().__init__(extra, capacity, auto=auto)
        self._library, self._capacity = library, capacity
        self._model_addresses: dict[int, int] = {}
        self._data_addresses: dict[int, int] = {}
        self.workers: list[NativeWorker] = []
        self._start_workers()

    def _start_workers(self) -> None:
        self.workers = [NativeWorker(self._library, self._capacity) for _ in range(self.extra)]
        self._pid = os.getpid()
        # stop the C threads even if close() is never called
        self._finalizer = weakref.finalize(self, _close_workers, list(self.workers), self._pid)

    def bind(self, i: int, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self._model_addresses[i], self._data_addresses[i] = model._address, data._address

    def _step_split(self, indices: list[int], prepare: Prepare, here: Here, finish: Finish) -> None:
        if self._pid != os.getpid():  # a forked child has the workers' memory but not their threads
            self._finalizer.detach()
            self._start_workers()
        n, workers = len(indices), self.workers
        main, cuts = self._split(n)
        models, datas = self._model_addresses, self._data_addresses
        for w, worker in enumerate(workers):
            for k, row in enumerate(range(cuts[w], cuts[w + 1])):
                nstep = prepare(row)
                i = indices[row]
                worker.models[k], worker.datas[k], worker.nsteps[k] = models[i], datas[i], nstep
            worker.submit(cuts[w + 1] - cuts[w])
        waited = False
        try:
            here(main)
            # the workers' rows, each as soon as its worker has stepped it: this Python overlaps their physics
            for w, worker in enumerate(workers):
                for k, row in enumerate(range(cuts[w], cuts[w + 1])):
                    status = worker.wait_entry(k)
                    if status & 1:
                        break  # the block failed: its wait() below raises
                    waited = waited or bool(status & 2)
                    finish(row)
        finally:
            # every worker is waited for before anything else happens (they read the blocks until they are done)
            errors = []
            for worker in workers:
                try:
                    worker.wait()
                except mujoco.FatalError as err:
                    errors.append(err)
        if errors:
            raise errors[0]
        # balance: if a worker's row was not ready when needed, step more here next time, else fewer
        self._main_share = main + 1 if waited else main - 1

    def close(self) -> None:
        if self.workers:
            self._finalizer()
            self.workers = []


def _close_workers(workers: list[NativeWorker], pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child: those threads live in the parent
    for worker in workers:
        worker.close()


def physics_threads(extra: int, capacity: int, *, native_worker: bool | None = None,
                    auto: bool = False) -> PhysicsThreads | None:
    """``extra`` physics threads for up to ``capacity`` sub-envs, or ``None`` when ``extra < 1``.

    Args:
        extra: threads besides the calling one.
        capacity: the most sub-envs one :meth:`PhysicsThreads.step` gets.
        native_worker: ``None``: the compiled worker when it is available (:meth:`NativeLibrary.load`), else Python
            threads; ``False``: Python threads; ``True``: the compiled worker, or ``ValueError`` saying why not.
            Checked even when ``extra < 1``.
        auto: time the threads against the calling thread alone now and then and use the faster.
    """
    if native_worker not in (None, True, False):
        raise ValueError(f"native_worker must be None, True or False, got {native_worker!r}")
    library = NativeLibrary.load() if native_worker is not False else None
    if native_worker and library is None:
        raise ValueError(f"native_worker=True but the compiled physics worker is not available: "
                         f"{NativeLibrary.unavailable_reason} (native_worker=None falls back to Python threads)")
    if extra < 1:
        return None
    if library is not None:
        return NativePhysicsThreads(library, extra, capacity, auto=auto)
    return PythonPhysicsThreads(extra, capacity, auto=auto)
