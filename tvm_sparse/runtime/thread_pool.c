/*
 * The parallel launcher that tvm_sparse installs into the libraries it loads.
 *
 * TVM's generated code runs each parallel loop through one function pointer,
 * __TVMBackendParallelLaunch(flambda, cdata, num_task): every task calls
 * flambda(task_id, env, cdata), which runs the task_id-th contiguous chunk of the
 * loop out of env->num_task. TVM's own pool gives task i to worker i and waits for
 * every worker to run its task. When another process holds a worker's core, the
 * caller waits until the scheduler runs that worker again, up to a time slice, on
 * every parallel loop of the model.
 *
 * Here tasks are claimed, not assigned: each thread (the caller is thread 0) owns a
 * contiguous range of a loop's tasks, as in TVM's static split, and claims them one by one;
 * a thread done with its range claims the unstarted tasks of the others. A worker that has
 * not woken up yet leaves its share to the caller, and the caller waits only for tasks a
 * worker has already started. A launch cuts each loop into more tasks than threads, so a thread
 * slowed by a shared core takes fewer of them, and learns per loop how many tasks keep
 * each one short.
 *
 * Workers poll for a bounded time after their last task (the next kernel of a model
 * usually follows within microseconds), yielding now and then so that a polling worker
 * never keeps a core from a thread that has work, then sleep on a futex. The caller,
 * which has work, spins while it waits for a started task and yields only after a long
 * wait (the worker may be waiting for the caller's core): on a core shared with a busy
 * process each yield can give that process a whole time slice.
 *
 * Workers ask the scheduler for a short time slice (Linux 6.12+, EEVDF's custom slice): a
 * worker woken on a core where another thread spins (a busy process, another runtime's
 * idle pool) then gets the core within about that slice instead of after the other
 * thread's default slice of a few milliseconds, longer than a whole call of a small model.
 * Its share of the core does not change. Older kernels ignore the request.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* sched_setattr's argument (include/uapi/linux/sched/types.h); glibc has no wrapper. */
