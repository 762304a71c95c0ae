/* threads: T threads each fill and own a region; only main handles signals and verifies. */
#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include "lpw.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static unsigned nready;
static size_t thread_pages;

static void *thread_main(void *arg)
{
	unsigned k = (unsigned)(uintptr_t)arg;
	struct region *r;

	pthread_mutex_lock(&lock);
	/* Reserve the slot under the lock; the fill itself runs in parallel. */
	r = region_map(thread_pages, seed_for(O.seed, 3, k), "thread");
	r->thread = k;
	pthread_mutex_unlock(&lock);
	region_fill(r);
	pthread_mutex_lock(&lock);
	nready++;
	pthread_cond_signal(&cond);
	pthread_mutex_unlock(&lock);
	for (;;)
		pause(); /* all signals blocked here: main owns them */
	return NULL;
}

void run_threads(void)
{
	sigset_t all, old;
	pthread_t t;
	unsigned k;

	thread_pages = (size_t)O.mib * (1 << 20) / page_size / O.threads;
	if (!O.threads || !thread_pages || O.threads > LPW_MAX_REGIONS)
		die("bad --threads/--mib");
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (k = 0; k < O.threads; k++)
		if (pthread_create(&t, NULL, thread_main, (void *)(uintptr_t)k))
			die("pthread_create");
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_mutex_lock(&lock);
	while (nready < O.threads)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	main_ready();
	idle_loop(NULL);
}
