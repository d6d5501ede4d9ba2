/* A physics worker thread for TaskVectorEnv: steps a block of MuJoCo models without Python and without the GIL.
 *
 * Why: a Python worker thread pays a kernel wake-up for every hand-off and needs the GIL between its mj_step calls.
 * This worker is a plain C thread: it waits for a job by spinning for a short while (longer than the gap between two
 * vector steps while a sampler runs) and only then sleeps on a condition variable; the job is a list of
 * (mjModel*, mjData*, nstep) triples that it steps with MuJoCo's own mj_step, the very function the Python bindings
 * call, so trajectories are bit-identical. Its Python side is envs/physics_worker.py; figures (hand-off cost, speed
 * against Python threads) in experiments/RESULTS.md, "Environments: step cost and vectorised stepping".
 *
 * Loaded with ctypes (a plain C shared library, no Python C API): Python passes the addresses of mj_step and of
 * MuJoCo's thread-local error-handler setter, taken from the same libmujoco the bindings use, and the
 * MjModel/MjData addresses (their ``_address``). ctypes releases the GIL for the duration of every call here.
 *
 * Errors: a MuJoCo error (mju_error) inside the worker's mj_step returns to the worker loop through the thread-local
 * handler (as the Python bindings do for their own calls); the job then reports it and the rest of the block is
 * not stepped. Built by setuptools as an optional extension (setup.py); without a C compiler TaskVectorEnv falls
 * back to Python threads.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*step_fn)(const void *model, void *data);
typedef void (*error_fn)(const char *message);
typedef void (*set_error_fn)(error_fn handler);

enum { IDLE = 0, POSTED = 1, DONE = 2, QUIT = 3 };

typedef struct {
    step_fn step;
    set_error_fn set_error_handler;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;      /* the worker sleeps on it waiting for a job */
    pthread_cond_t finished;  /* the caller sleeps on it waiting for the job's end */
    atomic_int state;
    atomic_int progress;  /* entries of the current job stepped so far */
    int worker_sleeping, caller_sleeping;
    long spin_ns;
    /* the job: arrays owned by the caller, valid until metarl_worker_wait returns */
    int count;
    void *const *models;
    void *const *datas;
    const int32_t *nsteps;
    int failed;
    char message[512];
} Worker;

static _Thread_local jmp_buf *error_return;
static _Thread_local char *error_message;

static void on_mujoco_error(const char *message) {
    if (error_message) {
        strncpy(error_message, message ? message : "", 511);
        error_message[511] = '\0';
    }
    longjmp(*error_return, 1);
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000000000L + t.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spin until `state` is one of the two wanted values or `spin_ns` has passed; 1 if it got there. */
static int spin_for(Worker *w, int a, int b) {
    long deadline = now_ns() + w->spin_ns;
    for (unsigned i = 1;; i++) {
        int s = atomic_load_explicit(&w->state, memory_order_acquire);
        if (s == a || s == b) return 1;
        cpu_relax();
        if ((i & 63) == 0 && now_ns() > deadline) return 0;
    }
}

static void run_job(Worker *w) {
    jmp_buf here;
    error_return = &here;
    error_message = w->message;
    w->failed = 0;
    if (setjmp(here) == 0) {
        for (int i = 0; i < w->count; i++) {
            for (int k = 0; k < w->nsteps[i]; k++) w->step(w->models[i], w->datas[i]);
            atomic_store_explicit(&w->progress, i + 1, memory_order_release);
        }
    } else {
        w->failed = 1;
    }
}

static void *worker_main(void *arg) {
    Worker *w = (Worker *)arg;
    if (w->set_error_handler) w->set_error_handler(on_mujoco_error);
    for (;;) {
        if (!spin_for(w, POSTED, QUIT)) {
            pthread_mutex_lock(&w->lock);
            while (atomic_load(&w->state) != POSTED && atomic_load(&w->state) != QUIT) {
                w->worker_sleeping = 1;
                pthread_cond_wait(&w->wake, &w->lock);
                w->worker_sleeping = 0;
            }
            pthread_mutex_unlock(&w->lock);
        }
        if (atomic_load(&w->state) == QUIT) break;
        run_job(w);
        pthread_mutex_lock(&w->lock);
        atomic_store_explicit(&w->state, DONE, memory_order_release);
        if (w->caller_sleeping) pthread_cond_signal(&w->finished);
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

/* A started worker, or NULL. `step` is mj_step; `set_error_handler` is _mjPRIVATE__set_tls_error_fn (or NULL). */
void *metarl_worker_new(void *step, void *set_error_handler, long spin_ns) {
    Worker *w = (Worker *)calloc(1, sizeof(Worker));
    if (!w) return NULL;
    w->step = (step_fn)step;
    w->set_error_handler = (set_error_fn)set_error_handler;
    w->spin_ns = spin_ns;
    atomic_init(&w->state, IDLE);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->finished, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

/* Hand the worker `count` (model, data, nstep) triples; returns at once. One job at a time: wait before the next. */
void metarl_worker_submit(void *handle, int count, void *const *models, void *const *datas, const int32_t *nsteps) {
    Worker *w = (Worker *)handle;
    w->count = count;
    w->models = models;
    w->datas = datas;
    w->nsteps = nsteps;
    atomic_store_explicit(&w->progress, 0, memory_order_relaxed);
    pthread_mutex_lock(&w->lock);
    atomic_store_explicit(&w->state, POSTED, memory_order_release);
    if (w->worker_sleeping) pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

static void sleep_until_done(Worker *w) {
    pthread_mutex_lock(&w->lock);
    while (atomic_load(&w->state) != DONE) {
        w->caller_sleeping = 1;
        pthread_cond_wait(&w->finished, &w->lock);
        w->caller_sleeping = 0;
    }
    pthread_mutex_unlock(&w->lock);
}

/* Wait until entry `index` of the current job has been stepped, so the caller can read that mjData while the
 * worker steps the next ones. Bit 0 of the result: the entry was not stepped (the job failed before it; the
 * error comes with metarl_worker_wait); bit 1: the caller had to wait for it. */
int metarl_worker_wait_entry(void *handle, int index) {
    Worker *w = (Worker *)handle;
    if (atomic_load_explicit(&w->progress, memory_order_acquire) > index) return 0;
    long deadline = now_ns() + w->spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&w->progress, memory_order_acquire) > index) return 2;
        if (atomic_load_explicit(&w->state, memory_order_acquire) == DONE) break;
        cpu_relax();
        if ((i & 63) == 0 && now_ns() > deadline) {
            sleep_until_done(w);
            break;
        }
    }
    return (atomic_load_explicit(&w->progress, memory_order_acquire) > index ? 0 : 1) | 2;
}

/* Wait for the job submitted last. Bit 0 of the result: MuJoCo raised an error (see metarl_worker_message);
 * bit 1: the job was not done yet when this was called (the caller had less work than the worker). */
int metarl_worker_wait(void *handle) {
    Worker *w = (Worker *)handle;
    int waited = atomic_load_explicit(&w->state, memory_order_acquire) != DONE;
    if (waited && !spin_for(w, DONE, DONE)) sleep_until_done(w);
    atomic_store_explicit(&w->state, IDLE, memory_order_relaxed);
    return w->failed | (waited << 1);
}

const char *metarl_worker_message(void *handle) { return ((Worker *)handle)->message; }

/* Stop and free the worker (after the last wait). */
void metarl_worker_free(void *handle) {
    Worker *w = (Worker *)handle;
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    atomic_store(&w->state, QUIT);
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    pthread_cond_destroy(&w->finished);
    free(w);
}
