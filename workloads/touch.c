/*
 * lpw-touch: fault-latency workload for the benchmark (bench/README.md).
 *   lpw-touch --state DIR [--mib N] [--touches K] [--seed S] [--procs P]
 * One dense region like `lpw dense` (same pattern, ready file, SIGUSR1 verification).
 * SIGUSR2 (sent right after a lazy restore): read one word of K distinct pages in random
 * order, timing each read, and write DIR/touch-<role>.txt with one line per touch:
 *   <start ns since first touch> <latency ns> <1 if the page was missing, else 0>
 * "missing" comes from mincore() just before the read, outside the timed part, so
 * pages the background fill already brought in are not mistaken for fast faults.
 *
 * --procs P: a tree of P processes (main and child0..child<P-2>), each with a dense region
 * of its own (N/P MiB, its own seed), each touching its own region on SIGUSR2 (sent to the
 * group): P processes faulting at once. With DIR/touch-sync present, they also start at
 * once: see sync_start(); the faults each process needs before it can touch (its signal
 * frame, its globals) then do not stagger the starts. Each process also writes
 * DIR/touchspan-<role>.txt: `<ready ns> <first touch ns> <last touch end ns>`
 * (CLOCK_REALTIME; ready: set up). Realtime, not monotonic: a restored tree may live in a
 * time namespace whose monotonic clock is offset by the time it spent dumped, and the
 * harness's instants must mean the same to it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "lpw.h"

struct proc P = { .role = "main", .workload = "touch" };
struct opts O = { .mib = 64, .seed = 0x6c617a7970616765ULL };
size_t page_size;
static unsigned touches = 4000, procs = 1;

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static uint64_t now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

/* Scratch comes from a fresh mapping: after a restore it is never registered with
 * userfaultfd, where reused heap pages could be lazy and fault before the first touch. */
static void *scratch(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("touch: mmap %zu bytes failed", len);
	return p;
}

static void wait_until(uint64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000u, .tv_nsec = ns % 1000000000u };

	while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/*
 * With DIR/touch-sync present: once set up (which after a restore takes faults of its own:
 * its signal frame, its globals, libc's), say so in DIR/touchready-<role>, then poll every
 * millisecond (for at most a minute) for DIR/touch-at.txt, a CLOCK_REALTIME instant in ns
 * that the harness writes once every process is ready, and wait for it. Returns the
 * instant, 0 to start at once; *ready: when set up (CLOCK_REALTIME ns).
 */
static uint64_t sync_start(uint64_t *ready)
{
	const struct timespec ms = { 0, 1000000 };
	char sync[4096], at[4096], name[64], buf[32];
	uint64_t v = 0;
	ssize_t n, k;
	int fd, tries;

	snprintf(sync, sizeof(sync), "%s/touch-sync", O.state);
	snprintf(at, sizeof(at), "%s/touch-at.txt", O.state);
	snprintf(name, sizeof(name), "touchready-%s", P.role);
	*ready = clock_ns(CLOCK_REALTIME);
	if (access(sync, F_OK))
		return 0;
	state_write(name, "", 0);
	for (tries = 0; tries < 60000; tries++) {
		fd = open(at, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			nanosleep(&ms, NULL);
			continue;
		}
		n = read(fd, buf, sizeof(buf));
		close(fd);
		for (k = 0; k < n && buf[k] >= '0' && buf[k] <= '9'; k++)
			v = v * 10 + (buf[k] - '0');
		return v;
	}
	return 0;
}

