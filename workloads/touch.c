/*
 * lpw-touch: fault-latency workload for the benchmark (bench/README.md).
 *   lpw-touch --state DIR [--mib N] [--touches K] [--seed S]
 * One dense region like `lpw dense` (same pattern, ready file, SIGUSR1 verification).
 * SIGUSR2 (sent right after a lazy restore): read one word of K distinct pages in random
 * order, timing each read, and write DIR/touch-main.txt with one line per touch:
 *   <start ns since first touch> <latency ns> <1 if the page was missing, else 0>
 * "missing" comes from mincore() just before the read, outside the timed part, so
 * pages the background fill already brought in are not mistaken for fast faults.
 */
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
static unsigned touches = 4000;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void touch_pages(void)
{
	const struct region *r = &P.reg[0];
	size_t n = touches < r->pages ? touches : r->pages, i, len = 0;
	/* Allocated now, after restore: fresh memory, never registered with userfaultfd. */
	uint32_t *idx = malloc(r->pages * sizeof(*idx));
	uint64_t *at = malloc(n * sizeof(*at)), *lat = malloc(n * sizeof(*lat));
	unsigned char *missing = malloc(n), vec;
	char *out = malloc(n * 48 + 1);
	uint64_t x = 0x9E3779B97F4A7C15ULL, t0;

	if (!idx || !at || !lat || !missing || !out)
		die("touch: out of memory");
	for (i = 0; i < r->pages; i++)
		idx[i] = i;
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
	for (i = 0; i < n; i++)
		len += sprintf(out + len, "%llu %llu %u\n", (unsigned long long)at[i],
			       (unsigned long long)lat[i], missing[i]);
	state_write("touch-main.txt", out, len);
	free(idx), free(at), free(lat), free(missing), free(out);
}

static void usage(void)
{
	fprintf(stderr, "usage: lpw-touch --state DIR [--mib N] [--touches K] [--seed S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "state", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "touches", required_argument, NULL, 'k' },
		{ "seed", required_argument, NULL, 'S' },
		{ 0 }
	};
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': O.state = optarg; break;
		case 'm': O.mib = strtoul(optarg, NULL, 0); break;
		case 'k': touches = strtoul(optarg, NULL, 0); break;
		case 'S': O.seed = strtoull(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (!O.state || optind != argc || !O.mib || !touches)
		usage();
	bench_start("touch-main.txt");
	region_fill(region_map((size_t)O.mib * (1 << 20) / page_size, O.seed, "dense"));
	write_ready("ready");
	idle_loop(touch_pages);
}