struct tsp_sched_attr {
  uint32_t size, sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* What the FFI error API of the loading process provides (set by tsp_configure):
 * a failing task's error is raised in its own thread, and the caller re-raises it. */
typedef void (*FMoveFromRaised)(void** error);
typedef void (*FSetRaised)(void* error);
typedef int (*FDecRef)(void* object);

#define MAX_THREADS 256
#define MAX_TASKS 0xffff

/* The launch word: generation (32 bits) | number of tasks (16) | unused (16). Workers wake
 * on a new generation. */
#define WORD(gen, n, next) (((uint64_t)(gen) << 32) | ((uint64_t)(n) << 16) | (uint64_t)(next))
#define WORD_GEN(w) ((uint32_t)((w) >> 32))

/* A thread's range of unclaimed tasks [lo, hi) in one atomic word: generation | lo | hi. The
 * owner claims from the bottom, in order, so that each thread runs the same contiguous share
 * of every loop as TVM's static split gives it (the rows a kernel wrote on this core are read
 * by the next one on this core); another thread whose own range is done steals from the top.
 * The generation makes a claim of an earlier launch's stale value fail. */
#define RANGE(gen, lo, hi) (((uint64_t)(gen) << 32) | ((uint64_t)(lo) << 16) | (uint64_t)(hi))
#define RANGE_LO(w) ((uint32_t)(((w) >> 16) & 0xffff))
#define RANGE_HI(w) ((uint32_t)((w)&0xffff))

typedef struct {
  _Alignas(64) _Atomic uint64_t word;
} Range;

static struct {
  _Alignas(64) _Atomic uint64_t word;
  /* The launch being run; written before its word is published, and stable while any of
   * its tasks is unfinished. */
  FTVMParallelLambda flambda;
  void* cdata;
  TVMParallelGroupEnv env;
  int num_ranges; /* threads of the launch being run */
  Range ranges[MAX_THREADS];
  _Alignas(64) _Atomic int done;
  _Atomic int failed;
  void* error;
  _Alignas(64) _Atomic uint32_t wake_seq;
  _Atomic int sleepers;
  /* Configuration. */
  _Alignas(64) _Atomic int threads;      /* threads used per launch, caller included */
  _Atomic int tasks_per_thread;
  _Atomic long task_ns;
  _Atomic long spin_ns;
  _Atomic long slice_ns; /* 0: the kernel's default slice */
  _Atomic int pin;
  int started; /* worker threads running */
  pthread_t workers[MAX_THREADS];
  int cpus[MAX_THREADS];
  int num_cpus;
  uint32_t gen;
  pthread_mutex_t launch_lock;
  pthread_mutex_t config_lock;
  FMoveFromRaised move_from_raised;
  FSetRaised set_raised;
  FDecRef dec_ref;
  _Atomic long launches, serial_launches, caller_tasks, worker_tasks, wait_ns, long_waits;
} pool = {
    .threads = 1,
    .tasks_per_thread = 4,
    .task_ns = 50000,
    .spin_ns = 100000,
    .launch_lock = PTHREAD_MUTEX_INITIALIZER,
    .config_lock = PTHREAD_MUTEX_INITIALIZER,
};

static _Thread_local int tls_worker_id = -1;

/* Tasks per launch, learned per parallel loop (its lambda): a loop cut into tasks of about
 * task_ns leaves the caller at most one short task to wait for at the end, and lets a
 * thread with less of its core take fewer tasks. Written only under launch_lock. */
#define SITES 1024
static struct {
  FTVMParallelLambda flambda;
  int num_task;
} sites[SITES];

static int site_slot(FTVMParallelLambda flambda) {
  uintptr_t h = ((uintptr_t)flambda >> 4) * 0x9E3779B97F4A7C15ull;
  for (int probe = 0; probe < 8; ++probe) {
    int i = (int)((h + (uintptr_t)probe) % SITES);
    if (sites[i].flambda == flambda || sites[i].flambda == NULL) return i;
  }
  return (int)(h % SITES); /* full neighbourhood: share a slot */
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

static inline long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t* addr, uint32_t expected) {
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t* addr) {
  syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* A task of range `r` in generation `gen`: its lowest for the owner, its highest for a
 * thief; -1 when the range is empty or of another launch. */
static int claim(int r, uint32_t gen, int own) {
  uint64_t w = atomic_load(&pool.ranges[r].word);
  for (;;) {
    uint32_t lo = RANGE_LO(w), hi = RANGE_HI(w);
    if (WORD_GEN(w) != gen || lo >= hi) return -1;
    uint64_t next = own ? RANGE(gen, lo + 1, hi) : RANGE(gen, lo, hi - 1);
    if (atomic_compare_exchange_weak(&pool.ranges[r].word, &w, next)) {
      return (int)(own ? lo : hi - 1);
    }
  }
}

/* Run tasks of generation `gen` as thread `self`: its own range, then others'; returns how
 * many ran. */
static int run_tasks(uint32_t gen, int self) {
  int ran = 0;
  for (;;) {
    /* A claimed task keeps this launch unfinished, so its closure and range count hold. */
    int ranges = pool.num_ranges;
    int task = self < ranges ? claim(self, gen, 1) : -1;
    for (int k = 1; task < 0 && k <= ranges; ++k) task = claim((self + k) % ranges, gen, 0);
    if (task < 0) return ran;
    if (pool.flambda(task, &pool.env, pool.cdata) != 0) {
      void* error = NULL;
      if (pool.move_from_raised) pool.move_from_raised(&error);
      int expected = 0;
      if (atomic_compare_exchange_strong(&pool.failed, &expected, 1)) {
        pool.error = error;
      }
    }
    atomic_fetch_add(&pool.done, 1);
    ++ran;
  }
}

/* Ask for a time slice of slice_ns for the calling thread (0: the default); keeps its
 * policy and nice value. Returns 0 when the kernel took the request. */
static int set_slice(long slice_ns) {
#if defined(SYS_sched_getattr) && defined(SYS_sched_setattr)
  struct tsp_sched_attr attr = {0};
  if (syscall(SYS_sched_getattr, 0, &attr, sizeof(attr), 0) != 0) return -1;
  if (attr.sched_policy != SCHED_OTHER && attr.sched_policy != SCHED_BATCH) return -1;
  attr.size = sizeof(attr);
  attr.sched_flags = 0;
  attr.sched_runtime = (uint64_t)slice_ns;
  return (int)syscall(SYS_sched_setattr, 0, &attr, 0);
#else
  (void)slice_ns;
  return -1;
#endif
}

static void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void* worker_main(void* arg) {
  int id = (int)(intptr_t)arg; /* 1.. : the caller is thread 0 */
  tls_worker_id = id;
  pthread_setname_np(pthread_self(), "tvm_sparse");
  int pinned_to = -1;
  long slice = 0; /* the slice this thread has asked for */
  uint32_t seen = WORD_GEN(atomic_load(&pool.word));
  for (;;) {
    long deadline = now_ns() + atomic_load_explicit(&pool.spin_ns, memory_order_relaxed);
    uint32_t gen = seen;
    for (int i = 0;; ++i) {
      gen = WORD_GEN(atomic_load(&pool.word));
      if (gen != seen) break;
      if ((i & 63) != 63) {
        cpu_relax();
        continue;
      }
      /* An idle worker gives way to any thread waiting for this core (the caller, another
       * runtime's threads): it is not needed for the next launch to make progress. */
      sched_yield();
      if (now_ns() > deadline) {
        uint32_t seq = atomic_load(&pool.wake_seq);
        atomic_fetch_add(&pool.sleepers, 1);
        /* Re-read after counting as a sleeper: a launch published before this read is
         * seen here, one published after it sees the sleeper and bumps wake_seq. */
        if (WORD_GEN(atomic_load(&pool.word)) == seen) futex_wait(&pool.wake_seq, seq);
        atomic_fetch_sub(&pool.sleepers, 1);
        deadline = now_ns() + atomic_load_explicit(&pool.spin_ns, memory_order_relaxed);
      }
    }
    seen = gen;
    if (id >= atomic_load(&pool.threads)) continue; /* fewer threads configured now */
    int want = atomic_load(&pool.pin) && id < pool.num_cpus ? pool.cpus[id] : -1;
    if (want != pinned_to) {
      if (want >= 0) {
        pin_to(want);
      } else {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int c = 0; c < pool.num_cpus; ++c) CPU_SET(pool.cpus[c], &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      }
      pinned_to = want;
    }
    long want_slice = atomic_load_explicit(&pool.slice_ns, memory_order_relaxed);
    if (want_slice != slice) {
      set_slice(want_slice);
      slice = want_slice;
    }
    atomic_fetch_add(&pool.worker_tasks, run_tasks(gen, id));
  }
  return NULL;
}

int tsp_parallel_launch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  int threads = atomic_load(&pool.threads);
  if (threads > pool.started + 1) threads = pool.started + 1;
  /* Nested launches, a second calling thread, or one thread: run here, in order. */
  if (threads <= 1 || tls_worker_id >= 0 || pthread_mutex_trylock(&pool.launch_lock) != 0) {
    TVMParallelGroupEnv env = {NULL, num_task > 0 ? num_task : 1};
    atomic_fetch_add(&pool.serial_launches, 1);
    for (int i = 0; i < env.num_task; ++i) {
      if (flambda(i, &env, cdata) != 0) return -1;
    }
    return 0;
  }
  int least = threads * atomic_load(&pool.tasks_per_thread);
  long task_ns = atomic_load_explicit(&pool.task_ns, memory_order_relaxed);
  int slot = site_slot(flambda);
  int n = num_task;
  if (n <= 0) {
    n = least;
    if (task_ns > 0 && sites[slot].flambda == flambda && sites[slot].num_task > least) {
      n = sites[slot].num_task;
    }
  }
  if (n > MAX_TASKS) n = MAX_TASKS;
  long launched = now_ns();
  pool.flambda = flambda;
  pool.cdata = cdata;
  pool.env.sync_handle = NULL;
  pool.env.num_task = n;
  pool.error = NULL;
  atomic_store(&pool.failed, 0);
  atomic_store(&pool.done, 0);
  uint32_t gen = ++pool.gen;
  pool.num_ranges = threads;
  for (int t = 0; t < threads; ++t) {
    long lo = (long)n * t / threads, hi = (long)n * (t + 1) / threads;
    atomic_store(&pool.ranges[t].word, RANGE(gen, lo, hi));
  }
  atomic_store(&pool.word, WORD(gen, n, 0));
  if (atomic_load(&pool.sleepers) > 0) {
    atomic_fetch_add(&pool.wake_seq, 1);
    futex_wake_all(&pool.wake_seq);
  }
  atomic_fetch_add(&pool.caller_tasks, run_tasks(gen, 0));
  /* Only tasks that a worker has started are left; spin briefly, then let it have the core. */
  if (atomic_load(&pool.done) < n) {
    long start = now_ns();
    for (int i = 0; atomic_load(&pool.done) < n; ++i) {
      if (i < 4096) {
        cpu_relax();
      } else {
        sched_yield();
      }
    }
    long waited = now_ns() - start;
    atomic_fetch_add(&pool.wait_ns, waited);
    if (waited > 100000) atomic_fetch_add(&pool.long_waits, 1);
  }
  atomic_fetch_add(&pool.launches, 1);
  if (num_task <= 0 && task_ns > 0) {
    /* The next launch of this loop: its work (this one's time on all threads) in tasks of
     * about task_ns, moving halfway from the current count so that one slow launch does not
     * swing it. */
    long work = (now_ns() - launched) * threads;
    long want = work / task_ns;
    if (want < least) want = least;
    if (want > MAX_TASKS) want = MAX_TASKS;
    sites[slot].flambda = flambda;
    sites[slot].num_task = (int)((n + want + 1) / 2);
  }
  int failed = atomic_load(&pool.failed);
  void* error = pool.error;
  pthread_mutex_unlock(&pool.launch_lock);
  if (failed) {
    if (error && pool.set_raised) {
      pool.set_raised(error); /* takes its own reference */
      if (pool.dec_ref) pool.dec_ref(error);
    }
    return -1;
  }
  return 0;
}

static void after_fork_in_child(void) {
  /* Worker threads do not survive fork: the child's launches run on the calling thread
   * until it configures a pool of its own. */
  pool.started = 0;
  atomic_store(&pool.sleepers, 0);
  pthread_mutex_init(&pool.launch_lock, NULL);
  pthread_mutex_init(&pool.config_lock, NULL);
}

/* Configure the pool: threads per launch (the caller counts as one), the least tasks per
 * thread of a launch, the task length launches aim at (0: the least count always), the
 * workers' spin time after their last task, the time slice workers ask the scheduler for
 * (0: the default), whether each thread is pinned to one
 * CPU of `cpus`, and the FFI error functions (move a raised error out of this thread, raise
 * it in another, release a reference). Starts missing workers. Returns the number of
 * threads in use. */
int tsp_configure(int threads, int tasks_per_thread, long task_ns, long spin_ns, long slice_ns,
                  int pin,
                  const int* cpus,
                  int num_cpus, void* move_from_raised, void* set_raised, void* dec_ref) {
  static int atfork_registered = 0;
  pthread_mutex_lock(&pool.config_lock);
  if (!atfork_registered) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
    atfork_registered = 1;
  }
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (num_cpus > MAX_THREADS) num_cpus = MAX_THREADS;
  for (int i = 0; i < num_cpus; ++i) pool.cpus[i] = cpus[i];
  pool.num_cpus = num_cpus;
  pool.move_from_raised = (FMoveFromRaised)move_from_raised;
  pool.set_raised = (FSetRaised)set_raised;
  pool.dec_ref = (FDecRef)dec_ref;
  atomic_store(&pool.tasks_per_thread, tasks_per_thread < 1 ? 1 : tasks_per_thread);
  atomic_store(&pool.task_ns, task_ns < 0 ? 0 : task_ns);
  atomic_store(&pool.spin_ns, spin_ns < 0 ? 0 : spin_ns);
  atomic_store(&pool.slice_ns, slice_ns < 0 ? 0 : slice_ns);
  atomic_store(&pool.pin, pin);
  atomic_store(&pool.threads, threads);
  while (pool.started + 1 < threads) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int id = pool.started + 1;
    int rc = pthread_create(&pool.workers[id], &attr, worker_main, (void*)(intptr_t)id);
    pthread_attr_destroy(&attr);
    if (rc != 0) break;
    pool.started = id;
  }
  int in_use = pool.started + 1 < threads ? pool.started + 1 : threads;
  pthread_mutex_unlock(&pool.config_lock);
  return in_use;
}

/* Counters since the pool started: launches run in parallel, launches run on the calling
 * thread alone, tasks run by the caller, tasks run by workers, nanoseconds the caller
 * waited for tasks a worker had started, and launches where that wait passed 100 us. */
void tsp_stats(long* out) {
  out[0] = atomic_load(&pool.launches);
  out[1] = atomic_load(&pool.serial_launches);
  out[2] = atomic_load(&pool.caller_tasks);
  out[3] = atomic_load(&pool.worker_tasks);
  out[4] = atomic_load(&pool.wait_ns);
  out[5] = atomic_load(&pool.long_waits);
}