static void touch_pages(void)
{
	const struct region *r = &P.reg[0];
	size_t n = touches < r->pages ? touches : r->pages, i, len = 0;
	size_t idx_len = r->pages * sizeof(uint32_t), at_len = n * sizeof(uint64_t), out_len = n * 48 + 1;
	uint32_t *idx = scratch(idx_len);
	uint64_t *at = scratch(at_len), *lat = scratch(at_len);
	unsigned char *missing = scratch(n), vec;
	char *out = scratch(out_len), name[64], span[96];
	/* main keeps the sequence it always had; each child draws its own pages. */
	uint64_t x = strcmp(P.role, "main") ? splitmix64(r->seed) | 1 : 0x9E3779B97F4A7C15ULL, t0;
	uint64_t start, ready, real0;

	for (i = 0; i < r->pages; i++)
		idx[i] = i;
	start = sync_start(&ready);
	if (start)
		wait_until(start);
	real0 = clock_ns(CLOCK_REALTIME);
	t0 = now_ns();
	for (i = 0; i < n; i++) {
		size_t j;
		volatile uint64_t *p;
		uint64_t a, b;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		j = i + x % (r->pages - i);
		uint32_t t = idx[i]; idx[i] = idx[j]; idx[j] = t;
		p = (volatile uint64_t *)(r->addr + (size_t)idx[i] * page_size);
		if (mincore((void *)p, page_size, &vec))
			die("touch: mincore failed");
		missing[i] = !(vec & 1);
		a = now_ns();
		(void)*p;
		b = now_ns();
		at[i] = a - t0;
		lat[i] = b - a;
	}
	len = snprintf(span, sizeof(span), "%llu %llu %llu\n", (unsigned long long)ready, (unsigned long long)real0,
		       (unsigned long long)(n ? real0 + at[n - 1] + lat[n - 1] : real0));
	snprintf(name, sizeof(name), "touchspan-%s.txt", P.role);
	state_write(name, span, len);
	for (len = 0, i = 0; i < n; i++)
		len += sprintf(out + len, "%llu %llu %u\n", (unsigned long long)at[i],
			       (unsigned long long)lat[i], missing[i]);
	snprintf(name, sizeof(name), "touch-%s.txt", P.role);
	state_write(name, out, len);
	munmap(idx, idx_len), munmap(at, at_len), munmap(lat, at_len), munmap(missing, n), munmap(out, out_len);
}

static void usage(void)
{
	fprintf(stderr, "usage: lpw-touch --state DIR [--mib N] [--touches K] [--seed S] [--procs P]\n");
	exit(2);
}

/* Touch files of every role this run can have, and the harness's: a stale one must not pass
 * for a new one. */
static void clear_touch_files(void)
{
	char path[4096];
	unsigned i;

	for (i = 0; i < LPW_MAX_CHILDREN; i++) {
		snprintf(path, sizeof(path), "%s/touch-child%u.txt", O.state, i);
		unlink(path);
		snprintf(path, sizeof(path), "%s/touchspan-child%u.txt", O.state, i);
		unlink(path);
		snprintf(path, sizeof(path), "%s/touchready-child%u", O.state, i);
		unlink(path);
	}
	snprintf(path, sizeof(path), "%s/touchspan-main.txt", O.state);
	unlink(path);
	snprintf(path, sizeof(path), "%s/touchready-main", O.state);
	unlink(path);
	snprintf(path, sizeof(path), "%s/touch-sync", O.state);
	unlink(path);
	snprintf(path, sizeof(path), "%s/touch-at.txt", O.state);
	unlink(path);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "state", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "touches", required_argument, NULL, 'k' },
		{ "seed", required_argument, NULL, 'S' },
		{ "procs", required_argument, NULL, 'p' },
		{ 0 }
	};
	size_t pages;
	int c, pfd[2];
	unsigned i, got = 0;
	char role[32], buf[LPW_MAX_CHILDREN];

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': O.state = optarg; break;
		case 'm': O.mib = strtoul(optarg, NULL, 0); break;
		case 'k': touches = strtoul(optarg, NULL, 0); break;
		case 'S': O.seed = strtoull(optarg, NULL, 0); break;
		case 'p': procs = strtoul(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (!O.state || optind != argc || !O.mib || !touches || !procs || procs > LPW_MAX_CHILDREN)
		usage();
	bench_start("touch-main.txt");
	clear_touch_files();
	pages = (size_t)O.mib * (1 << 20) / page_size / procs;
	if (!pages)
		die("--mib %u is less than a page per process", O.mib);
	/* Children first, before main maps anything: each has only its own region. A pipe
	 * tells main they are ready; it is closed before idling. */
	if (procs > 1 && pipe(pfd))
		die("pipe");
	for (i = 0; i + 1 < procs; i++) {
		snprintf(role, sizeof(role), "child%u", i);
		pid_t pid = fork_role(role);

		if (pid == 0) {
			close(pfd[0]);
			region_fill(region_map(pages, seed_for(O.seed, 3, i), "dense"));
			write_ready("ready");
			if (write(pfd[1], "x", 1) != 1)
				die("ready pipe");
			close(pfd[1]);
			idle_loop(touch_pages);
		}
		P.child[P.nchild] = pid;
		snprintf(P.child_role[P.nchild++], sizeof(P.child_role[0]), "%s", role);
	}
	region_fill(region_map(pages, O.seed, "dense"));
	if (procs > 1) {
		close(pfd[1]);
		while (got < procs - 1) {
			ssize_t n = read(pfd[0], buf, procs - 1 - got);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("a child died before it was ready");
			got += n;
		}
		close(pfd[0]);
	}
	write_ready("ready");
	idle_loop(touch_pages);
}
