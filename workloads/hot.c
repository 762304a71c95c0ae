/*
 * lpw-hot: working-set workload for the benchmark (bench/README.md).
 *   lpw-hot --state DIR [--mib N] [--hot-pct P] [--seed S]
 * One dense region like `lpw dense` (same pattern, ready file, SIGUSR1 verification),
 * of which P % of the pages, picked at random, are "hot". SIGUSR2 (sent right after a
 * lazy restore, like a request reaching a migrated server) runs one pass over the hot
 * pages in a fixed random order, reading one word of each, and writes DIR/hot-main.txt:
 *   <CLOCK_REALTIME ns at pass start> <CLOCK_REALTIME ns at pass end> <hot pages>
 * Realtime, so the bench can measure from the moment it started `criu restore`.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "lpw.h"

struct proc P = { .role = "main", .workload = "hot" };
struct opts O = { .mib = 2048, .seed = 0x6c617a7970616765ULL };
size_t page_size;
static unsigned hot_pct = 10;
/* Picked before the dump, so the restored process walks exactly the same pages. */
static uint32_t *hot;
static size_t nhot;

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void pick_hot(size_t pages)
{
	uint64_t x = splitmix64(O.seed ^ 0x686f74ULL);
	size_t i;

	nhot = pages * hot_pct / 100;
	if (!nhot)
		nhot = 1;
	hot = malloc(pages * sizeof(*hot));
	if (!hot)
		die("hot: out of memory");
	for (i = 0; i < pages; i++)
		hot[i] = i;
	/* The first nhot of a Fisher-Yates shuffle: a random set in a random order. */
	for (i = 0; i < nhot; i++) {
		size_t j;
		uint32_t t;

		x = splitmix64(x);
		j = i + x % (pages - i);
		t = hot[i], hot[i] = hot[j], hot[j] = t;
	}
}

static void hot_pass(void)
{
	const struct region *r = &P.reg[0];
	volatile uint64_t sink = 0;
	uint64_t t0 = realtime_ns(), t1;
	char out[96];
	size_t i;
	int len;

	for (i = 0; i < nhot; i++)
		sink += *(volatile uint64_t *)(r->addr + (size_t)hot[i] * page_size);
	t1 = realtime_ns();
	(void)sink;
	len = snprintf(out, sizeof(out), "%llu %llu %zu\n", (unsigned long long)t0, (unsigned long long)t1, nhot);
	state_write("hot-main.txt", out, len);
}

static void usage(void)
{
	fprintf(stderr, "usage: lpw-hot --state DIR [--mib N] [--hot-pct P] [--seed S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "state", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "hot-pct", required_argument, NULL, 'p' },
		{ "seed", required_argument, NULL, 'S' },
		{ 0 }
	};
	size_t pages;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': O.state = optarg; break;
		case 'm': O.mib = strtoul(optarg, NULL, 0); break;
		case 'p': hot_pct = strtoul(optarg, NULL, 0); break;
		case 'S': O.seed = strtoull(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (!O.state || optind != argc || !O.mib || !hot_pct || hot_pct > 100)
		usage();
	bench_start("hot-main.txt");
	pages = (size_t)O.mib * (1 << 20) / page_size;
	pick_hot(pages);
	region_fill(region_map(pages, O.seed, "dense"));
	write_ready("ready");
	idle_loop(hot_pass);
}
